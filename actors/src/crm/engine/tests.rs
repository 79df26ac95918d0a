//! Tests of the budget actor's decisions: lookups, pops, batches, the budget's states and every
//! class of CRM failure, with time given by hand.

use std::time::Duration;

use super::*;
use crate::call::CallLogRecord;
use crate::crm::budget::BlockGrant;
use crate::crm::port::ApiUsage;
use crate::domain::LegOutcome;

const CALLER: &str = "+49 30 1111111";
const CALLER_DIGITS: &str = "49301111111";

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn config() -> CrmConfig {
    let mut config = CrmConfig::default();
    // Plenty of budget: one request a millisecond, a burst of 100.
    config.budget.daily_allocation = 86_400_000;
    config.budget.share = 1.0;
    config.budget.burst = 100;
    config
}

fn call(id: &str, direction: Direction, calling: &str, called: &str) -> ModelEvent {
    ModelEvent::Call(CallView {
        id: id.into(),
        root: id.into(),
        parties: Vec::new(),
        calling: calling.into(),
        called: called.into(),
        direction: Some(direction),
        queue: None,
        park_id: None,
        recording_url: None,
        notes: String::new(),
        disposition: None,
        created_at: 0,
        ended_at: None,
    })
}

fn ended(id: &str) -> ModelEvent {
    let ModelEvent::Call(mut view) = call(id, Direction::Inbound, CALLER, "2001") else { unreachable!() };
    view.ended_at = Some(1);
    ModelEvent::Call(view)
}

fn line(device: &str, calls: &[(&str, ConnState)]) -> ModelEvent {
    ModelEvent::Line(LineView {
        device: device.into(),
        agent: None,
        presence: crate::domain::Presence::Busy,
        calls: calls.iter().map(|(call, state)| ((*call).to_owned(), *state)).collect(),
    })
}

fn record(kind: RecordKind, id: &str, phone: &str) -> CrmRecord {
    CrmRecord { kind, id: id.into(), name: format!("Name {id}"), phones: vec![phone.into()] }
}

fn log(root: &str, device: &str, calling: &str) -> PendingLog {
    let record = CallLogRecord {
        root_call_id: root.into(),
        call_id: root.into(),
        device: device.into(),
        agent_id: Some("agent-1".into()),
        direction: Direction::Inbound,
        outcome: LegOutcome::Answered,
        via_queue: false,
        queue: None,
        calling: calling.into(),
        called: "2001".into(),
        parties: vec![calling.into(), device.into()],
        offered_at: 1_700_000_000_000,
        answered_at: Some(1_700_000_001_000),
        ended_at: 1_700_000_061_000,
        talk_seconds: 60,
        hold_seconds: 0,
        notes: String::new(),
        disposition: None,
        recording_url: None,
    };
    PendingLog { key: log_key(&record), record, attempts: 0 }
}

fn ok<T>(value: T) -> Result<Reply<T>, Failure> {
    Ok(Reply { value, usage: Some(ApiUsage { used: 10, max: 1_000 }) })
}

fn fail<T>(error: CrmError) -> Result<Reply<T>, Failure> {
    Err(Failure { error, usage: None })
}

fn searches(out: &Outputs) -> Vec<(u64, Vec<String>)> {
    out.actions
        .iter()
        .filter_map(|action| match action {
            Action::Search { id, numbers } => Some((*id, numbers.clone())),
            _ => None,
        })
        .collect()
}

fn upserts(out: &Outputs) -> Vec<(u64, Vec<TaskRecord>)> {
    out.actions
        .iter()
        .filter_map(|action| match action {
            Action::Upsert { id, tasks } => Some((*id, tasks.clone())),
            _ => None,
        })
        .collect()
}

/// Polls at `now` and returns what came out.
fn poll(engine: &mut Engine, now: Duration) -> (Outputs, Option<Duration>) {
    let mut out = Outputs::default();
    let wake = engine.poll(now, &mut out);
    (out, wake)
}

