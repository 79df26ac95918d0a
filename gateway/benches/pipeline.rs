//! PBX events per second through the whole inbound path: decode, translate, route, and the line
//! and call actors; beside a baseline of decode plus one bare channel hop, in the same run.
//!
//! The stream is 2,000 inbound calls over 1,000 lines, seven events each (delivered, established,
//! held, retrieved, two connections cleared, call cleared): 14,000 events. An iteration ends when
//! the model has ended every call (so every event was applied and every call log record written).
//!
//! Everything runs as tasks on the runtime's two workers. The baseline: a producer decodes and
//! sends each event through a channel to a task that counts them. The pipeline, as the gateway
//! runs it: the link task decodes and sends the events of the frames it reads in a row as one burst
//! (`gateway::pbx::event_channel`), the feed task translates and routes what has arrived, and the
//! actors apply it. `block_on`'s thread only waits for the iteration to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::port::{PbxCommand, PbxOutcome, PbxPort, PortError};
use actors::runtime::{self, ModelConfig, ModelInput, ModelStats};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::bridge::{Directory, Translator};
use gateway::pbx::LinkEvent;
use proto::pbx::{self, EventCause, event_report::Event};
use proto::wire::{LinkCodec, LinkMessage};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

// The switchboard binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const LINES: usize = 1_000;
const CALLS: usize = 2_000;
/// Events routed together at most, as the gateway's feed does.
const BATCH: usize = 1_024;
/// Frames the link reads in a row, and so events in one burst (one turn of its reading).
const FRAMES_PER_TURN: usize = 64;

/// Nothing in the event path asks anything of the PBX; a benchmark needs no link.
struct NoPbx;

impl PbxPort for NoPbx {
    async fn execute(&self, _command: PbxCommand) -> Result<PbxOutcome, PortError> {
        Err(PortError::Unavailable("no pbx in the benchmark".to_owned()))
    }
}

fn connection(call: &str, device: &str) -> Option<pbx::ConnectionId> {
    Some(pbx::ConnectionId { call_id: call.to_owned(), device_id: device.to_owned() })
}

/// The wire bytes of the event stream; each run uses fresh call ids, so runs never collide.
fn stream(run: usize) -> (BytesMut, usize) {
    let mut codec = LinkCodec::default();
    let mut bytes = BytesMut::new();
    let mut sequence = 1;
    let mut count = 0;
    let mut push = |cause: EventCause, event: Event, linkage: &str, bytes: &mut BytesMut| {
        let report = pbx::EventReport {
            sequence,
            timestamp_ms: 1_764_000_000_000 + sequence,
            monitor_ids: vec![1],
            cause: cause as i32,
            event: Some(event),
            call_linkage_id: linkage.to_owned(),
        };
        sequence += 1;
        count += 1;
        codec.encode_message(&LinkMessage::Event(report), bytes).expect("events fit a frame");
    };
    for index in 0..CALLS {
        let call = format!("C{run}x{index}");
        let line = format!("{}", 100_000 + index % LINES);
        let caller = format!("+4930{:07}", index);
        let delivered = pbx::DeliveredEvent {
            alerting: connection(&call, &line),
            calling_device: caller.clone(),
            called_device: "6000".into(),
            last_redirection_device: "6000".into(),
        };
        push(EventCause::AcdDistribution, Event::Delivered(delivered), &call, &mut bytes);
        let established = pbx::EstablishedEvent {
            answering: connection(&call, &line),
            calling_device: caller.clone(),
            called_device: "6000".into(),
            recording_url: format!("https://recordings.example/{call}.wav"),
        };
        push(EventCause::NewCall, Event::Established(established), &call, &mut bytes);
        push(
            EventCause::KeyOperation,
            Event::Held(pbx::HeldEvent { held: connection(&call, &line) }),
            &call,
            &mut bytes,
        );
        let retrieved = pbx::RetrievedEvent { retrieved: connection(&call, &line) };
        push(EventCause::KeyOperation, Event::Retrieved(retrieved), &call, &mut bytes);
        for device in [&caller, &line] {
            let cleared = pbx::ConnectionClearedEvent { dropped: connection(&call, device) };
            push(EventCause::NormalClearing, Event::ConnectionCleared(cleared), &call, &mut bytes);
        }
        push(
            EventCause::NormalClearing,
            Event::CallCleared(pbx::CallClearedEvent { call_id: call.clone() }),
            &call,
            &mut bytes,
        );
    }
    (bytes, count)
}

