//! Fuzz target for `LinkCodec`'s decoder: any bytes in any chunking never panic, and what decodes round-trips.
//!
//! The first byte of the input chooses how the rest is cut into reads, the second the codec's frame
//! limit, and the remainder is the stream. Each input checks three things:
//!
//! 1. decoding never panics, whatever the bytes and the limit;
//! 2. the stream fed in the chosen pieces gives the same frames, and the same error, as the stream
//!    fed in one piece (the codec promises that any split yields the same frames);
//! 3. every frame that decodes re-encodes, the encoding decodes to the same frame, and encoding
//!    that again gives the same bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::wire::{DEFAULT_MAX_FRAME_LENGTH, FrameError, LinkCodec, LinkMessage};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let [chunking, limit, stream @ ..] = data else {
        return;
    };
    let max_frame_length = frame_limit(*limit);

    let whole = decode_stream(max_frame_length, stream, &[stream.len()]);
    let pieces = decode_stream(max_frame_length, stream, &chunk_sizes(*chunking, stream.len()));
    assert_eq!(whole, pieces, "the same stream split differently decoded differently");

    for message in &whole.messages {
        round_trip(message);
    }
});

/// What a decoder made of a stream: the frames before the first error, and that error's text.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<LinkMessage>,
    error: Option<String>,
}

/// Half the limit bytes leave the default, so most inputs exercise whole frames; the other half
/// set limits from below the header's size (which the codec raises) to 2 KiB, to reach the
/// refusal of long frames with inputs the fuzzer can actually grow.
fn frame_limit(byte: u8) -> usize {
    match byte {
        0..=127 => DEFAULT_MAX_FRAME_LENGTH,
        _ => usize::from(byte - 128) * 16,
    }
}

/// Cuts `len` bytes into reads. A zero byte feeds the stream in one read; any other byte seeds a
/// small generator of read sizes between one and the byte's value, so single bytes, header-sized
/// pieces and pieces spanning frames all turn up.
fn chunk_sizes(byte: u8, len: usize) -> Vec<usize> {
    if byte == 0 {
        return vec![len];
    }
    let mut state = u32::from(byte);
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < len {
        // A linear congruential step (Numerical Recipes' constants): cheap, and deterministic, so a
        // crash reproduces from its input alone.
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let size = 1 + (state >> 16) as usize % usize::from(byte);
        sizes.push(size);
        total += size;
    }
    sizes
}

/// Decodes `stream` the way `Framed` reads a socket: append each read, take every whole frame,
/// and at the end of the stream ask for what is left; stop at the first error, since after one the
/// link is closed.
fn decode_stream(max_frame_length: usize, stream: &[u8], sizes: &[usize]) -> Outcome {
    let mut codec = LinkCodec::new(max_frame_length);
    let mut buffer = BytesMut::new();
    let mut messages = Vec::new();
    let mut rest = stream;
    for &size in sizes {
        let (read, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        buffer.extend_from_slice(read);
        if let Err(error) = take_frames(&mut messages, || codec.decode(&mut buffer)) {
            return Outcome { messages, error: Some(error.to_string()) };
        }
    }
    let error = take_frames(&mut messages, || codec.decode_eof(&mut buffer)).err().map(|error| error.to_string());
    if error.is_none() {
        assert!(buffer.is_empty(), "a clean end of stream left {} bytes unread", buffer.len());
    }
    Outcome { messages, error }
}

fn take_frames(
    messages: &mut Vec<LinkMessage>,
    mut next: impl FnMut() -> Result<Option<LinkMessage>, FrameError>,
) -> Result<(), FrameError> {
    while let Some(message) = next()? {
        messages.push(message);
    }
    Ok(())
}

/// Re-encodes a decoded frame and checks it survives. The codec here has no practical limit: a
/// body that came in non-canonical protobuf (unpacked repeated fields, five-byte negative enums)
/// can legitimately grow when re-encoded, and the limit is not what this checks.
fn round_trip(message: &LinkMessage) {
    let mut codec = LinkCodec::new(usize::MAX);
    let mut first = BytesMut::new();
    codec.encode_message(message, &mut first).expect("a decoded frame re-encodes");
    let encoded = first.clone();

    let again = codec.decode(&mut first).expect("a re-encoded frame decodes").expect("a re-encoded frame is whole");
    assert!(first.is_empty(), "a re-encoded frame decoded with {} bytes to spare", first.len());
    assert_eq!(&again, message, "a frame changed on its way through encode and decode");

    let mut second = BytesMut::new();
    codec.encode_message(&again, &mut second).expect("a decoded frame re-encodes");
    assert_eq!(second, encoded, "encoding is not stable across a round trip");
}