#[test]
fn a_call_is_looked_up_ahead_of_its_ring_and_pops_when_the_line_rings() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "5000"), ms(0), &mut out);
    assert_eq!(out.cache_misses, 1);
    let (out, wake) = poll(&mut engine, ms(0));
    assert!(out.actions.is_empty(), "a lookup ahead of time waits for company");
    assert_eq!(wake, Some(ms(1_000)));
    let (out, _) = poll(&mut engine, ms(1_000));
    let [(id, numbers)] = searches(&out).try_into().expect("one search");
    assert_eq!(numbers, [CALLER_DIGITS]);

    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![record(RecordKind::Contact, "003A", "030 1111111")]), ms(1_200), &mut out);
    assert!(out.pops.is_empty(), "nobody rang yet");
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(5_000), &mut out);
    let [pop] = out.pops.try_into().expect("one pop");
    assert_eq!(pop.triggered_at, ms(5_000));
    assert_eq!(pop.pop.device, "2001");
    assert_eq!(pop.pop.number, CALLER);
    assert_eq!(pop.pop.result, PopResult::Single(record(RecordKind::Contact, "003A", "030 1111111")));

    // Answering does not pop again.
    let mut out = Outputs::default();
    engine.on_event(&line("2001", &[("C1", ConnState::Connected)]), ms(6_000), &mut out);
    assert!(out.pops.is_empty());
}

#[test]
fn a_ringing_call_whose_number_is_unknown_is_searched_at_once() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(10), &mut out);
    assert_eq!(out.coalesced, 1, "the ring joined the lookup made ahead of time");
    let (out, wake) = poll(&mut engine, ms(10));
    assert!(out.actions.is_empty());
    assert_eq!(wake, Some(ms(60)), "the urgent window");
    let (out, _) = poll(&mut engine, ms(60));
    let [(id, _)] = searches(&out).try_into().expect("one search");
    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![]), ms(100), &mut out);
    let [pop] = out.pops.try_into().expect("one pop");
    assert_eq!(pop.pop.result, PopResult::NoMatch);
    assert_eq!(pop.triggered_at, ms(10));
}

#[test]
fn many_ringing_calls_share_one_search_and_a_shared_number_pops_every_record() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    for (n, number) in ["+49 30 1111111", "+49 30 2222222", "+49 30 3333333", "+49 30 1111111"].iter().enumerate() {
        let id = format!("C{n}");
        engine.on_event(&call(&id, Direction::Inbound, number, "2001"), ms(0), &mut out);
        engine.on_event(&line(&format!("20{n:02}"), &[(&id, ConnState::Alerting)]), ms(0), &mut out);
    }
    assert_eq!(out.cache_misses, 3);
    let (out, _) = poll(&mut engine, ms(50));
    let [(id, numbers)] = searches(&out).try_into().expect("one search for three numbers");
    assert_eq!(numbers.len(), 3);
    let rows = vec![
        record(RecordKind::Contact, "003A", "+49 30 1111111"),
        record(RecordKind::Account, "001A", "030 1111111"),
        record(RecordKind::Lead, "00QB", "(030) 222-2222"),
    ];
    let mut out = Outputs::default();
    engine.on_search(id, ok(rows.clone()), ms(80), &mut out);
    let mut results: Vec<_> = out.pops.iter().map(|pop| (pop.pop.device.clone(), pop.pop.result.clone())).collect();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        results,
        [
            ("2000".into(), PopResult::Multiple(vec![rows[0].clone(), rows[1].clone()])),
            ("2001".into(), PopResult::Single(rows[2].clone())),
            ("2002".into(), PopResult::NoMatch),
            ("2003".into(), PopResult::Multiple(vec![rows[0].clone(), rows[1].clone()])),
        ]
    );
}

#[test]
fn a_cached_number_pops_without_a_request() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(50));
    let [(id, _)] = searches(&out).try_into().unwrap();
    engine.on_search(id, ok(vec![]), ms(60), &mut Outputs::default());

    let mut out = Outputs::default();
    engine.on_event(&call("C2", Direction::Inbound, CALLER, "2001"), ms(1_000), &mut out);
    engine.on_event(&line("2002", &[("C2", ConnState::Alerting)]), ms(1_000), &mut out);
    assert_eq!(out.pops.len(), 1);
    assert_eq!(out.cache_hits, 2, "the early lookup and the ring both hit");
    let (out, _) = poll(&mut engine, ms(5_000));
    assert!(out.actions.is_empty());
}

