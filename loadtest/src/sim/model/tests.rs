//! Model tests: every service's events and resulting connection states, the refusals with their causes,
//! the timers, and a property test that random service sequences keep the phone system consistent.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proto::pbx::event_report::Event;
use proto::pbx::{self, AgentState, ConnectionState as State, DeviceKind, ErrorCause, EventCause, request, response};

use super::{Layout, MAX_CALL_PARTIES, Pbx, PbxEvent, ServiceError, snapshot_pages};

const T0: u64 = 1_700_000_000_000;
const QUEUE: &str = "6000";
const CALLER: &str = "+4930111";
const CALLER2: &str = "+4930222";
const OUTSIDE: &str = "+4930999";
const A: &str = "2000";
const B: &str = "2001";
const C: &str = "2002";

/// Four stations, one queue and two orbits: small enough to fill the orbits, big enough for a conference.
fn layout() -> Layout {
    Layout {
        pbx_name: "test-pbx".to_owned(),
        first_station: 2000,
        stations: 4,
        queues: vec![QUEUE.to_owned()],
        first_park_orbit: 700,
        park_orbits: 2,
        park_timeout_ms: 60_000,
        ring_no_answer_ms: 15_000,
        record_calls: true,
    }
}

fn new_pbx() -> Pbx {
    Pbx::new(layout(), T0)
}

fn conn(call_id: &str, device: &str) -> pbx::ConnectionId {
    pbx::ConnectionId { call_id: call_id.to_owned(), device_id: device.to_owned() }
}

fn devices(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// An event as the tests compare it: everything but the timestamp, which only the timer tests check.
type Seen = (EventCause, Event, BTreeSet<String>);

fn seen(cause: EventCause, event: Event, concerned: &[&str]) -> Seen {
    (cause, event, devices(concerned))
}

fn take(pbx: &mut Pbx) -> Vec<Seen> {
    pbx.drain_events().into_iter().map(|event| (event.cause, event.event, event.devices)).collect()
}

fn cause_of<T: std::fmt::Debug>(result: Result<T, ServiceError>) -> ErrorCause {
    result.expect_err("the service should be refused").cause
}

fn agent(state: AgentState, agent_id: &str, reason: &str) -> pbx::AgentInfo {
    pbx::AgentInfo {
        state: state as i32,
        agent_id: agent_id.to_owned(),
        roles: vec!["agent".to_owned()],
        reason: reason.to_owned(),
    }
}

fn log_on(pbx: &mut Pbx, device: &str) {
    pbx.set_agent_state(device, AgentState::Ready, &format!("A{device}"), &["agent".to_owned()], "").unwrap();
    pbx.drain_events();
}

fn set_state(pbx: &mut Pbx, device: &str, state: AgentState) {
    pbx.set_agent_state(device, state, "", &[], "").unwrap();
    pbx.drain_events();
}

fn parties(pbx: &Pbx, call_id: &str) -> Vec<(String, State)> {
    let call = pbx.snapshot_call(call_id).expect("the call should exist");
    call.parties.into_iter().map(|party| (party.device_id, State::try_from(party.state).unwrap())).collect()
}

fn party_list(list: &[(&str, State)]) -> Vec<(String, State)> {
    list.iter().map(|(device, state)| ((*device).to_owned(), *state)).collect()
}

// ===== Event builders, one per event type =====

fn originated(call_id: &str, device: &str, calling: &str, called: &str) -> Event {
    Event::Originated(pbx::OriginatedEvent {
        originating: Some(conn(call_id, device)),
        calling_device: calling.to_owned(),
        called_device: called.to_owned(),
    })
}

fn delivered(call_id: &str, device: &str, calling: &str, called: &str, redirected_from: &str) -> Event {
    Event::Delivered(pbx::DeliveredEvent {
        alerting: Some(conn(call_id, device)),
        calling_device: calling.to_owned(),
        called_device: called.to_owned(),
        last_redirection_device: redirected_from.to_owned(),
    })
}

fn established(call_id: &str, device: &str, calling: &str, called: &str) -> Event {
    Event::Established(pbx::EstablishedEvent {
        answering: Some(conn(call_id, device)),
        calling_device: calling.to_owned(),
        called_device: called.to_owned(),
        // The default layout records every call.
        recording_url: format!("https://recordings.pbx-sim.invalid/{call_id}.wav"),
    })
}

fn queued(call_id: &str, calling: &str, called: &str, calls_in_queue: u32) -> Event {
    Event::Queued(pbx::QueuedEvent {
        queued: Some(conn(call_id, QUEUE)),
        queue_device: QUEUE.to_owned(),
        calling_device: calling.to_owned(),
        called_device: called.to_owned(),
        calls_in_queue,
    })
}

fn diverted(call_id: &str, to: &str) -> Event {
    Event::Diverted(pbx::DivertedEvent {
        connection: Some(conn(call_id, QUEUE)),
        diverting_device: QUEUE.to_owned(),
        new_destination: to.to_owned(),
    })
}

fn held(call_id: &str, device: &str) -> Event {
    Event::Held(pbx::HeldEvent { held: Some(conn(call_id, device)) })
}

fn retrieved(call_id: &str, device: &str) -> Event {
    Event::Retrieved(pbx::RetrievedEvent { retrieved: Some(conn(call_id, device)) })
}

fn cleared(call_id: &str, device: &str) -> Event {
    Event::ConnectionCleared(pbx::ConnectionClearedEvent { dropped: Some(conn(call_id, device)) })
}

fn call_cleared(call_id: &str) -> Event {
    Event::CallCleared(pbx::CallClearedEvent { call_id: call_id.to_owned() })
}

fn failed(call_id: &str, device: &str) -> Event {
    Event::Failed(pbx::FailedEvent { failed: Some(conn(call_id, device)), called_device: device.to_owned() })
}

fn service_initiated(call_id: &str, device: &str, called: &str) -> Event {
    Event::ServiceInitiated(pbx::ServiceInitiatedEvent {
        initiated: Some(conn(call_id, device)),
        calling_device: device.to_owned(),
        called_device: called.to_owned(),
    })
}

fn parked(call_id: &str, device: &str, parking: &str, park_id: &str) -> Event {
    Event::Parked(pbx::ParkedEvent {
        parked: Some(conn(call_id, device)),
        parking_device: parking.to_owned(),
        park_id: park_id.to_owned(),
    })
}

fn park_recall(call_id: &str, park_id: &str, recall_device: &str) -> Event {
    Event::ParkRecall(pbx::ParkRecallEvent {
        call_id: call_id.to_owned(),
        park_id: park_id.to_owned(),
        recall_device: recall_device.to_owned(),
    })
}

fn agent_state(device: &str, info: pbx::AgentInfo) -> Event {
    Event::AgentState(pbx::AgentStateEvent { device_id: device.to_owned(), agent: Some(info) })
}

fn pair(old_call: &str, new_call: &str, device: &str) -> pbx::ConnectionPair {
    pbx::ConnectionPair { old_connection: Some(conn(old_call, device)), new_connection: Some(conn(new_call, device)) }
}

// ===== Scenarios the tests build on =====

/// An outside caller rings station `to` directly and the station answers; returns the call id.
fn answered_direct_call(pbx: &mut Pbx, from: &str, to: &str) -> String {
    let call_id = pbx.inbound_call(from, to).unwrap();
    pbx.answer_call(&conn(&call_id, to)).unwrap();
    pbx.drain_events();
    call_id
}

/// Station `A` talks to `CALLER`, consults `B` and `B` answers: returns (held call, consultation call).
fn consultation_answered(pbx: &mut Pbx) -> (String, String) {
    let primary = answered_direct_call(pbx, CALLER, A);
    let consultation = pbx.consultation_call(&conn(&primary, A), B).unwrap();
    pbx.answer_call(&conn(&consultation.call_id, B)).unwrap();
    pbx.drain_events();
    (primary, consultation.call_id)
}

// ===== ACD queue =====

#[test]
fn inbound_call_to_queue_without_ready_agents_is_queued() {
    let mut pbx = new_pbx();
    let call = pbx.inbound_call(CALLER, QUEUE).unwrap();
    assert_eq!(call, "C1");
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NewCall, originated("C1", CALLER, CALLER, QUEUE), &[CALLER, QUEUE]),
            seen(EventCause::NewCall, queued("C1", CALLER, QUEUE, 1), &[CALLER, QUEUE]),
        ]
    );
    assert_eq!(parties(&pbx, "C1"), party_list(&[(CALLER, State::Connected), (QUEUE, State::Queued)]));
    assert_eq!(pbx.calls_of(QUEUE), vec!["C1".to_owned()]);
    assert_eq!(pbx.snapshot_call("C1").unwrap().queue_device, QUEUE);

    // A second call is counted behind the first.
    pbx.inbound_call(CALLER2, QUEUE).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events[1], seen(EventCause::NewCall, queued("C2", CALLER2, QUEUE, 2), &[CALLER2, QUEUE]));
}

#[test]
fn agent_becoming_ready_is_offered_the_queued_call() {
    let mut pbx = new_pbx();
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.drain_events();

    pbx.set_agent_state(A, AgentState::Ready, "A2000", &["agent".to_owned()], "").unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::KeyOperation, agent_state(A, agent(AgentState::Ready, "A2000", "")), &[A]),
            seen(EventCause::AcdDistribution, diverted("C1", A), &[CALLER, QUEUE]),
            seen(EventCause::AcdDistribution, delivered("C1", A, CALLER, QUEUE, QUEUE), &[CALLER, A]),
        ]
    );
    assert_eq!(parties(&pbx, "C1"), party_list(&[(CALLER, State::Connected), (A, State::Alerting)]));
    assert!(pbx.calls_of(QUEUE).is_empty());
    assert_eq!(pbx.calls_of(A), vec!["C1".to_owned()]);
}

#[test]
fn queued_call_goes_to_the_longest_idle_ready_agent() {
    let mut pbx = new_pbx();
    // B has been idle longer than A, although A sorts first.
    log_on(&mut pbx, B);
    pbx.advance_to(T0 + 1_000);
    log_on(&mut pbx, A);
    pbx.advance_to(T0 + 2_000);

    pbx.inbound_call(CALLER, QUEUE).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events[1], seen(EventCause::NewCall, queued("C1", CALLER, QUEUE, 1), &[CALLER, QUEUE]));
    assert_eq!(events[2], seen(EventCause::AcdDistribution, diverted("C1", B), &[CALLER, QUEUE]));
    assert_eq!(events[3].1, delivered("C1", B, CALLER, QUEUE, QUEUE));

    pbx.inbound_call(CALLER2, QUEUE).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events[3].1, delivered("C2", A, CALLER2, QUEUE, QUEUE));

    // Busy agents are not offered calls.
    pbx.inbound_call(OUTSIDE, QUEUE).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events.len(), 2);
    assert_eq!(parties(&pbx, "C3")[1], (QUEUE.to_owned(), State::Queued));
}

#[test]
fn agents_not_ready_logged_off_or_in_do_not_disturb_are_not_offered_calls() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    set_state(&mut pbx, A, AgentState::NotReady);
    log_on(&mut pbx, B);
    set_state(&mut pbx, B, AgentState::DoNotDisturb);
    log_on(&mut pbx, C);
    set_state(&mut pbx, C, AgentState::WorkingAfterCall);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state("C1", QUEUE), Some(State::Queued));

    set_state(&mut pbx, C, AgentState::Ready);
    assert_eq!(pbx.connection_state("C1", C), Some(State::Alerting));
}

#[test]
fn answering_an_acd_call_establishes_it() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.drain_events();

    pbx.answer_call(&conn("C1", A)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NewCall, established("C1", A, CALLER, QUEUE), &[CALLER, A])]);
    assert_eq!(parties(&pbx, "C1"), party_list(&[(CALLER, State::Connected), (A, State::Connected)]));

    // The ring-no-answer timer of an answered call does nothing.
    pbx.advance_to(T0 + 60_000);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.agent(A).unwrap().state, AgentState::Ready as i32);
}

