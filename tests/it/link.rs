//! The gateway's PBX link client against the simulator: resync after a drop, heartbeats, deadlines,
//! congestion, refused registration, malformed frames, event faults, and every service on the wire;
//! and against a scripted PBX, requests going out during a flood of events.

use std::time::Duration;

use gateway::pbx::{LinkError, LinkEvent, LinkStats, LinkStatus};
use loadtest::sim::{FaultSettings, Layout, SimConfig, Simulator, StateDump, TrafficConfig};
use proto::pbx::event_report::Event;
use proto::pbx::{self, AgentState, ErrorCause, request, response};
use proto::wire::LinkMessage;

use crate::support::{Client, eventually, link_config, scripted_config, scripted_pbx, simulator, within};

fn connection(call_id: &str, device: &str) -> Option<pbx::ConnectionId> {
    Some(pbx::ConnectionId { call_id: call_id.to_owned(), device_id: device.to_owned() })
}

fn log_on(simulator: &loadtest::sim::Simulator, device: &str) {
    simulator
        .with_pbx(|pbx| {
            pbx.set_agent_state(device, AgentState::Ready, &format!("A{device}"), &["agent".to_owned()], "")
        })
        .expect("the station exists and the agent is free");
}

/// The snapshots of the last complete resync in `events`.
fn last_resync(events: &[LinkEvent]) -> StateDump {
    let end =
        events.iter().rposition(|event| matches!(event, LinkEvent::ResyncComplete { .. })).expect("a resync completed");
    let start = events[..end]
        .iter()
        .rposition(|event| matches!(event, LinkEvent::Up { .. } | LinkEvent::ResyncComplete { .. }));
    let snapshots = events[start.map_or(0, |start| start + 1)..end].iter().filter_map(|event| match event {
        LinkEvent::Snapshot { snapshot, .. } => Some(snapshot),
        _ => None,
    });
    StateDump::from_snapshots(snapshots)
}

#[tokio::test]
async fn a_link_drop_mid_call_ends_in_a_resync_that_matches_the_simulator() {
    let simulator = simulator(10).await;
    log_on(&simulator, "2000");
    log_on(&simulator, "2001");
    // One answered queue call, and a direct call on hold at another agent.
    let queued = simulator.with_pbx(|pbx| pbx.inbound_call("+4930111111", "6000")).unwrap();
    let ringing_agent = simulator.with_pbx(|pbx| {
        ["2000", "2001"].into_iter().find(|agent| pbx.connection_state(&queued, agent).is_some()).unwrap().to_owned()
    });
    simulator.with_pbx(|pbx| pbx.answer_call(&connection(&queued, &ringing_agent).unwrap())).unwrap();
    let other_agent = if ringing_agent == "2000" { "2001" } else { "2000" };
    let direct = simulator.with_pbx(|pbx| pbx.inbound_call("+4930222222", other_agent)).unwrap();
    simulator.with_pbx(|pbx| pbx.answer_call(&connection(&direct, other_agent).unwrap())).unwrap();
    simulator.with_pbx(|pbx| pbx.hold_call(&connection(&direct, other_agent).unwrap())).unwrap();

    let mut client = Client::start(link_config(&simulator));
    let first = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    assert!(matches!(first[0], LinkEvent::Up { session: 1, .. }));
    assert_eq!(last_resync(&first), simulator.dump());
    let devices = simulator.with_pbx(|pbx| pbx.devices().len());
    let mut monitored = simulator.monitored_devices().remove(0);
    monitored.sort();
    let mut all: Vec<String> =
        simulator.with_pbx(|pbx| pbx.devices().into_iter().map(|device| device.device_id).collect());
    all.sort();
    assert_eq!(monitored, all, "every station, queue and park orbit is monitored");

    // The link drops mid-call; while it is down the queue call ends and a new one arrives.
    simulator.drop_links();
    simulator.with_pbx(|pbx| pbx.clear_connection(&connection(&queued, "+4930111111").unwrap())).unwrap();
    simulator.with_pbx(|pbx| pbx.inbound_call("+4930333333", "6000")).unwrap();

    let second = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { session: 2, .. })).await;
    assert!(second.iter().any(|event| matches!(event, LinkEvent::Down { session: 1, .. })));
    assert!(second.iter().any(|event| matches!(event, LinkEvent::Up { session: 2, .. })));
    assert!(
        second
            .iter()
            .any(|event| matches!(event, LinkEvent::ResyncComplete { session: 2, devices: d } if *d == devices))
    );
    let resynced = last_resync(&second);
    assert_eq!(resynced, simulator.dump(), "the resync shows the calls as the simulator has them");
    assert!(resynced.calls.iter().all(|call| call.call_id != queued), "the call that ended while down is gone");
    assert_eq!(simulator.stats().links_registered, 2);
    assert_eq!(simulator.monitored_devices()[0].len(), devices, "every device is monitored again");
    assert_eq!(LinkStats::get(&client.link.stats().registrations), 2);
    client.stop().await;
}