#[test]
fn internal_and_withheld_numbers_are_never_searched() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Internal, "2001", "2002"), ms(0), &mut out);
    engine.on_event(&call("C2", Direction::Inbound, "anonymous", "2002"), ms(0), &mut out);
    engine.on_event(&call("C3", Direction::Inbound, "3001", "2002"), ms(0), &mut out);
    engine.on_event(&line("2002", &[("C1", ConnState::Alerting), ("C2", ConnState::Alerting)]), ms(0), &mut out);
    let (out, wake) = poll(&mut engine, ms(10_000));
    assert!(out.actions.is_empty() && out.pops.is_empty());
    assert_eq!(wake, None);
}

#[test]
fn an_outbound_call_pops_when_the_agent_dials() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Outbound, "2001", CALLER), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Initiated)]), ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(50));
    let [(id, numbers)] = searches(&out).try_into().unwrap();
    assert_eq!(numbers, [CALLER_DIGITS]);
    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![record(RecordKind::Lead, "00QA", CALLER)]), ms(70), &mut out);
    assert_eq!(out.pops.len(), 1);
}

#[test]
fn the_trigger_can_be_the_answer_or_the_end_of_the_call() {
    for trigger in [PopTrigger::Answered, PopTrigger::Ended] {
        let mut config = config();
        config.settings.pop_trigger = trigger;
        let mut engine = Engine::new(config);
        let mut out = Outputs::default();
        engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
        let (out, _) = poll(&mut engine, ms(1_000));
        let [(id, _)] = searches(&out).try_into().unwrap();
        engine.on_search(id, ok(vec![]), ms(1_100), &mut Outputs::default());
        let mut out = Outputs::default();
        engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(2_000), &mut out);
        assert!(out.pops.is_empty(), "{trigger:?}: ringing does not pop");
        engine.on_event(&line("2001", &[("C1", ConnState::Connected)]), ms(3_000), &mut out);
        assert_eq!(out.pops.len(), usize::from(trigger == PopTrigger::Answered), "{trigger:?}");
        engine.on_event(&ended("C1"), ms(4_000), &mut out);
        assert_eq!(out.pops.len(), 1, "{trigger:?}: one pop in all");
    }
}

#[test]
fn an_unknown_caller_gets_a_record_created_when_the_settings_say_so() {
    let mut config = config();
    config.settings.auto_create.inbound = Some(RecordKind::Lead);
    let mut engine = Engine::new(config);
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(50));
    let [(id, _)] = searches(&out).try_into().unwrap();
    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![]), ms(60), &mut out);
    assert!(out.pops.is_empty(), "the pop waits for the new record");
    let [Action::Create { id, record: new }] = out.actions.as_slice() else { panic!("{:?}", out.actions) };
    assert_eq!(new.kind, RecordKind::Lead);
    assert_eq!(new.last_name, format!("Automatic New Contact -{CALLER}"));
    assert_eq!(new.phone, CALLER);
    let mut out = Outputs::default();
    engine.on_created(*id, ok("00QNEW".to_owned()), ms(90), &mut out);
    let [pop] = out.pops.try_into().unwrap();
    let PopResult::Single(created) = pop.pop.result else { panic!("{:?}", pop.pop.result) };
    assert_eq!((created.kind, created.id.as_str()), (RecordKind::Lead, "00QNEW"));

    // Outbound unknown numbers are not created: only inbound was asked for.
    let mut out = Outputs::default();
    engine.on_event(&call("C2", Direction::Outbound, "2001", "+49 30 9999999"), ms(100), &mut out);
    engine.on_event(&line("2001", &[("C2", ConnState::Initiated)]), ms(100), &mut out);
    let (out, _) = poll(&mut engine, ms(150));
    let [(id, _)] = searches(&out).try_into().unwrap();
    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![]), ms(160), &mut out);
    assert!(out.actions.is_empty());
    assert_eq!(out.pops[0].pop.result, PopResult::NoMatch);
}

