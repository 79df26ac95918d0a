//! Criterion benchmark of the PBX link codec: decode and encode throughput of a realistic stream, against prost alone.
//!
//! Every benchmark runs over the same stream, so the codec's time per frame divided by the
//! prost-only baseline's is the cost of the framing. See `BENCHMARKS.md` at the repository root for
//! the figures and how to reproduce them.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use proto::pbx::{self, event_report, request, response};
use proto::wire::{FrameClass, HEADER_LEN, LinkCodec, LinkMessage};
use tokio_util::codec::Decoder;

/// Calls in the generated stream; each contributes eleven or thirteen frames.
const CALLS: u32 = 1_000;
/// The size of the pieces the chunked variant feeds the decoder, like TCP segments on an Ethernet link.
const CHUNK: usize = 1_500;

fn connection(call_id: &str, device_id: &str) -> Option<pbx::ConnectionId> {
    Some(pbx::ConnectionId { call_id: call_id.to_owned(), device_id: device_id.to_owned() })
}

/// Builds the event stream a gateway sees during an afternoon of inbound ACD traffic.
///
/// Each call comes from an outside number through queue 6000 to an agent station, rings, is
/// answered, is held and retrieved by the agent's desktop (so a request and its result travel
/// with the events), and is cleared. Every fifth call also carries a heartbeat exchange, which
/// is what an idle link is made of. The ids are shaped like the simulator's: call ids `C<n>`,
/// four-digit stations, E.164 outside numbers, and sequence numbers and timestamps of a link
/// that has been up for a while.
fn event_stream() -> Vec<LinkMessage> {
    let mut link = Link { messages: Vec::new(), sequence: 1_204_331, timestamp_ms: 1_764_000_000_000 };
    let mut invoke_id = 88_000_u32;
    for n in 0..CALLS {
        let call = format!("C{}", 310_000 + n);
        let caller = format!("+49301234{:04}", (n * 7_919) % 10_000);
        let station = (2001 + n % 150).to_string();
        let agent_monitor = 10 + n % 150;
        let queue_monitor = 3;
        let both = vec![queue_monitor, agent_monitor];

        link.event(
            both.clone(),
            pbx::EventCause::AcdDistribution,
            event_report::Event::Delivered(pbx::DeliveredEvent {
                alerting: connection(&call, &station),
                calling_device: caller.clone(),
                called_device: "6000".into(),
                last_redirection_device: "6000".into(),
            }),
        );
        link.event(
            both.clone(),
            pbx::EventCause::NewCall,
            event_report::Event::Established(pbx::EstablishedEvent {
                answering: connection(&call, &station),
                calling_device: caller.clone(),
                called_device: "6000".into(),
                // Left empty so the stream is the one BENCHMARKS.md measured.
                recording_url: String::new(),
            }),
        );

        invoke_id += 1;
        link.messages.push(LinkMessage::Request {
            invoke_id,
            body: pbx::Request {
                service: Some(request::Service::HoldCall(pbx::HoldCallRequest {
                    connection: connection(&call, &station),
                })),
            },
        });
        link.event(
            vec![agent_monitor],
            pbx::EventCause::Unspecified,
            event_report::Event::Held(pbx::HeldEvent { held: connection(&call, &station) }),
        );
        link.messages.push(LinkMessage::Result {
            invoke_id,
            body: pbx::Response { result: Some(response::Result::HoldCall(pbx::Empty {})) },
        });

        invoke_id += 1;
        link.messages.push(LinkMessage::Request {
            invoke_id,
            body: pbx::Request {
                service: Some(request::Service::RetrieveCall(pbx::RetrieveCallRequest {
                    connection: connection(&call, &station),
                })),
            },
        });
        link.event(
            vec![agent_monitor],
            pbx::EventCause::Unspecified,
            event_report::Event::Retrieved(pbx::RetrievedEvent { retrieved: connection(&call, &station) }),
        );
        link.messages.push(LinkMessage::Result {
            invoke_id,
            body: pbx::Response { result: Some(response::Result::RetrieveCall(pbx::Empty {})) },
        });

        link.event(
            both.clone(),
            pbx::EventCause::NormalClearing,
            event_report::Event::ConnectionCleared(pbx::ConnectionClearedEvent { dropped: connection(&call, &caller) }),
        );
        link.event(
            both.clone(),
            pbx::EventCause::NormalClearing,
            event_report::Event::ConnectionCleared(pbx::ConnectionClearedEvent {
                dropped: connection(&call, &station),
            }),
        );
        link.event(
            both,
            pbx::EventCause::NormalClearing,
            event_report::Event::CallCleared(pbx::CallClearedEvent { call_id: call }),
        );

        if n % 5 == 0 {
            invoke_id += 1;
            link.messages.push(LinkMessage::Request {
                invoke_id,
                body: pbx::Request { service: Some(request::Service::Heartbeat(pbx::HeartbeatRequest {})) },
            });
            link.messages.push(LinkMessage::Result {
                invoke_id,
                body: pbx::Response {
                    result: Some(response::Result::Heartbeat(pbx::HeartbeatResult {
                        timestamp_ms: link.timestamp_ms,
                        last_event_sequence: link.sequence,
                    })),
                },
            });
        }
    }
    link.messages
}

