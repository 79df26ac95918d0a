//! The simulator's link server against a raw client: registration, refusals, and malformed or
//! oversized frames, each of which closes only the link that sent it.

use std::time::Duration;

use bytes::BufMut;
use futures::{SinkExt, StreamExt};
use gateway::pbx::{LinkStats, LinkStatus};
use proto::pbx::{self, ErrorCause, request, response};
use proto::wire::{FRAME_VERSION, LinkCodec, LinkMessage, MAGIC};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::support::{Client, link_config, simulator, within};

type RawLink = Framed<TcpStream, LinkCodec>;

async fn connect(simulator: &loadtest::sim::Simulator) -> RawLink {
    let stream = TcpStream::connect(simulator.local_addr()).await.expect("the simulator accepts");
    Framed::new(stream, LinkCodec::default())
}

fn register(version: u32, password: &str) -> LinkMessage {
    LinkMessage::Request {
        invoke_id: 1,
        body: pbx::Request {
            service: Some(request::Service::Register(pbx::RegisterRequest {
                user: "switchboard".into(),
                password: password.into(),
                protocol_version: version,
                client_name: "raw test client".into(),
                heartbeat_interval_ms: 10_000,
                max_frame_length: 0,
            })),
        },
    }
}

/// The next frame that is not a heartbeat request from the simulator.
async fn next_answer(link: &mut RawLink) -> Option<LinkMessage> {
    within(async {
        loop {
            match link.next().await {
                Some(Ok(LinkMessage::Request {
                    body: pbx::Request { service: Some(request::Service::Heartbeat(_)) },
                    ..
                })) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(error)) => panic!("the simulator sent an undecodable frame: {error}"),
                None => return None,
            }
        }
    })
    .await
}

