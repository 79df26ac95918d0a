//! The call state machine: every transition, legs and their outcomes, renames, and invariants over
//! random event sequences.

use proptest::prelude::*;

use super::*;
use crate::domain::{Cause, ConnState as S, DeviceKind as K, Direction, LegOutcome};

const CALLER: &str = "+4930123456";

fn party(device: &str, kind: DeviceKind, state: ConnState, cause: Cause, at: Millis) -> CallInput {
    CallInput::PartyState { device: device.to_owned(), kind, state, cause, at }
}

fn cleared(device: &str, at: Millis) -> CallInput {
    CallInput::PartyCleared { device: device.to_owned(), cause: Cause::Normal, at }
}

/// An inbound call through queue 6000, offered to `agent` at t=1000 and answered at t=3000.
fn answered_queue_call(agent: &str) -> CallState {
    let mut call = CallState::new("C1".into(), 0);
    call.apply(CallInput::Info { calling: CALLER.into(), called: "6000".into(), direction: Direction::Inbound });
    call.apply(party(CALLER, K::External, S::Connected, Cause::Normal, 0));
    call.apply(party("6000", K::Queue, S::Queued, Cause::Normal, 0));
    call.apply(CallInput::Queue { queue: "6000".into() });
    call.apply(cleared("6000", 1000));
    call.apply(party(agent, K::Line, S::Alerting, Cause::Distribution, 1000));
    call.apply(party(agent, K::Line, S::Connected, Cause::Normal, 3000));
    call
}

fn record_of<'a>(records: &'a [CallLogRecord], device: &str) -> &'a CallLogRecord {
    records.iter().find(|record| record.device == device).unwrap_or_else(|| panic!("no record for {device}"))
}

#[test]
fn an_answered_call_yields_one_answered_record_with_talk_and_hold_time() {
    let mut call = answered_queue_call("2001");
    assert!(call.apply(party("2001", K::Line, S::Held, Cause::Normal, 13_000)));
    assert!(call.apply(party("2001", K::Line, S::Connected, Cause::Normal, 18_000)));
    assert!(call.log_records().is_empty(), "no record before the call ends");
    call.apply(cleared(CALLER, 20_500));
    call.apply(cleared("2001", 20_500));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 20_500 });
    let records = call.log_records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.outcome, LegOutcome::Answered);
    assert_eq!((record.talk_seconds, record.hold_seconds), (12, 5));
    assert_eq!((record.offered_at, record.answered_at, record.ended_at), (1000, Some(3000), 20_500));
    assert!(record.via_queue);
    assert_eq!(record.queue.as_deref(), Some("6000"));
    assert_eq!(record.direction, Direction::Inbound);
    assert_eq!(record.parties, vec![CALLER.to_owned(), "2001".to_owned()], "the queue is no party to log");
    let moments: Vec<&Moment> = call.timeline.iter().map(|entry| &entry.moment).collect();
    assert!(matches!(
        moments[..],
        [
            Moment::Answered(_),
            Moment::Queued(_),
            Moment::Left(_),
            Moment::Ringing(_),
            Moment::Answered(_),
            Moment::Held(_),
            Moment::Retrieved(_),
            Moment::Left(_),
            Moment::Left(_),
            Moment::Ended
        ]
    ));
}

#[test]
fn a_ring_no_answer_is_missed_and_the_next_agent_answers() {
    let mut call = CallState::new("C1".into(), 0);
    call.apply(CallInput::Info { calling: CALLER.into(), called: "6000".into(), direction: Direction::Inbound });
    call.apply(party(CALLER, K::External, S::Connected, Cause::Normal, 0));
    call.apply(party("2001", K::Line, S::Alerting, Cause::Distribution, 0));
    call.apply(CallInput::PartyCleared { device: "2001".into(), cause: Cause::Distribution, at: 15_000 });
    call.apply(party("2002", K::Line, S::Alerting, Cause::Distribution, 15_000));
    call.apply(party("2002", K::Line, S::Connected, Cause::Normal, 16_000));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 30_000 });
    let records = call.log_records();
    assert_eq!(record_of(&records, "2001").outcome, LegOutcome::Missed);
    assert_eq!(record_of(&records, "2002").outcome, LegOutcome::Answered);
    assert_eq!(record_of(&records, "2002").talk_seconds, 14);
}

