//! Codec properties: identity, any chunking, garbage never panics, and every malformed frame's error.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::{LinkCodec, LinkMessage};
use crate::pbx::{self, event_report, request, response};
use crate::wire::{FRAME_VERSION, FrameError, HEADER_LEN, MAGIC};

fn connection(call: &str, device: &str) -> Option<pbx::ConnectionId> {
    Some(pbx::ConnectionId { call_id: call.to_owned(), device_id: device.to_owned() })
}

/// One message of every class, with bodies of several services.
fn sample_messages() -> Vec<LinkMessage> {
    vec![
        LinkMessage::Request {
            invoke_id: 1,
            body: pbx::Request {
                service: Some(request::Service::Register(pbx::RegisterRequest {
                    user: "switchboard".into(),
                    password: "secret".into(),
                    protocol_version: 1,
                    client_name: "test".into(),
                    heartbeat_interval_ms: 5_000,
                    max_frame_length: 65_536,
                })),
            },
        },
        LinkMessage::Result {
            invoke_id: 1,
            body: pbx::Response {
                result: Some(response::Result::Register(pbx::RegisterResult {
                    pbx_name: "sim".into(),
                    protocol_version: 1,
                    services: vec!["hold_call".into(), "park_call".into()],
                    heartbeat_interval_ms: 5_000,
                    max_frame_length: 65_536,
                    next_event_sequence: 1,
                })),
            },
        },
        LinkMessage::Request {
            invoke_id: u32::MAX,
            body: pbx::Request {
                service: Some(request::Service::HoldCall(pbx::HoldCallRequest {
                    connection: connection("C1", "2001"),
                })),
            },
        },
        LinkMessage::Result {
            invoke_id: 7,
            body: pbx::Response { result: Some(response::Result::HoldCall(pbx::Empty {})) },
        },
        // A page of a snapshot too large for one frame: more pages follow with the same invoke id.
        LinkMessage::Result {
            invoke_id: 9,
            body: pbx::Response {
                result: Some(response::Result::SnapshotDevice(pbx::SnapshotDeviceResult {
                    device: Some(pbx::DeviceInfo {
                        device_id: "6000".into(),
                        kind: pbx::DeviceKind::AcdQueue as i32,
                        name: "ACD queue 6000".into(),
                    }),
                    agent: None,
                    calls: vec![pbx::CallSnapshot { call_id: "C1".into(), ..Default::default() }],
                    more: true,
                })),
            },
        },
        LinkMessage::Error {
            invoke_id: 8,
            body: pbx::ErrorResponse {
                cause: pbx::ErrorCause::InvalidObjectState as i32,
                message: "connection C1/2001 is alerting, not connected".into(),
            },
        },
        LinkMessage::Event(pbx::EventReport {
            sequence: 42,
            timestamp_ms: 1_764_000_000_000,
            monitor_ids: vec![3, 4],
            cause: pbx::EventCause::Transfer as i32,
            call_linkage_id: "C1".into(),
            event: Some(event_report::Event::Transferred(pbx::TransferredEvent {
                primary_old_call: "C1".into(),
                secondary_old_call: "C2".into(),
                transferring_device: "2001".into(),
                transferred_to_device: "2002".into(),
                new_call_id: "C3".into(),
                connections: vec![pbx::ConnectionPair {
                    old_connection: connection("C1", "+4930123"),
                    new_connection: connection("C3", "+4930123"),
                }],
            })),
        }),
        // An empty body is a valid (if useless) request: the receiver answers it with an error.
        LinkMessage::Request { invoke_id: 9, body: pbx::Request { service: None } },
    ]
}

fn encode_all(messages: &[LinkMessage]) -> BytesMut {
    let mut codec = LinkCodec::default();
    let mut bytes = BytesMut::new();
    for message in messages {
        codec.encode_message(message, &mut bytes).expect("sample messages fit the default limit");
    }
    bytes
}

/// Decodes what `buffer` holds; checks on the way that [`LinkCodec::has_frame`] foretells each
/// decode: a frame or an error exactly when it says so.
fn decode_buffered(
    codec: &mut LinkCodec,
    buffer: &mut BytesMut,
    decoded: &mut Vec<LinkMessage>,
) -> Result<(), FrameError> {
    loop {
        let foretold = codec.has_frame(buffer);
        match codec.decode(buffer) {
            Ok(Some(message)) => {
                assert!(foretold, "a frame was decoded that has_frame did not see");
                decoded.push(message);
            }
            Ok(None) => {
                assert!(!foretold, "has_frame saw a frame that was not there");
                return Ok(());
            }
            Err(error) => {
                assert!(foretold, "an error was found that has_frame did not see: {error}");
                return Err(error);
            }
        }
    }
}