#[test]
fn ring_no_answer_puts_the_call_back_at_the_queue_head_and_the_agent_not_ready() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.inbound_call(CALLER2, QUEUE).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.next_timer_ms(), Some(T0 + 15_000));

    pbx.advance_to(T0 + 14_999);
    assert!(pbx.drain_events().is_empty());

    pbx.advance_to(T0 + 20_000);
    let events = pbx.drain_events();
    assert!(events.iter().all(|event| event.timestamp_ms == T0 + 15_000));
    assert_eq!(
        events.into_iter().map(|event| (event.cause, event.event, event.devices)).collect::<Vec<_>>(),
        vec![
            seen(EventCause::Redirected, cleared("C1", A), &[CALLER, A]),
            seen(EventCause::Redirected, queued("C1", CALLER, QUEUE, 2), &[CALLER, QUEUE]),
            seen(
                EventCause::KeyOperation,
                agent_state(A, agent(AgentState::NotReady, "A2000", "ring-no-answer")),
                &[A]
            ),
        ]
    );
    assert_eq!(pbx.agent(A).unwrap().reason, "ring-no-answer");

    // The call that rang first is back ahead of the one that waited.
    log_on(&mut pbx, B);
    assert_eq!(pbx.connection_state("C1", B), Some(State::Alerting));
    assert_eq!(pbx.connection_state("C2", QUEUE), Some(State::Queued));
}

#[test]
fn agent_rejecting_a_ringing_acd_call_requeues_it_for_the_next_agent() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, B);
    pbx.advance_to(T0 + 1_000);
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state("C1", B), Some(State::Alerting));

    // B rejects later, so A has now been idle longer than B.
    pbx.advance_to(T0 + 2_000);
    pbx.clear_connection(&conn("C1", B)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared("C1", B), &[CALLER, B]),
            seen(EventCause::Redirected, queued("C1", CALLER, QUEUE, 1), &[CALLER, QUEUE]),
            seen(EventCause::AcdDistribution, diverted("C1", A), &[CALLER, QUEUE]),
            seen(EventCause::AcdDistribution, delivered("C1", A, CALLER, QUEUE, QUEUE), &[CALLER, A]),
        ]
    );
    // Rejecting is not a ring-no-answer: the agent stays ready.
    assert_eq!(pbx.agent(B).unwrap().state, AgentState::Ready as i32);
}

#[test]
fn ring_no_answer_times_each_offer_from_when_it_started_ringing() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    // The only agent rejects at 5 s; the call comes straight back to it.
    pbx.advance_to(T0 + 5_000);
    pbx.clear_connection(&conn("C1", A)).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state("C1", A), Some(State::Alerting));

    // The first offer's timer must not cut the second offer short.
    pbx.advance_to(T0 + 19_999);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.connection_state("C1", A), Some(State::Alerting));

    pbx.advance_to(T0 + 20_000);
    let events = take(&mut pbx);
    assert_eq!(events[0], seen(EventCause::Redirected, cleared("C1", A), &[CALLER, A]));
    assert_eq!(pbx.agent(A).unwrap().state, AgentState::NotReady as i32);
}

#[test]
fn caller_abandoning_in_queue_ends_the_call() {
    let mut pbx = new_pbx();
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.drain_events();

    pbx.clear_connection(&conn("C1", CALLER)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared("C1", CALLER), &[CALLER, QUEUE]),
            seen(EventCause::NormalClearing, cleared("C1", QUEUE), &[CALLER, QUEUE]),
            seen(EventCause::NormalClearing, call_cleared("C1"), &[CALLER, QUEUE]),
        ]
    );
    assert!(pbx.snapshot_call("C1").is_none());
    assert!(pbx.calls_of(QUEUE).is_empty());

    // Nothing is left to offer.
    log_on(&mut pbx, A);
    assert!(pbx.calls_of(A).is_empty());
}

#[test]
fn caller_abandoning_while_the_agent_rings_ends_the_call_and_the_timer_does_nothing() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.drain_events();

    pbx.clear_connection(&conn("C1", CALLER)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared("C1", CALLER), &[CALLER, A]),
            seen(EventCause::NormalClearing, cleared("C1", A), &[CALLER, A]),
            seen(EventCause::NormalClearing, call_cleared("C1"), &[CALLER, A]),
        ]
    );
    pbx.advance_to(T0 + 60_000);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.agent(A).unwrap().state, AgentState::Ready as i32);
}

// ===== Answer, hold, retrieve, clear =====

#[test]
fn inbound_call_to_a_station_rings_it() {
    let mut pbx = new_pbx();
    pbx.inbound_call(CALLER, A).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NewCall, originated("C1", CALLER, CALLER, A), &[CALLER, A]),
            seen(EventCause::NewCall, delivered("C1", A, CALLER, A, ""), &[CALLER, A]),
        ]
    );
    assert_eq!(parties(&pbx, "C1"), party_list(&[(CALLER, State::Connected), (A, State::Alerting)]));
}

#[test]
fn inbound_call_refuses_bad_numbers() {
    let mut pbx = new_pbx();
    assert_eq!(cause_of(pbx.inbound_call("not-a-number", QUEUE)), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.inbound_call(A, QUEUE)), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.inbound_call(CALLER, "700")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.inbound_call(CALLER, OUTSIDE)), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.inbound_call(CALLER, "nowhere")), ErrorCause::InvalidCalledDevice);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.call_ids().count(), 0);
}

#[test]
fn inbound_call_to_a_do_not_disturb_station_fails_and_ends() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    set_state(&mut pbx, A, AgentState::DoNotDisturb);

    pbx.inbound_call(CALLER, A).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NewCall, originated("C1", CALLER, CALLER, A), &[CALLER, A]),
            seen(EventCause::Busy, failed("C1", A), &[CALLER, A]),
            seen(EventCause::Busy, cleared("C1", CALLER), &[CALLER]),
            seen(EventCause::Busy, call_cleared("C1"), &[CALLER]),
        ]
    );
    assert_eq!(pbx.call_ids().count(), 0);
    assert!(pbx.calls_of(A).is_empty());
    assert!(pbx.calls_of(CALLER).is_empty());
}

#[test]
fn hold_on_a_ringing_call_is_an_invalid_object_state() {
    let mut pbx = new_pbx();
    pbx.inbound_call(CALLER, A).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.hold_call(&conn("C1", A))), ErrorCause::InvalidObjectState);
    assert_eq!(cause_of(pbx.retrieve_call(&conn("C1", A))), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.connection_state("C1", A), Some(State::Alerting));
}

#[test]
fn hold_and_retrieve_change_the_station_connection_only() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);

    pbx.hold_call(&conn(&call, A)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::KeyOperation, held(&call, A), &[CALLER, A])]);
    assert_eq!(parties(&pbx, &call), party_list(&[(CALLER, State::Connected), (A, State::Held)]));

    // Holding twice, or answering a held call, is refused.
    assert_eq!(cause_of(pbx.hold_call(&conn(&call, A))), ErrorCause::InvalidObjectState);
    assert_eq!(cause_of(pbx.answer_call(&conn(&call, A))), ErrorCause::InvalidObjectState);

    pbx.retrieve_call(&conn(&call, A)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::KeyOperation, retrieved(&call, A), &[CALLER, A])]);
    assert_eq!(parties(&pbx, &call), party_list(&[(CALLER, State::Connected), (A, State::Connected)]));
    assert_eq!(cause_of(pbx.retrieve_call(&conn(&call, A))), ErrorCause::InvalidObjectState);
}

#[test]
fn hold_is_a_station_service() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    assert_eq!(cause_of(pbx.hold_call(&conn(&call, CALLER))), ErrorCause::InvalidDeviceId);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn answering_while_another_call_is_connected_holds_that_call_first() {
    let mut pbx = new_pbx();
    let first = answered_direct_call(&mut pbx, CALLER, A);
    let second = pbx.inbound_call(CALLER2, A).unwrap();
    pbx.drain_events();

    pbx.answer_call(&conn(&second, A)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::KeyOperation, held(&first, A), &[CALLER, A]),
            seen(EventCause::NewCall, established(&second, A, CALLER2, A), &[CALLER2, A]),
        ]
    );
    assert_eq!(pbx.connection_state(&first, A), Some(State::Held));
    assert_eq!(pbx.connection_state(&second, A), Some(State::Connected));
}

#[test]
fn retrieving_while_another_call_is_connected_holds_that_call_first() {
    let mut pbx = new_pbx();
    let first = answered_direct_call(&mut pbx, CALLER, A);
    let second = pbx.inbound_call(CALLER2, A).unwrap();
    pbx.answer_call(&conn(&second, A)).unwrap();
    pbx.drain_events();

    pbx.retrieve_call(&conn(&first, A)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::KeyOperation, held(&second, A), &[CALLER2, A]),
            seen(EventCause::KeyOperation, retrieved(&first, A), &[CALLER, A]),
        ]
    );
    assert_eq!(pbx.connection_state(&first, A), Some(State::Connected));
    assert_eq!(pbx.connection_state(&second, A), Some(State::Held));
}

#[test]
fn an_outside_party_answering_does_not_hold_its_other_calls() {
    let mut pbx = new_pbx();
    // The same outside number is on two trunk calls: one it placed, one it is being called on.
    let inbound = answered_direct_call(&mut pbx, CALLER, A);
    let outbound = pbx.make_call(B, CALLER).unwrap();
    pbx.answer_call(&outbound).unwrap();
    pbx.drain_events();

    pbx.answer_call(&conn(&outbound.call_id, CALLER)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![seen(EventCause::NewCall, established(&outbound.call_id, CALLER, B, CALLER), &[B, CALLER])]
    );
    assert_eq!(pbx.connection_state(&inbound, CALLER), Some(State::Connected));
}

#[test]
fn clearing_a_connection_of_a_two_party_call_ends_it() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);

    pbx.clear_connection(&conn(&call, CALLER)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared(&call, CALLER), &[CALLER, A]),
            seen(EventCause::NormalClearing, cleared(&call, A), &[CALLER, A]),
            seen(EventCause::NormalClearing, call_cleared(&call), &[CALLER, A]),
        ]
    );
    assert!(pbx.snapshot_call(&call).is_none());
    assert!(pbx.calls_of(A).is_empty());
    assert!(pbx.calls_of(CALLER).is_empty());
    assert_eq!(cause_of(pbx.clear_connection(&conn(&call, A))), ErrorCause::InvalidConnectionId);
}

#[test]
fn clear_call_ends_the_call_for_every_party() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.clear_call(&call).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared(&call, CALLER), &[CALLER, A]),
            seen(EventCause::NormalClearing, cleared(&call, A), &[A]),
            seen(EventCause::NormalClearing, call_cleared(&call), &[CALLER, A]),
        ]
    );
    assert_eq!(pbx.call_ids().count(), 0);
    assert_eq!(cause_of(pbx.clear_call(&call)), ErrorCause::InvalidConnectionId);
}

#[test]
fn a_station_ending_its_call_frees_it_for_the_queue() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.answer_call(&conn("C1", A)).unwrap();
    pbx.inbound_call(CALLER2, QUEUE).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state("C2", QUEUE), Some(State::Queued));

    pbx.clear_connection(&conn("C1", A)).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events[3], seen(EventCause::AcdDistribution, diverted("C2", A), &[CALLER2, QUEUE]));
    assert_eq!(pbx.connection_state("C2", A), Some(State::Alerting));
}

// ===== Click-to-dial =====

#[test]
fn make_call_to_an_outside_number_initiates_then_dials_when_the_station_answers() {
    let mut pbx = new_pbx();
    let initiated = pbx.make_call(A, OUTSIDE).unwrap();
    assert_eq!(initiated, conn("C1", A));
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NewCall, service_initiated("C1", A, OUTSIDE), &[A])]);
    assert_eq!(parties(&pbx, "C1"), party_list(&[(A, State::Initiated)]));

    pbx.answer_call(&initiated).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NewCall, originated("C1", A, A, OUTSIDE), &[A]),
            seen(EventCause::NewCall, delivered("C1", OUTSIDE, A, OUTSIDE, ""), &[A, OUTSIDE]),
        ]
    );
    assert_eq!(parties(&pbx, "C1"), party_list(&[(A, State::Connected), (OUTSIDE, State::Alerting)]));

    pbx.answer_call(&conn("C1", OUTSIDE)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NewCall, established("C1", OUTSIDE, A, OUTSIDE), &[A, OUTSIDE])]);
    assert_eq!(parties(&pbx, "C1"), party_list(&[(A, State::Connected), (OUTSIDE, State::Connected)]));
}

#[test]
fn make_call_to_a_station_rings_it_once_the_caller_answers() {
    let mut pbx = new_pbx();
    let initiated = pbx.make_call(A, B).unwrap();
    pbx.answer_call(&initiated).unwrap();
    pbx.drain_events();
    assert_eq!(parties(&pbx, "C1"), party_list(&[(A, State::Connected), (B, State::Alerting)]));
    pbx.answer_call(&conn("C1", B)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NewCall, established("C1", B, A, B), &[A, B])]);
}

