//! The running model with a scripted PBX: actors come and go with lines and calls, records are
//! written once, calls merge, resyncs and the sweep close what the PBX no longer has, crashed actors
//! come back over their state, and commands are checked before they reach the PBX.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::call::CallInput;
use crate::call::{CallLogRecord, LegNote};
use crate::domain::{Cause, DeviceKind, LegOutcome};
use crate::events::ModelEvent;
use crate::line::CommandRefusal;
use crate::port::{PbxCommand, PbxOutcome, PortError};

/// A PBX that answers snapshots from a script and records every command it is sent.
#[derive(Default)]
struct ScriptedPbx {
    calls: Mutex<HashMap<CallId, Vec<Party>>>,
    sent: Mutex<Vec<PbxCommand>>,
    refuse_with: Mutex<Option<PortError>>,
    /// Line snapshots wait while a test holds this for writing.
    line_snapshots: tokio::sync::RwLock<()>,
}

impl PbxPort for ScriptedPbx {
    async fn execute(&self, command: PbxCommand) -> Result<PbxOutcome, PortError> {
        if let PbxCommand::SnapshotLine { .. } = command {
            drop(self.line_snapshots.read().await);
        }
        self.sent.lock().unwrap().push(command.clone());
        if let Some(error) = self.refuse_with.lock().unwrap().clone() {
            return Err(error);
        }
        Ok(match command {
            PbxCommand::SnapshotCall { call } => PbxOutcome::Snapshot(self.calls.lock().unwrap().get(&call).cloned()),
            PbxCommand::SnapshotLine { .. } => PbxOutcome::LineSnapshot { agent: None, calls: BTreeMap::new() },
            PbxCommand::MakeCall { .. } => PbxOutcome::Call("C100".into()),
            _ => PbxOutcome::Done,
        })
    }
}

struct Fixture {
    model: Model<ScriptedPbx>,
    router: Router<ScriptedPbx>,
    logs: Records,
    pbx: Arc<ScriptedPbx>,
}

/// The final call log records among the model's leg notes (the journal's notes are set aside).
struct Records {
    notes: mpsc::Receiver<LegNote>,
    journal: Vec<LegNote>,
}

impl Records {
    async fn recv(&mut self) -> Option<CallLogRecord> {
        loop {
            match self.notes.recv().await? {
                LegNote::Closed(record) => return Some(record),
                other => self.journal.push(other),
            }
        }
    }

    fn try_recv(&mut self) -> Result<CallLogRecord, mpsc::error::TryRecvError> {
        loop {
            match self.notes.try_recv()? {
                LegNote::Closed(record) => return Ok(record),
                other => self.journal.push(other),
            }
        }
    }
}

async fn fixture(config: ModelConfig) -> Fixture {
    let pbx = Arc::new(ScriptedPbx::default());
    let (logs_tx, notes) = mpsc::channel(64);
    let (model, router) = start(config, pbx.clone(), logs_tx).await.unwrap();
    Fixture { model, router, logs: Records { notes, journal: Vec::new() }, pbx }
}

