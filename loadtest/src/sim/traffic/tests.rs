//! Traffic generator tests: a seed and a timing replay the same day; a busy day uses every call feature,
//! keeps the phone system consistent and ends with every call finished; and calls placed by hand show
//! that the generator follows calls through new ids and leaves none open or on hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::pbx::event_report::Event;
use proto::pbx::{AgentState, ConnectionState as State, DeviceKind, EventCause};

use super::{Step, Traffic, TrafficConfig};
use crate::sim::model::{Layout, Pbx, PbxEvent};

const T0: u64 = 1_700_000_000_000;
const CALLER: &str = "+4930111";
const CALLER2: &str = "+4930222";

fn layout() -> Layout {
    Layout { stations: 16, park_orbits: 10, park_timeout_ms: 20_000, ring_no_answer_ms: 8_000, ..Layout::default() }
}

/// A day where every feature is likely: short calls, many transfers and parks, and enough agents that
/// some are idle to take consultations and pick parked calls up.
fn busy_config(seed: u64) -> TrafficConfig {
    TrafficConfig {
        seed,
        agents: 14,
        calls_per_sec: 0.8,
        outbound_share: 0.25,
        max_calls: Some(240),
        mean_talk: Duration::from_secs(4),
        mean_ring: Duration::from_millis(1_200),
        caller_patience: Duration::from_secs(12),
        after_call_work: Duration::from_secs(1),
        no_answer_probability: 0.1,
        hold_probability: 0.15,
        park_probability: 0.15,
        blind_transfer_probability: 0.12,
        consult_transfer_probability: 0.12,
        conference_probability: 0.12,
        alternate_probability: 0.12,
    }
}

/// The phone system and the generator, driven as the simulator's clock loop and publisher drive them:
/// fire the timers, let the generator act, then show it the events.
struct Day {
    pbx: Pbx,
    traffic: Traffic,
    now_ms: u64,
}

impl Day {
    fn start(config: TrafficConfig) -> (Self, Vec<PbxEvent>) {
        let mut pbx = Pbx::new(layout(), T0);
        let mut traffic = Traffic::new(config, &mut pbx, T0);
        let events = pbx.drain_events();
        traffic.observe(&pbx, &events);
        (Self { pbx, traffic, now_ms: T0 }, events)
    }

    fn step_to(&mut self, now_ms: u64) -> Vec<PbxEvent> {
        self.now_ms = now_ms;
        self.pbx.advance_to(now_ms);
        self.traffic.tick(&mut self.pbx, now_ms);
        let events = self.pbx.drain_events();
        self.traffic.observe(&self.pbx, &events);
        events
    }

    /// Runs the clock on in 20 ms ticks.
    fn run_until(&mut self, until_ms: u64) {
        while self.now_ms < until_ms {
            self.step_to(self.now_ms + 20);
        }
    }

    /// Does something at a phone by hand, then shows the generator the events, as the server does
    /// after a request.
    fn by_hand<R>(&mut self, action: impl FnOnce(&mut Pbx) -> R) -> R {
        let result = action(&mut self.pbx);
        let events = self.pbx.drain_events();
        self.traffic.observe(&self.pbx, &events);
        result
    }
}

/// A quiet day: no arrivals and no features, long talk, so that a test places the calls by hand and
/// the generator only answers and hangs up.
fn quiet_config(agents: u32) -> TrafficConfig {
    TrafficConfig {
        seed: 5,
        agents,
        calls_per_sec: 0.0,
        outbound_share: 0.0,
        max_calls: None,
        mean_talk: Duration::from_secs(20),
        mean_ring: Duration::from_millis(400),
        caller_patience: Duration::from_secs(5),
        after_call_work: Duration::from_secs(1),
        no_answer_probability: 0.0,
        hold_probability: 0.0,
        park_probability: 0.0,
        blind_transfer_probability: 0.0,
        consult_transfer_probability: 0.0,
        conference_probability: 0.0,
        alternate_probability: 0.0,
    }
}

fn conn(call_id: &str, device: &str) -> proto::pbx::ConnectionId {
    proto::pbx::ConnectionId { call_id: call_id.to_owned(), device_id: device.to_owned() }
}