#[test]
fn make_call_refuses_invalid_numbers_itself_and_do_not_disturb_stations() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, B);
    set_state(&mut pbx, B, AgentState::DoNotDisturb);
    assert_eq!(cause_of(pbx.make_call(A, "12")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.make_call(A, "call-me")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.make_call(A, "")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.make_call(A, "700")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.make_call(A, A)), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.make_call(A, B)), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.make_call("9999", OUTSIDE)), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.make_call(OUTSIDE, A)), ErrorCause::InvalidDeviceId);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.call_ids().count(), 0);
}

#[test]
fn make_call_to_a_station_that_went_do_not_disturb_fails_when_dialled() {
    let mut pbx = new_pbx();
    let initiated = pbx.make_call(A, B).unwrap();
    log_on(&mut pbx, B);
    set_state(&mut pbx, B, AgentState::DoNotDisturb);
    pbx.drain_events();

    pbx.answer_call(&initiated).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NewCall, originated("C1", A, A, B), &[A]),
            seen(EventCause::Busy, failed("C1", B), &[A, B]),
            seen(EventCause::Busy, cleared("C1", A), &[A]),
            seen(EventCause::Busy, call_cleared("C1"), &[A]),
        ]
    );
    assert_eq!(pbx.call_ids().count(), 0);
}

#[test]
fn make_call_to_the_queue_queues_once_the_caller_answers() {
    let mut pbx = new_pbx();
    let initiated = pbx.make_call(A, QUEUE).unwrap();
    pbx.drain_events();
    pbx.answer_call(&initiated).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NewCall, originated("C1", A, A, QUEUE), &[A]),
            seen(EventCause::NewCall, queued("C1", A, QUEUE, 1), &[A, QUEUE]),
        ]
    );
    log_on(&mut pbx, B);
    assert_eq!(pbx.connection_state("C1", B), Some(State::Alerting));
}

#[test]
fn clearing_an_unanswered_click_to_dial_ends_the_call() {
    let mut pbx = new_pbx();
    let initiated = pbx.make_call(A, OUTSIDE).unwrap();
    pbx.drain_events();

    // The station that hung up is told the call is over: no call is left without parties.
    pbx.clear_connection(&initiated).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared("C1", A), &[A]),
            seen(EventCause::NormalClearing, call_cleared("C1"), &[A]),
        ]
    );
    assert_eq!(pbx.call_ids().count(), 0);
    assert!(pbx.calls_of(A).is_empty());
}

// ===== Conference, consultation, transfer, alternate, reconnect =====

#[test]
fn consultation_holds_the_call_and_dials_from_the_same_station() {
    let mut pbx = new_pbx();
    let primary = answered_direct_call(&mut pbx, CALLER, A);

    let initiated = pbx.consultation_call(&conn(&primary, A), B).unwrap();
    assert_eq!(initiated, conn("C2", A));
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::KeyOperation, held(&primary, A), &[CALLER, A]),
            seen(EventCause::Consultation, service_initiated("C2", A, B), &[A]),
            seen(EventCause::Consultation, originated("C2", A, A, B), &[A]),
            seen(EventCause::Consultation, delivered("C2", B, A, B, ""), &[A, B]),
        ]
    );
    assert_eq!(parties(&pbx, &primary), party_list(&[(CALLER, State::Connected), (A, State::Held)]));
    assert_eq!(parties(&pbx, "C2"), party_list(&[(A, State::Connected), (B, State::Alerting)]));

    pbx.answer_call(&conn("C2", B)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NewCall, established("C2", B, A, B), &[A, B])]);
}

#[test]
fn consultation_needs_a_connected_call_and_a_dialable_destination() {
    let mut pbx = new_pbx();
    let primary = answered_direct_call(&mut pbx, CALLER, A);
    assert_eq!(cause_of(pbx.consultation_call(&conn(&primary, A), "bogus")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.consultation_call(&conn(&primary, A), A)), ErrorCause::InvalidCalledDevice);
    pbx.hold_call(&conn(&primary, A)).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.consultation_call(&conn(&primary, A), B)), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn transfer_merges_the_other_parties_into_a_new_call_without_the_transferring_station() {
    let mut pbx = new_pbx();
    let (primary, consultation) = consultation_answered(&mut pbx);
    assert_eq!((primary.as_str(), consultation.as_str()), ("C1", "C2"));

    let new_call = pbx.transfer_call(&conn("C1", A), &conn("C2", A)).unwrap();
    assert_eq!(new_call, "C3");
    assert_eq!(
        take(&mut pbx),
        vec![seen(
            EventCause::Transfer,
            Event::Transferred(pbx::TransferredEvent {
                primary_old_call: "C1".to_owned(),
                secondary_old_call: "C2".to_owned(),
                transferring_device: A.to_owned(),
                transferred_to_device: B.to_owned(),
                new_call_id: "C3".to_owned(),
                connections: vec![pair("C1", "C3", CALLER), pair("C2", "C3", B)],
            }),
            &[CALLER, A, B],
        )]
    );
    assert_eq!(parties(&pbx, "C3"), party_list(&[(CALLER, State::Connected), (B, State::Connected)]));
    assert!(pbx.snapshot_call("C1").is_none());
    assert!(pbx.snapshot_call("C2").is_none());
    assert!(pbx.calls_of(A).is_empty());
    assert_eq!(pbx.calls_of(B), vec!["C3".to_owned()]);
    assert_eq!(pbx.calls_of(CALLER), vec!["C3".to_owned()]);
    let call = pbx.snapshot_call("C3").unwrap();
    assert_eq!((call.calling_device.as_str(), call.called_device.as_str()), (CALLER, B));
}

#[test]
fn transfer_before_the_consulted_station_answers_leaves_it_ringing() {
    let mut pbx = new_pbx();
    let primary = answered_direct_call(&mut pbx, CALLER, A);
    let consultation = pbx.consultation_call(&conn(&primary, A), B).unwrap();
    pbx.drain_events();

    let new_call = pbx.transfer_call(&conn(&primary, A), &consultation).unwrap();
    assert_eq!(parties(&pbx, &new_call), party_list(&[(CALLER, State::Connected), (B, State::Alerting)]));
    pbx.drain_events();
    pbx.answer_call(&conn(&new_call, B)).unwrap();
    // The recording is the call's from its start: it keeps the first call id's name.
    let Event::Established(mut expected) = established(&new_call, B, CALLER, B) else { unreachable!() };
    expected.recording_url = format!("https://recordings.pbx-sim.invalid/{primary}.wav");
    assert_eq!(take(&mut pbx)[0].1, Event::Established(expected));
}

#[test]
fn transfer_and_conference_need_a_held_and_an_active_call_of_one_station() {
    let mut pbx = new_pbx();
    let (primary, consultation) = consultation_answered(&mut pbx);
    let cases = [
        // Swapped roles: the held connection is not held, the active one is not connected.
        (conn(&consultation, A), conn(&primary, A), ErrorCause::InvalidObjectState),
        // Two different stations.
        (conn(&primary, A), conn(&consultation, B), ErrorCause::InvalidConnectionId),
        // One call twice.
        (conn(&primary, A), conn(&primary, A), ErrorCause::InvalidConnectionId),
        // A call the station is not in.
        (conn("C99", A), conn(&consultation, A), ErrorCause::InvalidConnectionId),
    ];
    for (held, active, cause) in cases {
        assert_eq!(cause_of(pbx.transfer_call(&held, &active)), cause, "transfer {held:?} {active:?}");
        assert_eq!(cause_of(pbx.conference_call(&held, &active)), cause, "conference {held:?} {active:?}");
        assert_eq!(cause_of(pbx.alternate_call(&active, &held)), cause, "alternate {held:?} {active:?}");
    }
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn transfer_and_conference_refuse_calls_that_share_another_party() {
    let mut pbx = new_pbx();
    // A and B talk; C joins by conference; A then consults B, who is already in the conference.
    let first = pbx.make_call(A, B).unwrap();
    pbx.answer_call(&first).unwrap();
    pbx.answer_call(&conn(&first.call_id, B)).unwrap();
    let consultation = pbx.consultation_call(&first, C).unwrap();
    pbx.answer_call(&conn(&consultation.call_id, C)).unwrap();
    let conference = pbx.conference_call(&first, &consultation).unwrap();
    let second = pbx.consultation_call(&conn(&conference, A), B).unwrap();
    pbx.answer_call(&conn(&second.call_id, B)).unwrap();
    pbx.drain_events();

    // Merging would give B two connections in one call.
    assert_eq!(cause_of(pbx.transfer_call(&conn(&conference, A), &second)), ErrorCause::InvalidObjectState);
    assert_eq!(cause_of(pbx.conference_call(&conn(&conference, A), &second)), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn conference_keeps_the_conferencing_station_connected_in_a_new_call() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);

    let new_call = pbx.conference_call(&conn("C1", A), &conn("C2", A)).unwrap();
    assert_eq!(new_call, "C3");
    assert_eq!(
        take(&mut pbx),
        vec![seen(
            EventCause::Conference,
            Event::Conferenced(pbx::ConferencedEvent {
                primary_old_call: "C1".to_owned(),
                secondary_old_call: "C2".to_owned(),
                conferencing_device: A.to_owned(),
                added_party: B.to_owned(),
                new_call_id: "C3".to_owned(),
                connections: vec![
                    pair("C1", "C3", CALLER),
                    pair("C1", "C3", A),
                    pair("C2", "C3", A),
                    pair("C2", "C3", B),
                ],
            }),
            &[CALLER, A, B],
        )]
    );
    assert_eq!(
        parties(&pbx, "C3"),
        party_list(&[(CALLER, State::Connected), (A, State::Connected), (B, State::Connected)])
    );
    assert_eq!(pbx.calls_of(A), vec!["C3".to_owned()]);
    assert_eq!(pbx.call_ids().collect::<Vec<_>>(), vec!["C3"]);
}

#[test]
fn a_conference_continues_when_one_party_leaves() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);
    pbx.conference_call(&conn("C1", A), &conn("C2", A)).unwrap();
    pbx.drain_events();

    pbx.clear_connection(&conn("C3", B)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NormalClearing, cleared("C3", B), &[CALLER, A, B])]);
    assert_eq!(parties(&pbx, "C3"), party_list(&[(CALLER, State::Connected), (A, State::Connected)]));

    // The conferencing station may leave too once it is a two-party call again: then it ends.
    pbx.clear_connection(&conn("C3", A)).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events.last().unwrap().1, call_cleared("C3"));
    assert_eq!(pbx.call_ids().count(), 0);
}

#[test]
fn the_conferencing_station_can_leave_the_other_two_talking() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);
    pbx.conference_call(&conn("C1", A), &conn("C2", A)).unwrap();
    pbx.drain_events();

    pbx.clear_connection(&conn("C3", A)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NormalClearing, cleared("C3", A), &[CALLER, A, B])]);
    assert_eq!(parties(&pbx, "C3"), party_list(&[(CALLER, State::Connected), (B, State::Connected)]));
}

#[test]
fn alternate_holds_the_active_call_and_retrieves_the_held_one() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);

    pbx.alternate_call(&conn("C2", A), &conn("C1", A)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::Alternate, held("C2", A), &[A, B]),
            seen(EventCause::Alternate, retrieved("C1", A), &[CALLER, A]),
        ]
    );
    assert_eq!(pbx.connection_state("C1", A), Some(State::Connected));
    assert_eq!(pbx.connection_state("C2", A), Some(State::Held));

    // And back again.
    pbx.alternate_call(&conn("C1", A), &conn("C2", A)).unwrap();
    assert_eq!(pbx.connection_state("C1", A), Some(State::Held));
    assert_eq!(pbx.connection_state("C2", A), Some(State::Connected));
}

#[test]
fn reconnect_clears_the_active_call_and_retrieves_the_held_one() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);

    pbx.reconnect_call(&conn("C2", A), &conn("C1", A)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::Reconnect, cleared("C2", A), &[A, B]),
            seen(EventCause::Reconnect, cleared("C2", B), &[A, B]),
            seen(EventCause::Reconnect, call_cleared("C2"), &[A, B]),
            seen(EventCause::Reconnect, retrieved("C1", A), &[CALLER, A]),
        ]
    );
    assert!(pbx.snapshot_call("C2").is_none());
    assert_eq!(parties(&pbx, "C1"), party_list(&[(CALLER, State::Connected), (A, State::Connected)]));
}

