//! The whole gateway against the simulator: after random traffic with link drops, duplicated,
//! reordered and lost events, every line and call the gateway mirrors equals the simulator's; and
//! commands go through the model to the phone system.

use std::time::Duration;

use actors::domain::{AgentState, ConnState, LegOutcome};
use actors::events::ModelEvent;
use actors::runtime::{CommandError, Model, ModelStats};
use gateway::app::Gateway;
use gateway::bridge::LinkPort;
use gateway::config::{CallsConfig, Config, PbxConfig};
use loadtest::sim::inspect::{AgentDump, CallDump, PartyDump};
use loadtest::sim::{FaultSettings, Layout, SimConfig, Simulator, StateDump, TrafficConfig};

use crate::support::{PATIENCE, link_config, within};

fn agent_state_name(state: Option<AgentState>) -> &'static str {
    match state {
        None | Some(AgentState::LoggedOff) => "logged_off",
        Some(AgentState::Ready) => "ready",
        Some(AgentState::NotReady) => "not_ready",
        Some(AgentState::WorkingAfterCall) => "working_after_call",
        Some(AgentState::DoNotDisturb) => "do_not_disturb",
    }
}

/// What the gateway mirrors, in the simulator's terms, parties sorted for comparison.
fn mirrored(model: &Model<LinkPort>) -> StateDump {
    let agents = model
        .lines()
        .into_iter()
        .map(|line| AgentDump {
            device: line.device,
            state: agent_state_name(line.agent.as_ref().map(|agent| agent.state)).to_owned(),
            agent_id: line.agent.as_ref().map(|agent| agent.login_id.clone()).unwrap_or_default(),
            roles: line.agent.map(|agent| agent.roles).unwrap_or_default(),
        })
        .collect();
    let calls = model
        .calls()
        .into_iter()
        .map(|call| CallDump {
            call_id: call.id,
            parties: call
                .parties
                .into_iter()
                .map(|party| PartyDump { device: party.device, state: party.state.as_str().to_owned() })
                .collect(),
            calling: call.calling,
            called: call.called,
            queue: call.queue.unwrap_or_default(),
            park_id: call.park_id.unwrap_or_default(),
        })
        .collect();
    sorted(StateDump { agents, calls })
}

fn sorted(mut dump: StateDump) -> StateDump {
    for call in &mut dump.calls {
        call.parties.sort_by(|a, b| a.device.cmp(&b.device));
    }
    dump.calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    dump.agents.sort_by(|a, b| a.device.cmp(&b.device));
    dump
}

/// Every line the model has is the simulator's station of the same id: compare those.
fn expected(simulator: &Simulator) -> StateDump {
    sorted(simulator.dump())
}