#[tokio::test]
async fn a_pbx_with_more_devices_than_one_page_holds_is_fully_mirrored() {
    // 4,100 stations: their list is some 110 KB, over the 64 KiB both sides keep each frame to, so
    // it comes in pages (numbered from 10000, clear of the queue 6000 and the orbits).
    let simulator = Simulator::start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        layout: Layout { first_station: 10_000, stations: 4_100, park_orbits: 3, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .expect("the simulator binds a loopback port");
    log_on(&simulator, "14099");
    let call = simulator.with_pbx(|pbx| pbx.inbound_call("+4930111111", "14099")).unwrap();
    simulator.with_pbx(|pbx| pbx.answer_call(&connection(&call, "14099").unwrap())).unwrap();
    let all = simulator.with_pbx(|pbx| pbx.devices());
    assert_eq!(all.len(), 4_104);

    let mut client = Client::start(link_config(&simulator));
    let events = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    assert!(
        events.iter().any(|event| matches!(event, LinkEvent::ResyncComplete { devices, .. } if *devices == all.len()))
    );
    assert_eq!(last_resync(&events), simulator.dump(), "every line and the call on the last page are mirrored");
    let mut monitored = simulator.monitored_devices().remove(0);
    monitored.sort();
    let mut ids: Vec<String> = all.iter().map(|device| device.device_id.clone()).collect();
    ids.sort();
    assert_eq!(monitored, ids, "every device is monitored, the last page's too");
    assert_eq!(within(client.link.list_devices()).await.unwrap(), all, "the handle pages through the same list");
    assert_eq!(simulator.stats().links_registered, 1, "the link was never cut");
    client.stop().await;
}

#[tokio::test]
async fn requests_in_flight_fail_fast_when_the_link_drops() {
    let simulator = simulator(4).await;
    let client = Client::start(link_config(&simulator));
    within(client.link.wait_resynced()).await.unwrap();
    simulator.stall_links(Duration::from_secs(30));
    let requests_before = simulator.stats().requests;
    let link = client.link.clone();
    let pending = tokio::spawn(async move {
        link.request_within(request::Service::ListDevices(pbx::ListDevicesRequest::default()), Duration::from_secs(60))
            .await
    });
    eventually(|| simulator.stats().requests > requests_before).await;
    simulator.drop_links();
    let outcome = within(pending).await.unwrap();
    assert!(matches!(outcome, Err(LinkError::Lost { .. })), "{outcome:?}");
    client.stop().await;
}

#[tokio::test]
async fn a_silent_pbx_is_declared_dead_and_the_link_comes_back() {
    let simulator = simulator(4).await;
    let client = Client::start(link_config(&simulator));
    within(client.link.wait_resynced()).await.unwrap();
    simulator.stall_links(Duration::from_secs(3));
    eventually(|| LinkStats::get(&client.link.stats().heartbeat_timeouts) >= 1).await;
    let mut status = client.link.watch_status();
    within(status.wait_for(|status| matches!(status, LinkStatus::Up { session: 2, resynced: true, .. })))
        .await
        .unwrap();
    client.stop().await;
}

#[tokio::test]
async fn a_request_the_pbx_does_not_answer_in_time_fails_with_its_deadline() {
    let simulator = simulator(4).await;
    let client = Client::start(link_config(&simulator));
    within(client.link.wait_resynced()).await.unwrap();
    simulator.stall_links(Duration::from_secs(5));
    let deadline = Duration::from_millis(100);
    let outcome =
        client.link.request_within(request::Service::ListDevices(pbx::ListDevicesRequest::default()), deadline).await;
    assert_eq!(outcome, Err(LinkError::DeadlineExceeded(deadline)));
    client.stop().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_a_clear_error() {
    let simulator = simulator(2).await;
    let mut config = link_config(&simulator);
    config.password = gateway::config::Secret::new("not-the-password");
    let client = Client::start(config);
    let mut status = client.link.watch_status();
    let refused =
        within(status.wait_for(|status| matches!(status, LinkStatus::Connecting { last_error: Some(_), .. })))
            .await
            .unwrap()
            .clone();
    let LinkStatus::Connecting { last_error: Some(reason), .. } = refused else { unreachable!() };
    assert_eq!(
        reason,
        "registration refused (ERROR_CAUSE_INVALID_CREDENTIALS): wrong user name or password for user \"switchboard\""
    );
    let outcome = client.link.request(request::Service::ListDevices(pbx::ListDevicesRequest::default())).await;
    assert!(
        matches!(&outcome, Err(LinkError::Down { reason }) if reason.contains("INVALID_CREDENTIALS")),
        "{outcome:?}"
    );
    assert!(simulator.stats().registrations_refused >= 1);
    assert_eq!(LinkStats::get(&client.link.stats().registrations), 0);
    client.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_from_the_pbx_closes_the_link_which_then_comes_back() {
    let simulator = simulator(2).await;
    let mut client = Client::start(link_config(&simulator));
    client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { session: 1, .. })).await;

    simulator.send_malformed_frame();
    let seen = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { session: 2, .. })).await;
    let reason = seen.iter().find_map(|event| match event {
        LinkEvent::Down { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason.as_deref(),
        Some("undecodable frame from the pbx: bad magic 0x4741 (expected 0x5342): not a PBX link stream")
    );

    simulator.send_oversized_frame();
    let seen = client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { session: 3, .. })).await;
    let reason = seen.iter().find_map(|event| match event {
        LinkEvent::Down { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.as_deref().is_some_and(|reason| reason.contains("exceeds the limit of 65536 bytes")), "{reason:?}");
    assert_eq!(LinkStats::get(&client.link.stats().decode_errors), 2);
    client.stop().await;
}

#[tokio::test]
async fn congestion_and_a_full_queue_are_reported_not_queued_without_bound() {
    let simulator = simulator(2).await;
    let mut config = link_config(&simulator);
    config.outbound_queue = 2;
    config.max_in_flight = 1;
    let client = Client::start(config);
    within(client.link.wait_resynced()).await.unwrap();

    simulator.set_faults(FaultSettings { congestion_per_mille: 1000, ..FaultSettings::default() });
    let outcome =
        client.link.request(request::Service::ClearCall(pbx::ClearCallRequest { call_id: "C1".into() })).await;
    assert!(matches!(outcome, Err(LinkError::Refused { cause: ErrorCause::Congestion, .. })), "{outcome:?}");
    simulator.set_faults(FaultSettings::default());

    simulator.stall_links(Duration::from_secs(2));
    let burst = (0..10).map(|_| {
        let link = client.link.clone();
        tokio::spawn(async move {
            link.request_within(
                request::Service::ListDevices(pbx::ListDevicesRequest::default()),
                Duration::from_millis(500),
            )
            .await
        })
    });
    let outcomes: Vec<_> = within(futures::future::join_all(burst)).await.into_iter().map(Result::unwrap).collect();
    assert!(
        outcomes.iter().any(|outcome| matches!(outcome, Err(LinkError::Congested(_)))),
        "some requests find the queue full: {outcomes:?}"
    );
    assert!(outcomes.iter().all(Result::is_err), "the stalled pbx answered nothing in time");
    client.stop().await;
}

#[tokio::test]
async fn duplicated_and_reordered_events_arrive_once_in_order_and_lost_ones_trigger_a_resync() {
    let simulator = simulator(12).await;
    let mut client = Client::start(link_config(&simulator));
    client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    simulator.set_faults(FaultSettings {
        duplicate_events_per_mille: 150,
        reorder_events_per_mille: 150,
        ..FaultSettings::default()
    });
    simulator.start_traffic(TrafficConfig { seed: 7, agents: 10, calls_per_sec: 20.0, ..TrafficConfig::default() });
    let link = client.link.clone();
    let stats = link.stats();
    eventually(|| LinkStats::get(&stats.duplicate_events) >= 5 && LinkStats::get(&stats.events) >= 200).await;
    let delivered: Vec<u64> = client
        .drain()
        .into_iter()
        .filter_map(|event| match event {
            LinkEvent::Event(report) => Some(report.sequence),
            _ => None,
        })
        .collect();
    assert!(delivered.windows(2).all(|pair| pair[1] == pair[0] + 1), "in order, none missing, none twice");
    assert_eq!(LinkStats::get(&stats.sequence_gaps), 0);

    simulator.set_faults(FaultSettings { drop_events_per_mille: 50, ..FaultSettings::default() });
    eventually(|| LinkStats::get(&stats.sequence_gaps) >= 1 && LinkStats::get(&stats.resyncs) >= 2).await;
    simulator.stop_traffic();
    client.stop().await;
}

/// Sends one service and returns its result, failing the test on an error.
async fn call(client: &Client, service: request::Service) -> response::Result {
    let name = service.name();
    client.link.request(service).await.unwrap_or_else(|error| panic!("{name} failed: {error}"))
}

fn event_names(events: &[LinkEvent]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|event| match event {
            LinkEvent::Event(report) => report.event.as_ref().map(|event| match event {
                Event::ServiceInitiated(_) => "service_initiated",
                Event::Originated(_) => "originated",
                Event::Delivered(_) => "delivered",
                Event::Established(_) => "established",
                Event::Held(_) => "held",
                Event::Retrieved(_) => "retrieved",
                Event::Transferred(_) => "transferred",
                Event::Conferenced(_) => "conferenced",
                Event::Diverted(_) => "diverted",
                Event::Queued(_) => "queued",
                Event::Failed(_) => "failed",
                Event::ConnectionCleared(_) => "connection_cleared",
                Event::CallCleared(_) => "call_cleared",
                Event::Parked(_) => "parked",
                Event::ParkRecall(_) => "park_recall",
                Event::AgentState(_) => "agent_state",
                Event::MonitorEnded(_) => "monitor_ended",
            }),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn every_service_works_over_the_link() {
    use request::Service as S;
    use response::Result as R;
    let simulator = simulator(6).await;
    let mut client = Client::start(link_config(&simulator));
    client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;

    for device in ["2000", "2001", "2002"] {
        call(
            &client,
            S::SetAgentState(pbx::SetAgentStateRequest {
                device_id: device.into(),
                requested: AgentState::NotReady as i32,
                agent_id: format!("A{device}"),
                roles: vec!["agent".into()],
                reason: "lunch".into(),
                ..Default::default()
            }),
        )
        .await;
    }
    // Click-to-dial: the agent's own phone first, then the outside number.
    let R::MakeCall(made) = call(
        &client,
        S::MakeCall(pbx::MakeCallRequest { calling_device: "2000".into(), called_number: "+4930555000".into() }),
    )
    .await
    else {
        panic!("make_call answered with another result")
    };
    let own = made.calling_connection.unwrap();
    call(&client, S::AnswerCall(pbx::AnswerCallRequest { connection: Some(own.clone()) })).await;
    simulator.with_pbx(|pbx| pbx.answer_call(&connection(&own.call_id, "+4930555000").unwrap())).unwrap();
    call(&client, S::HoldCall(pbx::HoldCallRequest { connection: Some(own.clone()) })).await;
    call(&client, S::RetrieveCall(pbx::RetrieveCallRequest { connection: Some(own.clone()) })).await;

    // Consult 2001, alternate between the two, then reconnect to the customer.
    let consult = |to: &str| {
        S::ConsultationCall(pbx::ConsultationCallRequest { existing: Some(own.clone()), consulted_device: to.into() })
    };
    let R::ConsultationCall(consulted) = call(&client, consult("2001")).await else { panic!("wrong result") };
    let initiated = consulted.initiated.unwrap();
    call(&client, S::AnswerCall(pbx::AnswerCallRequest { connection: connection(&initiated.call_id, "2001") })).await;
    call(
        &client,
        S::AlternateCall(pbx::AlternateCallRequest { active: Some(initiated.clone()), held: Some(own.clone()) }),
    )
    .await;
    call(
        &client,
        S::AlternateCall(pbx::AlternateCallRequest { active: Some(own.clone()), held: Some(initiated.clone()) }),
    )
    .await;
    call(
        &client,
        S::ReconnectCall(pbx::ReconnectCallRequest { active: Some(initiated.clone()), held: Some(own.clone()) }),
    )
    .await;

    // Consult 2001 again and make a conference; 2001 leaves it.
    let R::ConsultationCall(consulted) = call(&client, consult("2001")).await else { panic!("wrong result") };
    let initiated = consulted.initiated.unwrap();
    call(&client, S::AnswerCall(pbx::AnswerCallRequest { connection: connection(&initiated.call_id, "2001") })).await;
    let R::ConferenceCall(conference) = call(
        &client,
        S::ConferenceCall(pbx::ConferenceCallRequest { held: Some(own.clone()), active: Some(initiated.clone()) }),
    )
    .await
    else {
        panic!("wrong result")
    };
    assert_ne!(conference.call_id, own.call_id, "call ids change on conference");
    call(
        &client,
        S::ClearConnection(pbx::ClearConnectionRequest { connection: connection(&conference.call_id, "2001") }),
    )
    .await;

    // Consult 2002 and transfer the customer to it.
    let own = connection(&conference.call_id, "2000").unwrap();
    let consult = S::ConsultationCall(pbx::ConsultationCallRequest {
        existing: Some(own.clone()),
        consulted_device: "2002".into(),
    });
    let R::ConsultationCall(consulted) = call(&client, consult).await else { panic!("wrong result") };
    let initiated = consulted.initiated.unwrap();
    call(&client, S::AnswerCall(pbx::AnswerCallRequest { connection: connection(&initiated.call_id, "2002") })).await;
    let R::TransferCall(transferred) =
        call(&client, S::TransferCall(pbx::TransferCallRequest { held: Some(own.clone()), active: Some(initiated) }))
            .await
    else {
        panic!("wrong result")
    };

    // 2002 sends the customer on blind to 2001, who parks it; 2000 picks it up and ends the call.
    call(
        &client,
        S::SingleStepTransferCall(pbx::SingleStepTransferCallRequest {
            active: connection(&transferred.call_id, "2002"),
            transferred_to: "2001".into(),
        }),
    )
    .await;
    let blind_call = simulator.with_pbx(|pbx| pbx.calls_of("2001")).pop().expect("2001 rings");
    call(&client, S::AnswerCall(pbx::AnswerCallRequest { connection: connection(&blind_call, "2001") })).await;
    let R::ParkCall(parked) = call(
        &client,
        S::ParkCall(pbx::ParkCallRequest { parking: connection(&blind_call, "2001"), park_to: String::new() }),
    )
    .await
    else {
        panic!("wrong result")
    };
    let R::RetrieveParkedCall(picked_up) = call(
        &client,
        S::RetrieveParkedCall(pbx::RetrieveParkedCallRequest {
            park_id: parked.park_id.clone(),
            device_id: "2000".into(),
        }),
    )
    .await
    else {
        panic!("wrong result")
    };
    let picked_up = picked_up.connection.unwrap();
    let R::SnapshotCall(snapshot) =
        call(&client, S::SnapshotCall(pbx::SnapshotCallRequest { call_id: picked_up.call_id.clone() })).await
    else {
        panic!("wrong result")
    };
    assert_eq!(snapshot.call.unwrap().parties.len(), 2);
    let R::SnapshotDevice(device) =
        call(&client, S::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: "2000".into() })).await
    else {
        panic!("wrong result")
    };
    assert_eq!(device.agent.unwrap().reason, "lunch");
    call(&client, S::ClearCall(pbx::ClearCallRequest { call_id: picked_up.call_id.clone() })).await;
    let R::ListDevices(list) = call(&client, S::ListDevices(pbx::ListDevicesRequest::default())).await else {
        panic!("wrong result")
    };
    assert_eq!(list.devices.len(), 6 + 1 + 3);

    // Monitors: starting one again returns the same id; stopping an unknown one is refused.
    let R::MonitorStart(first) =
        call(&client, S::MonitorStart(pbx::MonitorStartRequest { device_id: "2003".into() })).await
    else {
        panic!()
    };
    let R::MonitorStart(again) =
        call(&client, S::MonitorStart(pbx::MonitorStartRequest { device_id: "2003".into() })).await
    else {
        panic!()
    };
    assert_eq!(first.monitor_id, again.monitor_id);
    call(&client, S::MonitorStop(pbx::MonitorStopRequest { monitor_id: first.monitor_id })).await;
    let refused = client.link.request(S::MonitorStop(pbx::MonitorStopRequest { monitor_id: first.monitor_id })).await;
    assert!(matches!(refused, Err(LinkError::Refused { cause: ErrorCause::InvalidMonitorId, .. })), "{refused:?}");

    // A service in the wrong state is refused with the PBX's cause and words.
    let refused = client
        .link
        .request(S::HoldCall(pbx::HoldCallRequest { connection: connection(&picked_up.call_id, "2000") }))
        .await;
    assert_eq!(
        refused,
        Err(LinkError::Refused {
            cause: ErrorCause::InvalidConnectionId,
            message: format!("no connection {}/2000", picked_up.call_id)
        })
    );
    call(
        &client,
        S::SetAgentState(pbx::SetAgentStateRequest {
            device_id: "2002".into(),
            requested: AgentState::LoggedOff as i32,
            ..Default::default()
        }),
    )
    .await;

    let seen = client.read_until(|event| matches!(event, LinkEvent::Event(pbx::EventReport { event: Some(Event::AgentState(state)), .. }) if state.device_id == "2002" && state.agent.as_ref().is_some_and(|agent| agent.state == AgentState::LoggedOff as i32))).await;
    let names = event_names(&seen);
    for expected in [
        "agent_state",
        "service_initiated",
        "originated",
        "delivered",
        "established",
        "held",
        "retrieved",
        "conferenced",
        "transferred",
        "connection_cleared",
        "parked",
        "call_cleared",
    ] {
        assert!(names.contains(&expected), "no {expected} event among {names:?}");
    }
    client.stop().await;
}

#[tokio::test]
async fn delayed_events_arrive_late_but_complete_and_in_order() {
    let simulator = simulator(6).await;
    let mut client = Client::start(link_config(&simulator));
    client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    simulator.set_faults(FaultSettings { event_delay: Duration::from_millis(300), ..FaultSettings::default() });
    log_on(&simulator, "2000");
    let call = simulator.with_pbx(|pbx| pbx.inbound_call("+4930444444", "6000")).unwrap();
    simulator.with_pbx(|pbx| pbx.answer_call(&connection(&call, "2000").unwrap())).unwrap();
    simulator.with_pbx(|pbx| pbx.clear_call(&call)).unwrap();
    let seen = client
        .read_until(|event| {
            matches!(event, LinkEvent::Event(pbx::EventReport { event: Some(Event::CallCleared(_)), .. }))
        })
        .await;
    let sequences: Vec<u64> = seen
        .iter()
        .filter_map(|event| match event {
            LinkEvent::Event(report) => Some(report.sequence),
            _ => None,
        })
        .collect();
    assert!(sequences.windows(2).all(|pair| pair[1] == pair[0] + 1), "in order, none missing: {sequences:?}");
    assert_eq!(
        event_names(&seen),
        vec![
            "agent_state",
            "originated",
            "queued",
            "diverted",
            "delivered",
            "established",
            "connection_cleared",
            "connection_cleared",
            "call_cleared"
        ]
    );
    assert_eq!(LinkStats::get(&client.link.stats().sequence_gaps), 0);
    assert!(matches!(client.link.status(), LinkStatus::Up { session: 1, .. }), "a slow pbx is not a dead one");
    client.stop().await;
}

#[tokio::test]
async fn a_request_goes_out_while_a_flood_of_events_is_still_being_read() {
    use request::Service as S;
    const FLOOD: u64 = 20_000;
    let (heard, heard_rx) = tokio::sync::watch::channel(false);
    let address = scripted_pbx(std::sync::Arc::new(move |invoke_id, service| {
        let result = |result| LinkMessage::Result { invoke_id, body: pbx::Response { result: Some(result) } };
        match service {
            // The snapshot, then a flood of events the gateway reads no faster than the test takes them.
            S::SnapshotDevice(request) => {
                let device = pbx::DeviceInfo { device_id: request.device_id, ..Default::default() };
                let snapshot = pbx::SnapshotDeviceResult { device: Some(device), ..Default::default() };
                let mut frames = vec![result(response::Result::SnapshotDevice(snapshot))];
                frames.extend((1..=FLOOD).map(|sequence| {
                    LinkMessage::Event(pbx::EventReport { sequence, monitor_ids: vec![1], ..Default::default() })
                }));
                frames
            }
            S::SnapshotCall(request) => {
                heard.send_replace(true);
                let call = pbx::CallSnapshot { call_id: request.call_id, ..Default::default() };
                vec![result(response::Result::SnapshotCall(pbx::SnapshotCallResult { call: Some(call) }))]
            }
            _ => Vec::new(),
        }
    }))
    .await;
    // Room for 16 events: the link feels back-pressure at once and reads only as the test takes.
    let mut client = Client::start_with_room(scripted_config(address), 16);
    client.read_until(|event| matches!(event, LinkEvent::ResyncComplete { .. })).await;
    let stats = client.link.stats();
    eventually(|| LinkStats::get(&stats.events) >= 16).await;

    let snapshot_call = S::SnapshotCall(pbx::SnapshotCallRequest { call_id: "C1".into() });
    let mut request = Box::pin(client.link.request_within(snapshot_call, Duration::from_secs(20)));
    assert!(futures::poll!(&mut request).is_pending(), "the request is queued behind the flood");
    let mut sequences = Vec::new();
    let mut taken_before_heard = None;
    within(async {
        while let Some(event) = client.events.recv().await {
            if let LinkEvent::Event(report) = event {
                sequences.push(report.sequence);
            }
            if taken_before_heard.is_none() && *heard_rx.borrow() {
                taken_before_heard = Some(sequences.len());
            }
            if sequences.len() as u64 == FLOOD {
                break;
            }
        }
    })
    .await;
    let taken = taken_before_heard.expect("the pbx got the request");
    assert!(taken < FLOOD as usize / 2, "the request waited behind {taken} of {FLOOD} events");
    assert!(request.await.is_ok(), "and it was answered");
    assert_eq!(sequences, (1..=FLOOD).collect::<Vec<_>>(), "no event was dropped for it");
    client.stop().await;
}

#[tokio::test]
async fn events_read_without_a_wait_reach_the_model_as_bursts_in_order() {
    use request::Service as S;
    const FLOOD: u64 = 5_000;
    let address = scripted_pbx(std::sync::Arc::new(move |invoke_id, service| match service {
        S::SnapshotDevice(request) => {
            let device = pbx::DeviceInfo { device_id: request.device_id, ..Default::default() };
            let snapshot = pbx::SnapshotDeviceResult { device: Some(device), ..Default::default() };
            let result = response::Result::SnapshotDevice(snapshot);
            let mut frames = vec![LinkMessage::Result { invoke_id, body: pbx::Response { result: Some(result) } }];
            frames.extend((1..=FLOOD).map(|sequence| {
                LinkMessage::Event(pbx::EventReport { sequence, monitor_ids: vec![1], ..Default::default() })
            }));
            frames
        }
        _ => Vec::new(),
    }))
    .await;
    // The raw channel, to see the bursts themselves.
    let (sender, mut bursts) = tokio::sync::mpsc::channel(4);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (link, task) = gateway::pbx::start(scripted_config(address), sender, shutdown.clone());
    let mut sizes = Vec::new();
    let mut sequences = Vec::new();
    within(async {
        while let Some(burst) = bursts.recv().await {
            sizes.push(burst.len());
            sequences.extend(burst.into_iter().filter_map(|event| match event {
                LinkEvent::Event(report) => Some(report.sequence),
                _ => None,
            }));
            if sequences.len() as u64 == FLOOD {
                break;
            }
        }
    })
    .await;
    assert_eq!(sequences, (1..=FLOOD).collect::<Vec<_>>(), "every event once, in link order");
    let largest = sizes.iter().copied().max().unwrap_or_default();
    assert!(largest > 1, "frames read together came one by one: bursts {sizes:?}");
    assert!(largest <= gateway::pbx::MAX_BURST, "a burst of {largest} events");
    assert!(sizes.len() < FLOOD as usize, "{} bursts for {FLOOD} events", sizes.len());
    assert!(matches!(link.status(), LinkStatus::Up { .. }));
    shutdown.cancel();
    within(task).await.expect("the link task ends cleanly");
    // The link said it went down, after everything it read.
    let mut last = None;
    while let Some(burst) = bursts.recv().await {
        last = burst.last().cloned().or(last);
    }
    assert!(matches!(last, Some(LinkEvent::Down { .. })), "the last event is the link going down: {last:?}");
}