/// The stream being built, with the counters every event report carries.
struct Link {
    messages: Vec<LinkMessage>,
    sequence: u64,
    timestamp_ms: u64,
}

impl Link {
    fn event(&mut self, monitor_ids: Vec<u32>, cause: pbx::EventCause, event: event_report::Event) {
        self.sequence += 1;
        self.timestamp_ms += 37;
        self.messages.push(LinkMessage::Event(pbx::EventReport {
            sequence: self.sequence,
            timestamp_ms: self.timestamp_ms,
            monitor_ids,
            cause: cause as i32,
            event: Some(event),
            // Without the linkage id, so the stream stays the one BENCHMARKS.md describes; it
            // would add about ten bytes to a frame of a call.
            call_linkage_id: String::new(),
        }));
    }
}

/// The stream under test in its three shapes: the messages, their framed bytes, and each
/// frame's bare protobuf body with its class (what the prost-only baseline decodes).
struct Fixture {
    messages: Vec<LinkMessage>,
    wire: Vec<u8>,
    bodies: Vec<(FrameClass, Vec<u8>)>,
}

impl Fixture {
    fn new() -> Self {
        let messages = event_stream();
        let mut codec = LinkCodec::default();
        let mut wire = BytesMut::new();
        let mut bodies = Vec::with_capacity(messages.len());
        for message in &messages {
            let start = wire.len();
            codec.encode_message(message, &mut wire).expect("every benchmark frame fits the default limit");
            bodies.push((message.class(), wire[start + HEADER_LEN..].to_vec()));
        }
        let fixture = Self { messages, wire: wire.to_vec(), bodies };
        fixture.check();
        fixture
    }

    fn frames(&self) -> u64 {
        self.messages.len() as u64
    }

    fn body_bytes(&self) -> u64 {
        self.bodies.iter().map(|(_, body)| body.len() as u64).sum()
    }

    /// Proves once, outside the timed loops, that every variant reads back the stream it was
    /// given; a benchmark of a decoder that silently drops frames would measure nothing.
    fn check(&self) {
        let mut one_buffer = BytesMut::from(&self.wire[..]);
        assert_eq!(decode_all(&mut LinkCodec::default(), &mut one_buffer), self.messages);
        assert_eq!(decode_chunked(&self.wire), self.messages);
        let bare: Vec<LinkMessage> = self.bodies.iter().map(|(class, body)| decode_bare(*class, body)).collect();
        let headless: Vec<LinkMessage> = self.messages.iter().map(without_invoke_id).collect();
        assert_eq!(bare, headless);
    }
}

fn decode_all(codec: &mut LinkCodec, buffer: &mut BytesMut) -> Vec<LinkMessage> {
    let mut messages = Vec::new();
    while let Some(message) = codec.decode(buffer).expect("the benchmark stream is well formed") {
        messages.push(message);
    }
    messages
}

/// Decodes the way `Framed` does over a socket: append what arrived, then take every whole frame.
fn decode_chunked(wire: &[u8]) -> Vec<LinkMessage> {
    let mut codec = LinkCodec::default();
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    let mut messages = Vec::new();
    for chunk in wire.chunks(CHUNK) {
        buffer.extend_from_slice(chunk);
        messages.extend(decode_all(&mut codec, &mut buffer));
    }
    assert!(buffer.is_empty(), "the stream ends on a frame boundary");
    messages
}

/// Decodes a body with prost alone, wrapped as the codec would so the results compare equal.
fn decode_bare(class: FrameClass, body: &[u8]) -> LinkMessage {
    // The invoke id lives in the header, which the baseline never sees.
    let invoke_id = 0;
    let message = match class {
        FrameClass::Request => pbx::Request::decode(body).map(|body| LinkMessage::Request { invoke_id, body }),
        FrameClass::Result => pbx::Response::decode(body).map(|body| LinkMessage::Result { invoke_id, body }),
        FrameClass::Error => pbx::ErrorResponse::decode(body).map(|body| LinkMessage::Error { invoke_id, body }),
        FrameClass::Event => pbx::EventReport::decode(body).map(LinkMessage::Event),
    };
    message.expect("the benchmark bodies are well formed")
}

/// The message as the prost-only baseline reads it back: everything but the header's invoke id.
fn without_invoke_id(message: &LinkMessage) -> LinkMessage {
    let mut message = message.clone();
    match &mut message {
        LinkMessage::Request { invoke_id, .. }
        | LinkMessage::Result { invoke_id, .. }
        | LinkMessage::Error { invoke_id, .. } => *invoke_id = 0,
        LinkMessage::Event(_) => {}
    }
    message
}