/// Teaches the translator the lines and the queue, as the resync would.
fn directory_snapshots() -> Vec<LinkEvent> {
    let mut snapshots: Vec<LinkEvent> = (0..LINES)
        .map(|index| LinkEvent::Snapshot {
            session: 1,
            snapshot: pbx::SnapshotDeviceResult {
                device: Some(pbx::DeviceInfo {
                    device_id: format!("{}", 100_000 + index),
                    kind: pbx::DeviceKind::Station as i32,
                    name: String::new(),
                }),
                agent: Some(pbx::AgentInfo {
                    state: pbx::AgentState::Ready as i32,
                    agent_id: format!("A{index}"),
                    ..Default::default()
                }),
                calls: Vec::new(),
                more: false,
            },
        })
        .collect();
    snapshots.push(LinkEvent::Snapshot {
        session: 1,
        snapshot: pbx::SnapshotDeviceResult {
            device: Some(pbx::DeviceInfo {
                device_id: "6000".into(),
                kind: pbx::DeviceKind::AcdQueue as i32,
                name: String::new(),
            }),
            agent: None,
            calls: Vec::new(),
            more: false,
        },
    });
    snapshots.push(LinkEvent::ResyncComplete { session: 1, devices: LINES + 1 });
    snapshots
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_, events_per_run) = stream(0);
    let mut group = c.benchmark_group("pbx_events");
    group.throughput(Throughput::Elements(events_per_run as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    group.bench_function("baseline: decode + channel hop", |bench| {
        bench.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for run in 0..iterations as usize {
                    let (mut bytes, count) = stream(run);
                    let (sender, mut receiver) = mpsc::channel::<LinkMessage>(8_192);
                    let started = Instant::now();
                    let consumer = tokio::spawn(async move {
                        let mut seen = 0;
                        while receiver.recv().await.is_some() {
                            seen += 1;
                        }
                        seen
                    });
                    let producer = tokio::spawn(async move {
                        let mut codec = LinkCodec::default();
                        while let Some(message) = codec.decode(&mut bytes).unwrap() {
                            sender.send(message).await.unwrap();
                        }
                    });
                    producer.await.unwrap();
                    assert_eq!(consumer.await.unwrap(), count);
                    total += started.elapsed();
                }
                total
            })
        });
    });

    group.bench_function("decode + translate + route + actors", |bench| {
        bench.iter_custom(|iterations| {
            runtime.block_on(async {
                let (logs_tx, mut logs) = mpsc::channel(65_536);
                // Each note may be a call's last: the producer checks then whether every call ended.
                let noted = Arc::new(tokio::sync::Notify::new());
                let note = noted.clone();
                let drain = tokio::spawn(async move {
                    while logs.recv().await.is_some() {
                        note.notify_one();
                    }
                });
                let (model, mut router) =
                    runtime::start(ModelConfig::default(), Arc::new(NoPbx), logs_tx).await.unwrap();
                let mut translator = Translator::new(Directory::default());
                let mut inputs: Vec<ModelInput> = Vec::new();
                for event in directory_snapshots() {
                    translator.translate(event, &mut inputs);
                }
                router.route_all(&mut inputs).await;
                let watched = model.clone();
                let feed = tokio::spawn(async move {
                    let mut total = Duration::ZERO;
                    for run in 0..iterations as usize {
                        let (mut bytes, _) = stream(run + 1);
                        let ended_before = ModelStats::get(&watched.stats().calls_ended);
                        let started = Instant::now();
                        // As in the gateway: the link task decodes and sends the events of the
                        // frames it reads in a row (up to one turn, 64 frames) as one burst, and
                        // the feed task routes what has arrived, up to a bound, as one batch.
                        let (sender, mut events) = gateway::pbx::event_channel(128);
                        let link = tokio::spawn(async move {
                            let mut codec = LinkCodec::default();
                            let mut burst = Vec::with_capacity(FRAMES_PER_TURN);
                            while let Some(LinkMessage::Event(report)) = codec.decode(&mut bytes).unwrap() {
                                burst.push(LinkEvent::Event(report));
                                if burst.len() == FRAMES_PER_TURN {
                                    let full = std::mem::replace(&mut burst, Vec::with_capacity(FRAMES_PER_TURN));
                                    sender.send(full).await.unwrap();
                                }
                            }
                            if !burst.is_empty() {
                                sender.send(burst).await.unwrap();
                            }
                        });
                        while let Some(first) = events.recv().await {
                            translator.translate(first, &mut inputs);
                            let mut batched = 1;
                            while batched < BATCH {
                                let Some(next) = events.try_recv() else { break };
                                translator.translate(next, &mut inputs);
                                batched += 1;
                            }
                            router.route_all(&mut inputs).await;
                        }
                        link.await.unwrap();
                        // A call counts as ended just after its last note is sent: a note wakes
                        // this check, and a millisecond's timer catches the last call.
                        while ModelStats::get(&watched.stats().calls_ended) < ended_before + CALLS as u64 {
                            tokio::select! {
                                () = noted.notified() => {}
                                () = tokio::time::sleep(Duration::from_millis(1)) => {}
                            }
                        }
                        total += started.elapsed();
                    }
                    (total, router)
                });
                let (total, router) = feed.await.unwrap();
                model.shutdown().await;
                drop(router);
                drop(model);
                drain.abort();
                total
            })
        });
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
