//! Snapshots larger than one frame (docs/pbx-link.md §7): a queue with a thousand waiting calls
//! mirrored through the simulator's pages, a client that states a smaller frame limit, and page
//! sequences that break the protocol (from a scripted PBX) refused with a clear error.

use std::time::Duration;

use std::sync::Arc;

use gateway::config::PbxConfig;
use gateway::pbx::{LinkError, LinkEvent, LinkStats, LinkStatus, MAX_SNAPSHOT_PAGES};
use loadtest::sim::StateDump;
use proto::pbx::{self, request, response};
use proto::wire::{DEFAULT_MAX_FRAME_LENGTH, LinkMessage};

use crate::support::{Client, link_config, scripted_config, scripted_pbx, simulator, within};

/// Puts `calls` outside calls in the queue 6000, where nobody answers them (no agent is ready).
fn fill_queue(simulator: &loadtest::sim::Simulator, calls: usize) {
    simulator.with_pbx(|pbx| {
        for index in 0..calls {
            pbx.inbound_call(&format!("+49301{index:07}"), "6000").expect("the queue takes outside calls");
        }
    });
}

fn snapshot_of(events: &[LinkEvent], device: &str) -> pbx::SnapshotDeviceResult {
    events
        .iter()
        .rev()
        .find_map(|event| match event {
            LinkEvent::Snapshot { snapshot, .. }
                if snapshot.device.as_ref().is_some_and(|info| info.device_id == device) =>
            {
                Some(snapshot.clone())
            }
            _ => None,
        })
        .expect("the device was snapshotted")
}

fn resync_dump(events: &[LinkEvent]) -> StateDump {
    StateDump::from_snapshots(events.iter().filter_map(|event| match event {
        LinkEvent::Snapshot { snapshot, .. } => Some(snapshot),
        _ => None,
    }))
}

#[tokio::test]
async fn a_queue_whose_snapshot_outgrows_a_frame_is_mirrored_whole_through_pages() {
    let simulator = simulator(4).await;
    fill_queue(&simulator, 1_000);
    let whole = simulator.with_pbx(|pbx| pbx.snapshot_device("6000")).unwrap();
    assert!(
        prost::Message::encoded_len(&whole) > DEFAULT_MAX_FRAME_LENGTH,
        "the queue's snapshot must not fit one frame for this test to mean anything"
    );

    let mut client = Client::start(link_config(&simulator));
    let events = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    let queue = snapshot_of(&events, "6000");
    assert_eq!(queue.calls.len(), 1_000);
    assert!(!queue.more, "the link hands on the whole snapshot, never a page");
    assert_eq!(resync_dump(&events), simulator.dump(), "every waiting call is mirrored");

    // A caller's snapshot is gathered the same way.
    let answer = within(
        client.link.request(request::Service::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: "6000".into() })),
    )
    .await
    .expect("the snapshot comes whole");
    let response::Result::SnapshotDevice(asked) = answer else { panic!("not a snapshot: {answer:?}") };
    assert_eq!(asked, whole);
    assert_eq!(simulator.stats().links_registered, 1, "the link was never cut");
    assert!(matches!(client.link.status(), LinkStatus::Up { session: 1, resynced: true, .. }));
    client.stop().await;
}

#[tokio::test]
async fn a_client_that_states_a_smaller_frame_limit_gets_smaller_pages() {
    let simulator = simulator(4).await;
    fill_queue(&simulator, 300);
    let config = PbxConfig { max_frame_length: 4_096, ..link_config(&simulator) };
    let mut client = Client::start(config);
    let events = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    assert_eq!(snapshot_of(&events, "6000").calls.len(), 300);
    assert_eq!(resync_dump(&events), simulator.dump());
    assert_eq!(LinkStats::get(&client.link.stats().decode_errors), 0, "no frame exceeded the stated 4 KiB");
    assert_eq!(simulator.stats().links_registered, 1);
    client.stop().await;
}

/// How the scripted PBX answers `snapshot_device`.
#[derive(Clone, Copy)]
enum PageScript {
    /// A first page with `more`, then an event before the last page.
    EventBetweenPages,
    /// A first page about 2000, then one about 2001.
    PageOfAnotherDevice,
    /// One page more than the gateway gathers, each with a call, then the last.
    Overlong,
}