/// Irregular steps, as a real clock loop under load ticks: the same list gives the same timing.
const STEPS_MS: &[u64] = &[20, 20, 7, 130, 20, 45, 1, 20, 300, 20];

fn run_for(config: TrafficConfig, duration_ms: u64) -> Vec<PbxEvent> {
    let (mut day, mut all) = Day::start(config);
    let mut steps = STEPS_MS.iter().cycle();
    while day.now_ms < T0 + duration_ms {
        let next = day.now_ms + steps.next().copied().unwrap_or(20);
        all.extend(day.step_to(next));
    }
    all
}

#[test]
fn the_same_seed_and_timing_replay_the_same_events() {
    let first = run_for(busy_config(7), 90_000);
    let second = run_for(busy_config(7), 90_000);
    assert!(first.len() > 500, "a busy minute and a half should cause many events, not {}", first.len());
    assert!(first == second, "the same seed and timing gave different days");

    // The comparison means something: another seed gives another day.
    let other = run_for(busy_config(8), 90_000);
    assert!(first != other, "seeds 7 and 8 gave the same day");
}

/// What a real phone system keeps true, checked through the model's public view only.
fn check_invariants(pbx: &Pbx, events: &[PbxEvent], outside_numbers: &BTreeSet<String>) {
    let mut parties_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for call_id in pbx.call_ids() {
        let call = pbx.snapshot_call(call_id).expect("a listed call has a snapshot");
        assert!(!call.parties.is_empty(), "call {call_id} has no party");
        if call.parties.len() == 1 {
            assert_eq!(call.parties[0].state, State::Initiated as i32, "call {call_id} is one party talking alone");
        }
        let mut devices = BTreeSet::new();
        for party in &call.parties {
            assert!(devices.insert(party.device_id.clone()), "{} is twice in {call_id}", party.device_id);
            parties_of.entry(party.device_id.clone()).or_default().insert(call_id.to_owned());
        }
    }
    let known: BTreeSet<String> = pbx
        .devices()
        .into_iter()
        .map(|device| device.device_id)
        .chain(outside_numbers.iter().cloned())
        .chain(parties_of.keys().cloned())
        .collect();
    for device in &known {
        let indexed: BTreeSet<String> = pbx.calls_of(device).into_iter().collect();
        let expected = parties_of.get(device).cloned().unwrap_or_default();
        assert_eq!(indexed, expected, "calls_of({device}) disagrees with the calls' parties");
    }

    let mut idle_ready = Vec::new();
    for device in pbx.devices().into_iter().filter(|device| device.kind == DeviceKind::Station as i32) {
        let station = device.device_id;
        let calls = pbx.calls_of(&station);
        let connected = calls.iter().filter(|call| pbx.connection_state(call, &station) == Some(State::Connected));
        assert!(connected.count() <= 1, "{station} is connected in more than one call: {calls:?}");
        if pbx.agent(&station).is_some_and(|agent| agent.state == AgentState::Ready as i32) && calls.is_empty() {
            idle_ready.push(station);
        }
    }
    let queued: Vec<&str> = pbx
        .call_ids()
        .filter(|call| pbx.layout().queues.iter().any(|queue| pbx.connection_state(call, queue) == Some(State::Queued)))
        .collect();
    assert!(
        queued.is_empty() || idle_ready.is_empty(),
        "calls {queued:?} wait while {idle_ready:?} are idle and ready"
    );

    for event in events {
        if let Event::CallCleared(cleared) = &event.event {
            assert!(pbx.snapshot_call(&cleared.call_id).is_none(), "call {} was cleared but lives on", cleared.call_id);
        }
    }
}