/// Feeds `stream` to a fresh decoder in the given chunk sizes (cycled), then signals end of stream.
fn decode_in_chunks(stream: &[u8], chunk_sizes: &[usize]) -> Result<Vec<LinkMessage>, FrameError> {
    let mut codec = LinkCodec::default();
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    let mut rest = stream;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let take = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buffer.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        decode_buffered(&mut codec, &mut buffer, &mut decoded)?;
    }
    while let Some(message) = codec.decode_eof(&mut buffer)? {
        decoded.push(message);
    }
    Ok(decoded)
}

fn header(magic: u16, version: u8, class: u8, invoke_id: u32, body_len: u32) -> BytesMut {
    let mut bytes = BytesMut::new();
    bytes.put_u16(magic);
    bytes.put_u8(version);
    bytes.put_u8(class);
    bytes.put_u32(invoke_id);
    bytes.put_u32(body_len);
    bytes
}

#[test]
fn encode_then_decode_is_identity() {
    let messages = sample_messages();
    let stream = encode_all(&messages);
    assert_eq!(decode_in_chunks(&stream, &[stream.len()]).unwrap(), messages);
}

#[test]
fn every_single_split_point_yields_the_same_frames() {
    let messages = sample_messages();
    let stream = encode_all(&messages);
    for split in 1..stream.len() {
        let mut codec = LinkCodec::default();
        let mut buffer = BytesMut::from(&stream[..split]);
        let mut decoded = Vec::new();
        decode_buffered(&mut codec, &mut buffer, &mut decoded).unwrap();
        buffer.extend_from_slice(&stream[split..]);
        while let Some(message) = codec.decode_eof(&mut buffer).unwrap() {
            decoded.push(message);
        }
        assert_eq!(decoded, messages, "split at byte {split}");
    }
}

#[test]
fn byte_at_a_time_yields_the_same_frames() {
    let messages = sample_messages();
    let stream = encode_all(&messages);
    assert_eq!(decode_in_chunks(&stream, &[1]).unwrap(), messages);
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    let mut codec = LinkCodec::new(1024);
    let mut buffer = header(MAGIC, FRAME_VERSION, 4, 0, u32::MAX);
    let capacity_before = buffer.capacity();
    let error = codec.decode(&mut buffer).unwrap_err();
    assert!(
        matches!(error, FrameError::TooLong { length, max: 1024 } if length == HEADER_LEN as u64 + u64::from(u32::MAX))
    );
    assert_eq!(error.kind(), "too_long");
    assert_eq!(buffer.capacity(), capacity_before, "no room was reserved for the refused body");
}

#[test]
fn a_frame_exactly_at_the_limit_is_accepted() {
    let message = LinkMessage::Error { invoke_id: 1, body: pbx::ErrorResponse { cause: 1, message: "x".repeat(100) } };
    let mut exact = BytesMut::new();
    LinkCodec::default().encode_message(&message, &mut exact).unwrap();
    let mut codec = LinkCodec::new(exact.len());
    assert_eq!(codec.decode(&mut exact.clone()).unwrap(), Some(message.clone()));
    let mut smaller = LinkCodec::new(exact.len() - 1);
    assert!(matches!(smaller.decode(&mut exact.clone()), Err(FrameError::TooLong { .. })));
    assert!(matches!(smaller.encode_message(&message, &mut BytesMut::new()), Err(FrameError::TooLong { .. })));
}

#[test]
fn bad_magic_is_refused_from_the_first_two_bytes() {
    let mut codec = LinkCodec::default();
    let mut buffer = BytesMut::from(&b"GE"[..]);
    let error = codec.decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::BadMagic { found: 0x4745 }));
    assert_eq!(error.to_string(), "bad magic 0x4745 (expected 0x5342): not a PBX link stream");
}

#[test]
fn unknown_version_and_class_are_refused() {
    let error = LinkCodec::default().decode(&mut header(MAGIC, 9, 1, 1, 0)).unwrap_err();
    assert!(matches!(error, FrameError::UnsupportedVersion { found: 9 }));
    let error = LinkCodec::default().decode(&mut header(MAGIC, FRAME_VERSION, 0, 1, 0)).unwrap_err();
    assert!(matches!(error, FrameError::UnknownClass { found: 0 }));
    let error = LinkCodec::default().decode(&mut header(MAGIC, FRAME_VERSION, 5, 1, 0)).unwrap_err();
    assert!(matches!(error, FrameError::UnknownClass { found: 5 }));
}

