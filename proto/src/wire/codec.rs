//! The stateful frame codec: bytes in any chunking to [`LinkMessage`]s, and back.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use super::{DEFAULT_MAX_FRAME_LENGTH, FRAME_VERSION, FrameClass, FrameError, HEADER_LEN, MAGIC};
use crate::pbx;

/// One decoded frame: its class, its invoke id where the class has one, and its typed body.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkMessage {
    /// A service request; the answer carries the same invoke id.
    Request {
        /// Chosen by the sender, unique among its requests in flight.
        invoke_id: u32,
        /// The service asked for.
        body: pbx::Request,
    },
    /// The positive answer to the request with `invoke_id`.
    Result {
        /// The request's invoke id.
        invoke_id: u32,
        /// The service's result.
        body: pbx::Response,
    },
    /// The negative answer to the request with `invoke_id`; 0 is a link-level error, and the sender
    /// closes the link after it.
    Error {
        /// The request's invoke id, or 0.
        invoke_id: u32,
        /// Why the request was refused.
        body: pbx::ErrorResponse,
    },
    /// An unsolicited event (invoke id 0 on the wire).
    Event(pbx::EventReport),
}

impl LinkMessage {
    /// The class of frame this message travels in.
    pub fn class(&self) -> FrameClass {
        match self {
            Self::Request { .. } => FrameClass::Request,
            Self::Result { .. } => FrameClass::Result,
            Self::Error { .. } => FrameClass::Error,
            Self::Event(_) => FrameClass::Event,
        }
    }

    fn invoke_id(&self) -> u32 {
        match self {
            Self::Request { invoke_id, .. } | Self::Result { invoke_id, .. } | Self::Error { invoke_id, .. } => {
                *invoke_id
            }
            Self::Event(_) => 0,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Request { body, .. } => body.encoded_len(),
            Self::Result { body, .. } => body.encoded_len(),
            Self::Error { body, .. } => body.encoded_len(),
            Self::Event(body) => body.encoded_len(),
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        // Encoding into a BytesMut grows it as needed, so it cannot fail; the capacity was
        // reserved by the caller anyway.
        let result = match self {
            Self::Request { body, .. } => body.encode(dst),
            Self::Result { body, .. } => body.encode(dst),
            Self::Error { body, .. } => body.encode(dst),
            Self::Event(body) => body.encode(dst),
        };
        debug_assert!(result.is_ok(), "encoding into BytesMut cannot run out of space");
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    class: FrameClass,
    invoke_id: u32,
    body_len: usize,
}

/// Where the decoder is in the stream. The header is consumed only once it is whole and valid,
/// and the body only once it is whole, so any split of the input yields the same frames.
#[derive(Debug, Clone, Copy)]
enum DecodeState {
    Head,
    Body(Header),
}

/// The PBX link codec for `tokio_util::codec::Framed`. Holds its place across partial reads and
/// refuses any frame longer than its maximum before allocating room for it.
#[derive(Debug, Clone)]
pub struct LinkCodec {
    max_frame_length: usize,
    state: DecodeState,
}

impl Default for LinkCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LENGTH)
    }
}

impl LinkCodec {
    /// A codec that refuses frames (header included) longer than `max_frame_length` bytes, in both
    /// directions. A limit below the header's size is raised to it.
    pub fn new(max_frame_length: usize) -> Self {
        Self { max_frame_length: max_frame_length.max(HEADER_LEN), state: DecodeState::Head }
    }

    /// The largest frame this codec reads or writes, header included.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Whether `buffered` (what the reader holds after this codec's last decode) makes the next
    /// decode return at once, a frame or an error, without reading more.
    pub fn has_frame(&self, buffered: &[u8]) -> bool {
        match self.state {
            DecodeState::Body(header) => buffered.len() >= header.body_len,
            DecodeState::Head => match self.check_header(buffered) {
                Ok(Some(header)) => buffered.len() >= HEADER_LEN + header.body_len,
                Ok(None) => false,
                Err(_) => true,
            },
        }
    }

