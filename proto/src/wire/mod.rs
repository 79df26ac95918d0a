//! The PBX link's framing: a fixed 12-byte header followed by a protobuf body (see `docs/pbx-link.md`).
//!
//! The header is, in network byte order:
//!
//! | bytes | field       | value                                              |
//! |-------|-------------|----------------------------------------------------|
//! | 0..2  | magic       | `0x53 0x42` ("SB")                                 |
//! | 2     | version     | [`FRAME_VERSION`]                                  |
//! | 3     | class       | 1 request, 2 result, 3 error, 4 event              |
//! | 4..8  | invoke id   | pairs a result or error with its request; 0 on events |
//! | 8..12 | body length | bytes of protobuf that follow                      |

mod codec;
mod error;

pub use codec::{LinkCodec, LinkMessage};
pub use error::FrameError;

/// The first two bytes of every frame.
pub const MAGIC: u16 = 0x5342;
/// The framing version this crate reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the fixed header before each body.
pub const HEADER_LEN: usize = 12;
/// The default bound on a whole frame, header included.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 64 * 1024;
/// The smallest maximum frame length a side may state (`RegisterRequest.max_frame_length`,
/// `RegisterResult.max_frame_length`): room for any one call's snapshot.
pub const MIN_MAX_FRAME_LENGTH: usize = 4 * 1024;

/// What a frame's body is, and so which protobuf message it decodes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameClass {
    /// A service request ([`crate::pbx::Request`]).
    Request = 1,
    /// The positive answer to a request ([`crate::pbx::Response`]).
    Result = 2,
    /// The negative answer to a request ([`crate::pbx::ErrorResponse`]).
    Error = 3,
    /// An unsolicited event ([`crate::pbx::EventReport`]).
    Event = 4,
}

impl FrameClass {
    /// The class with this wire value, if there is one.
    pub fn from_wire(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Request),
            2 => Some(Self::Result),
            3 => Some(Self::Error),
            4 => Some(Self::Event),
            _ => None,
        }
    }

    /// A short lowercase name, for errors and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Result => "result",
            Self::Error => "error",
            Self::Event => "event",
        }
    }
}

impl std::fmt::Display for FrameClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