#[test]
fn undecodable_body_names_its_class() {
    let mut buffer = header(MAGIC, FRAME_VERSION, 4, 0, 3);
    // Field 1 as a length-delimited string with a length running past the end.
    buffer.extend_from_slice(&[0x0a, 0x7f, 0x00]);
    let error = LinkCodec::default().decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::Body { class: crate::wire::FrameClass::Event, .. }), "{error}");
    assert_eq!(error.kind(), "bad_body");
}

#[test]
fn end_of_stream_mid_frame_is_truncation() {
    let stream = encode_all(&sample_messages()[..1]);
    for cut in 1..stream.len() {
        let mut codec = LinkCodec::default();
        let mut buffer = BytesMut::from(&stream[..cut]);
        let mut outcome = codec.decode(&mut buffer).unwrap();
        assert_eq!(outcome, None);
        let error = codec.decode_eof(&mut buffer).unwrap_err();
        assert!(matches!(error, FrameError::Truncated { buffered } if buffered == cut), "cut at {cut}: {error}");
        outcome = codec.decode_eof(&mut BytesMut::new()).ok().flatten();
        assert_eq!(outcome, None);
    }
}

#[test]
fn clean_end_of_stream_is_no_error() {
    assert_eq!(LinkCodec::default().decode_eof(&mut BytesMut::new()).unwrap(), None);
}

/// Strategies that produce messages of every class with varied contents.
fn arbitrary_connection() -> impl Strategy<Value = Option<pbx::ConnectionId>> {
    ("[A-Z][0-9]{1,8}", "[+0-9]{1,16}").prop_map(|(call, device)| connection(&call, &device))
}

fn arbitrary_message() -> impl Strategy<Value = LinkMessage> {
    prop_oneof![
        (any::<u32>(), arbitrary_connection()).prop_map(|(invoke_id, connection)| LinkMessage::Request {
            invoke_id,
            body: pbx::Request { service: Some(request::Service::AnswerCall(pbx::AnswerCallRequest { connection })) },
        }),
        (any::<u32>(), "[0-9]{1,6}", ".{0,40}").prop_map(|(invoke_id, device, number)| LinkMessage::Request {
            invoke_id,
            body: pbx::Request {
                service: Some(request::Service::MakeCall(pbx::MakeCallRequest {
                    calling_device: device,
                    called_number: number,
                })),
            },
        }),
        (any::<u32>(), "[0-9]{0,6}").prop_map(|(invoke_id, park_id)| LinkMessage::Result {
            invoke_id,
            body: pbx::Response {
                result: Some(response::Result::ParkCall(pbx::ParkCallResult { park_id, parked: None })),
            },
        }),
        (any::<u32>(), 0..15i32, ".{0,200}").prop_map(|(invoke_id, cause, message)| LinkMessage::Error {
            invoke_id,
            body: pbx::ErrorResponse { cause, message },
        }),
        (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u32>(), 0..4), arbitrary_connection()).prop_map(
            |(sequence, timestamp_ms, monitor_ids, alerting)| {
                LinkMessage::Event(pbx::EventReport {
                    sequence,
                    timestamp_ms,
                    monitor_ids,
                    cause: pbx::EventCause::AcdDistribution as i32,
                    call_linkage_id: alerting.as_ref().map(|connection| connection.call_id.clone()).unwrap_or_default(),
                    event: Some(event_report::Event::Delivered(pbx::DeliveredEvent {
                        alerting,
                        calling_device: "+4930123456".into(),
                        called_device: "6000".into(),
                        last_redirection_device: "6000".into(),
                    })),
                })
            }
        ),
    ]
}

proptest! {
    #[test]
    fn any_chunking_of_a_valid_stream_yields_the_same_frames(
        messages in proptest::collection::vec(arbitrary_message(), 1..20),
        chunk_sizes in proptest::collection::vec(1usize..64, 1..16),
    ) {
        let stream = encode_all(&messages);
        prop_assert_eq!(decode_in_chunks(&stream, &chunk_sizes).unwrap(), messages);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        chunk_sizes in proptest::collection::vec(1usize..32, 1..8),
    ) {
        // Any outcome but a panic is fine; an error must say which kind it is.
        if let Err(error) = decode_in_chunks(&bytes, &chunk_sizes) {
            prop_assert!(FrameError::KINDS.contains(&error.kind()));
        }
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(
        class in 1u8..=4,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut stream = header(MAGIC, FRAME_VERSION, class, 1, body.len() as u32);
        stream.extend_from_slice(&body);
        match decode_in_chunks(&stream, &[7]) {
            Ok(frames) => prop_assert_eq!(frames.len(), 1),
            Err(error) => prop_assert!(matches!(error, FrameError::Body { .. }), "{}", error),
        }
    }
}