/// Waits until the gateway mirrors the simulator; on timeout, fails showing both.
async fn converged(simulator: &Simulator, model: &Model<LinkPort>, context: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let want = expected(simulator);
        let have = mirrored(model);
        if want == have {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let want_calls: Vec<_> = want.calls.iter().filter(|call| !have.calls.contains(call)).collect();
            let have_calls: Vec<_> = have.calls.iter().filter(|call| !want.calls.contains(call)).collect();
            let want_agents: Vec<_> = want.agents.iter().filter(|agent| !have.agents.contains(agent)).collect();
            let have_agents: Vec<_> = have.agents.iter().filter(|agent| !want.agents.contains(agent)).collect();
            panic!(
                "{context}: the gateway does not mirror the simulator\n\
                 calls only in the simulator: {want_calls:#?}\ncalls only in the gateway: {have_calls:#?}\n\
                 agents only in the simulator: {want_agents:#?}\nagents only in the gateway: {have_agents:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn busy_layout() -> Layout {
    Layout {
        stations: 12,
        park_orbits: 4,
        // Long enough that no recall fires while a link is down in these tests.
        park_timeout_ms: 120_000,
        ring_no_answer_ms: 2_000,
        ..Layout::default()
    }
}

fn busy_traffic(seed: u64) -> TrafficConfig {
    TrafficConfig {
        seed,
        agents: 10,
        calls_per_sec: 12.0,
        outbound_share: 0.2,
        max_calls: None,
        mean_talk: Duration::from_millis(300),
        mean_ring: Duration::from_millis(150),
        caller_patience: Duration::from_secs(3),
        after_call_work: Duration::from_millis(100),
        no_answer_probability: 0.0,
        hold_probability: 0.15,
        park_probability: 0.1,
        blind_transfer_probability: 0.1,
        consult_transfer_probability: 0.1,
        conference_probability: 0.1,
        alternate_probability: 0.1,
    }
}

async fn start(layout: Layout, seed: u64) -> (Simulator, Gateway) {
    let simulator = Simulator::start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        seed,
        layout,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Line actors rest after 100 ms idle (a minute in production), so lines rest and wake again
    // all through the traffic: the mirror must stay true across it.
    let config = Config {
        pbx: PbxConfig { ..link_config(&simulator) },
        calls: CallsConfig { line_idle_ms: 100, ..CallsConfig::default() },
        ..Config::default()
    };
    let gateway = Gateway::start(&config).await.unwrap();
    within(gateway.wait_resynced()).await;
    (simulator, gateway)
}

async fn resyncs(gateway: &Gateway, at_least: u64) {
    let mut progress = gateway.watch_progress();
    within(progress.wait_for(|progress| progress.resyncs >= at_least)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_mirrors_the_simulator_through_faults_and_link_drops() {
    for seed in 1..=4 {
        let (simulator, gateway) = start(busy_layout(), seed).await;
        simulator.set_faults(FaultSettings {
            duplicate_events_per_mille: 30,
            reorder_events_per_mille: 30,
            drop_events_per_mille: 10,
            ..FaultSettings::default()
        });
        simulator.start_traffic(busy_traffic(seed));
        for round in 0..3u64 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            // Drop the link with traffic held still, change things while it is down, let it resync.
            simulator.pause_traffic(true);
            let resynced = gateway.progress().resyncs;
            simulator.drop_links();
            simulator.with_pbx(|pbx| {
                let first = pbx.call_ids().next().map(str::to_owned);
                if let Some(call) = first {
                    pbx.clear_call(&call).unwrap();
                }
                pbx.inbound_call(&format!("+4930999{seed}{round}"), "6000").unwrap();
            });
            resyncs(&gateway, resynced + 1).await;
            simulator.pause_traffic(false);
        }
        // A last stretch with no lost event and no resync: the events alone must keep the mirror true.
        simulator.set_faults(FaultSettings {
            duplicate_events_per_mille: 30,
            reorder_events_per_mille: 30,
            ..FaultSettings::default()
        });
        let resynced = gateway.progress().resyncs;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        simulator.pause_traffic(true);
        converged(&simulator, gateway.model(), &format!("seed {seed}")).await;
        assert_eq!(gateway.progress().resyncs, resynced, "seed {seed}: the last stretch needed no resync");
        assert!(simulator.traffic_calls_started() > 10, "seed {seed}: traffic ran");
        let rested = ModelStats::get(&gateway.model().stats().lines_rested);
        assert!(rested > 0, "seed {seed}: line actors rested and woke during the traffic");
        gateway.shutdown(Duration::from_secs(5)).await;
        simulator.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_the_model_to_the_phone_system() {
    let (simulator, gateway) = start(Layout { stations: 4, ..Layout::default() }, 1).await;
    let model = gateway.model();
    let mut events = model.publisher().subscribe();
    let wait_line = |device: &'static str, check: fn(&actors::events::LineView) -> bool| async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !model.line(device).is_some_and(|line| check(&line)) {
            assert!(tokio::time::Instant::now() < deadline, "line {device} never reached the state");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    model.log_on("2000", "anna", &["agent".to_owned()], false).await.unwrap();
    wait_line("2000", |line| line.agent.as_ref().is_some_and(|agent| agent.login_id == "anna")).await;
    assert_eq!(
        model.log_on("2000", "bob", &[], true).await,
        Err(CommandError::Refused(actors::line::CommandRefusal::AlreadyLoggedOn {
            line: "2000".into(),
            agent: "anna".into()
        }))
    );
    let call = model.make_call("2000", "+4930123456").await.unwrap();
    wait_line("2000", |line| line.calls.iter().any(|(_, state)| *state == ConnState::Initiated)).await;
    model.answer("2000", &call).await.unwrap();
    simulator
        .with_pbx(|pbx| {
            pbx.answer_call(&proto::pbx::ConnectionId { call_id: call.clone(), device_id: "+4930123456".into() })
        })
        .unwrap();
    wait_line("2000", |line| line.calls.iter().any(|(_, state)| *state == ConnState::Connected)).await;
    model.hold("2000", &call).await.unwrap();
    wait_line("2000", |line| line.calls.iter().any(|(_, state)| *state == ConnState::Held)).await;
    model.retrieve("2000", &call).await.unwrap();
    wait_line("2000", |line| line.calls.iter().any(|(_, state)| *state == ConnState::Connected)).await;
    model.set_notes(&call, "asked about the invoice").unwrap();
    model.hang_up("2000", &call).await.unwrap();
    let record = within(async {
        loop {
            if let ModelEvent::CallLog(record) = events.recv().await.unwrap().event.clone() {
                break record;
            }
        }
    })
    .await;
    assert_eq!((record.device.as_str(), record.outcome), ("2000", LegOutcome::Answered));
    assert_eq!(record.agent_id.as_deref(), Some("anna"));
    assert_eq!(record.notes, "asked about the invoice");
    assert_eq!(record.direction, actors::domain::Direction::Outbound);
    converged(&simulator, model, "after the call").await;
    gateway.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_actor_killed_mid_call_is_rebuilt_and_the_call_ends_with_a_correct_record() {
    let (simulator, gateway) = start(Layout { stations: 4, ..Layout::default() }, 1).await;
    let model = gateway.model();
    let mut events = model.publisher().subscribe();
    simulator
        .with_pbx(|pbx| pbx.set_agent_state("2001", proto::pbx::AgentState::Ready, "bo", &["agent".to_owned()], ""))
        .unwrap();
    let call = simulator.with_pbx(|pbx| pbx.inbound_call("+4930777000", "6000")).unwrap();
    let connection = |device: &str| proto::pbx::ConnectionId { call_id: call.clone(), device_id: device.to_owned() };
    simulator.with_pbx(|pbx| pbx.answer_call(&connection("2001"))).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !model.call(&call).is_some_and(|view| {
        view.parties.iter().any(|party| party.state == ConnState::Connected && party.device == "2001")
    }) {
        assert!(tokio::time::Instant::now() < deadline, "the call never showed as answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(model.crash_call(&call));
    let restarted = || actors::runtime::ModelStats::get(&model.stats().restarts) == 1;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !restarted() {
        assert!(tokio::time::Instant::now() < deadline, "the call actor was not restarted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The call goes on after the crash: hold, retrieve, hang up.
    simulator.with_pbx(|pbx| pbx.hold_call(&connection("2001"))).unwrap();
    simulator.with_pbx(|pbx| pbx.retrieve_call(&connection("2001"))).unwrap();
    simulator.with_pbx(|pbx| pbx.clear_connection(&connection("+4930777000"))).unwrap();
    let record = within(async {
        loop {
            if let ModelEvent::CallLog(record) = events.recv().await.unwrap().event.clone() {
                break record;
            }
        }
    })
    .await;
    assert_eq!(record.root_call_id, call);
    assert_eq!((record.device.as_str(), record.outcome), ("2001", LegOutcome::Answered));
    assert!(record.via_queue && record.queue.as_deref() == Some("6000"), "the history before the crash is kept");
    assert!(record.answered_at.is_some_and(|answered| answered >= record.offered_at));
    assert_eq!(record.agent_id.as_deref(), Some("bo"));
    converged(&simulator, model, "after the crash").await;
    gateway.shutdown(Duration::from_secs(5)).await;
}

/// The records the gateway wrote, in the simulator's terms: (first call id, station, answered).
fn record_keys(records: &[actors::call::CallLogRecord]) -> Vec<(String, String, bool)> {
    let mut keys: Vec<_> = records
        .iter()
        .map(|record| (record.root_call_id.clone(), record.device.clone(), record.answered_at.is_some()))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_records_match_the_simulators_finished_calls_one_to_one() {
    for seed in 11..=13 {
        let (simulator, gateway) = start(busy_layout(), seed).await;
        let mut events = gateway.model().publisher().subscribe();
        let collector = tokio::spawn(async move {
            let mut records = Vec::new();
            while let Ok(event) = events.recv().await {
                if let ModelEvent::CallLog(record) = &event.event {
                    records.push(record.clone());
                }
            }
            records
        });
        // Duplicated and reordered events, and link drops; no event is lost for good, so every leg
        // the simulator had is one the gateway saw.
        simulator.set_faults(FaultSettings {
            duplicate_events_per_mille: 30,
            reorder_events_per_mille: 30,
            ..FaultSettings::default()
        });
        simulator.start_traffic(busy_traffic(seed));
        for round in 0..2u64 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            simulator.pause_traffic(true);
            let resynced = gateway.progress().resyncs;
            simulator.drop_links();
            simulator.with_pbx(|pbx| {
                let first = pbx.call_ids().next().map(str::to_owned);
                if let Some(call) = first {
                    pbx.clear_call(&call).unwrap();
                }
                pbx.inbound_call(&format!("+4930888{seed}{round}"), "6000").unwrap();
            });
            resyncs(&gateway, resynced + 1).await;
            simulator.pause_traffic(false);
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Stop the day and end every call still going.
        simulator.stop_traffic();
        simulator.with_pbx(|pbx| {
            let calls: Vec<String> = pbx.call_ids().map(str::to_owned).collect();
            for call in calls {
                pbx.clear_call(&call).unwrap();
            }
        });
        let model = gateway.model();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while model.actor_counts().1 != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "seed {seed}: calls left in the gateway: {:?}",
                model.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expected: Vec<(String, String, bool)> = {
            let mut legs: Vec<_> = simulator
                .with_pbx(|pbx| pbx.take_finished_legs())
                .into_iter()
                .map(|leg| (leg.root_call_id, leg.device, leg.answered))
                .collect();
            legs.sort();
            legs
        };
        gateway.shutdown(Duration::from_secs(5)).await;
        let records = collector.await.unwrap();
        let written = record_keys(&records);
        let missing: Vec<_> = expected.iter().filter(|leg| !written.contains(leg)).collect();
        let extra: Vec<_> = written.iter().filter(|leg| !expected.contains(leg)).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && written.len() == expected.len(),
            "seed {seed}: {} records for {} legs\nmissing: {missing:?}\nextra or doubled: {extra:?}",
            written.len(),
            expected.len()
        );
        assert!(expected.len() > 20, "seed {seed}: the day had calls ({})", expected.len());
        simulator.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_renumbered_while_the_link_was_down_keeps_its_first_id_as_the_log_key() {
    let (simulator, gateway) = start(Layout { stations: 4, ..Layout::default() }, 1).await;
    let model = gateway.model();
    let mut events = model.publisher().subscribe();
    let call = simulator.with_pbx(|pbx| pbx.inbound_call("+4930777111", "2001")).unwrap();
    let at = |device: &str| proto::pbx::ConnectionId { call_id: call.clone(), device_id: device.to_owned() };
    simulator.with_pbx(|pbx| pbx.answer_call(&at("2001"))).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while model.call(&call).is_none_or(|view| view.parties.len() != 2) {
        assert!(tokio::time::Instant::now() < deadline, "the call never showed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The link goes down; meanwhile 2001 hands the call to 2002, which gives it a new id.
    simulator.set_accepting(false);
    simulator.drop_links();
    let mut status = gateway.link().watch_status();
    within(status.wait_for(|status| !matches!(status, gateway::pbx::LinkStatus::Up { .. }))).await.unwrap();
    simulator.with_pbx(|pbx| pbx.single_step_transfer(&at("2001"), "2002")).unwrap();
    let renamed = simulator.with_pbx(|pbx| pbx.calls_of("2002")).pop().expect("2002 rings");
    assert_ne!(renamed, call);
    let answering = proto::pbx::ConnectionId { call_id: renamed.clone(), device_id: "2002".to_owned() };
    simulator.with_pbx(|pbx| pbx.answer_call(&answering)).unwrap();
    simulator.set_accepting(true);
    resyncs(&gateway, 2).await;
    // The gateway meets the call first in a snapshot, under its new id: the PBX's linkage id says
    // which call it is, so 2002's leg is keyed by the customer call's first id.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while model.call(&renamed).is_none_or(|view| view.root != call) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renumbered call never showed its root: {:?}",
            model.call(&renamed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    simulator.with_pbx(|pbx| pbx.clear_call(&renamed)).unwrap();
    let mut keys = Vec::new();
    within(async {
        while !keys.iter().any(|key: &String| key.ends_with(":2002")) {
            if let ModelEvent::CallLog(record) = events.recv().await.unwrap().event.clone() {
                keys.push(record.key());
            }
        }
    })
    .await;
    assert!(keys.contains(&format!("{call}:2002")), "{keys:?}");
    assert!(keys.iter().all(|key| key.starts_with(&format!("{call}:"))), "every leg under the first id: {keys:?}");
    converged(&simulator, model, "after the outage").await;
    gateway.shutdown(Duration::from_secs(5)).await;
}