async fn eventually(mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

fn line(device: &str, input: LineInput) -> ModelInput {
    ModelInput::Line { device: device.into(), input }
}

fn party(call: &str, device: &str, kind: DeviceKind, state: ConnState, at: Millis) -> ModelInput {
    ModelInput::Call {
        call: call.into(),
        inputs: vec![CallInput::PartyState { device: device.into(), kind, state, cause: Cause::Normal, at }],
    }
}

fn agent(login_id: &str) -> LineInput {
    LineInput::Agent(Some(Box::new(crate::line::Agent {
        login_id: login_id.into(),
        state: crate::domain::AgentState::Ready,
        roles: vec!["agent".into()],
        reason: String::new(),
    })))
}

/// An inbound call C1 from outside, answered at line 2001 at t=1000.
async fn answered_call(fixture: &mut Fixture) {
    let router = &mut fixture.router;
    router.route(line("2001", agent("anna"))).await;
    router
        .route(ModelInput::Call {
            call: "C1".into(),
            inputs: vec![CallInput::Info {
                calling: "+4930111".into(),
                called: "2001".into(),
                direction: Direction::Inbound,
            }],
        })
        .await;
    router.route(party("C1", "+4930111", DeviceKind::External, ConnState::Connected, 0)).await;
    router.route(party("C1", "2001", DeviceKind::Line, ConnState::Alerting, 0)).await;
    router.route(line("2001", LineInput::Call { call: "C1".into(), state: ConnState::Alerting })).await;
    router.route(party("C1", "2001", DeviceKind::Line, ConnState::Connected, 1000)).await;
    router.route(line("2001", LineInput::Call { call: "C1".into(), state: ConnState::Connected })).await;
}

fn end(call: &str, at: Millis) -> ModelInput {
    ModelInput::Call { call: call.into(), inputs: vec![CallInput::Ended { cause: Cause::Normal, at }] }
}

#[tokio::test]
async fn inputs_create_lines_and_calls_that_queries_see() {
    let mut fixture = fixture(ModelConfig::default()).await;
    let mut events = fixture.model.publisher().subscribe();
    answered_call(&mut fixture).await;
    let model = &fixture.model;
    eventually(|| model.line("2001").is_some_and(|line| line.calls == vec![("C1".to_owned(), ConnState::Connected)]))
        .await;
    eventually(|| model.call("C1").is_some_and(|call| call.parties.len() == 2)).await;
    assert_eq!(model.line("2001").unwrap().presence, crate::domain::Presence::Busy);
    assert_eq!(model.actor_counts(), (1, 1));
    assert_eq!(model.calls().len(), 1);
    assert!(model.line("2999").is_none());
    // Every change was published, in one numbered sequence.
    let mut sequences = Vec::new();
    while let Ok(event) = events.try_recv() {
        sequences.push(event.sequence);
    }
    assert!(sequences.len() >= 5);
    assert!(sequences.windows(2).all(|pair| pair[1] == pair[0] + 1));
    model.shutdown().await;
}

#[tokio::test]
async fn an_ended_call_writes_one_record_per_leg_once_and_its_actor_stops() {
    let mut fixture = fixture(ModelConfig::default()).await;
    answered_call(&mut fixture).await;
    fixture.router.route(end("C1", 31_000)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!((record.device.as_str(), record.outcome), ("2001", LegOutcome::Answered));
    assert_eq!(record.talk_seconds, 30);
    assert_eq!(record.agent_id.as_deref(), Some("anna"));
    let model = &fixture.model;
    eventually(|| model.call("C1").is_none()).await;
    // Late news of the ended call creates nothing and writes nothing.
    fixture.router.route(end("C1", 32_000)).await;
    fixture
        .router
        .route(ModelInput::Call {
            call: "C1".into(),
            inputs: vec![CallInput::PartyCleared { device: "2001".into(), cause: Cause::Normal, at: 32_000 }],
        })
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fixture.logs.try_recv().is_err(), "exactly one record");
    assert_eq!(ModelStats::get(&model.stats().calls_ended), 1);
    model.shutdown().await;
}

#[tokio::test]
async fn a_pooled_call_actor_serves_the_next_call_and_drops_orders_for_its_last_one() {
    let mut fixture = fixture(ModelConfig::default()).await;
    answered_call(&mut fixture).await;
    let model = fixture.model.clone();
    eventually(|| model.call("C1").is_some()).await;
    let first = model.context.calls.get("C1").map(|entry| entry.clone()).unwrap();
    fixture.router.route(end("C1", 31_000)).await;
    tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    eventually(|| !lock(&model.context.idle_calls).is_empty()).await;
    fixture.router.route(party("C2", "2001", DeviceKind::Line, ConnState::Alerting, 40_000)).await;
    let second = model.context.calls.get("C2").map(|entry| entry.clone()).unwrap();
    assert_eq!(second.actor().get_id(), first.actor().get_id(), "the ended call's actor serves the next one");
    // An order sent for C1 just before it ended reaches the actor only now, while it serves C2.
    let late = CallInput::Disposition { disposition: "for C1".into() };
    first.cast(CallOrder::Apply(vec![late])).unwrap();
    model.set_notes("C2", "for C2").unwrap();
    eventually(|| model.call("C2").is_some_and(|call| call.notes == "for C2")).await;
    assert_eq!(model.call("C2").unwrap().disposition, None, "C1's order was not applied to C2");
    assert_eq!(ModelStats::get(&model.stats().calls_started), 2);
    model.shutdown().await;
}

#[tokio::test]
async fn a_transfer_merges_both_calls_under_the_new_id() {
    let mut fixture = fixture(ModelConfig::default()).await;
    answered_call(&mut fixture).await;
    let router = &mut fixture.router;
    router.route(party("C1", "2001", DeviceKind::Line, ConnState::Held, 5000)).await;
    router.route(party("C2", "2001", DeviceKind::Line, ConnState::Connected, 5000)).await;
    router.route(party("C2", "2002", DeviceKind::Line, ConnState::Connected, 6000)).await;
    let mut events = fixture.model.publisher().subscribe();
    router
        .route(ModelInput::Merge(Box::new(Merge {
            primary: "C1".into(),
            secondary: Some("C2".into()),
            new: "C3".into(),
            leaving: Some("2001".into()),
            devices: vec!["+4930111".into(), "2002".into()],
            linkage: None,
            at: 9000,
        })))
        .await;
    let model = &fixture.model;
    eventually(|| model.call("C3").is_some()).await;
    assert!(model.call("C1").is_none() && model.call("C2").is_none());
    let merged = model.call("C3").unwrap();
    assert_eq!(merged.root, "C1");
    assert_eq!(merged.parties.iter().map(|party| party.device.as_str()).collect::<Vec<_>>(), vec!["+4930111", "2002"]);
    // Earlier inputs may still be publishing; the rename is among the events that follow.
    let renamed = loop {
        let event = events.recv().await.unwrap();
        if let ModelEvent::CallRenamed { .. } = event.event {
            break event.event.clone();
        }
    };
    assert_eq!(renamed, ModelEvent::CallRenamed { old: vec!["C1".into(), "C2".into()], new: "C3".into() });
    fixture.router.route(end("C3", 20_000)).await;
    let mut records = [fixture.logs.recv().await.unwrap(), fixture.logs.recv().await.unwrap()];
    records.sort_by(|a, b| a.device.cmp(&b.device));
    assert_eq!(records[0].outcome, LegOutcome::Transferred);
    assert_eq!(records[1].outcome, LegOutcome::Answered);
    assert!(records.iter().all(|record| record.root_call_id == "C1"));
    fixture.model.shutdown().await;
}

#[tokio::test]
async fn a_resync_closes_calls_that_no_snapshot_mentions() {
    let mut fixture = fixture(ModelConfig::default()).await;
    answered_call(&mut fixture).await;
    let router = &mut fixture.router;
    router.route(party("C2", "2002", DeviceKind::Line, ConnState::Alerting, 0)).await;
    router.route(ModelInput::ResyncStarted).await;
    router
        .route(ModelInput::CallSnapshot(Box::new(CallSnapshot {
            call: "C2".into(),
            parties: vec![Party { device: "2002".into(), kind: DeviceKind::Line, state: ConnState::Connected }],
            calling: "+4930222".into(),
            called: "2002".into(),
            direction: Direction::Inbound,
            queue: None,
            park_id: None,
            recording_url: None,
            created_at: 0,
            linkage: None,
            at: 40_000,
        })))
        .await;
    router.route(ModelInput::ResyncComplete { at: 40_000 }).await;
    // C1 ended while the link was down: it is closed, and its record written.
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!((record.root_call_id.as_str(), record.ended_at), ("C1", 40_000));
    let model = &fixture.model;
    eventually(|| model.call("C1").is_none()).await;
    eventually(|| model.call("C2").is_some_and(|call| call.parties[0].state == ConnState::Connected)).await;
    assert_eq!(ModelStats::get(&model.stats().orphans_closed), 1);
    model.shutdown().await;
}

#[tokio::test]
async fn a_crashed_call_actor_comes_back_over_its_state_and_the_call_ends_with_a_correct_record() {
    let mut fixture = fixture(ModelConfig::default()).await;
    answered_call(&mut fixture).await;
    fixture.pbx.calls.lock().unwrap().insert(
        "C1".into(),
        vec![
            Party { device: "+4930111".into(), kind: DeviceKind::External, state: ConnState::Connected },
            Party { device: "2001".into(), kind: DeviceKind::Line, state: ConnState::Connected },
        ],
    );
    let model = &fixture.model;
    eventually(|| model.call("C1").is_some_and(|call| call.parties.len() == 2)).await;
    assert!(model.crash_call("C1"));
    eventually(|| ModelStats::get(&model.stats().restarts) == 1).await;
    // The successor checks its state against the PBX.
    let pbx = fixture.pbx.clone();
    eventually(|| pbx.sent.lock().unwrap().iter().any(|command| matches!(command, PbxCommand::SnapshotCall { .. })))
        .await;
    fixture.router.route(party("C1", "2001", DeviceKind::Line, ConnState::Held, 11_000)).await;
    fixture.router.route(end("C1", 21_000)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!(record.outcome, LegOutcome::Answered);
    assert_eq!((record.answered_at, record.talk_seconds, record.hold_seconds), (Some(1000), 10, 10));
    fixture.model.shutdown().await;
}

#[tokio::test]
async fn a_crashed_line_actor_comes_back_and_resnapshots() {
    let mut fixture = fixture(ModelConfig::default()).await;
    fixture.router.route(line("2001", agent("anna"))).await;
    let model = &fixture.model;
    eventually(|| model.line("2001").is_some_and(|line| line.agent.is_some())).await;
    assert!(model.crash_line("2001"));
    eventually(|| ModelStats::get(&model.stats().restarts) == 1).await;
    // The scripted PBX says nobody is logged on now: the snapshot wins.
    eventually(|| model.line("2001").is_some_and(|line| line.agent.is_none())).await;
    model.shutdown().await;
}

#[tokio::test]
async fn mailbox_depth_counts_what_waits_and_a_killed_actors_backlog_goes_with_it() {
    let mut fixture = fixture(ModelConfig::default()).await;
    fixture.router.route(line("2001", agent("anna"))).await;
    let model = fixture.model.clone();
    eventually(|| model.line("2001").is_some_and(|line| line.agent.is_some())).await;
    assert_eq!(model.mailbox_depths().0, MailboxDepth::default());

    // The line actor blocks on a snapshot the PBX is slow to give; news piles up behind it.
    let slow_pbx = fixture.pbx.line_snapshots.write().await;
    let first = model.context.lines.get("2001").and_then(|entry| entry.mailbox.clone()).unwrap();
    first.cast(LineMsg::Resnapshot).unwrap();
    eventually(|| first.queued() == 0).await;
    for state in [ConnState::Alerting, ConnState::Connected, ConnState::Held] {
        fixture.router.route(line("2001", LineInput::Call { call: "C1".into(), state })).await;
    }
    assert_eq!(model.mailbox_depths().0, MailboxDepth { total: 3, deepest: 3 });
    assert_eq!(model.mailbox_depths().1, MailboxDepth::default());

    // Killed, the actor's backlog is gone with it (ractor drops it) and stops counting; its
    // successor starts with an empty mailbox and asks for a snapshot of its own.
    first.actor().kill();
    eventually(|| ModelStats::get(&model.stats().restarts) == 1).await;
    let restarted = |entry: &LineEntry| entry.actor().is_some_and(|actor| actor.get_id() != first.actor().get_id());
    eventually(|| model.context.lines.get("2001").is_some_and(|entry| restarted(&entry))).await;
    eventually(|| model.mailbox_depths().0 == MailboxDepth::default()).await;
    drop(slow_pbx);
    fixture.router.route(line("2001", agent("bob"))).await;
    eventually(|| model.line("2001").is_some_and(|line| line.agent.is_some_and(|agent| agent.login_id == "bob"))).await;
    assert_eq!(model.mailbox_depths(), (MailboxDepth::default(), MailboxDepth::default()));
    model.shutdown().await;
}

#[tokio::test]
async fn an_idle_lines_actor_rests_and_its_next_news_wakes_one_over_the_same_state() {
    // The periodic rest is off; the test makes each pass itself.
    let mut fixture = fixture(ModelConfig { line_idle: Duration::ZERO, ..ModelConfig::default() }).await;
    answered_call(&mut fixture).await;
    fixture.router.route(line("2002", agent("bob"))).await;
    let model = fixture.model.clone();
    eventually(|| model.line("2002").is_some_and(|line| line.agent.is_some())).await;
    eventually(|| model.line("2001").is_some_and(|line| line.calls.len() == 1)).await;
    assert_eq!(model.actor_counts(), (2, 1));

    // Both worked since the last look (there was none): they stay. Nothing since: they rest.
    assert_eq!(supervisor::rest_idle_lines_once(&model.context), 0);
    fixture.router.route(line("2002", LineInput::Call { call: "C9".into(), state: ConnState::Alerting })).await;
    eventually(|| model.line("2002").is_some_and(|line| line.calls.len() == 1)).await;
    assert_eq!(supervisor::rest_idle_lines_once(&model.context), 1, "2001 was idle, 2002 was not");
    assert_eq!(model.actor_counts(), (1, 1));
    assert_eq!(supervisor::rest_idle_lines_once(&model.context), 1);
    assert_eq!(model.actor_counts(), (0, 1), "the call's actor is not a line's");
    assert!(model.context.members.iter().all(|member| matches!(member.value(), Member::Call(_))));

    // A resting line is still known, queried and checked, without an actor.
    let anna = model.line("2001").expect("still mirrored");
    assert_eq!(anna.agent.as_ref().map(|agent| agent.login_id.as_str()), Some("anna"));
    assert_eq!(anna.calls, [("C1".to_owned(), ConnState::Connected)]);
    assert!(matches!(model.retrieve("2001", "C1").await, Err(CommandError::Refused(_))), "C1 is not held");

    // Its next news starts an actor over the state it left, and nothing was restarted.
    fixture.router.route(line("2001", LineInput::Call { call: "C1".into(), state: ConnState::Held })).await;
    eventually(|| model.line("2001").is_some_and(|line| line.calls == [("C1".to_owned(), ConnState::Held)])).await;
    let anna = model.line("2001").unwrap();
    assert_eq!(anna.agent.map(|agent| agent.login_id), Some("anna".to_owned()), "the state it rested with");
    assert_eq!(model.actor_counts(), (1, 1));
    assert_eq!(ModelStats::get(&model.stats().restarts), 0, "a rest is not a crash");
    model.shutdown().await;
}

#[tokio::test]
async fn the_sweep_closes_calls_the_pbx_no_longer_has() {
    let config = ModelConfig {
        sweep_interval: Duration::from_millis(20),
        sweep_idle: Duration::from_millis(1),
        ..ModelConfig::default()
    };
    let mut fixture = fixture(config).await;
    answered_call(&mut fixture).await;
    // The PBX never reported the end of C1, and has no such call.
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!(record.root_call_id, "C1");
    let model = &fixture.model;
    eventually(|| model.call("C1").is_none()).await;
    assert!(ModelStats::get(&model.stats().orphans_closed) >= 1);
    model.shutdown().await;
}

#[tokio::test]
async fn commands_are_checked_against_the_line_before_they_reach_the_pbx() {
    let mut fixture = fixture(ModelConfig::default()).await;
    answered_call(&mut fixture).await;
    let model = &fixture.model;
    eventually(|| model.line("2001").is_some_and(|line| !line.calls.is_empty())).await;
    assert_eq!(model.hold("2999", "C1").await, Err(CommandError::UnknownLine("2999".into())));
    assert_eq!(model.hold("2001", "C9").await, Err(CommandError::UnknownCall("C9".into())));
    assert!(matches!(
        model.retrieve("2001", "C1").await,
        Err(CommandError::Refused(CommandRefusal::WrongState { .. }))
    ));
    assert!(matches!(model.make_call("2001", "not a number").await, Err(CommandError::Invalid(_))));
    assert!(fixture.pbx.sent.lock().unwrap().is_empty(), "nothing refused reached the pbx");
    assert_eq!(model.hold("2001", "C1").await, Ok(()));
    assert_eq!(model.make_call("2001", "+4930555").await, Ok("C100".into()));
    *fixture.pbx.refuse_with.lock().unwrap() = Some(PortError::Rejected("no".into()));
    assert_eq!(model.hold("2001", "C1").await, Err(CommandError::Pbx(PortError::Rejected("no".into()))));
    assert_eq!(model.set_notes("C9", "x"), Err(CommandError::UnknownCall("C9".into())));
    assert_eq!(model.set_notes("C1", "callback"), Ok(()));
    model.shutdown().await;
}

#[tokio::test]
async fn missed_queue_records_can_be_left_out() {
    for skip in [false, true] {
        let mut fixture = fixture(ModelConfig { skip_missed_queue_records: skip, ..ModelConfig::default() }).await;
        let router = &mut fixture.router;
        router.route(party("C1", "+4930111", DeviceKind::External, ConnState::Connected, 0)).await;
        router
            .route(ModelInput::Call {
                call: "C1".into(),
                inputs: vec![CallInput::PartyState {
                    device: "2001".into(),
                    kind: DeviceKind::Line,
                    state: ConnState::Alerting,
                    cause: Cause::Distribution,
                    at: 0,
                }],
            })
            .await;
        router
            .route(ModelInput::Call {
                call: "C1".into(),
                inputs: vec![CallInput::PartyCleared { device: "2001".into(), cause: Cause::Distribution, at: 15_000 }],
            })
            .await;
        router.route(party("C1", "2002", DeviceKind::Line, ConnState::Connected, 16_000)).await;
        router.route(end("C1", 30_000)).await;
        let mut outcomes = Vec::new();
        let model = &fixture.model;
        eventually(|| model.call("C1").is_none()).await;
        while let Ok(record) = fixture.logs.try_recv() {
            outcomes.push((record.device, record.outcome));
        }
        outcomes.sort();
        let expected = if skip {
            vec![("2002".to_owned(), LegOutcome::Answered)]
        } else {
            vec![("2001".to_owned(), LegOutcome::Missed), ("2002".to_owned(), LegOutcome::Answered)]
        };
        assert_eq!(outcomes, expected, "skip_missed_queue_records = {skip}");
        fixture.model.shutdown().await;
    }
}

#[test]
fn a_call_is_answered_when_any_agent_talked_and_abandoned_when_the_caller_gave_up_ringing() {
    use crate::domain::LegOutcome::{Abandoned, Answered, Missed, Transferred};
    use crate::runtime::CallOutcome;
    assert_eq!(CallOutcome::of([Missed, Answered]), CallOutcome::Answered);
    assert_eq!(CallOutcome::of([Transferred]), CallOutcome::Answered);
    assert_eq!(CallOutcome::of([Missed, Abandoned]), CallOutcome::Abandoned);
    assert_eq!(CallOutcome::of([Missed]), CallOutcome::Unanswered);
    assert_eq!(CallOutcome::of([]), CallOutcome::Unanswered);
}

/// The legs a journal holds open after these notes, replayed as the outbox keeps them: by key.
fn still_open(journal: &[LegNote]) -> std::collections::BTreeSet<String> {
    let mut open = std::collections::BTreeSet::new();
    for note in journal {
        match note {
            LegNote::Open(record) => {
                open.insert(record.key());
            }
            LegNote::Moved(keys) => keys.iter().for_each(|key| {
                open.remove(key);
            }),
            other => panic!("unexpected note {other:?}"),
        }
    }
    open
}

/// 2001 answers C1, consults 2002 on C2, and transfers: C1 and C2 merge into C3.
async fn transfer_c1_to_c2s_party(fixture: &mut Fixture) {
    answered_call(fixture).await;
    let router = &mut fixture.router;
    router.route(party("C1", "2001", DeviceKind::Line, ConnState::Held, 5000)).await;
    router.route(party("C2", "2001", DeviceKind::Line, ConnState::Connected, 5000)).await;
    router.route(party("C2", "2002", DeviceKind::Line, ConnState::Connected, 6000)).await;
    router
        .route(ModelInput::Merge(Box::new(Merge {
            primary: "C1".into(),
            secondary: Some("C2".into()),
            new: "C3".into(),
            leaving: Some("2001".into()),
            devices: vec!["+4930111".into(), "2002".into()],
            linkage: None,
            at: 9000,
        })))
        .await;
}

#[tokio::test]
async fn the_journal_hears_of_every_leg_and_is_left_with_none_open_after_a_merge_and_the_end() {
    let mut fixture = fixture(ModelConfig { journal_legs: true, ..ModelConfig::default() }).await;
    transfer_c1_to_c2s_party(&mut fixture).await;
    eventually(|| fixture.model.call("C3").is_some()).await;
    fixture.router.route(end("C3", 20_000)).await;
    let mut closed = vec![fixture.logs.recv().await.unwrap().key(), fixture.logs.recv().await.unwrap().key()];
    closed.sort();
    assert_eq!(closed, ["C1:2001", "C1:2002"]);
    let mut open = still_open(&fixture.logs.journal);
    let renamed_to_c3 =
        fixture.logs.journal.iter().any(|note| matches!(note, LegNote::Open(record) if record.call_id == "C3"));
    for key in &closed {
        open.remove(key);
    }
    assert!(open.is_empty(), "legs left open in the journal: {open:?}");
    assert!(renamed_to_c3, "the journal learns the call's new id");
    fixture.model.shutdown().await;
}

/// A call this model first sees after it left another node's line: 2002 rings on C5, which the
/// PBX links to the customer's call C1 (a blind transfer elsewhere gave it the new id).
fn delivered_after_a_transfer_elsewhere(linkage: Option<&str>) -> ModelInput {
    let mut inputs: Vec<CallInput> = linkage.map(|id| CallInput::Linkage { id: id.into() }).into_iter().collect();
    inputs.push(CallInput::Info { calling: "+4930111".into(), called: "2002".into(), direction: Direction::Inbound });
    inputs.push(CallInput::PartyState {
        device: "2002".into(),
        kind: DeviceKind::Line,
        state: ConnState::Alerting,
        cause: Cause::Transfer,
        at: 7000,
    });
    ModelInput::Call { call: "C5".into(), inputs }
}

#[tokio::test]
async fn legs_of_a_call_first_seen_after_a_transfer_are_keyed_by_the_pbxs_linkage_id() {
    let mut fixture = fixture(ModelConfig::default()).await;
    fixture.router.route(delivered_after_a_transfer_elsewhere(Some("C1"))).await;
    fixture.router.route(party("C5", "2002", DeviceKind::Line, ConnState::Connected, 8000)).await;
    fixture.router.route(end("C5", 20_000)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!((record.key(), record.call_id.as_str()), ("C1:2002".to_owned(), "C5"));
    // Without a linkage id (a PBX that has none) the first id this model saw is the root.
    fixture.router.route(delivered_after_a_transfer_elsewhere(None)).await;
    fixture.router.route(end("C5", 30_000)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!(record.key(), "C5:2002");
    fixture.model.shutdown().await;
}

#[tokio::test]
async fn a_merge_and_a_snapshot_take_the_pbxs_linkage_id_as_the_root() {
    let mut fixture = fixture(ModelConfig::default()).await;
    let router = &mut fixture.router;
    // This model saw only the consultation call C2 (2002 was consulted from another node's line);
    // the transfer joins it with C1, itself the customer's call C0 after an earlier transfer.
    router.route(party("C2", "2002", DeviceKind::Line, ConnState::Connected, 6000)).await;
    router
        .route(ModelInput::Merge(Box::new(Merge {
            primary: "C1".into(),
            secondary: Some("C2".into()),
            new: "C3".into(),
            leaving: Some("2001".into()),
            devices: vec!["+4930111".into(), "2002".into()],
            linkage: Some("C0".into()),
            at: 9000,
        })))
        .await;
    eventually(|| fixture.model.call("C3").is_some_and(|call| call.root == "C0")).await;
    fixture.router.route(end("C3", 20_000)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!(record.key(), "C0:2002");
    // A call rebuilt from a snapshot (a failover, a resync) gets the same root.
    fixture
        .router
        .route(ModelInput::CallSnapshot(Box::new(CallSnapshot {
            call: "C7".into(),
            parties: vec![Party { device: "2003".into(), kind: DeviceKind::Line, state: ConnState::Connected }],
            calling: "+4930333".into(),
            called: "2003".into(),
            direction: Direction::Inbound,
            queue: None,
            park_id: None,
            recording_url: None,
            created_at: 0,
            linkage: Some("C6".into()),
            at: 40_000,
        })))
        .await;
    eventually(|| fixture.model.call("C7").is_some_and(|call| call.root == "C6")).await;
    fixture.model.shutdown().await;
}

#[tokio::test]
async fn a_leg_journaled_before_the_linkage_id_came_moves_to_its_new_key() {
    let mut fixture = fixture(ModelConfig { journal_legs: true, ..ModelConfig::default() }).await;
    fixture.router.route(delivered_after_a_transfer_elsewhere(None)).await;
    let linkage = ModelInput::Call { call: "C5".into(), inputs: vec![CallInput::Linkage { id: "C1".into() }] };
    fixture.router.route(linkage).await;
    eventually(|| fixture.model.call("C5").is_some_and(|call| call.root == "C1")).await;
    fixture.router.route(end("C5", 20_000)).await;
    let closed = fixture.logs.recv().await.unwrap().key();
    assert_eq!(closed, "C1:2002");
    // Replayed as the outbox keeps it, the journal holds no leg under the old key.
    let mut open = still_open(&fixture.logs.journal);
    assert!(fixture.logs.journal.contains(&LegNote::Moved(vec!["C5:2002".into()])), "{:?}", fixture.logs.journal);
    open.remove(&closed);
    assert!(open.is_empty(), "legs left open in the journal: {open:?}");
    fixture.model.shutdown().await;
}

#[tokio::test]
async fn a_call_handed_to_an_outside_number_leaves_the_view_and_its_lines_records_are_written() {
    let config = ModelConfig { out_of_view_check: Duration::from_millis(50), ..ModelConfig::default() };
    let mut fixture = fixture(config).await;
    answered_call(&mut fixture).await;
    let outside = vec![
        Party { device: "+4930111".into(), kind: DeviceKind::External, state: ConnState::Connected },
        Party { device: "+4930999".into(), kind: DeviceKind::External, state: ConnState::Alerting },
    ];
    fixture.pbx.calls.lock().unwrap().insert("C2".into(), outside);
    // 2001 hands the call on to an outside number: no party this gateway monitors is left in it.
    fixture
        .router
        .route(ModelInput::Merge(Box::new(Merge {
            primary: "C1".into(),
            secondary: None,
            new: "C2".into(),
            leaving: Some("2001".into()),
            devices: vec!["+4930111".into()],
            linkage: None,
            at: 9000,
        })))
        .await;
    fixture
        .router
        .route(ModelInput::Call {
            call: "C2".into(),
            inputs: vec![CallInput::PartyState {
                device: "+4930999".into(),
                kind: DeviceKind::External,
                state: ConnState::Alerting,
                cause: Cause::Transfer,
                at: 9000,
            }],
        })
        .await;
    // The PBX still has the call, between outside parties: it ends here, and 2001's leg is logged.
    let record = tokio::time::timeout(Duration::from_secs(10), fixture.logs.recv()).await.unwrap().unwrap();
    assert_eq!((record.key().as_str(), record.outcome), ("C1:2001", LegOutcome::Transferred));
    eventually(|| fixture.model.call("C2").is_none()).await;
    assert_eq!(ModelStats::get(&fixture.model.stats().out_of_view_closed), 1);
    fixture.model.shutdown().await;
}

#[tokio::test]
async fn a_call_out_of_view_for_a_moment_is_not_asked_about() {
    let config = ModelConfig { out_of_view_check: Duration::from_millis(50), ..ModelConfig::default() };
    let mut fixture = fixture(config).await;
    let router = &mut fixture.router;
    // Queued, then the queue lets go and 2002 rings: for a moment only the caller is in the call.
    router.route(party("C7", "+4930777", DeviceKind::External, ConnState::Connected, 0)).await;
    router.route(party("C7", "6000", DeviceKind::Queue, ConnState::Queued, 0)).await;
    let diverted = ModelInput::Call {
        call: "C7".into(),
        inputs: vec![CallInput::PartyCleared { device: "6000".into(), cause: Cause::Distribution, at: 500 }],
    };
    router.route(diverted).await;
    router.route(party("C7", "2002", DeviceKind::Line, ConnState::Alerting, 510)).await;
    eventually(|| fixture.model.call("C7").is_some_and(|call| call.parties.len() == 2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked =
        fixture.pbx.sent.lock().unwrap().iter().any(|command| matches!(command, PbxCommand::SnapshotCall { .. }));
    assert!(!asked, "a call back in view is not checked with the PBX");
    assert!(fixture.model.call("C7").is_some());
    fixture.model.shutdown().await;
}

/// Serves the lines in its set, which a test changes.
#[derive(Default)]
struct Serves(Mutex<Vec<String>>);

impl crate::events::Scope for Serves {
    fn serves(&self, device: &str) -> bool {
        self.0.lock().unwrap().iter().any(|served| served == device)
    }
}

#[tokio::test]
async fn a_watched_only_lines_calls_are_mirrored_silently_until_the_line_is_taken_and_announced() {
    let mut fixture = fixture(ModelConfig::default()).await;
    let scope = Arc::new(Serves::default());
    fixture.model.publisher().set_scope(scope.clone());
    let mut events = fixture.model.publisher().subscribe();
    answered_call(&mut fixture).await;
    fixture.router.route(party("C2", "2001", DeviceKind::Line, ConnState::Alerting, 0)).await;
    fixture.router.route(end("C2", 2_000)).await;
    let record = fixture.logs.recv().await.expect("a watched line's record goes to the log sink all the same");
    assert_eq!(record.key(), "C2:2001");
    let model = &fixture.model;
    eventually(|| model.call("C1").is_some_and(|call| call.parties.len() == 2)).await;
    assert!(model.lines().is_empty() && model.calls().is_empty(), "listings show served lines only");
    assert!(events.try_recv().is_err(), "no event about a line out of scope");
    let stats = model.stats();
    assert_eq!((ModelStats::get(&stats.records), ModelStats::get(&stats.calls_ended)), (0, 0), "nor counted");
    // The line is taken: its state and its call are told as events, and from now on it counts.
    scope.0.lock().unwrap().push("2001".into());
    model.announce(&["2001".to_owned()]);
    let told: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|event| match &event.event {
            ModelEvent::Line(line) => format!("line {}", line.device),
            ModelEvent::Call(call) => format!("call {}", call.id),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(told, ["line 2001", "call C1"]);
    assert_eq!(model.lines().len(), 1);
    fixture.router.route(end("C1", 5_000)).await;
    assert_eq!(fixture.logs.recv().await.expect("C1's record").key(), "C1:2001");
    eventually(|| ModelStats::get(&stats.records) == 1 && ModelStats::get(&stats.calls_ended) == 1).await;
}
