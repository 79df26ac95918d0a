//! Baselines measured in the same run as the load, on the same machine at the same moment: a bare
//! decode of PBX link frames plus one channel hop (what the gateway's events per second compare
//! to), and an empty gRPC call (what its call-control latency compares to).

use std::time::Instant;

use bytes::BytesMut;
use proto::pbx::{self, EventCause, event_report::Event};
use proto::wire::{LinkCodec, LinkMessage};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use super::LoadError;
use super::desk::Timed;
use super::gateway::Api;

fn connection(call: &str, device: &str) -> Option<pbx::ConnectionId> {
    Some(pbx::ConnectionId { call_id: call.to_owned(), device_id: device.to_owned() })
}

/// The wire bytes of `calls` inbound calls of seven events each (delivered, established, held,
/// retrieved, two connections cleared, call cleared), shaped like the simulator's; and the count.
pub fn event_stream(calls: usize) -> Result<(BytesMut, u64), LoadError> {
    let mut codec = LinkCodec::default();
    let mut bytes = BytesMut::new();
    let mut sequence = 1_000_000;
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
        codec
            .encode_message(&LinkMessage::Event(report), bytes)
            .map_err(|error| LoadError::Baseline(format!("encoding an event: {error}")))
    };
    for index in 0..calls {
        let call = format!("C{}", 310_000 + index);
        let line = format!("{}", 2000 + index % 1000);
        let caller = format!("+4930{:07}", 1_234_567 + index);
        let delivered = pbx::DeliveredEvent {
            alerting: connection(&call, &line),
            calling_device: caller.clone(),
            called_device: "6000".into(),
            last_redirection_device: "6000".into(),
        };
        push(EventCause::AcdDistribution, Event::Delivered(delivered), &call, &mut bytes)?;
        let established = pbx::EstablishedEvent {
            answering: connection(&call, &line),
            calling_device: caller.clone(),
            called_device: "6000".into(),
            recording_url: format!("https://recordings.example/{call}.wav"),
        };
        push(EventCause::NewCall, Event::Established(established), &call, &mut bytes)?;
        push(
            EventCause::KeyOperation,
            Event::Held(pbx::HeldEvent { held: connection(&call, &line) }),
            &call,
            &mut bytes,
        )?;
        let retrieved = pbx::RetrievedEvent { retrieved: connection(&call, &line) };
        push(EventCause::KeyOperation, Event::Retrieved(retrieved), &call, &mut bytes)?;
        for device in [&caller, &line] {
            let cleared = pbx::ConnectionClearedEvent { dropped: connection(&call, device) };
            push(EventCause::NormalClearing, Event::ConnectionCleared(cleared), &call, &mut bytes)?;
        }
        push(
            EventCause::NormalClearing,
            Event::CallCleared(pbx::CallClearedEvent { call_id: call.clone() }),
            &call,
            &mut bytes,
        )?;
    }
    Ok((bytes, count))
}

/// Events per second through a bare decode with `LinkCodec` and one bounded tokio channel to a
/// task that counts them: the best any gateway could do with the link's frames on this machine.
/// The best of three passes over `calls` calls (seven events each).
pub async fn decode_hop_events_per_sec(calls: usize) -> Result<f64, LoadError> {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let (mut bytes, count) = event_stream(calls)?;
        let (sender, mut receiver) = mpsc::channel::<LinkMessage>(8_192);
        let consumer = tokio::spawn(async move {
            let mut seen = 0u64;
            while receiver.recv().await.is_some() {
                seen += 1;
            }
            seen
        });
        let started = Instant::now();
        let mut codec = LinkCodec::default();
        while let Some(message) =
            codec.decode(&mut bytes).map_err(|error| LoadError::Baseline(format!("decoding: {error}")))?
        {
            sender.send(message).await.map_err(|_| LoadError::Baseline("the counter stopped".to_owned()))?;
        }
        drop(sender);
        let seen = consumer.await.map_err(|error| LoadError::Baseline(error.to_string()))?;
        let elapsed = started.elapsed().as_secs_f64();
        if seen != count {
            return Err(LoadError::Baseline(format!("decoded {seen} of {count} events")));
        }
        best = best.max(count as f64 / elapsed);
    }
    Ok(best)
}

/// `requests` empty gRPC calls (health checks) one after the other on one connection: the floor
/// under any call-control latency.
pub async fn empty_grpc(api: &mut Api, requests: usize) -> Result<Vec<Timed>, LoadError> {
    let origin = Instant::now();
    let mut timed = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        api.health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map_err(|status| LoadError::Gateway(format!("health check: {status}")))?;
        timed.push(Timed {
            at: started.duration_since(origin).as_secs_f64(),
            ms: started.elapsed().as_secs_f64() * 1000.0,
        });
    }
    Ok(timed)
}
