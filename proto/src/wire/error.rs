//! Everything that can be wrong with a byte stream that claims to be a PBX link.

use super::{FRAME_VERSION, FrameClass, MAGIC};

/// Why a stream could not be read or written as PBX link frames. After any of these but
/// [`FrameError::Io`] the stream's framing can no longer be trusted: the link must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start a frame with the magic bytes.
    #[error("bad magic {found:#06x} (expected {MAGIC:#06x}): not a PBX link stream")]
    BadMagic {
        /// The two bytes found instead.
        found: u16,
    },
    /// The frame's version is not one this side speaks.
    #[error("unsupported frame version {found} (this side speaks {FRAME_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The class byte is not request, result, error or event.
    #[error("unknown frame class {found}")]
    UnknownClass {
        /// The class byte found.
        found: u8,
    },
    /// The frame would exceed the configured maximum; refused before any allocation.
    #[error("frame of {length} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The whole frame's length, header included.
        length: u64,
        /// The configured limit.
        max: usize,
    },
    /// The body is not the protobuf message its class says.
    #[error("undecodable {class} body: {source}")]
    Body {
        /// The frame's class.
        class: FrameClass,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
    /// The peer closed the stream part-way through a frame.
    #[error("link closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// The socket failed.
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// A fixed name for each kind of error, for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadMagic { .. } => "bad_magic",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::UnknownClass { .. } => "unknown_class",
            Self::TooLong { .. } => "too_long",
            Self::Body { .. } => "bad_body",
            Self::Truncated { .. } => "truncated",
            Self::Io(_) => "io",
        }
    }

    /// Every value [`FrameError::kind`] can return, to register metric labels at zero.
    pub const KINDS: [&'static str; 7] =
        ["bad_magic", "unsupported_version", "unknown_class", "too_long", "bad_body", "truncated", "io"];
}