fn page(device: &str, call: usize, more: bool) -> pbx::SnapshotDeviceResult {
    pbx::SnapshotDeviceResult {
        device: Some(pbx::DeviceInfo {
            device_id: device.to_owned(),
            kind: pbx::DeviceKind::Station as i32,
            name: String::new(),
        }),
        agent: Some(pbx::AgentInfo::default()),
        calls: vec![pbx::CallSnapshot {
            call_id: format!("C{call}"),
            parties: vec![pbx::Party { device_id: device.to_owned(), state: pbx::ConnectionState::Held as i32 }],
            ..Default::default()
        }],
        more,
    }
}

/// A scripted PBX that answers every snapshot by `script`.
async fn paging_pbx(script: PageScript) -> String {
    scripted_pbx(Arc::new(move |invoke_id, service| {
        let request::Service::SnapshotDevice(_) = service else { return Vec::new() };
        let snapshot = |page| LinkMessage::Result {
            invoke_id,
            body: pbx::Response { result: Some(response::Result::SnapshotDevice(page)) },
        };
        match script {
            PageScript::EventBetweenPages => {
                let event = pbx::EventReport { sequence: 1, monitor_ids: vec![1], ..Default::default() };
                vec![snapshot(page("2000", 1, true)), LinkMessage::Event(event), snapshot(page("2000", 2, false))]
            }
            PageScript::PageOfAnotherDevice => vec![snapshot(page("2000", 1, true)), snapshot(page("2001", 2, false))],
            PageScript::Overlong => {
                (0..=MAX_SNAPSHOT_PAGES).map(|call| snapshot(page("2000", call, call < MAX_SNAPSHOT_PAGES))).collect()
            }
        }
    }))
    .await
}

/// The reason of the first `Down` the link reports.
async fn first_down(client: &mut Client) -> String {
    let events = client.read_until(|event| matches!(event, LinkEvent::Down { .. })).await;
    match events.last() {
        Some(LinkEvent::Down { reason, .. }) => reason.clone(),
        other => panic!("the link did not go down: {other:?}"),
    }
}

#[tokio::test]
async fn an_event_between_the_pages_of_a_snapshot_drops_the_link_with_a_clear_error() {
    let mut client = Client::start(scripted_config(paging_pbx(PageScript::EventBetweenPages).await));
    let reason = first_down(&mut client).await;
    assert_eq!(reason, "a frame of class event came between the pages of the snapshot of 2000 (invoke id 3)");
    let events = client.drain();
    assert!(!events.iter().any(|event| matches!(event, LinkEvent::Snapshot { .. })), "no half snapshot applied");
    client.stop().await;
}

#[tokio::test]
async fn a_page_about_another_device_drops_the_link_with_a_clear_error() {
    let mut client = Client::start(scripted_config(paging_pbx(PageScript::PageOfAnotherDevice).await));
    let events = client.read_until(|event| matches!(event, LinkEvent::Down { .. })).await;
    assert!(!events.iter().any(|event| matches!(event, LinkEvent::Snapshot { .. })), "no half snapshot applied");
    let Some(LinkEvent::Down { reason, .. }) = events.last() else { unreachable!() };
    assert_eq!(reason, "a page of the snapshot of 2000 (invoke id 3) is about \"2001\"");
    client.stop().await;
}

#[tokio::test]
async fn a_snapshot_longer_than_the_gateway_gathers_is_refused_and_the_link_stays() {
    let mut client = Client::start(scripted_config(paging_pbx(PageScript::Overlong).await));
    let events = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    assert!(!events.iter().any(|event| matches!(event, LinkEvent::Snapshot { .. })), "nothing gathered is applied");
    let outcome = within(client.link.request_within(
        request::Service::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: "2000".into() }),
        Duration::from_secs(5),
    ))
    .await;
    let expected = format!(
        "the snapshot of 2000 came in {} pages; the gateway gathers at most {MAX_SNAPSHOT_PAGES}",
        MAX_SNAPSHOT_PAGES + 1
    );
    assert_eq!(outcome, Err(LinkError::Protocol(expected)));
    assert!(matches!(client.link.status(), LinkStatus::Up { session: 1, .. }), "the link stays up");
    assert_eq!(LinkStats::get(&client.link.stats().sessions_lost), 0);
    client.stop().await;
}