#[test]
fn reconnect_needs_a_held_call_and_another_call_of_the_same_station() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);
    assert_eq!(cause_of(pbx.reconnect_call(&conn("C1", A), &conn("C2", A))), ErrorCause::InvalidObjectState);
    assert_eq!(cause_of(pbx.reconnect_call(&conn("C2", B), &conn("C1", A))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.reconnect_call(&conn("C1", A), &conn("C1", A))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.reconnect_call(&conn("C9", A), &conn("C1", A))), ErrorCause::InvalidConnectionId);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn reconnect_from_a_ringing_call_leaves_one_connected_call() {
    let mut pbx = new_pbx();
    // A holds CALLER's call and talks to CALLER2; a third call rings A, and A reconnects from the ringing
    // call to the held one.
    let held_call = answered_direct_call(&mut pbx, CALLER, A);
    let active = answered_direct_call(&mut pbx, CALLER2, A);
    let ringing = pbx.inbound_call(OUTSIDE, A).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state(&held_call, A), Some(State::Held));

    pbx.reconnect_call(&conn(&ringing, A), &conn(&held_call, A)).unwrap();
    let connected: Vec<String> =
        pbx.calls_of(A).into_iter().filter(|call| pbx.connection_state(call, A) == Some(State::Connected)).collect();
    assert_eq!(connected, vec![held_call.clone()]);
    assert_eq!(pbx.connection_state(&active, A), Some(State::Held));
}

#[test]
fn every_event_about_a_call_carries_the_customer_calls_linkage_id_across_transfers() {
    let mut pbx = new_pbx();
    let primary = answered_direct_call(&mut pbx, CALLER, A);
    let linkages =
        |pbx: &mut Pbx| -> BTreeSet<String> { pbx.drain_events().into_iter().map(|event| event.linkage).collect() };
    // A consultation is a call of its own until the transfer joins it to the customer's.
    let consultation = pbx.consultation_call(&conn(&primary, A), B).unwrap();
    pbx.answer_call(&conn(&consultation.call_id, B)).unwrap();
    assert_eq!(linkages(&mut pbx), ["C1".to_owned(), "C2".to_owned()].into());
    let joined = pbx.transfer_call(&conn("C1", A), &conn("C2", A)).unwrap();
    assert_eq!(linkages(&mut pbx), ["C1".to_owned()].into());
    pbx.single_step_transfer(&conn(&joined, B), C).unwrap();
    assert_eq!(linkages(&mut pbx), ["C1".to_owned()].into());
    let renamed = pbx.calls_of(C).pop().expect("C rings");
    assert_ne!(renamed, joined);
    assert_eq!(pbx.snapshot_call(&renamed).unwrap().call_linkage_id, "C1");
    // An event about no call has none.
    pbx.set_agent_state(A, AgentState::NotReady, "A7", &["agent".to_owned()], "break").unwrap();
    let events = pbx.drain_events();
    assert!(!events.is_empty() && events.iter().all(|event| event.linkage.is_empty()), "{events:?}");
}

#[test]
fn single_step_transfer_gives_the_call_a_new_id_and_rings_the_target() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    let call = answered_direct_call(&mut pbx, CALLER, A);

    pbx.single_step_transfer(&conn(&call, A), B).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(
                EventCause::SingleStepTransfer,
                Event::Transferred(pbx::TransferredEvent {
                    primary_old_call: "C1".to_owned(),
                    secondary_old_call: String::new(),
                    transferring_device: A.to_owned(),
                    transferred_to_device: B.to_owned(),
                    new_call_id: "C2".to_owned(),
                    connections: vec![pair("C1", "C2", CALLER)],
                }),
                &[CALLER, A],
            ),
            seen(EventCause::SingleStepTransfer, delivered("C2", B, CALLER, A, ""), &[CALLER, B]),
        ]
    );
    assert!(pbx.snapshot_call("C1").is_none());
    assert_eq!(parties(&pbx, "C2"), party_list(&[(CALLER, State::Connected), (B, State::Alerting)]));
    assert!(pbx.calls_of(A).is_empty());
}

#[test]
fn single_step_transfer_to_the_queue_queues_the_call() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.single_step_transfer(&conn(&call, A), QUEUE).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events[1], seen(EventCause::SingleStepTransfer, queued("C2", CALLER, A, 1), &[CALLER, QUEUE]));
    assert_eq!(parties(&pbx, "C2"), party_list(&[(CALLER, State::Connected), (QUEUE, State::Queued)]));
    log_on(&mut pbx, B);
    assert_eq!(pbx.connection_state("C2", B), Some(State::Alerting));
}

#[test]
fn single_step_transfer_refusals() {
    let mut pbx = new_pbx();
    let call = pbx.make_call(A, B).unwrap();
    pbx.answer_call(&call).unwrap();
    pbx.drain_events();
    // B is ringing, not connected.
    assert_eq!(cause_of(pbx.single_step_transfer(&conn(&call.call_id, B), C)), ErrorCause::InvalidObjectState);
    pbx.answer_call(&conn(&call.call_id, B)).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.single_step_transfer(&call, B)), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.single_step_transfer(&call, A)), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.single_step_transfer(&call, "x")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.single_step_transfer(&call, "700")), ErrorCause::InvalidCalledDevice);
    assert_eq!(cause_of(pbx.single_step_transfer(&conn("C7", A), C)), ErrorCause::InvalidConnectionId);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.call_ids().collect::<Vec<_>>(), vec![call.call_id.as_str()]);
}

// ===== Park =====

#[test]
fn park_clears_the_parker_and_parks_the_other_party() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);

    let result = pbx.park_call(&conn(&call, A), "").unwrap();
    assert_eq!(result, pbx::ParkCallResult { park_id: "700".to_owned(), parked: Some(conn(&call, CALLER)) });
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::Park, cleared(&call, A), &[CALLER, A]),
            seen(EventCause::Park, parked(&call, CALLER, A, "700"), &[CALLER, A, "700"]),
        ]
    );
    assert_eq!(parties(&pbx, &call), party_list(&[(CALLER, State::Connected), ("700", State::Queued)]));
    assert_eq!(pbx.snapshot_call(&call).unwrap().park_id, "700");
    assert!(pbx.calls_of(A).is_empty());
    assert_eq!(pbx.calls_of("700"), vec![call.clone()]);
}

#[test]
fn a_parked_call_is_picked_up_by_another_station_connected_at_once() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.park_call(&conn(&call, A), "701").unwrap();
    pbx.drain_events();

    let answering = pbx.retrieve_parked_call("701", B).unwrap();
    assert_eq!(answering, conn(&call, B));
    assert_eq!(take(&mut pbx), vec![seen(EventCause::Park, established(&call, B, CALLER, A), &[CALLER, B, "701"])]);
    assert_eq!(parties(&pbx, &call), party_list(&[(CALLER, State::Connected), (B, State::Connected)]));
    assert_eq!(pbx.snapshot_call(&call).unwrap().park_id, "");
    assert!(pbx.calls_of("701").is_empty());
    assert_eq!(cause_of(pbx.retrieve_parked_call("701", C)), ErrorCause::InvalidParkId);

    // The park timer of a call picked up in time does nothing.
    pbx.advance_to(T0 + 120_000);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn picking_up_a_parked_call_holds_the_stations_other_call() {
    let mut pbx = new_pbx();
    let parked_call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.park_call(&conn(&parked_call, A), "").unwrap();
    let talking = answered_direct_call(&mut pbx, CALLER2, B);

    pbx.retrieve_parked_call("700", B).unwrap();
    let events = take(&mut pbx);
    assert_eq!(events[0], seen(EventCause::KeyOperation, held(&talking, B), &[CALLER2, B]));
    assert_eq!(pbx.connection_state(&talking, B), Some(State::Held));
    assert_eq!(pbx.connection_state(&parked_call, B), Some(State::Connected));
}

#[test]
fn a_parked_station_cannot_pick_up_its_own_parked_call() {
    let mut pbx = new_pbx();
    let call = pbx.make_call(A, B).unwrap();
    pbx.answer_call(&call).unwrap();
    pbx.answer_call(&conn(&call.call_id, B)).unwrap();
    pbx.park_call(&call, "").unwrap();
    pbx.drain_events();

    assert_eq!(cause_of(pbx.retrieve_parked_call("700", B)), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.snapshot_call(&call.call_id).unwrap().park_id, "700");
}

#[test]
fn an_unanswered_park_recalls_the_parker() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.advance_to(T0 + 1_000);
    pbx.park_call(&conn(&call, A), "").unwrap();
    pbx.drain_events();
    assert_eq!(pbx.next_timer_ms(), Some(T0 + 61_000));

    pbx.advance_to(T0 + 60_999);
    assert!(pbx.drain_events().is_empty());

    pbx.advance_to(T0 + 61_000);
    let events = pbx.drain_events();
    assert!(events.iter().all(|event| event.timestamp_ms == T0 + 61_000));
    assert_eq!(
        events.into_iter().map(|event| (event.cause, event.event, event.devices)).collect::<Vec<_>>(),
        vec![
            seen(EventCause::Recall, park_recall(&call, "700", A), &[CALLER, "700"]),
            seen(EventCause::Recall, delivered(&call, A, CALLER, A, "700"), &[CALLER, A]),
        ]
    );
    assert_eq!(parties(&pbx, &call), party_list(&[(CALLER, State::Connected), (A, State::Alerting)]));
    assert_eq!(pbx.snapshot_call(&call).unwrap().park_id, "");
    assert_eq!(cause_of(pbx.retrieve_parked_call("700", B)), ErrorCause::InvalidParkId);

    pbx.answer_call(&conn(&call, A)).unwrap();
    assert_eq!(take(&mut pbx), vec![seen(EventCause::NewCall, established(&call, A, CALLER, A), &[CALLER, A])]);
}

#[test]
fn a_call_parked_again_recalls_after_its_own_timeout() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.park_call(&conn(&call, A), "").unwrap();
    pbx.advance_to(T0 + 10_000);
    pbx.retrieve_parked_call("700", B).unwrap();
    pbx.advance_to(T0 + 20_000);
    pbx.park_call(&conn(&call, B), "").unwrap();
    pbx.drain_events();

    // The first park's timer must not recall the second park early.
    pbx.advance_to(T0 + 79_999);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.snapshot_call(&call).unwrap().park_id, "700");

    pbx.advance_to(T0 + 80_000);
    assert_eq!(take(&mut pbx)[0], seen(EventCause::Recall, park_recall(&call, "700", B), &[CALLER, "700"]));
}

#[test]
fn park_refusals() {
    let mut pbx = new_pbx();
    let call = pbx.inbound_call(CALLER, A).unwrap();
    pbx.drain_events();
    // Ringing: nothing to park yet.
    assert_eq!(cause_of(pbx.park_call(&conn(&call, A), "")), ErrorCause::InvalidObjectState);
    pbx.answer_call(&conn(&call, A)).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.park_call(&conn(&call, CALLER), "")), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.park_call(&conn(&call, A), "6000")), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.park_call(&conn(&call, A), "799")), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.park_call(&conn("C9", A), "")), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.retrieve_parked_call("700", B)), ErrorCause::InvalidParkId);
    assert_eq!(cause_of(pbx.retrieve_parked_call("nowhere", B)), ErrorCause::InvalidParkId);
    assert_eq!(cause_of(pbx.retrieve_parked_call("700", CALLER)), ErrorCause::InvalidDeviceId);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn park_needs_exactly_one_other_connected_party() {
    let mut pbx = new_pbx();
    consultation_answered(&mut pbx);
    pbx.conference_call(&conn("C1", A), &conn("C2", A)).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.park_call(&conn("C3", A), "")), ErrorCause::InvalidObjectState);

    // A click-to-dial whose far end still rings has no connected other party.
    let outbound = pbx.make_call(C, OUTSIDE).unwrap();
    pbx.answer_call(&outbound).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.park_call(&outbound, "")), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn parking_when_every_orbit_is_occupied_is_resource_busy() {
    let mut pbx = new_pbx();
    let first = answered_direct_call(&mut pbx, CALLER, A);
    pbx.park_call(&conn(&first, A), "").unwrap();
    let second = answered_direct_call(&mut pbx, CALLER2, A);
    assert_eq!(pbx.park_call(&conn(&second, A), "").unwrap().park_id, "701");
    let third = answered_direct_call(&mut pbx, OUTSIDE, A);

    assert_eq!(cause_of(pbx.park_call(&conn(&third, A), "")), ErrorCause::ResourceBusy);
    assert_eq!(cause_of(pbx.park_call(&conn(&third, A), "700")), ErrorCause::ResourceBusy);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.connection_state(&third, A), Some(State::Connected));

    // Freeing an orbit makes parking possible again.
    pbx.retrieve_parked_call("700", B).unwrap();
    assert_eq!(pbx.park_call(&conn(&third, A), "").unwrap().park_id, "700");
}