#[test]
fn a_caller_hanging_up_while_it_rings_is_abandoned() {
    let mut call = CallState::new("C1".into(), 0);
    call.apply(CallInput::Info { calling: CALLER.into(), called: "2001".into(), direction: Direction::Inbound });
    call.apply(party(CALLER, K::External, S::Connected, Cause::Normal, 0));
    call.apply(party("2001", K::Line, S::Alerting, Cause::Normal, 0));
    call.apply(cleared(CALLER, 4000));
    call.apply(cleared("2001", 4000));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 4000 });
    let records = call.log_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, LegOutcome::Abandoned);
    assert_eq!(records[0].answered_at, None);
}

#[test]
fn an_ended_call_ignores_anything_more() {
    let mut call = answered_queue_call("2001");
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 5000 });
    assert!(!call.apply(party("2001", K::Line, S::Held, Cause::Normal, 6000)));
    assert!(!call.apply(CallInput::Notes { notes: "late".into() }));
    assert!(call.parties.is_empty());
}

#[test]
fn repeated_states_and_unknown_parties_change_nothing() {
    let mut call = answered_queue_call("2001");
    assert!(!call.apply(party("2001", K::Line, S::Connected, Cause::Normal, 4000)), "a duplicate event");
    assert!(!call.apply(cleared("2999", 4000)), "a party that is not in the call");
    assert!(!call.apply(CallInput::Unparked { at: 4000 }), "a call that is not parked");
}

#[test]
fn the_pbxs_linkage_id_becomes_the_root_of_every_record_and_a_repeat_changes_nothing() {
    let mut call = answered_queue_call("2001");
    assert!(call.apply(CallInput::Linkage { id: "C0".into() }));
    assert!(!call.apply(CallInput::Linkage { id: "C0".into() }), "the same id again");
    assert_eq!((call.id.as_str(), call.root.as_str()), ("C1", "C0"));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 5000 });
    assert!(!call.apply(CallInput::Linkage { id: "C9".into() }), "an ended call's root stays");
    assert!(call.log_records().iter().all(|record| record.root_call_id == "C0" && record.key() == "C0:2001"));
}

#[test]
fn notes_disposition_and_recording_reach_the_record() {
    let mut call = answered_queue_call("2001");
    assert!(call.apply(CallInput::Notes { notes: "wants a callback".into() }));
    assert!(call.apply(CallInput::Disposition { disposition: "resolved".into() }));
    assert!(call.apply(CallInput::Recording { url: "https://rec/C1.wav".into() }));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 9000 });
    let record = &call.log_records()[0];
    assert_eq!(record.notes, "wants a callback");
    assert_eq!(record.disposition.as_deref(), Some("resolved"));
    assert_eq!(record.recording_url.as_deref(), Some("https://rec/C1.wav"));
}

#[test]
fn park_hands_the_call_on_and_a_recall_reopens_the_parkers_leg() {
    let mut call = answered_queue_call("2001");
    call.apply(CallInput::PartyCleared { device: "2001".into(), cause: Cause::Park, at: 10_000 });
    call.apply(party("701", K::ParkOrbit, S::Queued, Cause::Park, 10_000));
    call.apply(CallInput::Parked { park_id: "701".into(), parked_by: "2001".into(), at: 10_000 });
    assert_eq!(call.park_id.as_deref(), Some("701"));
    // Nobody picks it up: it rings the parker again, who answers.
    call.apply(cleared("701", 70_000));
    call.apply(CallInput::Unparked { at: 70_000 });
    call.apply(party("2001", K::Line, S::Alerting, Cause::Recall, 70_000));
    call.apply(party("2001", K::Line, S::Connected, Cause::Normal, 71_000));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 75_000 });
    let records = call.log_records();
    assert_eq!(records.len(), 1, "one leg per line per call, even across a recall");
    assert_eq!(records[0].outcome, LegOutcome::Answered);
    assert_eq!(records[0].talk_seconds, 7 + 4);
    assert_eq!(call.park_id, None);
}