/// The kind of an event and its cause, as a name to count.
fn kind(event: &PbxEvent) -> String {
    let name = match &event.event {
        Event::ServiceInitiated(_) => "ServiceInitiated",
        Event::Originated(_) => "Originated",
        Event::Delivered(_) => "Delivered",
        Event::Established(_) => "Established",
        Event::Held(_) => "Held",
        Event::Retrieved(_) => "Retrieved",
        Event::Transferred(_) => "Transferred",
        Event::Conferenced(_) => "Conferenced",
        Event::Diverted(_) => "Diverted",
        Event::Queued(_) => "Queued",
        Event::Failed(_) => "Failed",
        Event::ConnectionCleared(_) => "ConnectionCleared",
        Event::CallCleared(_) => "CallCleared",
        Event::Parked(_) => "Parked",
        Event::ParkRecall(_) => "ParkRecall",
        Event::AgentState(_) => "AgentState",
        Event::MonitorEnded(_) => "MonitorEnded",
    };
    format!("{name}/{:?}", event.cause)
}

#[test]
fn a_busy_day_uses_every_feature_and_ends_with_every_call_finished() {
    let config = busy_config(11);
    let max_calls = config.max_calls.unwrap_or_default();
    let (mut day, events) = Day::start(config);
    let mut outside_numbers = BTreeSet::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut rang_unanswered = false;
    check_invariants(&day.pbx, &events, &outside_numbers);

    // Arrivals stop after max_calls (about five minutes at 0.8 a second); then every call still in
    // progress has to finish: talk, transfers, parks and their recalls take a few minutes more at most.
    let deadline = T0 + 15 * 60_000;
    let mut quiet_since = None;
    while day.now_ms < deadline {
        let events = day.step_to(day.now_ms + 20);
        for event in &events {
            *seen.entry(kind(event)).or_default() += 1;
            for device in &event.devices {
                if day.pbx.device_kind(device) == Some(DeviceKind::External) {
                    outside_numbers.insert(device.clone());
                }
            }
            if let Event::AgentState(state) = &event.event {
                rang_unanswered |= state.agent.as_ref().is_some_and(|agent| agent.reason == "ring-no-answer");
            }
        }
        check_invariants(&day.pbx, &events, &outside_numbers);
        let finished = day.traffic.calls_started() == max_calls && day.pbx.call_ids().next().is_none();
        match (finished, quiet_since) {
            (true, None) => quiet_since = Some(day.now_ms),
            (false, _) => quiet_since = None,
            // Stay a while after the last call to show nothing starts again.
            (true, Some(since)) if day.now_ms > since + 60_000 => break,
            _ => {}
        }
    }

    let left: Vec<String> = day.pbx.call_ids().map(str::to_owned).collect();
    let stuck: Vec<_> = left.iter().filter_map(|call| day.pbx.snapshot_call(call)).collect();
    assert!(stuck.is_empty(), "calls never finished: {stuck:#?}");
    assert_eq!(day.traffic.calls_started(), max_calls);
    assert!(day.traffic.calls_finished() > 0);

    let expected = [
        "ServiceInitiated/NewCall",
        "ServiceInitiated/Consultation",
        "Originated/NewCall",
        "Delivered/NewCall",
        "Delivered/AcdDistribution",
        "Delivered/Recall",
        "Established/NewCall",
        "Established/Park",
        "Held/KeyOperation",
        "Held/Alternate",
        "Retrieved/KeyOperation",
        "Retrieved/Reconnect",
        "Transferred/SingleStepTransfer",
        "Transferred/Transfer",
        "Conferenced/Conference",
        "Diverted/AcdDistribution",
        "Queued/NewCall",
        "Queued/Redirected",
        "ConnectionCleared/NormalClearing",
        "ConnectionCleared/Park",
        "ConnectionCleared/Redirected",
        "CallCleared/NormalClearing",
        "Parked/Park",
        "ParkRecall/Recall",
        "AgentState/KeyOperation",
    ];
    let missing: Vec<&str> = expected.iter().copied().filter(|kind| !seen.contains_key(*kind)).collect();
    assert!(missing.is_empty(), "never seen: {missing:?}; seen: {seen:#?}");
    assert!(rang_unanswered, "no agent was made not ready by ring-no-answer");
}

#[test]
fn arrivals_stop_at_max_calls() {
    let config = TrafficConfig { max_calls: Some(5), calls_per_sec: 50.0, ..busy_config(3) };
    let (mut day, _) = Day::start(config);
    for _ in 0..50 {
        let next = day.now_ms + 100;
        day.step_to(next);
    }
    assert_eq!(day.traffic.calls_started(), 5);
}