fn error_of(message: Option<LinkMessage>) -> (u32, ErrorCause, String) {
    match message {
        Some(LinkMessage::Error { invoke_id, body }) => {
            (invoke_id, ErrorCause::try_from(body.cause).unwrap(), body.message)
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

async fn registered(simulator: &loadtest::sim::Simulator) -> RawLink {
    let mut link = connect(simulator).await;
    link.send(register(1, "switchboard")).await.unwrap();
    match next_answer(&mut link).await {
        Some(LinkMessage::Result {
            invoke_id: 1,
            body: pbx::Response { result: Some(response::Result::Register(result)) },
        }) => {
            assert_eq!(result.protocol_version, 1);
            assert_eq!(result.next_event_sequence, 1);
            assert!(result.services.iter().any(|service| service == "park_call"));
        }
        other => panic!("registration failed: {other:?}"),
    }
    link
}

#[tokio::test]
async fn an_unsupported_version_is_refused_then_the_link_closes() {
    let simulator = simulator(2).await;
    let mut link = connect(&simulator).await;
    link.send(register(9, "switchboard")).await.unwrap();
    let (invoke_id, cause, message) = error_of(next_answer(&mut link).await);
    assert_eq!((invoke_id, cause), (1, ErrorCause::UnsupportedVersion));
    assert_eq!(message, "protocol version 9 is not supported; this PBX speaks version 1");
    assert_eq!(next_answer(&mut link).await, None, "the simulator closes after refusing");
}

#[tokio::test]
async fn a_frame_limit_below_four_kib_is_refused_then_the_link_closes() {
    let simulator = simulator(2).await;
    let mut link = connect(&simulator).await;
    let mut request = register(1, "switchboard");
    if let LinkMessage::Request { body: pbx::Request { service: Some(request::Service::Register(register)) }, .. } =
        &mut request
    {
        register.max_frame_length = 1_000;
    }
    link.send(request).await.unwrap();
    let (invoke_id, cause, message) = error_of(next_answer(&mut link).await);
    assert_eq!((invoke_id, cause), (1, ErrorCause::MalformedRequest));
    assert_eq!(message, "max_frame_length 1000 is below the smallest a client may state (4096 bytes; 0 means 65536)");
    assert_eq!(next_answer(&mut link).await, None, "the simulator closes after refusing");
}

#[tokio::test]
async fn services_before_registration_are_refused_and_the_link_stays_open() {
    let simulator = simulator(2).await;
    let mut link = connect(&simulator).await;
    let early = LinkMessage::Request {
        invoke_id: 5,
        body: pbx::Request { service: Some(request::Service::ListDevices(pbx::ListDevicesRequest::default())) },
    };
    link.send(early).await.unwrap();
    let (invoke_id, cause, _) = error_of(next_answer(&mut link).await);
    assert_eq!((invoke_id, cause), (5, ErrorCause::NotRegistered));
    link.send(register(1, "switchboard")).await.unwrap();
    assert!(matches!(next_answer(&mut link).await, Some(LinkMessage::Result { invoke_id: 1, .. })));
}

#[tokio::test]
async fn empty_requests_and_heartbeats_are_answered() {
    let simulator = simulator(2).await;
    let mut link = registered(&simulator).await;
    link.send(LinkMessage::Request { invoke_id: 7, body: pbx::Request { service: None } }).await.unwrap();
    let (invoke_id, cause, message) = error_of(next_answer(&mut link).await);
    assert_eq!(
        (invoke_id, cause, message.as_str()),
        (7, ErrorCause::ServiceNotSupported, "the request names no service this pbx offers")
    );
    let heartbeat = pbx::Request { service: Some(request::Service::Heartbeat(pbx::HeartbeatRequest {})) };
    link.send(LinkMessage::Request { invoke_id: 8, body: heartbeat }).await.unwrap();
    match next_answer(&mut link).await {
        Some(LinkMessage::Result {
            invoke_id: 8,
            body: pbx::Response { result: Some(response::Result::Heartbeat(beat)) },
        }) => {
            assert!(beat.timestamp_ms > 1_700_000_000_000, "the pbx's wall clock");
        }
        other => panic!("expected a heartbeat result, got {other:?}"),
    }
}

/// Starts a gateway link beside the raw one, to show it is untouched by the raw link's fate.
async fn bystander(simulator: &loadtest::sim::Simulator) -> Client {
    let client = Client::start(link_config(simulator));
    within(client.link.wait_resynced()).await.unwrap();
    client
}

async fn assert_bystander_untouched(client: Client) {
    // A heartbeat round trip proves the link still serves, with no reconnect since.
    let outcome = client.link.request(request::Service::Heartbeat(pbx::HeartbeatRequest {})).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(matches!(client.link.status(), LinkStatus::Up { session: 1, .. }));
    assert_eq!(LinkStats::get(&client.link.stats().registrations), 1);
    client.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_the_link_that_sent_it() {
    let simulator = simulator(2).await;
    let client = bystander(&simulator).await;
    let mut link = registered(&simulator).await;
    link.get_mut().write_all(b"this is not a frame").await.unwrap();
    let (invoke_id, cause, message) = error_of(next_answer(&mut link).await);
    assert_eq!((invoke_id, cause), (0, ErrorCause::MalformedRequest));
    assert_eq!(message, "undecodable frame: bad magic 0x7468 (expected 0x5342): not a PBX link stream");
    assert_eq!(next_answer(&mut link).await, None);
    assert_eq!(simulator.stats().decode_errors, 1);
    assert_bystander_untouched(client).await;
}

#[tokio::test]
async fn an_oversized_frame_closes_only_the_link_that_sent_it() {
    let simulator = simulator(2).await;
    let client = bystander(&simulator).await;
    let mut link = registered(&simulator).await;
    let mut header = Vec::new();
    header.put_u16(MAGIC);
    header.put_u8(FRAME_VERSION);
    header.put_u8(1);
    header.put_u32(2);
    header.put_u32(10 * 1024 * 1024);
    link.get_mut().write_all(&header).await.unwrap();
    let (invoke_id, _, message) = error_of(next_answer(&mut link).await);
    assert_eq!(invoke_id, 0);
    assert_eq!(message, "undecodable frame: frame of 10485772 bytes exceeds the limit of 65536 bytes");
    assert_eq!(next_answer(&mut link).await, None);
    assert_bystander_untouched(client).await;
}

#[tokio::test]
async fn a_link_that_never_registers_is_closed() {
    let simulator = loadtest::sim::Simulator::start(loadtest::sim::SimConfig {
        register_timeout: Duration::from_millis(200),
        ..loadtest::sim::SimConfig::default()
    })
    .await
    .unwrap();
    let mut link = connect(&simulator).await;
    let (_, _, message) = error_of(next_answer(&mut link).await);
    assert_eq!(message, "not registered in time");
    assert_eq!(next_answer(&mut link).await, None);
    assert_eq!(simulator.stats().links_timed_out, 1);
}