#[test]
fn park_and_pickup_by_another_agent_is_a_handover() {
    let mut call = answered_queue_call("2001");
    call.apply(CallInput::PartyCleared { device: "2001".into(), cause: Cause::Park, at: 10_000 });
    call.apply(CallInput::Parked { park_id: "701".into(), parked_by: "2001".into(), at: 10_000 });
    call.apply(CallInput::Unparked { at: 20_000 });
    call.apply(party("2002", K::Line, S::Connected, Cause::Park, 20_000));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 30_000 });
    let records = call.log_records();
    assert_eq!(record_of(&records, "2001").outcome, LegOutcome::Transferred);
    assert_eq!(record_of(&records, "2002").outcome, LegOutcome::Answered);
    assert_eq!(record_of(&records, "2002").offered_at, 20_000);
}

#[test]
fn a_single_step_transfer_renames_the_call_and_closes_the_transferrers_leg() {
    let call = answered_queue_call("2001");
    let mut call = call.transferred_single_step("C2".into(), "2001", 8000);
    assert_eq!((call.id.as_str(), call.root.as_str()), ("C2", "C1"));
    assert_eq!(call.previous_ids, vec!["C1".to_owned()]);
    assert!(call.party("2001").is_none());
    call.apply(party("2002", K::Line, S::Alerting, Cause::Transfer, 8000));
    call.apply(party("2002", K::Line, S::Connected, Cause::Normal, 9000));
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 19_000 });
    let records = call.log_records();
    assert_eq!(record_of(&records, "2001").outcome, LegOutcome::Transferred);
    assert_eq!(record_of(&records, "2001").ended_at, 8000);
    assert_eq!(record_of(&records, "2002").outcome, LegOutcome::Answered);
    assert!(records.iter().all(|record| record.root_call_id == "C1" && record.call_id == "C2"));
}

/// Agent 2001 holds the customer call C1, consults 2002 on C2; returns both calls.
fn consultation() -> (CallState, CallState) {
    let mut customer = answered_queue_call("2001");
    customer.apply(party("2001", K::Line, S::Held, Cause::Normal, 10_000));
    let mut consult = CallState::new("C2".into(), 10_000);
    consult.apply(CallInput::Info { calling: "2001".into(), called: "2002".into(), direction: Direction::Internal });
    consult.apply(party("2001", K::Line, S::Connected, Cause::Normal, 10_000));
    consult.apply(party("2002", K::Line, S::Alerting, Cause::Normal, 10_000));
    consult.apply(party("2002", K::Line, S::Connected, Cause::Normal, 12_000));
    (customer, consult)
}