#[test]
fn call_logs_are_written_in_batches_by_size_or_age() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_logs((0..199).map(|n| log(&format!("C{n}"), "2001", "2002")).collect(), ms(0), &mut out);
    let (out, wake) = poll(&mut engine, ms(0));
    assert!(out.actions.is_empty());
    assert_eq!(wake, Some(ms(2_000)));
    let mut out = Outputs::default();
    engine.on_logs(vec![log("C199", "2001", "2002")], ms(10), &mut out);
    let (out, _) = poll(&mut engine, ms(10));
    let [(_, tasks)] = upserts(&out).try_into().expect("a full batch goes at once");
    assert_eq!(tasks.len(), 200);

    let mut out = Outputs::default();
    engine.on_logs(vec![log("C200", "2001", "2002")], ms(20), &mut out);
    assert!(upserts(&poll(&mut engine, ms(2_019)).0).is_empty());
    let [(_, tasks)] = upserts(&poll(&mut engine, ms(2_020)).0).try_into().expect("an old one goes alone");
    assert_eq!(tasks.len(), 1);
}

#[test]
fn a_log_is_taken_once_however_often_it_is_handed_over() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_logs(vec![log("C1", "2001", "2002"), log("C1", "2001", "2002")], ms(0), &mut out);
    engine.on_logs(vec![log("C1", "2001", "2002")], ms(0), &mut out);
    assert_eq!(engine.logs_held(), 1);
}

#[test]
fn a_log_waits_for_its_callers_lookup_and_names_the_one_contact() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_logs(vec![log("C1", "2001", CALLER)], ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(2_500));
    assert!(upserts(&out).is_empty(), "the log waits for the lookup");
    let [(id, _)] = searches(&out).try_into().expect("the lookup went after its window");
    engine.on_search(
        id,
        ok(vec![record(RecordKind::Contact, "003A", CALLER), record(RecordKind::Account, "001A", CALLER)]),
        ms(2_600),
        &mut Outputs::default(),
    );
    let [(_, tasks)] = upserts(&poll(&mut engine, ms(4_600)).0).try_into().expect("then the log goes");
    assert_eq!(tasks[0].who_id.as_deref(), Some("003A"));
    assert_eq!(tasks[0].what_id.as_deref(), Some("001A"));
    assert_eq!(tasks[0].key, "C1:2001");
}

#[test]
fn per_record_results_deliver_retry_or_dead_letter_each_log() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_logs((0..3).map(|n| log(&format!("C{n}"), "2001", "2002")).collect(), ms(0), &mut out);
    let [(id, _)] = upserts(&poll(&mut engine, ms(2_000)).0).try_into().unwrap();
    let settled = engine.on_upsert(
        id,
        ok(vec![
            RecordResult::Stored { id: "00T1".into() },
            RecordResult::Refused { code: "UNABLE_TO_LOCK_ROW".into(), message: "locked".into(), retryable: true },
            RecordResult::Refused { code: "STRING_TOO_LONG".into(), message: "too long".into(), retryable: false },
        ]),
        ms(2_100),
    );
    assert_eq!(settled.delivered, ["C0:2001"]);
    assert_eq!(settled.retried, ["C1:2001"]);
    assert_eq!(settled.dead, [("C2:2001".to_owned(), "STRING_TOO_LONG: too long".to_owned())]);
    assert_eq!(engine.logs_held(), 1);
    // Only the locked record goes again, after a backoff.
    assert!(upserts(&poll(&mut engine, ms(2_101)).0).is_empty());
    let [(_, tasks)] = upserts(&poll(&mut engine, ms(10_000)).0).try_into().unwrap();
    assert_eq!(tasks.iter().map(|task| task.key.as_str()).collect::<Vec<_>>(), ["C1:2001"]);
}

#[test]
fn transient_failures_retry_with_growing_backoff_and_rejections_dead_letter() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_logs(vec![log("C1", "2001", "2002")], ms(0), &mut out);
    let mut now = ms(2_000);
    let mut delays = Vec::new();
    for _ in 0..4 {
        let (out, _) = poll(&mut engine, now);
        let [(id, _)] = upserts(&out).try_into().expect("a retry");
        let settled = engine.on_upsert(id, fail(CrmError::Transient("503 SERVER_UNAVAILABLE".into())), now);
        assert_eq!(settled.retried, ["C1:2001"]);
        let (_, wake) = poll(&mut engine, now);
        let wake = wake.expect("a retry is scheduled");
        delays.push(wake - now);
        now = wake;
    }
    assert!(delays.windows(2).all(|pair| pair[1] > pair[0]), "{delays:?}");
    let (out, _) = poll(&mut engine, now);
    let [(id, _)] = upserts(&out).try_into().unwrap();
    let settled = engine.on_upsert(
        id,
        fail(CrmError::Rejected { code: "INVALID_FIELD".into(), message: "No such column".into() }),
        now,
    );
    assert_eq!(settled.dead.len(), 1);
    assert!(settled.dead[0].1.contains("INVALID_FIELD"));
    assert_eq!(engine.logs_held(), 0);
}