#[test]
fn a_parked_caller_hanging_up_frees_the_orbit() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.park_call(&conn(&call, A), "").unwrap();
    pbx.drain_events();

    pbx.clear_connection(&conn(&call, CALLER)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared(&call, CALLER), &[CALLER, "700"]),
            seen(EventCause::NormalClearing, cleared(&call, "700"), &[CALLER, "700"]),
            seen(EventCause::NormalClearing, call_cleared(&call), &[CALLER, "700"]),
        ]
    );
    assert_eq!(cause_of(pbx.retrieve_parked_call("700", B)), ErrorCause::InvalidParkId);
    pbx.advance_to(T0 + 120_000);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn a_parked_call_is_picked_up_not_transferred_or_merged_by_its_parked_station() {
    let mut pbx = new_pbx();
    // A parks B: B, a station, sits in the orbit with a connected connection.
    let call = pbx.make_call(A, B).unwrap();
    pbx.answer_call(&call).unwrap();
    pbx.answer_call(&conn(&call.call_id, B)).unwrap();
    pbx.park_call(&call, "").unwrap();
    pbx.drain_events();
    let parked = conn(&call.call_id, B);
    assert_eq!(cause_of(pbx.single_step_transfer(&parked, C)), ErrorCause::InvalidObjectState);

    // B may consult from it, but not join it to the consultation.
    let consultation = pbx.consultation_call(&parked, C).unwrap();
    pbx.answer_call(&conn(&consultation.call_id, C)).unwrap();
    pbx.drain_events();
    assert_eq!(cause_of(pbx.transfer_call(&parked, &consultation)), ErrorCause::InvalidObjectState);
    assert_eq!(cause_of(pbx.conference_call(&parked, &consultation)), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.snapshot_call(&call.call_id).unwrap().park_id, "700");

    // The recall still rings the parker alone.
    pbx.advance_to(T0 + 60_000);
    assert_eq!(parties(&pbx, &call.call_id), party_list(&[(B, State::Held), (A, State::Alerting)]));
}

#[test]
fn clearing_the_orbit_connection_ends_the_parked_call_and_frees_the_orbit() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    pbx.park_call(&conn(&call, A), "").unwrap();
    pbx.drain_events();

    pbx.clear_connection(&conn(&call, "700")).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![
            seen(EventCause::NormalClearing, cleared(&call, "700"), &[CALLER, "700"]),
            seen(EventCause::NormalClearing, cleared(&call, CALLER), &[CALLER, "700"]),
            seen(EventCause::NormalClearing, call_cleared(&call), &[CALLER, "700"]),
        ]
    );
    assert_eq!(cause_of(pbx.retrieve_parked_call("700", B)), ErrorCause::InvalidParkId);
    let next = answered_direct_call(&mut pbx, CALLER2, A);
    assert_eq!(pbx.park_call(&conn(&next, A), "").unwrap().park_id, "700");
}

#[test]
fn a_transfer_to_a_queued_consultation_waits_in_the_queue() {
    let mut pbx = new_pbx();
    let primary = answered_direct_call(&mut pbx, CALLER, A);
    let consultation = pbx.consultation_call(&conn(&primary, A), QUEUE).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state(&consultation.call_id, QUEUE), Some(State::Queued));

    let new_call = pbx.transfer_call(&conn(&primary, A), &consultation).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![seen(
            EventCause::Transfer,
            Event::Transferred(pbx::TransferredEvent {
                primary_old_call: primary.clone(),
                secondary_old_call: consultation.call_id.clone(),
                transferring_device: A.to_owned(),
                transferred_to_device: QUEUE.to_owned(),
                new_call_id: new_call.clone(),
                connections: vec![pair(&primary, &new_call, CALLER), pair(&consultation.call_id, &new_call, QUEUE)],
            }),
            &[CALLER, A, QUEUE],
        )]
    );
    assert_eq!(parties(&pbx, &new_call), party_list(&[(CALLER, State::Connected), (QUEUE, State::Queued)]));

    // The transferred caller is offered to the next ready agent, from the queue it waits in.
    log_on(&mut pbx, B);
    assert_eq!(parties(&pbx, &new_call), party_list(&[(CALLER, State::Connected), (B, State::Alerting)]));
}

#[test]
fn a_conference_that_drops_its_queued_leg_no_longer_waits() {
    let mut pbx = new_pbx();
    let primary = answered_direct_call(&mut pbx, CALLER, A);
    let consultation = pbx.consultation_call(&conn(&primary, A), QUEUE).unwrap();
    let conference = pbx.conference_call(&conn(&primary, A), &consultation).unwrap();
    pbx.drain_events();
    assert_eq!(pbx.connection_state(&conference, QUEUE), Some(State::Queued));

    pbx.clear_connection(&conn(&conference, QUEUE)).unwrap();
    assert_eq!(
        take(&mut pbx),
        vec![seen(EventCause::NormalClearing, cleared(&conference, QUEUE), &[CALLER, A, QUEUE])]
    );
    // Nothing waits any more: a ready agent is not offered the conference.
    log_on(&mut pbx, B);
    assert!(pbx.calls_of(B).is_empty());
    assert_eq!(parties(&pbx, &conference), party_list(&[(CALLER, State::Connected), (A, State::Connected)]));
}

#[test]
fn two_calls_waiting_in_queues_cannot_be_merged() {
    let mut pbx = Pbx::new(Layout { queues: vec![QUEUE.to_owned(), "6001".to_owned()], ..layout() }, T0);
    let primary = answered_direct_call(&mut pbx, CALLER, A);
    let first = pbx.consultation_call(&conn(&primary, A), QUEUE).unwrap();
    pbx.hold_call(&first).unwrap();
    pbx.retrieve_call(&conn(&primary, A)).unwrap();
    let second = pbx.consultation_call(&conn(&primary, A), "6001").unwrap();
    // A holds the caller and both consultations wait, one in each queue: it holds one and talks on the other.
    pbx.hold_call(&second).unwrap();
    pbx.retrieve_call(&first).unwrap();
    pbx.drain_events();

    assert_eq!(cause_of(pbx.transfer_call(&second, &first)), ErrorCause::InvalidObjectState);
    assert_eq!(cause_of(pbx.conference_call(&second, &first)), ErrorCause::InvalidObjectState);
    assert!(pbx.drain_events().is_empty());
}

// ===== Agents =====

#[test]
fn logging_on_needs_an_agent_id() {
    let mut pbx = new_pbx();
    assert_eq!(cause_of(pbx.set_agent_state(A, AgentState::Ready, "", &[], "")), ErrorCause::InvalidAgentState);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.agent(A).unwrap().state, AgentState::LoggedOff as i32);
}

#[test]
fn one_agent_cannot_log_on_at_two_stations() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    assert_eq!(cause_of(pbx.set_agent_state(B, AgentState::Ready, "A2000", &[], "")), ErrorCause::ResourceBusy);
    // Another agent id at a station in use is refused too.
    assert_eq!(cause_of(pbx.set_agent_state(A, AgentState::NotReady, "A9", &[], "")), ErrorCause::InvalidAgentState);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.agent(B).unwrap().state, AgentState::LoggedOff as i32);

    // Once logged off at A, the agent may log on at B.
    pbx.set_agent_state(A, AgentState::LoggedOff, "", &[], "").unwrap();
    pbx.set_agent_state(B, AgentState::Ready, "A2000", &[], "").unwrap();
    assert_eq!(pbx.agent(B).unwrap().agent_id, "A2000");
}

#[test]
fn log_on_log_off_and_not_ready_reasons_are_reported() {
    let mut pbx = new_pbx();
    let roles = vec!["agent".to_owned(), "operator".to_owned()];
    pbx.set_agent_state(A, AgentState::NotReady, "A7", &roles, "lunch").unwrap();
    let info = pbx::AgentInfo {
        state: AgentState::NotReady as i32,
        agent_id: "A7".to_owned(),
        roles: roles.clone(),
        reason: "lunch".to_owned(),
    };
    assert_eq!(take(&mut pbx), vec![seen(EventCause::KeyOperation, agent_state(A, info.clone()), &[A])]);
    assert_eq!(pbx.agent(A), Some(&info));

    // A later change keeps the agent id and roles, and the reason only while not ready.
    pbx.set_agent_state(A, AgentState::Ready, "", &[], "ignored").unwrap();
    let ready = pbx::AgentInfo { state: AgentState::Ready as i32, reason: String::new(), ..info.clone() };
    assert_eq!(pbx.agent(A), Some(&ready));
    pbx.set_agent_state(A, AgentState::WorkingAfterCall, "A7", &[], "").unwrap();
    assert_eq!(pbx.agent(A).unwrap().state, AgentState::WorkingAfterCall as i32);
    assert_eq!(pbx.agent(A).unwrap().roles, roles);
    pbx.drain_events();

    pbx.set_agent_state(A, AgentState::LoggedOff, "", &[], "").unwrap();
    let logged_off = pbx::AgentInfo { state: AgentState::LoggedOff as i32, ..Default::default() };
    assert_eq!(take(&mut pbx), vec![seen(EventCause::KeyOperation, agent_state(A, logged_off.clone()), &[A])]);
    assert_eq!(pbx.agent(A), Some(&logged_off));
}

#[test]
fn unspecified_agent_state_and_non_stations_are_refused() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    assert_eq!(cause_of(pbx.set_agent_state(A, AgentState::Unspecified, "", &[], "")), ErrorCause::InvalidAgentState);
    assert_eq!(cause_of(pbx.set_agent_state(QUEUE, AgentState::Ready, "Q", &[], "")), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.set_agent_state("9999", AgentState::Ready, "Q", &[], "")), ErrorCause::InvalidDeviceId);
    let unknown_state = request::Service::SetAgentState(pbx::SetAgentStateRequest {
        device_id: A.to_owned(),
        requested: 42,
        ..Default::default()
    });
    assert_eq!(cause_of(pbx.execute(unknown_state)), ErrorCause::InvalidAgentState);
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.agent(A).unwrap().state, AgentState::Ready as i32);
}

// ===== Snapshots and the device list =====

/// Every page of the device list, in order, asking for `page_size` devices at a time.
fn all_pages(pbx: &Pbx, page_size: u32) -> Vec<pbx::ListDevicesResult> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = pbx.list_devices(&pbx::ListDevicesRequest { page_token, page_size }).expect("a page");
        page_token = page.next_page_token.clone();
        pages.push(page);
        if page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() <= 10_000, "the list never ends");
    }
}

#[test]
fn the_device_list_comes_in_pages_that_fit_a_frame() {
    let layout = Layout { stations: 4_000, first_station: 10_000, park_orbits: 200, ..Layout::default() };
    let mut pbx = Pbx::new(layout, T0);
    let everything = pbx.devices();
    let whole = pbx::Response {
        result: Some(response::Result::ListDevices(pbx::ListDevicesResult {
            devices: everything.clone(),
            next_page_token: String::new(),
        })),
    };
    assert!(prost::Message::encoded_len(&whole) > proto::wire::DEFAULT_MAX_FRAME_LENGTH, "one page cannot hold them");
    for (max_frame_length, page_size) in
        [(proto::wire::DEFAULT_MAX_FRAME_LENGTH, 0), (1_024, 0), (1_024, 7), (65_536, 3_000)]
    {
        pbx.set_max_frame_length(max_frame_length);
        let pages = all_pages(&pbx, page_size);
        assert!(pages.len() > 1);
        for page in &pages {
            let frame = pbx::Response { result: Some(response::Result::ListDevices(page.clone())) };
            assert!(proto::wire::HEADER_LEN + prost::Message::encoded_len(&frame) <= max_frame_length);
            assert!(page_size == 0 || page.devices.len() <= page_size as usize);
            assert!(!page.devices.is_empty());
        }
        let listed: Vec<pbx::DeviceInfo> = pages.into_iter().flat_map(|page| page.devices).collect();
        assert_eq!(listed, everything, "every device once, in order (frame {max_frame_length}, size {page_size})");
    }
    // A small list is one page, with no token.
    let small = new_pbx().list_devices(&pbx::ListDevicesRequest::default()).unwrap();
    assert_eq!(small.devices, new_pbx().devices());
    assert!(small.next_page_token.is_empty());
}

#[test]
fn a_page_token_the_pbx_never_gave_is_refused() {
    let pbx = new_pbx();
    let devices = pbx.devices().len();
    for token in ["x", "-1", "0", &devices.to_string(), "99999999999999999999999"] {
        let request = pbx::ListDevicesRequest { page_token: token.to_owned(), page_size: 0 };
        let error = pbx.list_devices(&request).expect_err(token);
        assert_eq!(error.cause, ErrorCause::MalformedRequest, "{token}");
        assert!(error.message.contains("page token"), "{}", error.message);
    }
}