#[test]
fn a_consultation_transfer_merges_legs_and_keeps_the_customer_call_as_root() {
    let (customer, consult) = consultation();
    let parties = vec![
        Party { device: CALLER.into(), kind: K::External, state: S::Connected },
        Party { device: "2002".into(), kind: K::Line, state: S::Connected },
    ];
    let mut merged = CallState::merged(customer, consult, "C3".into(), Some("2001"), parties, 20_000);
    assert_eq!((merged.id.as_str(), merged.root.as_str()), ("C3", "C1"));
    assert_eq!(merged.previous_ids, vec!["C1".to_owned(), "C2".to_owned()]);
    assert_eq!(merged.direction, Some(Direction::Inbound), "the customer call's direction wins");
    assert!(
        matches!(merged.timeline.last().map(|entry| &entry.moment), Some(Moment::Transferred { by: Some(by), .. }) if by == "2001")
    );
    merged.apply(CallInput::Ended { cause: Cause::Normal, at: 50_000 });
    let records = merged.log_records();
    assert_eq!(records.len(), 2, "one record per line: the consult leg joins the customer leg");
    let transferrer = record_of(&records, "2001");
    assert_eq!(transferrer.outcome, LegOutcome::Transferred);
    // 2001 talked 3-10 s with the customer and 10-20 s with 2002; held the customer 10-20 s.
    assert_eq!((transferrer.talk_seconds, transferrer.hold_seconds), (17, 10));
    let receiver = record_of(&records, "2002");
    assert_eq!(receiver.outcome, LegOutcome::Answered);
    assert_eq!(receiver.talk_seconds, 38);
    assert_eq!(receiver.parties, vec![CALLER.to_owned(), "2001".to_owned(), "2002".to_owned()]);
}

#[test]
fn a_conference_keeps_everyone_and_the_conferencing_line_talks_on() {
    let (customer, consult) = consultation();
    let parties = vec![
        Party { device: CALLER.into(), kind: K::External, state: S::Connected },
        Party { device: "2001".into(), kind: K::Line, state: S::Connected },
        Party { device: "2002".into(), kind: K::Line, state: S::Connected },
    ];
    let mut merged = CallState::merged(customer, consult, "C3".into(), None, parties, 20_000);
    assert_eq!(merged.parties.len(), 3);
    assert!(matches!(merged.timeline.last().map(|entry| &entry.moment), Some(Moment::Conferenced { .. })));
    merged.apply(cleared("2002", 30_000));
    assert_eq!(merged.parties.len(), 2, "the conference goes on without 2002");
    merged.apply(CallInput::Ended { cause: Cause::Normal, at: 40_000 });
    let records = merged.log_records();
    assert_eq!(record_of(&records, "2001").outcome, LegOutcome::Answered);
    assert_eq!(record_of(&records, "2001").talk_seconds, 7 + 10 + 20);
    assert_eq!(record_of(&records, "2002").ended_at, 30_000);
}

#[test]
fn reconcile_makes_parties_what_the_snapshot_says() {
    let mut call = answered_queue_call("2001");
    let snapshot = vec![
        Party { device: CALLER.into(), kind: K::External, state: S::Connected },
        Party { device: "2001".into(), kind: K::Line, state: S::Held },
        Party { device: "2003".into(), kind: K::Line, state: S::Alerting },
    ];
    assert!(call.reconcile(snapshot.clone(), 8000));
    assert_eq!(call.parties, snapshot);
    assert!(!call.reconcile(snapshot, 9000), "the same snapshot again changes nothing");
    let without_2001 = vec![Party { device: CALLER.into(), kind: K::External, state: S::Connected }];
    call.reconcile(without_2001, 10_000);
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 11_000 });
    let records = call.log_records();
    assert_eq!(record_of(&records, "2001").ended_at, 10_000);
    assert_eq!(record_of(&records, "2003").outcome, LegOutcome::Missed);
}

fn arbitrary_input() -> impl Strategy<Value = CallInput> {
    let device = prop_oneof![Just("2001"), Just("2002"), Just("2003"), Just(CALLER), Just("6000")];
    let state = prop_oneof![
        Just(S::Initiated),
        Just(S::Alerting),
        Just(S::Connected),
        Just(S::Held),
        Just(S::Queued),
        Just(S::Null)
    ];
    let cause = prop_oneof![Just(Cause::Normal), Just(Cause::Transfer), Just(Cause::Park), Just(Cause::Distribution)];
    prop_oneof![
        6 => (device.clone(), state, cause.clone(), 0u64..5_000).prop_map(|(device, state, cause, at)| {
            let kind = match device {
                CALLER => K::External,
                "6000" => K::Queue,
                _ => K::Line,
            };
            party(device, kind, state, cause, at)
        }),
        2 => (device, cause, 0u64..5_000).prop_map(|(device, cause, at)| CallInput::PartyCleared { device: device.to_owned(), cause, at }),
        1 => (0u64..5_000).prop_map(|at| CallInput::Ended { cause: Cause::Normal, at }),
        1 => prop_oneof![Just("C1"), Just("C0")].prop_map(|id| CallInput::Linkage { id: id.to_owned() }),
    ]
}