#[test]
fn near_the_limit_only_searches_go_and_logs_wait() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_logs(vec![log("C1", "2001", "2002")], ms(0), &mut out);
    engine.on_event(&call("C9", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(1_000));
    let [(id, _)] = searches(&out).try_into().unwrap();
    let near = Ok(Reply { value: vec![], usage: Some(ApiUsage { used: 960, max: 1_000 }) });
    engine.on_search(id, near, ms(1_100), &mut Outputs::default());
    assert_eq!(engine.budget().state(), BudgetState::ReadsOnly);
    let (out, _) = poll(&mut engine, ms(60_000));
    assert!(out.actions.is_empty(), "the log waits");
    let mut out = Outputs::default();
    engine.on_event(&call("C10", Direction::Inbound, "+49 30 5555555", "2001"), ms(60_000), &mut out);
    engine.on_event(&line("2001", &[("C10", ConnState::Alerting)]), ms(60_000), &mut out);
    let (out, _) = poll(&mut engine, ms(60_050));
    let [(id, _)] = searches(&out).try_into().expect("screen pops still search");
    let room = Ok(Reply { value: vec![], usage: Some(ApiUsage { used: 500, max: 1_000 }) });
    engine.on_search(id, room, ms(60_100), &mut Outputs::default());
    assert_eq!(upserts(&poll(&mut engine, ms(60_100)).0).len(), 1, "room again: the log goes");
}

#[test]
fn an_exhausted_allocation_pops_from_the_cache_and_holds_logs_until_a_probe_shows_room() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    // Cache the caller.
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(1_000));
    let [(id, _)] = searches(&out).try_into().unwrap();
    engine.on_search(id, ok(vec![record(RecordKind::Contact, "003A", CALLER)]), ms(1_000), &mut Outputs::default());

    // A write finds the allocation spent.
    engine.on_logs(vec![log("C0", "2001", "2002")], ms(1_000), &mut Outputs::default());
    let [(id, _)] = upserts(&poll(&mut engine, ms(3_000)).0).try_into().unwrap();
    let settled =
        engine.on_upsert(id, fail(CrmError::LimitExceeded("TotalRequests Limit exceeded.".into())), ms(3_000));
    assert_eq!(settled.retried, ["C0:2001"]);
    assert_eq!(engine.budget().state(), BudgetState::Stopped);

    // A known caller still pops; an unknown one pops as failed at once, without a request.
    let mut out = Outputs::default();
    engine.on_event(&call("C2", Direction::Inbound, CALLER, "2001"), ms(4_000), &mut out);
    engine.on_event(&line("2001", &[("C2", ConnState::Alerting)]), ms(4_000), &mut out);
    engine.on_event(&call("C3", Direction::Inbound, "+49 30 7777777", "2002"), ms(4_000), &mut out);
    engine.on_event(&line("2002", &[("C3", ConnState::Alerting)]), ms(4_000), &mut out);
    let results: Vec<_> = out.pops.iter().map(|pop| pop.pop.result.as_str()).collect();
    assert_eq!(results, ["single", "failed"]);

    // Nothing goes but a probe, once a probe interval has passed.
    let (out, wake) = poll(&mut engine, ms(4_000));
    assert!(out.actions.is_empty());
    assert_eq!(wake, Some(ms(63_000)));
    let (out, _) = poll(&mut engine, ms(63_000));
    let [Action::Probe { id }] = out.actions.as_slice() else { panic!("{:?}", out.actions) };
    engine.on_probe(*id, ok(()), ms(63_100));
    assert_eq!(engine.budget().state(), BudgetState::Normal);
    let (out, _) = poll(&mut engine, ms(63_100));
    assert_eq!(upserts(&out).len(), 1, "the held log lands");
}