#[test]
fn list_devices_names_stations_queues_and_orbits() {
    let mut pbx = new_pbx();
    let Ok(response::Result::ListDevices(list)) =
        pbx.execute(request::Service::ListDevices(pbx::ListDevicesRequest::default()))
    else {
        panic!("list_devices should answer with a device list");
    };
    let summary: Vec<(String, DeviceKind, String)> = list
        .devices
        .into_iter()
        .map(|device| (device.device_id, DeviceKind::try_from(device.kind).unwrap(), device.name))
        .collect();
    let expected = [
        ("2000", DeviceKind::Station, "Agent line 2000"),
        ("2001", DeviceKind::Station, "Agent line 2001"),
        ("2002", DeviceKind::Station, "Agent line 2002"),
        ("2003", DeviceKind::Station, "Agent line 2003"),
        (QUEUE, DeviceKind::AcdQueue, "ACD queue 6000"),
        ("700", DeviceKind::ParkOrbit, "Park orbit 700"),
        ("701", DeviceKind::ParkOrbit, "Park orbit 701"),
    ];
    let expected: Vec<(String, DeviceKind, String)> =
        expected.iter().map(|(id, kind, name)| ((*id).to_owned(), *kind, (*name).to_owned())).collect();
    assert_eq!(summary, expected);
}

#[test]
fn snapshot_device_gives_the_agent_and_every_call_with_all_parties() {
    let mut pbx = new_pbx();
    log_on(&mut pbx, A);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    pbx.answer_call(&conn("C1", A)).unwrap();
    pbx.inbound_call(CALLER2, A).unwrap();
    pbx.drain_events();

    let Ok(response::Result::SnapshotDevice(snapshot)) =
        pbx.execute(request::Service::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: A.to_owned() }))
    else {
        panic!("snapshot_device should answer with a device snapshot");
    };
    assert_eq!(
        snapshot.device,
        Some(pbx::DeviceInfo {
            device_id: A.to_owned(),
            kind: DeviceKind::Station as i32,
            name: "Agent line 2000".to_owned()
        })
    );
    assert_eq!(snapshot.agent, Some(agent(AgentState::Ready, "A2000", "")));
    let first = pbx::CallSnapshot {
        call_id: "C1".to_owned(),
        parties: vec![
            pbx::Party { device_id: CALLER.to_owned(), state: State::Connected as i32 },
            pbx::Party { device_id: A.to_owned(), state: State::Connected as i32 },
        ],
        calling_device: CALLER.to_owned(),
        called_device: QUEUE.to_owned(),
        queue_device: QUEUE.to_owned(),
        park_id: String::new(),
        recording_url: "https://recordings.pbx-sim.invalid/C1.wav".to_owned(),
        created_ms: T0,
        call_linkage_id: "C1".to_owned(),
    };
    let second = pbx::CallSnapshot {
        call_id: "C2".to_owned(),
        parties: vec![
            pbx::Party { device_id: CALLER2.to_owned(), state: State::Connected as i32 },
            pbx::Party { device_id: A.to_owned(), state: State::Alerting as i32 },
        ],
        calling_device: CALLER2.to_owned(),
        called_device: A.to_owned(),
        queue_device: String::new(),
        park_id: String::new(),
        recording_url: "https://recordings.pbx-sim.invalid/C2.wav".to_owned(),
        created_ms: T0,
        call_linkage_id: "C2".to_owned(),
    };
    assert_eq!(snapshot.calls, vec![first.clone(), second]);

    let Ok(response::Result::SnapshotCall(call)) =
        pbx.execute(request::Service::SnapshotCall(pbx::SnapshotCallRequest { call_id: "C1".to_owned() }))
    else {
        panic!("snapshot_call should answer with a call snapshot");
    };
    assert_eq!(call.call, Some(first));
}

#[test]
fn snapshot_of_queues_and_orbits_has_their_names_and_no_agent() {
    let mut pbx = new_pbx();
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    let queue = pbx.snapshot_device(QUEUE).unwrap();
    assert_eq!(
        queue.device,
        Some(pbx::DeviceInfo {
            device_id: QUEUE.to_owned(),
            kind: DeviceKind::AcdQueue as i32,
            name: "ACD queue 6000".to_owned()
        })
    );
    assert_eq!(queue.agent, None);
    assert_eq!(queue.calls.len(), 1);
    let orbit = pbx.snapshot_device("701").unwrap();
    assert_eq!(orbit.device.unwrap().name, "Park orbit 701");
    assert!(orbit.calls.is_empty());
}

#[test]
fn snapshots_of_unknown_devices_and_calls_are_refused() {
    let mut pbx = new_pbx();
    assert_eq!(cause_of(pbx.snapshot_device("9999")), ErrorCause::InvalidDeviceId);
    // Outside numbers are dialable but are not devices of this PBX.
    assert_eq!(cause_of(pbx.snapshot_device(OUTSIDE)), ErrorCause::InvalidDeviceId);
    assert_eq!(
        cause_of(pbx.execute(request::Service::SnapshotCall(pbx::SnapshotCallRequest { call_id: "C1".to_owned() }))),
        ErrorCause::InvalidConnectionId
    );
    assert!(pbx.snapshot_call("C1").is_none());
}

// ===== The dispatcher =====

#[test]
fn execute_carries_out_a_whole_call_through_the_service_requests() {
    use request::Service as S;
    let mut pbx = new_pbx();
    let some = |call: &str, device: &str| Some(conn(call, device));

    let result = pbx
        .execute(S::MakeCall(pbx::MakeCallRequest { calling_device: A.to_owned(), called_number: CALLER.to_owned() }));
    assert_eq!(result, Ok(response::Result::MakeCall(pbx::MakeCallResult { calling_connection: some("C1", A) })));
    let empty = pbx::Empty {};
    assert_eq!(
        pbx.execute(S::AnswerCall(pbx::AnswerCallRequest { connection: some("C1", A) })),
        Ok(response::Result::AnswerCall(empty))
    );
    pbx.execute(S::AnswerCall(pbx::AnswerCallRequest { connection: some("C1", CALLER) })).unwrap();
    assert_eq!(
        pbx.execute(S::HoldCall(pbx::HoldCallRequest { connection: some("C1", A) })),
        Ok(response::Result::HoldCall(empty))
    );
    assert_eq!(
        pbx.execute(S::RetrieveCall(pbx::RetrieveCallRequest { connection: some("C1", A) })),
        Ok(response::Result::RetrieveCall(empty))
    );
    assert_eq!(
        pbx.execute(S::ConsultationCall(pbx::ConsultationCallRequest {
            existing: some("C1", A),
            consulted_device: B.to_owned(),
        })),
        Ok(response::Result::ConsultationCall(pbx::ConsultationCallResult { initiated: some("C2", A) }))
    );
    pbx.execute(S::AnswerCall(pbx::AnswerCallRequest { connection: some("C2", B) })).unwrap();
    assert_eq!(
        pbx.execute(S::AlternateCall(pbx::AlternateCallRequest { active: some("C2", A), held: some("C1", A) })),
        Ok(response::Result::AlternateCall(empty))
    );
    assert_eq!(
        pbx.execute(S::AlternateCall(pbx::AlternateCallRequest { active: some("C1", A), held: some("C2", A) })),
        Ok(response::Result::AlternateCall(empty))
    );
    assert_eq!(
        pbx.execute(S::ConferenceCall(pbx::ConferenceCallRequest { held: some("C1", A), active: some("C2", A) })),
        Ok(response::Result::ConferenceCall(pbx::ConferenceCallResult { call_id: "C3".to_owned() }))
    );
    assert_eq!(
        pbx.execute(S::ClearConnection(pbx::ClearConnectionRequest { connection: some("C3", B) })),
        Ok(response::Result::ClearConnection(empty))
    );
    assert_eq!(
        pbx.execute(S::ConsultationCall(pbx::ConsultationCallRequest {
            existing: some("C3", A),
            consulted_device: C.to_owned(),
        })),
        Ok(response::Result::ConsultationCall(pbx::ConsultationCallResult { initiated: some("C4", A) }))
    );
    assert_eq!(
        pbx.execute(S::ReconnectCall(pbx::ReconnectCallRequest { active: some("C4", A), held: some("C3", A) })),
        Ok(response::Result::ReconnectCall(empty))
    );
    pbx.execute(S::ConsultationCall(pbx::ConsultationCallRequest {
        existing: some("C3", A),
        consulted_device: C.to_owned(),
    }))
    .unwrap();
    pbx.execute(S::AnswerCall(pbx::AnswerCallRequest { connection: some("C5", C) })).unwrap();
    assert_eq!(
        pbx.execute(S::TransferCall(pbx::TransferCallRequest { held: some("C3", A), active: some("C5", A) })),
        Ok(response::Result::TransferCall(pbx::TransferCallResult { call_id: "C6".to_owned() }))
    );
    assert_eq!(
        pbx.execute(S::ParkCall(pbx::ParkCallRequest { parking: some("C6", C), park_to: "701".to_owned() })),
        Ok(response::Result::ParkCall(pbx::ParkCallResult { park_id: "701".to_owned(), parked: some("C6", CALLER) }))
    );
    assert_eq!(
        pbx.execute(S::RetrieveParkedCall(pbx::RetrieveParkedCallRequest {
            park_id: "701".to_owned(),
            device_id: B.to_owned(),
        })),
        Ok(response::Result::RetrieveParkedCall(pbx::RetrieveParkedCallResult { connection: some("C6", B) }))
    );
    assert_eq!(
        pbx.execute(S::SingleStepTransferCall(pbx::SingleStepTransferCallRequest {
            active: some("C6", B),
            transferred_to: A.to_owned(),
        })),
        Ok(response::Result::SingleStepTransferCall(empty))
    );
    assert_eq!(parties(&pbx, "C7"), party_list(&[(CALLER, State::Connected), (A, State::Alerting)]));
    assert_eq!(
        pbx.execute(S::ClearCall(pbx::ClearCallRequest { call_id: "C7".to_owned() })),
        Ok(response::Result::ClearCall(empty))
    );
    assert_eq!(
        pbx.execute(S::SetAgentState(pbx::SetAgentStateRequest {
            device_id: A.to_owned(),
            requested: AgentState::NotReady as i32,
            agent_id: "A1".to_owned(),
            password: String::new(),
            roles: vec!["agent".to_owned()],
            reason: "training".to_owned(),
        })),
        Ok(response::Result::SetAgentState(empty))
    );
    assert_eq!(pbx.agent(A).unwrap().reason, "training");
    assert_eq!(pbx.call_ids().count(), 0);
}

#[test]
fn execute_refuses_link_services() {
    use request::Service as S;
    let mut pbx = new_pbx();
    let link_services = [
        S::Register(pbx::RegisterRequest::default()),
        S::Heartbeat(pbx::HeartbeatRequest {}),
        S::MonitorStart(pbx::MonitorStartRequest { device_id: A.to_owned() }),
        S::MonitorStop(pbx::MonitorStopRequest { monitor_id: 1 }),
    ];
    for service in link_services {
        assert_eq!(cause_of(pbx.execute(service)), ErrorCause::ServiceNotSupported);
    }
}

#[test]
fn execute_refuses_requests_without_their_connections_as_malformed() {
    use request::Service as S;
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    let some = Some(conn(&call, A));
    let requests = [
        S::AnswerCall(pbx::AnswerCallRequest { connection: None }),
        S::ClearConnection(pbx::ClearConnectionRequest { connection: None }),
        S::HoldCall(pbx::HoldCallRequest { connection: None }),
        S::RetrieveCall(pbx::RetrieveCallRequest { connection: None }),
        S::ParkCall(pbx::ParkCallRequest { parking: None, park_to: String::new() }),
        S::SingleStepTransferCall(pbx::SingleStepTransferCallRequest { active: None, transferred_to: B.to_owned() }),
        S::ConsultationCall(pbx::ConsultationCallRequest { existing: None, consulted_device: B.to_owned() }),
        S::TransferCall(pbx::TransferCallRequest { held: None, active: some.clone() }),
        S::TransferCall(pbx::TransferCallRequest { held: some.clone(), active: None }),
        S::ConferenceCall(pbx::ConferenceCallRequest { held: None, active: some.clone() }),
        S::ConferenceCall(pbx::ConferenceCallRequest { held: some.clone(), active: None }),
        S::AlternateCall(pbx::AlternateCallRequest { active: None, held: some.clone() }),
        S::AlternateCall(pbx::AlternateCallRequest { active: some.clone(), held: None }),
        S::ReconnectCall(pbx::ReconnectCallRequest { active: None, held: some.clone() }),
        S::ReconnectCall(pbx::ReconnectCallRequest { active: some, held: None }),
    ];
    for service in requests {
        let name = format!("{service:?}");
        assert_eq!(cause_of(pbx.execute(service)), ErrorCause::MalformedRequest, "{name}");
    }
    assert!(pbx.drain_events().is_empty());
    assert_eq!(pbx.connection_state(&call, A), Some(State::Connected));
}