proptest! {
    /// Whatever the PBX says, in whatever order: one leg per line ever seen, at most one party per
    /// device, and once ended, one record per leg whose outcome fits whether it was answered.
    #[test]
    fn legs_and_records_stay_consistent(steps in proptest::collection::vec((arbitrary_input(), 1u64..5_000), 1..60)) {
        let mut call = CallState::new("C1".into(), 0);
        call.apply(CallInput::Info { calling: CALLER.into(), called: "6000".into(), direction: Direction::Inbound });
        let mut now = 0;
        let mut lines_seen = std::collections::BTreeSet::new();
        for (input, gap) in steps {
            now += gap;
            // The PBX's clock never runs backwards.
            let input = match input {
                CallInput::PartyState { device, kind, state, cause, .. } => {
                    // A line takes part when it rings, talks, holds or places the call.
                    let takes_part = matches!(state, S::Initiated | S::Alerting | S::Connected | S::Held);
                    if kind == K::Line && takes_part && !call.is_ended() { lines_seen.insert(device.clone()); }
                    CallInput::PartyState { device, kind, state, cause, at: now }
                }
                CallInput::PartyCleared { device, cause, .. } => CallInput::PartyCleared { device, cause, at: now },
                CallInput::Ended { cause, .. } => CallInput::Ended { cause, at: now },
                other => other,
            };
            call.apply(input);
            let mut devices: Vec<&String> = call.parties.iter().map(|party| &party.device).collect();
            devices.sort();
            devices.dedup();
            prop_assert_eq!(devices.len(), call.parties.len(), "one party per device");
        }
        prop_assert_eq!(call.legs.len(), lines_seen.len());
        call.apply(CallInput::Ended { cause: Cause::Normal, at: now + 1 });
        let records = call.log_records();
        prop_assert_eq!(records.len(), lines_seen.len());
        for record in &records {
            let answered = record.answered_at.is_some();
            prop_assert_eq!(answered, matches!(record.outcome, LegOutcome::Answered | LegOutcome::Transferred), "{:?}", record);
            prop_assert!(record.talk_seconds + record.hold_seconds <= (record.ended_at - record.offered_at) / 1000 + 1);
            prop_assert!(record.ended_at >= record.offered_at);
            prop_assert_eq!(&record.root_call_id, &call.root, "every record carries the call's one root");
        }
    }
}

#[test]
fn a_line_whose_kind_is_learned_after_it_joined_still_gets_its_leg_and_record() {
    // Its events came before the snapshot that says what the device is: it joined as an outsider.
    let mut call = CallState::new("C1".into(), 1_000);
    call.apply(party(CALLER, K::External, S::Connected, Cause::Normal, 1_000));
    call.apply(party("2001", K::External, S::Connected, Cause::Normal, 1_000));
    assert!(call.legs.is_empty());
    // The snapshot (or the next event) knows it is a line.
    assert!(call.reconcile(
        vec![
            Party { device: CALLER.into(), kind: K::External, state: S::Connected },
            Party { device: "2001".into(), kind: K::Line, state: S::Connected },
        ],
        2_000
    ));
    assert!(!call.apply(party("2001", K::Line, S::Connected, Cause::Normal, 2_500)), "learned once");
    call.apply(CallInput::Ended { cause: Cause::Normal, at: 12_000 });
    let records = call.log_records();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].device.as_str(), records[0].outcome), ("2001", LegOutcome::Answered));
    assert_eq!(records[0].talk_seconds, 10, "from when the line was known");
}