#[test]
fn a_failed_search_pops_as_failed_and_retries_for_the_logs() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    engine.on_logs(vec![log("C0", "2001", CALLER)], ms(0), &mut out);
    let (out, _) = poll(&mut engine, ms(50));
    let [(id, _)] = searches(&out).try_into().unwrap();
    let mut out = Outputs::default();
    engine.on_search(id, fail(CrmError::Transient("timed out".into())), ms(100), &mut out);
    assert_eq!(out.pops[0].pop.result, PopResult::Failed("salesforce unavailable: timed out".into()));
    let (out, wake) = poll(&mut engine, ms(100));
    assert!(out.actions.is_empty());
    let (out, _) = poll(&mut engine, wake.expect("a retry"));
    assert_eq!(searches(&out).len(), 1, "searched again for the log");
}

#[test]
fn requests_in_flight_are_bounded() {
    let mut config = config();
    config.max_in_flight = 1;
    config.log_batch_max = 1;
    let mut engine = Engine::new(config);
    engine.on_logs(vec![log("C1", "2001", "2002"), log("C2", "2001", "2002")], ms(0), &mut Outputs::default());
    let [(id, _)] = upserts(&poll(&mut engine, ms(0)).0).try_into().expect("one at a time");
    assert!(poll(&mut engine, ms(10)).0.actions.is_empty());
    engine.on_upsert(id, ok(vec![RecordResult::Stored { id: "00T1".into() }]), ms(20));
    assert_eq!(upserts(&poll(&mut engine, ms(20)).0).len(), 1);
}

#[test]
fn requests_are_paced_by_the_budget() {
    let mut config = config();
    // Two requests a second, a burst of one.
    config.budget.daily_allocation = 172_800;
    config.budget.burst = 1;
    config.log_batch_max = 1;
    config.max_in_flight = 10;
    let mut engine = Engine::new(config);
    engine.on_logs((0..3).map(|n| log(&format!("C{n}"), "2001", "2002")).collect(), ms(0), &mut Outputs::default());
    let (out, wake) = poll(&mut engine, ms(0));
    assert_eq!(upserts(&out).len(), 1);
    let wake = wake.expect("the next permit");
    assert!(wake > ms(0) && wake <= ms(500), "{wake:?}");
    assert_eq!(upserts(&poll(&mut engine, wake).0).len(), 1);
}

fn blocks_asked(out: &Outputs) -> Vec<(u64, u64)> {
    out.actions
        .iter()
        .filter_map(|action| match action {
            Action::TakeBlock { requests, window_cap } => Some((*requests, *window_cap)),
            _ => None,
        })
        .collect()
}

#[test]
fn in_a_cluster_requests_wait_for_a_block_of_the_shared_allowance() {
    let mut config = config();
    config.budget.shared_block = Some(2);
    config.log_batch_max = 1;
    let mut engine = Engine::new(config);
    engine.on_logs((0..3).map(|n| log(&format!("C{n}"), "2001", "2002")).collect(), ms(0), &mut Outputs::default());
    let (out, _) = poll(&mut engine, ms(0));
    assert!(upserts(&out).is_empty(), "no block in hand");
    assert_eq!(blocks_asked(&out), [(2, 86_400_000)], "the share of the allocation is the window's cap");
    assert!(blocks_asked(&poll(&mut engine, ms(1)).0).is_empty(), "one request for a block at a time");

    engine.on_block(Some(BlockGrant::Granted(2)), ms(5));
    let (out, _) = poll(&mut engine, ms(5));
    let [(first, _), _] = upserts(&out).try_into().expect("a block of two is two requests");
    assert_eq!(blocks_asked(&out), [(2, 86_400_000)], "asked ahead, at half a block");
    assert!(upserts(&poll(&mut engine, ms(6)).0).is_empty(), "spent");

    // The org's allocation, once reported, sets the cap; a spent window holds the rest.
    engine.on_upsert(first, ok(vec![RecordResult::Stored { id: "00T1".into() }]), ms(7));
    engine.on_block(Some(BlockGrant::Spent { retry_after: Duration::from_secs(60) }), ms(7));
    let (out, wake) = poll(&mut engine, ms(8));
    assert!(upserts(&out).is_empty() && blocks_asked(&out).is_empty());
    assert_eq!(wake, Some(ms(7) + Duration::from_secs(60)));
    let (out, _) = poll(&mut engine, ms(7) + Duration::from_secs(60));
    assert_eq!(blocks_asked(&out), [(2, 1_000)], "a new window, capped by the org's reported 1,000");
}