#[test]
fn services_on_unknown_devices_and_connections_are_refused() {
    let mut pbx = new_pbx();
    let call = answered_direct_call(&mut pbx, CALLER, A);
    // A station that is not in the call, a call that does not exist, a device that is not a station.
    assert_eq!(cause_of(pbx.answer_call(&conn(&call, B))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.answer_call(&conn("C42", A))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.clear_connection(&conn("C42", A))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.hold_call(&conn(&call, B))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.hold_call(&conn(&call, "9999"))), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.retrieve_call(&conn("C42", A))), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.park_call(&conn(&call, B), "")), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.retrieve_parked_call("700", "9999")), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.consultation_call(&conn(&call, B), C)), ErrorCause::InvalidConnectionId);
    assert_eq!(cause_of(pbx.single_step_transfer(&conn(&call, "9999"), C)), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.set_agent_state("", AgentState::Ready, "A1", &[], "")), ErrorCause::InvalidDeviceId);
    assert_eq!(cause_of(pbx.clear_call("")), ErrorCause::InvalidConnectionId);
    assert!(pbx.drain_events().is_empty());
}

#[test]
fn the_clock_never_goes_back_and_stamps_events() {
    let mut pbx = new_pbx();
    pbx.advance_to(T0 + 5_000);
    pbx.advance_to(T0 + 1_000);
    assert_eq!(pbx.now_ms(), T0 + 5_000);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    assert!(pbx.drain_events().iter().all(|event| event.timestamp_ms == T0 + 5_000));
    assert_eq!(pbx.snapshot_call("C1").unwrap().created_ms, T0 + 5_000);
}

#[test]
fn calls_have_no_recording_link_when_recording_is_off() {
    let mut pbx = Pbx::new(Layout { record_calls: false, ..layout() }, T0);
    pbx.inbound_call(CALLER, QUEUE).unwrap();
    assert_eq!(pbx.snapshot_call("C1").unwrap().recording_url, "");
}

// ===== Properties: random service sequences keep the phone system consistent =====

/// Every device id the random requests pick from: stations, the queue, the orbits, outside numbers
/// (one a caller that is also dialled) and ids that are nothing. Stations come first and are picked most.
const POOL: &[&str] = &["2000", "2001", "2002", "2003", QUEUE, CALLER, CALLER2, "0301234", "700", "701", "x", "", "12"];
const STATIONS: usize = 4;
const PARK_IDS: &[&str] = &["", "700", "701", QUEUE, "x"];

/// Short timers so that random advances of the clock fire them often.
fn property_layout() -> Layout {
    Layout { park_timeout_ms: 20_000, ring_no_answer_ms: 8_000, ..layout() }
}

/// A device a random request names: mostly a station, sometimes anything in the pool.
fn device() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..STATIONS, 1 => 0..POOL.len()]
}

/// A connection a random request names.
#[derive(Debug, Clone)]
enum Target {
    /// One of the stations' connections in this state when the request is made (any connection if none is).
    AtStation(State, usize),
    /// One of the connections in this state when the request is made (any connection if none is).
    InState(State, usize),
    /// One of the connections that exist when the request is made.
    Existing(usize),
    /// Any call id (existing or not) with any device: mostly connections that do not exist.
    Forged(usize, usize),
    /// Left out of the request.
    Missing,
}

/// Two connections of a held/active request.
#[derive(Debug, Clone)]
enum Pair {
    /// A station's held connection and its other (connected, if it has one) connection; swapped,
    /// the request names them the wrong way round.
    OfOneStation { index: usize, swapped: bool },
    /// Two unrelated targets.
    Any(Target, Target),
}

#[derive(Debug, Clone)]
enum Op {
    Inbound {
        from: usize,
        to: usize,
    },
    MakeCall {
        calling: usize,
        called: usize,
    },
    Answer(Target),
    ClearConnection(Target),
    ClearCall(usize),
    Hold(Target),
    Retrieve(Target),
    Park {
        parking: Target,
        to: usize,
    },
    RetrieveParked {
        park_id: usize,
        device: usize,
    },
    SingleStepTransfer {
        active: Target,
        to: usize,
    },
    Consult {
        existing: Target,
        to: usize,
    },
    Transfer(Pair),
    Conference(Pair),
    Alternate(Pair),
    Reconnect(Pair),
    /// An agent id of `None` is the station's own agent (`A` and the station), which logs on.
    AgentState {
        device: usize,
        requested: i32,
        agent_id: Option<usize>,
        reason: bool,
    },
    Snapshot(usize),
    Advance(u64),
}

fn target(state: State) -> impl Strategy<Value = Target> {
    prop_oneof![
        8 => any::<usize>().prop_map(move |index| Target::AtStation(state, index)),
        4 => any::<usize>().prop_map(move |index| Target::InState(state, index)),
        3 => any::<usize>().prop_map(Target::Existing),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(call, device)| Target::Forged(call, device)),
        1 => Just(Target::Missing),
    ]
}

fn held_and_active() -> impl Strategy<Value = Pair> {
    prop_oneof![
        5 => (any::<usize>(), prop::bool::weighted(0.15)).prop_map(|(index, swapped)| Pair::OfOneStation { index, swapped }),
        1 => (target(State::Held), target(State::Connected)).prop_map(|(held, active)| Pair::Any(held, active)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (5..POOL.len(), prop_oneof![4 => Just(4usize), 3 => 0..STATIONS, 1 => 0..POOL.len()])
            .prop_map(|(from, to)| Op::Inbound { from, to }),
        2 => (device(), 0..POOL.len()).prop_map(|(calling, called)| Op::MakeCall { calling, called }),
        8 => prop_oneof![3 => target(State::Alerting), 1 => target(State::Initiated)].prop_map(Op::Answer),
        4 => target(State::Connected).prop_map(Op::ClearConnection),
        1 => any::<usize>().prop_map(Op::ClearCall),
        3 => target(State::Connected).prop_map(Op::Hold),
        3 => target(State::Held).prop_map(Op::Retrieve),
        3 => (target(State::Connected), 0..PARK_IDS.len()).prop_map(|(parking, to)| Op::Park { parking, to }),
        3 => (prop_oneof![3 => 1..3usize, 1 => 0..PARK_IDS.len()], device())
            .prop_map(|(park_id, device)| Op::RetrieveParked { park_id, device }),
        2 => (target(State::Connected), device()).prop_map(|(active, to)| Op::SingleStepTransfer { active, to }),
        4 => (target(State::Connected), device()).prop_map(|(existing, to)| Op::Consult { existing, to }),
        3 => held_and_active().prop_map(Op::Transfer),
        3 => held_and_active().prop_map(Op::Conference),
        3 => held_and_active().prop_map(Op::Alternate),
        3 => held_and_active().prop_map(Op::Reconnect),
        4 => (
            device(),
            prop_oneof![4 => Just(AgentState::Ready as i32), 2 => 0..7i32],
            prop_oneof![3 => Just(None), 1 => (0..3usize).prop_map(Some)],
            any::<bool>(),
        )
            .prop_map(|(device, requested, agent_id, reason)| Op::AgentState { device, requested, agent_id, reason }),
        1 => device().prop_map(Op::Snapshot),
        4 => prop_oneof![3 => 0..3_000u64, 1 => 0..25_000u64].prop_map(Op::Advance),
    ]
}

/// Every connection now, in a stable order.
fn all_connections(pbx: &Pbx) -> Vec<(pbx::ConnectionId, State)> {
    pbx.calls
        .values()
        .flat_map(|call| call.parties.iter().map(|(device, state)| (conn(&call.id, device), *state)))
        .collect()
}

fn resolve(pbx: &Pbx, target: &Target) -> Option<pbx::ConnectionId> {
    let pick = |connections: Vec<pbx::ConnectionId>, index: usize| {
        if connections.is_empty() { conn("C1", A) } else { connections[index % connections.len()].clone() }
    };
    match target {
        Target::AtStation(state, index) | Target::InState(state, index) => {
            let at_station = matches!(target, Target::AtStation(..));
            let connections = all_connections(pbx);
            let matching: Vec<pbx::ConnectionId> = connections
                .iter()
                .filter(|(id, other)| {
                    other == state && (!at_station || pbx.device_kind(&id.device_id) == Some(DeviceKind::Station))
                })
                .map(|(id, _)| id.clone())
                .collect();
            if matching.is_empty() {
                Some(pick(connections.into_iter().map(|(id, _)| id).collect(), *index))
            } else {
                Some(pick(matching, *index))
            }
        }
        Target::Existing(index) => Some(pick(all_connections(pbx).into_iter().map(|(id, _)| id).collect(), *index)),
        Target::Forged(call, device) => {
            let mut calls: Vec<String> = pbx.call_ids().map(str::to_owned).collect();
            calls.extend(["C0".to_owned(), "C999".to_owned()]);
            Some(conn(&calls[call % calls.len()], POOL[device % POOL.len()]))
        }
        Target::Missing => None,
    }
}

/// Resolves a held/active pair: (held, active).
fn resolve_pair(pbx: &Pbx, pair: &Pair) -> (Option<pbx::ConnectionId>, Option<pbx::ConnectionId>) {
    match pair {
        Pair::Any(held, active) => (resolve(pbx, held), resolve(pbx, active)),
        Pair::OfOneStation { index, swapped } => {
            let candidates: Vec<(pbx::ConnectionId, pbx::ConnectionId)> = pbx
                .stations
                .keys()
                .filter_map(|station| {
                    let calls = pbx.calls_of(station);
                    let held = calls.iter().find(|call| pbx.connection_state(call, station) == Some(State::Held))?;
                    let others: Vec<&String> = calls.iter().filter(|call| *call != held).collect();
                    let active = others
                        .iter()
                        .find(|call| pbx.connection_state(call, station) == Some(State::Connected))
                        .or(others.first())?;
                    Some((conn(held, station), conn(active, station)))
                })
                .collect();
            let Some((held, active)) = candidates.get(index % candidates.len().max(1)).cloned() else {
                return (Some(conn("C1", A)), Some(conn("C2", A)));
            };
            if *swapped { (Some(active), Some(held)) } else { (Some(held), Some(active)) }
        }
    }
}

/// Carries one random operation out; returns whether the phone system refused it.
fn apply(pbx: &mut Pbx, op: &Op) -> bool {
    use request::Service as S;
    let service = match op {
        Op::Inbound { from, to } => return pbx.inbound_call(POOL[*from], POOL[*to]).is_err(),
        Op::Advance(by) => {
            pbx.advance_to(pbx.now_ms() + by);
            return false;
        }
        Op::MakeCall { calling, called } => S::MakeCall(pbx::MakeCallRequest {
            calling_device: POOL[*calling].to_owned(),
            called_number: POOL[*called].to_owned(),
        }),
        Op::Answer(target) => S::AnswerCall(pbx::AnswerCallRequest { connection: resolve(pbx, target) }),
        Op::ClearConnection(target) => {
            S::ClearConnection(pbx::ClearConnectionRequest { connection: resolve(pbx, target) })
        }
        Op::ClearCall(index) => {
            let mut calls: Vec<String> = pbx.call_ids().map(str::to_owned).collect();
            calls.push("C999".to_owned());
            S::ClearCall(pbx::ClearCallRequest { call_id: calls[index % calls.len()].clone() })
        }
        Op::Hold(target) => S::HoldCall(pbx::HoldCallRequest { connection: resolve(pbx, target) }),
        Op::Retrieve(target) => S::RetrieveCall(pbx::RetrieveCallRequest { connection: resolve(pbx, target) }),
        Op::Park { parking, to } => {
            S::ParkCall(pbx::ParkCallRequest { parking: resolve(pbx, parking), park_to: PARK_IDS[*to].to_owned() })
        }
        Op::RetrieveParked { park_id, device } => S::RetrieveParkedCall(pbx::RetrieveParkedCallRequest {
            park_id: PARK_IDS[*park_id].to_owned(),
            device_id: POOL[*device].to_owned(),
        }),
        Op::SingleStepTransfer { active, to } => S::SingleStepTransferCall(pbx::SingleStepTransferCallRequest {
            active: resolve(pbx, active),
            transferred_to: POOL[*to].to_owned(),
        }),
        Op::Consult { existing, to } => S::ConsultationCall(pbx::ConsultationCallRequest {
            existing: resolve(pbx, existing),
            consulted_device: POOL[*to].to_owned(),
        }),
        Op::Transfer(pair) => {
            let (held, active) = resolve_pair(pbx, pair);
            S::TransferCall(pbx::TransferCallRequest { held, active })
        }
        Op::Conference(pair) => {
            let (held, active) = resolve_pair(pbx, pair);
            S::ConferenceCall(pbx::ConferenceCallRequest { held, active })
        }
        Op::Alternate(pair) => {
            let (held, active) = resolve_pair(pbx, pair);
            S::AlternateCall(pbx::AlternateCallRequest { active, held })
        }
        Op::Reconnect(pair) => {
            let (held, active) = resolve_pair(pbx, pair);
            S::ReconnectCall(pbx::ReconnectCallRequest { active, held })
        }
        Op::AgentState { device, requested, agent_id, reason } => S::SetAgentState(pbx::SetAgentStateRequest {
            device_id: POOL[*device].to_owned(),
            requested: *requested,
            agent_id: match agent_id {
                None => format!("A{}", POOL[*device]),
                Some(index) => ["", "A1", "A2"][*index].to_owned(),
            },
            password: String::new(),
            roles: Vec::new(),
            reason: if *reason { "lunch".to_owned() } else { String::new() },
        }),
        Op::Snapshot(device) => S::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: POOL[*device].to_owned() }),
    };
    pbx.execute(service).is_err()
}