    /// Checks whatever part of a header has arrived, so garbage is refused as soon as it is seen
    /// rather than when twelve bytes of it have come.
    fn check_header(&self, src: &[u8]) -> Result<Option<Header>, FrameError> {
        if src.len() >= 2 {
            let magic = u16::from_be_bytes([src[0], src[1]]);
            if magic != MAGIC {
                return Err(FrameError::BadMagic { found: magic });
            }
        }
        if src.len() >= 3 && src[2] != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: src[2] });
        }
        let class = match src.get(3) {
            Some(&byte) => FrameClass::from_wire(byte).ok_or(FrameError::UnknownClass { found: byte })?,
            None => return Ok(None),
        };
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let invoke_id = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
        let body_len = u32::from_be_bytes([src[8], src[9], src[10], src[11]]);
        let length = HEADER_LEN as u64 + u64::from(body_len);
        if length > self.max_frame_length as u64 {
            return Err(FrameError::TooLong { length, max: self.max_frame_length });
        }
        // The bound above keeps body_len below max_frame_length, which is a usize.
        Ok(Some(Header { class, invoke_id, body_len: body_len as usize }))
    }
}

fn decode_body(header: Header, body: bytes::Bytes) -> Result<LinkMessage, FrameError> {
    let invoke_id = header.invoke_id;
    let class = header.class;
    let wrap = |source| FrameError::Body { class, source };
    Ok(match class {
        FrameClass::Request => LinkMessage::Request { invoke_id, body: pbx::Request::decode(body).map_err(wrap)? },
        FrameClass::Result => LinkMessage::Result { invoke_id, body: pbx::Response::decode(body).map_err(wrap)? },
        FrameClass::Error => LinkMessage::Error { invoke_id, body: pbx::ErrorResponse::decode(body).map_err(wrap)? },
        FrameClass::Event => LinkMessage::Event(pbx::EventReport::decode(body).map_err(wrap)?),
    })
}

impl Decoder for LinkCodec {
    type Item = LinkMessage;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<LinkMessage>, FrameError> {
        let header = match self.state {
            DecodeState::Body(header) => header,
            DecodeState::Head => match self.check_header(src)? {
                None => return Ok(None),
                Some(header) => {
                    src.advance(HEADER_LEN);
                    // Safe to reserve: check_header bounded body_len by max_frame_length.
                    src.reserve(header.body_len.saturating_sub(src.len()));
                    self.state = DecodeState::Body(header);
                    header
                }
            },
        };
        if src.len() < header.body_len {
            return Ok(None);
        }
        let body = src.split_to(header.body_len).freeze();
        self.state = DecodeState::Head;
        decode_body(header, body).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<LinkMessage>, FrameError> {
        if let Some(message) = self.decode(src)? {
            return Ok(Some(message));
        }
        let buffered = match self.state {
            DecodeState::Head => src.len(),
            DecodeState::Body(_) => HEADER_LEN + src.len(),
        };
        if buffered == 0 { Ok(None) } else { Err(FrameError::Truncated { buffered }) }
    }
}

impl Encoder<LinkMessage> for LinkCodec {
    type Error = FrameError;

    fn encode(&mut self, message: LinkMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_message(&message, dst)
    }
}

impl LinkCodec {
    /// Encodes a message it does not own; [`Encoder::encode`] for a borrowed message.
    pub fn encode_message(&mut self, message: &LinkMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body_len = message.body_len();
        let length = (HEADER_LEN + body_len) as u64;
        let too_long = FrameError::TooLong { length, max: self.max_frame_length };
        // Never send what the peer would refuse: the caller gets the error, the link stays up.
        if length > self.max_frame_length as u64 {
            return Err(too_long);
        }
        let wire_body_len = u32::try_from(body_len).map_err(|_| too_long)?;
        dst.reserve(HEADER_LEN + body_len);
        dst.put_u16(MAGIC);
        dst.put_u8(FRAME_VERSION);
        dst.put_u8(message.class() as u8);
        dst.put_u32(message.invoke_id());
        dst.put_u32(wire_body_len);
        message.encode_body(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