fn prost_decode(bodies: &[(FrameClass, Vec<u8>)]) {
    for (class, body) in bodies {
        // Each arm decodes the typed body and nothing else, so the baseline pays for no
        // wrapping that the codec does not also do.
        match class {
            FrameClass::Request => drop(black_box(pbx::Request::decode(&body[..]).expect("well formed"))),
            FrameClass::Result => drop(black_box(pbx::Response::decode(&body[..]).expect("well formed"))),
            FrameClass::Error => drop(black_box(pbx::ErrorResponse::decode(&body[..]).expect("well formed"))),
            FrameClass::Event => drop(black_box(pbx::EventReport::decode(&body[..]).expect("well formed"))),
        }
    }
}

fn codec_decode(codec: &mut LinkCodec, buffer: &mut BytesMut) {
    while let Some(message) = codec.decode(buffer).expect("well formed") {
        drop(black_box(message));
    }
}

fn codec_decode_chunked(wire: &[u8], codec: &mut LinkCodec, buffer: &mut BytesMut) {
    for chunk in wire.chunks(CHUNK) {
        buffer.extend_from_slice(chunk);
        codec_decode(codec, buffer);
    }
}

fn prost_encode(messages: &[LinkMessage], out: &mut Vec<u8>) {
    out.clear();
    for message in messages {
        let encoded = match message {
            LinkMessage::Request { body, .. } => body.encode(out),
            LinkMessage::Result { body, .. } => body.encode(out),
            LinkMessage::Error { body, .. } => body.encode(out),
            LinkMessage::Event(body) => body.encode(out),
        };
        encoded.expect("a Vec grows as needed");
    }
}

fn codec_encode(codec: &mut LinkCodec, messages: &[LinkMessage], out: &mut BytesMut) {
    out.clear();
    for message in messages {
        codec.encode_message(message, out).expect("every benchmark frame fits the default limit");
    }
}

/// Registers the six variants in one group; `throughput` says, given the prost-only flag,
/// what one iteration (the whole stream) counts as.
fn variants(c: &mut Criterion, fixture: &Fixture, group_name: &str, throughput: impl Fn(bool) -> Throughput) {
    let mut group = c.benchmark_group(group_name);

    group.throughput(throughput(true));
    group.bench_function("decode/prost_only", |b| b.iter(|| prost_decode(&fixture.bodies)));

    group.throughput(throughput(false));
    // The copy of the stream into a fresh buffer is setup, not measured: it stands for the socket
    // read, which the codec does not do.
    group.bench_function("decode/codec_one_buffer", |b| {
        b.iter_batched(
            || (LinkCodec::default(), BytesMut::from(&fixture.wire[..])),
            |(mut codec, mut buffer)| codec_decode(&mut codec, &mut buffer),
            BatchSize::LargeInput,
        );
    });
    // Here the append of each chunk is measured, as it is part of what `Framed` does per read.
    group.bench_function("decode/codec_1500b_chunks", |b| {
        b.iter_batched(
            || (LinkCodec::default(), BytesMut::with_capacity(8 * 1024)),
            |(mut codec, mut buffer)| codec_decode_chunked(&fixture.wire, &mut codec, &mut buffer),
            BatchSize::LargeInput,
        );
    });

    group.throughput(throughput(true));
    let mut prost_out = Vec::with_capacity(fixture.wire.len());
    group.bench_function("encode/prost_only", |b| b.iter(|| prost_encode(&fixture.messages, &mut prost_out)));

    group.throughput(throughput(false));
    let mut codec = LinkCodec::default();
    let mut codec_out = BytesMut::with_capacity(fixture.wire.len());
    group.bench_function("encode/codec", |b| b.iter(|| codec_encode(&mut codec, &fixture.messages, &mut codec_out)));

    group.finish();
}

fn bench(c: &mut Criterion) {
    let fixture = Fixture::new();
    let frames = fixture.frames();
    let wire_bytes = fixture.wire.len() as u64;
    let body_bytes = fixture.body_bytes();
    // Printing the stream's shape is the point here: BENCHMARKS.md quotes it.
    #[allow(clippy::print_stderr, reason = "a benchmark reports its input on the terminal")]
    {
        eprintln!(
            "pbx link stream: {frames} frames, {wire_bytes} wire bytes ({:.1} per frame), {body_bytes} body bytes",
            wire_bytes as f64 / frames as f64,
        );
    }

    // Frames per second: the same count for every variant, so their ratios are the framing's cost.
    variants(c, &fixture, "pbx_link_frames", |_| Throughput::Elements(frames));
    // Bytes per second: each variant is credited with the bytes it reads or writes, the header
    // included for the codec and not for prost alone.
    variants(c, &fixture, "pbx_link_bytes", |prost_only| {
        Throughput::Bytes(if prost_only { body_bytes } else { wire_bytes })
    });
}

criterion_group! {
    name = benches;
    // Small samples and short windows keep the whole run near a minute on a two-core machine.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