/// Everything a refused request must leave as it was, the private bookkeeping included.
fn fingerprint(pbx: &Pbx) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {}",
        crate::sim::inspect::StateDump::of(pbx),
        pbx.waiting,
        pbx.idle_agents,
        pbx.orbits,
        pbx.device_calls,
        pbx.next_call
    )
}

/// The device an event is about, for those that name one connection.
fn event_connection(event: &Event) -> Option<&pbx::ConnectionId> {
    match event {
        Event::ServiceInitiated(event) => event.initiated.as_ref(),
        Event::Originated(event) => event.originating.as_ref(),
        Event::Delivered(event) => event.alerting.as_ref(),
        Event::Established(event) => event.answering.as_ref(),
        Event::Held(event) => event.held.as_ref(),
        Event::Retrieved(event) => event.retrieved.as_ref(),
        Event::Diverted(event) => event.connection.as_ref(),
        Event::Queued(event) => event.queued.as_ref(),
        Event::Failed(event) => event.failed.as_ref(),
        Event::ConnectionCleared(event) => event.dropped.as_ref(),
        Event::Parked(event) => event.parked.as_ref(),
        _ => None,
    }
}

/// What a real phone system keeps true at all times, checked from the public view and the bookkeeping.
fn check_invariants(pbx: &Pbx, events: &[PbxEvent]) {
    let mut from_calls: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for call_id in pbx.call_ids() {
        let call = &pbx.calls[call_id];
        assert_eq!(call.id, call_id);
        assert!(!call.parties.is_empty(), "call {call_id} has no party left");
        if call.parties.len() == 1 {
            assert!(
                call.pending_dial.is_some() && call.parties[0].1 == State::Initiated,
                "call {call_id} has one party and is no click-to-dial waiting to be answered: {:?}",
                call.parties
            );
        }
        let mut seen_devices = BTreeSet::new();
        for (device, state) in &call.parties {
            assert!(
                seen_devices.insert(device.clone()),
                "{device} has two connections in {call_id}: {:?}",
                call.parties
            );
            from_calls.entry(device.clone()).or_default().insert(call_id.to_owned());
            let fits = match pbx.device_kind(device) {
                Some(DeviceKind::Station) => {
                    matches!(state, State::Initiated | State::Alerting | State::Connected | State::Held)
                }
                Some(DeviceKind::External) => matches!(state, State::Alerting | State::Connected),
                Some(DeviceKind::AcdQueue | DeviceKind::ParkOrbit) => *state == State::Queued,
                _ => false,
            };
            assert!(fits, "{device} is {state:?} in {call_id}");
            assert!(pbx.calls_of(device).iter().any(|call| call == call_id), "calls_of({device}) lacks {call_id}");
        }
        if call.pending_dial.is_some() {
            assert_eq!(call.parties.len(), 1, "click-to-dial {call_id} has parties before it dials");
        }
    }
    // calls_of agrees with the calls' parties the other way round too.
    let from_index: BTreeMap<String, BTreeSet<String>> = pbx.device_calls.clone();
    assert_eq!(from_index, from_calls, "the device index disagrees with the calls' parties");
    for device in POOL {
        let expected: Vec<String> =
            from_calls.get(*device).map(|calls| calls.iter().cloned().collect()).unwrap_or_default();
        assert_eq!(pbx.calls_of(device), expected);
    }

    for station in pbx.stations.keys() {
        let connected: Vec<String> = pbx
            .calls_of(station)
            .into_iter()
            .filter(|call| pbx.connection_state(call, station) == Some(State::Connected))
            .collect();
        assert!(connected.len() <= 1, "{station} is connected in {connected:?}");
    }

    // The queue: every queued call waits once, in the queue it is queued at.
    let waiting: Vec<&String> = pbx.waiting.iter().collect();
    let unique: BTreeSet<&String> = waiting.iter().copied().collect();
    assert_eq!(unique.len(), waiting.len(), "a call waits twice: {waiting:?}");
    for call_id in &waiting {
        let call = pbx.calls.get(*call_id).unwrap_or_else(|| panic!("waiting call {call_id} does not exist"));
        assert_eq!(
            pbx.connection_state(call_id, &call.queue),
            Some(State::Queued),
            "waiting call {call_id} is not queued at its queue {:?}",
            call.queue
        );
    }
    for call in pbx.calls.values() {
        let at_a_queue = call.parties.iter().any(|(device, _)| pbx.device_kind(device) == Some(DeviceKind::AcdQueue));
        assert_eq!(
            at_a_queue,
            unique.contains(&call.id),
            "call {} is at a queue but not waiting, or the reverse",
            call.id
        );
    }
    let idle_ready: BTreeSet<&String> = pbx
        .stations
        .iter()
        .filter(|(id, station)| station.agent.state == AgentState::Ready as i32 && pbx.calls_of(id).is_empty())
        .map(|(id, _)| id)
        .collect();
    if !waiting.is_empty() {
        assert!(idle_ready.is_empty(), "calls {waiting:?} wait while {idle_ready:?} are ready and idle");
    }
    let indexed: BTreeSet<&String> = pbx.idle_agents.iter().map(|(_, device)| device).collect();
    assert_eq!(indexed, idle_ready, "the idle-agent index is stale");

    // Park orbits hold exactly the parked calls.
    for (orbit, occupant) in &pbx.orbits {
        match occupant {
            Some(call_id) => {
                let call = pbx.calls.get(call_id).unwrap_or_else(|| panic!("orbit {orbit} holds ended call {call_id}"));
                assert_eq!(call.park.as_ref().map(|park| park.park_id.as_str()), Some(orbit.as_str()));
                assert_eq!(pbx.connection_state(call_id, orbit), Some(State::Queued));
            }
            None => assert!(pbx.calls_of(orbit).is_empty(), "free orbit {orbit} is in a call"),
        }
    }
    for call in pbx.calls.values() {
        if let Some(park) = &call.park {
            assert_eq!(pbx.orbits.get(&park.park_id), Some(&Some(call.id.clone())));
            // A parked call is the orbit and the one party waiting there, never the parker.
            assert_eq!(call.parties.len(), 2, "parked call {} has parties {:?}", call.id, call.parties);
            assert!(
                pbx.connection_state(&call.id, &park.parked_by).is_none(),
                "the parker is in parked call {}",
                call.id
            );
        }
    }

    let mut last = 0;
    for event in events {
        assert!(event.timestamp_ms >= last && event.timestamp_ms <= pbx.now_ms(), "event out of time: {event:?}");
        last = event.timestamp_ms;
        assert!(!event.devices.is_empty(), "an event concerns no device: {event:?}");
        if let Some(connection) = event_connection(&event.event) {
            assert!(event.devices.contains(&connection.device_id), "{event:?} does not concern its own device");
        }
        if let Event::CallCleared(cleared) = &event.event {
            assert!(pbx.snapshot_call(&cleared.call_id).is_none(), "call {} was cleared but lives on", cleared.call_id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn random_service_sequences_keep_the_phone_system_consistent(
        ready in proptest::collection::vec(any::<bool>(), 4),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut pbx = Pbx::new(property_layout(), T0);
        for (index, ready) in ready.iter().enumerate() {
            if *ready {
                let station = (2000 + index).to_string();
                pbx.set_agent_state(&station, AgentState::Ready, &format!("A{station}"), &[], "").unwrap();
            }
        }
        let events = pbx.drain_events();
        check_invariants(&pbx, &events);
        for op in &ops {
            let before = fingerprint(&pbx);
            let refused = apply(&mut pbx, op);
            let events = pbx.drain_events();
            if refused {
                prop_assert!(events.is_empty(), "{op:?} was refused but caused {events:?}");
                prop_assert_eq!(&fingerprint(&pbx), &before, "{:?} was refused but changed the phone system", op);
            }
            check_invariants(&pbx, &events);
        }
        // Whatever happened, clearing every call leaves no trace.
        let calls: Vec<String> = pbx.call_ids().map(str::to_owned).collect();
        for call in calls {
            pbx.clear_call(&call).unwrap();
        }
        let events = pbx.drain_events();
        check_invariants(&pbx, &events);
        prop_assert!(pbx.device_calls.is_empty());
        prop_assert!(pbx.waiting.is_empty());
        prop_assert!(pbx.orbits.values().all(Option::is_none));
    }
}

#[test]
fn a_conference_stops_growing_at_the_most_parties_a_call_holds_and_fits_the_smallest_frame() {
    let mut pbx = new_pbx();
    let first = pbx.make_call(A, B).unwrap();
    pbx.answer_call(&first).unwrap();
    pbx.answer_call(&conn(&first.call_id, B)).unwrap();
    let mut conference = first.call_id;
    for guest in 0.. {
        assert!(guest < MAX_CALL_PARTIES, "the conference never stopped growing");
        // The longest outside numbers there are (20 digits), for the largest snapshot.
        let consultation = pbx.consultation_call(&conn(&conference, A), &format!("+4930{guest:015}")).unwrap();
        match pbx.conference_call(&conn(&conference, A), &consultation) {
            Ok(merged) => conference = merged,
            Err(error) => {
                assert_eq!(error.cause, ErrorCause::ResourceBusy);
                assert_eq!(pbx.snapshot_call(&conference).unwrap().parties.len(), MAX_CALL_PARTIES);
                break;
            }
        }
    }
    // The station's snapshot holds the full conference and the consultation refused to join it.
    let snapshot = pbx.snapshot_device(A).unwrap();
    let frame = pbx::Response { result: Some(response::Result::SnapshotDevice(snapshot)) };
    assert!(proto::wire::HEADER_LEN + prost::Message::encoded_len(&frame) <= proto::wire::MIN_MAX_FRAME_LENGTH);
}

/// A queue's snapshot with `calls` waiting calls, from a PBX with nobody ready to take them.
fn queue_snapshot(calls: usize) -> pbx::SnapshotDeviceResult {
    let mut pbx = new_pbx();
    for index in 0..calls {
        pbx.inbound_call(&format!("+49301{index:07}"), QUEUE).unwrap();
    }
    pbx.snapshot_device(QUEUE).unwrap()
}

#[test]
fn a_snapshot_too_large_for_a_frame_comes_in_pages_that_each_fit() {
    let whole = queue_snapshot(1_000);
    for max_frame_length in [proto::wire::MIN_MAX_FRAME_LENGTH, 10_000, proto::wire::DEFAULT_MAX_FRAME_LENGTH] {
        let pages = snapshot_pages(whole.clone(), max_frame_length - proto::wire::HEADER_LEN);
        assert!(pages.len() > 1, "1,000 calls do not fit {max_frame_length} bytes");
        for (index, page) in pages.iter().enumerate() {
            let frame = pbx::Response { result: Some(response::Result::SnapshotDevice(page.clone())) };
            assert!(proto::wire::HEADER_LEN + prost::Message::encoded_len(&frame) <= max_frame_length);
            assert_eq!(page.more, index + 1 < pages.len(), "every page but the last says more follow");
            assert_eq!((&page.device, &page.agent), (&whole.device, &whole.agent));
            assert!(!page.calls.is_empty());
        }
        let calls: Vec<pbx::CallSnapshot> = pages.into_iter().flat_map(|page| page.calls).collect();
        assert_eq!(calls, whole.calls, "every call once, in order ({max_frame_length} bytes)");
    }
    // A snapshot that fits is one page, as it was.
    let small = queue_snapshot(3);
    assert_eq!(snapshot_pages(small.clone(), proto::wire::DEFAULT_MAX_FRAME_LENGTH), vec![small]);
}