#[test]
fn the_generator_logs_its_agents_on_ready() {
    let (day, events) = Day::start(TrafficConfig { agents: 3, ..TrafficConfig::default() });
    let logged_on: Vec<&str> = events
        .iter()
        .filter_map(|event| match &event.event {
            Event::AgentState(state) => Some(state.device_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(logged_on, vec!["2000", "2001", "2002"]);
    assert!(events.iter().all(|event| event.cause == EventCause::KeyOperation));
    let agent = day.pbx.agent("2000").unwrap();
    assert_eq!(agent.state, AgentState::Ready as i32);
    assert_eq!(agent.agent_id, "A2000");
    assert_eq!(agent.roles, vec!["agent".to_owned(), "operator".to_owned()]);
    assert_eq!(day.pbx.agent("2001").unwrap().roles, vec!["agent".to_owned()]);
    assert_eq!(day.pbx.agent("2003").unwrap().state, AgentState::LoggedOff as i32);
}

#[test]
fn a_consulted_agent_talks_before_hanging_up() {
    let config = TrafficConfig { consult_transfer_probability: 1.0, ..quiet_config(2) };
    let (mut day, _) = Day::start(config);
    day.by_hand(|pbx| pbx.inbound_call(CALLER, "2000")).unwrap();
    // 2000 answers, talks, then consults 2001, who answers.
    while !day.traffic.scripts.contains_key("2001") && day.now_ms < T0 + 60_000 {
        day.step_to(day.now_ms + 20);
    }
    // Scripts are popped from the back.
    assert_eq!(day.traffic.scripts.get("2001"), Some(&vec![Step::AgentHangsUp, Step::Talk]));
    day.run_until(T0 + 5 * 60_000);
    assert_eq!(day.pbx.call_ids().count(), 0);
}

#[test]
fn an_agent_who_answers_just_before_a_transfer_talks_on_in_the_new_call() {
    let (mut day, _) = Day::start(quiet_config(2));
    let call = day.by_hand(|pbx| pbx.inbound_call(CALLER, "2000")).unwrap();
    day.run_until(T0 + 2_000);
    assert_eq!(day.pbx.connection_state(&call, "2000"), Some(State::Connected));

    // The consulted agent answers and the transfer follows before the generator hears of either: the
    // call it answered is gone by then.
    let merged = day.by_hand(|pbx| {
        let consultation = pbx.consultation_call(&conn(&call, "2000"), "2001").unwrap();
        pbx.answer_call(&conn(&consultation.call_id, "2001")).unwrap();
        pbx.transfer_call(&conn(&call, "2000"), &consultation).unwrap()
    });
    assert!(day.traffic.scripts.contains_key("2001"), "2001 has no script in {merged}");
    day.run_until(T0 + 5 * 60_000);
    assert_eq!(day.pbx.call_ids().count(), 0);
}

#[test]
fn a_phone_still_ringing_after_a_conference_is_answered_in_the_new_call() {
    let (mut day, _) = Day::start(quiet_config(2));
    let call = day.by_hand(|pbx| pbx.inbound_call(CALLER, "2000")).unwrap();
    day.run_until(T0 + 2_000);

    // 2000 conferences 2001 in while 2001 still rings: the answer planned for the consultation call
    // finds nothing, so the generator answers in the conference.
    let conference = day.by_hand(|pbx| {
        let consultation = pbx.consultation_call(&conn(&call, "2000"), "2001").unwrap();
        pbx.conference_call(&conn(&call, "2000"), &consultation).unwrap()
    });
    assert_eq!(day.pbx.connection_state(&conference, "2001"), Some(State::Alerting));
    day.run_until(T0 + 4_000);
    assert_eq!(day.pbx.connection_state(&conference, "2001"), Some(State::Connected));
    day.run_until(T0 + 5 * 60_000);
    assert_eq!(day.pbx.call_ids().count(), 0);
}

#[test]
fn a_call_held_when_its_agent_answered_another_is_taken_back_afterwards() {
    let (mut day, _) = Day::start(quiet_config(1));
    let first = day.by_hand(|pbx| pbx.inbound_call(CALLER, "2000")).unwrap();
    day.run_until(T0 + 2_000);
    // A second call rings the busy agent (as a park recall does); answering it holds the first.
    let second = day.by_hand(|pbx| pbx.inbound_call(CALLER2, "2000")).unwrap();
    day.run_until(T0 + 4_000);
    assert_eq!(day.pbx.connection_state(&first, "2000"), Some(State::Held));
    assert_eq!(day.pbx.connection_state(&second, "2000"), Some(State::Connected));

    // The agent's script ends with one of the calls; the other must not stay on hold forever.
    day.run_until(T0 + 5 * 60_000);
    assert_eq!(day.pbx.call_ids().count(), 0);
}

#[test]
fn a_caller_on_hold_does_not_abandon_the_queue_it_left() {
    let (mut day, _) = Day::start(quiet_config(1));
    let call = day.by_hand(|pbx| pbx.inbound_call(CALLER, "6000")).unwrap();
    day.run_until(T0 + 1_000);
    assert_eq!(day.pbx.connection_state(&call, "2000"), Some(State::Connected));
    day.by_hand(|pbx| pbx.hold_call(&conn(&call, "2000"))).unwrap();

    // The caller's patience (at most 7.5 s) runs out while it is on hold, not while it waits.
    day.run_until(T0 + 9_000);
    assert_eq!(day.pbx.connection_state(&call, CALLER), Some(State::Connected));
    assert_eq!(day.pbx.connection_state(&call, "2000"), Some(State::Held));
}

#[test]
fn a_caller_waiting_in_the_queue_abandons_after_its_patience() {
    let (mut day, _) = Day::start(quiet_config(0));
    let call = day.by_hand(|pbx| pbx.inbound_call(CALLER, "6000")).unwrap();
    day.run_until(T0 + 2_000);
    assert_eq!(day.pbx.connection_state(&call, "6000"), Some(State::Queued));
    day.run_until(T0 + 8_000);
    assert!(day.pbx.snapshot_call(&call).is_none(), "the caller should have given up");
}

#[test]
fn two_outside_parties_joined_by_a_transfer_hang_up_after_a_while() {
    let (mut day, _) = Day::start(quiet_config(1));
    let call = day.by_hand(|pbx| pbx.inbound_call(CALLER, "2000")).unwrap();
    day.run_until(T0 + 2_000);
    // The agent consults an outside number, which answers, and transfers the caller to it: the call
    // left has no station, so no agent's script will end it.
    let consultation = day.by_hand(|pbx| pbx.consultation_call(&conn(&call, "2000"), CALLER2)).unwrap();
    day.run_until(T0 + 4_000);
    assert_eq!(day.pbx.connection_state(&consultation.call_id, CALLER2), Some(State::Connected));
    let joined = day.by_hand(|pbx| pbx.transfer_call(&conn(&call, "2000"), &consultation)).unwrap();
    assert!(day.pbx.calls_of("2000").is_empty());
    assert_eq!(day.pbx.connection_state(&joined, CALLER), Some(State::Connected));

    // They talk (at most 1.5 times the mean talk) and hang up.
    day.run_until(T0 + 4_000 + 31_000);
    assert_eq!(day.pbx.call_ids().count(), 0);
}

#[test]
fn at_closing_time_a_call_answered_is_talked_and_ended() {
    let config = TrafficConfig { conference_probability: 1.0, ..quiet_config(2) };
    let (mut day, _) = Day::start(config);
    day.traffic.stop_placing();
    day.by_hand(|pbx| pbx.inbound_call(CALLER, "2000")).unwrap();
    while !day.traffic.scripts.contains_key("2000") && day.now_ms < T0 + 60_000 {
        day.step_to(day.now_ms + 20);
    }
    // No conference, though every script before closing would have been one: talk, hang up.
    let script = day.traffic.scripts.get("2000").cloned().unwrap_or_default();
    assert!(matches!(script.as_slice(), [Step::AgentHangsUp | Step::CallerHangsUp]), "{script:?}");
    day.run_until(T0 + 60_000);
    assert_eq!(day.pbx.call_ids().count(), 0);
}