#[test]
fn disabled_integration_holds_logs_and_delivers_them_when_enabled_again() {
    let mut engine = Engine::new(config());
    let mut settings = engine.settings().clone();
    settings.enabled = false;
    engine.set_settings(settings.clone());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    engine.on_logs(vec![log("C0", "2001", "2002")], ms(0), &mut out);
    assert_eq!(poll(&mut engine, ms(10_000)), (Outputs::default(), None));
    settings.enabled = true;
    engine.set_settings(settings);
    assert_eq!(upserts(&poll(&mut engine, ms(10_000)).0).len(), 1);
}

#[test]
fn a_renamed_call_still_pops() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(0), &mut out);
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    engine.on_event(&ModelEvent::CallRenamed { old: vec!["C1".into()], new: "C2".into() }, ms(10), &mut out);
    let (out, _) = poll(&mut engine, ms(50));
    let [(id, _)] = searches(&out).try_into().unwrap();
    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![]), ms(60), &mut out);
    assert_eq!(out.pops[0].pop.call, "C2");
}

#[test]
fn templates_changed_at_run_time_apply_to_logs_not_yet_written() {
    let mut engine = Engine::new(config());
    engine.on_logs(vec![log("C1", "2001", "2002")], ms(0), &mut Outputs::default());
    let mut settings = engine.settings().clone();
    settings.templates.subject = crate::crm::task::Template::parse("{status} call on {line}").unwrap();
    engine.set_settings(settings);
    let [(_, tasks)] = upserts(&poll(&mut engine, ms(2_000)).0).try_into().unwrap();
    assert_eq!(tasks[0].subject, "answered call on 2001");
}

#[test]
fn a_line_that_rings_before_its_call_is_known_still_pops() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(5), &mut out);
    let (out, _) = poll(&mut engine, ms(55));
    let [(id, _)] = searches(&out).try_into().expect("searched as urgent");
    let mut out = Outputs::default();
    engine.on_search(id, ok(vec![]), ms(60), &mut out);
    assert_eq!(out.pops.len(), 1);
    assert_eq!(out.pops[0].triggered_at, ms(5));
}

#[test]
fn the_naive_mode_spends_a_request_per_operation() {
    let mut engine = Engine::new(config().with_mode(true));
    let mut searched = 0;
    for n in 0..2 {
        let id = format!("C{n}");
        let mut out = Outputs::default();
        engine.on_event(&call(&id, Direction::Inbound, CALLER, "2001"), ms(n * 1_000), &mut out);
        engine.on_event(&line("2001", &[(&id, ConnState::Alerting)]), ms(n * 1_000), &mut out);
        let (out, _) = poll(&mut engine, ms(n * 1_000));
        for (request, numbers) in searches(&out) {
            assert_eq!(numbers.len(), 1);
            searched += 1;
            engine.on_search(request, ok(vec![]), ms(n * 1_000 + 10), &mut Outputs::default());
        }
    }
    assert_eq!(searched, 2, "nothing cached: the same caller is searched again");
    engine.on_logs(vec![log("C0", "2001", "2002"), log("C1", "2001", "2002")], ms(5_000), &mut Outputs::default());
    assert_eq!(upserts(&poll(&mut engine, ms(5_000)).0).len(), 2, "one write per call log");
}

#[test]
fn a_line_that_let_a_call_go_before_the_call_was_known_does_not_pop_for_it() {
    let mut engine = Engine::new(config());
    let mut out = Outputs::default();
    engine.on_event(&line("2001", &[("C1", ConnState::Alerting)]), ms(0), &mut out);
    engine.on_event(&line("2001", &[]), ms(5), &mut out);
    engine.on_event(&call("C1", Direction::Inbound, CALLER, "2001"), ms(10), &mut out);
    let (out, wake) = poll(&mut engine, ms(10));
    assert!(out.actions.is_empty() && out.pops.is_empty());
    assert_eq!(wake, Some(ms(1_010)), "only the lookup ahead of time, not an urgent one");
}
