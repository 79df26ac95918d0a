//! The model's events out: every change, numbered in one sequence, fanned out to any number of
//! subscribers through a bounded buffer, with recent history kept for subscribers that reconnect.
//!
//! A subscriber that falls more than the buffer behind is cut off (it sees `Lagged`); it never slows
//! the model down.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast;

use crate::call::{CallLogRecord, CallState, Party};
use crate::crm::port::CrmRecord;
use crate::domain::{CallId, ConnState, DeviceId, Direction, Millis, Presence};
use crate::line::{Agent, LineState};

/// A line as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineView {
    /// The line.
    pub device: DeviceId,
    /// The agent logged on, if any.
    pub agent: Option<Agent>,
    /// What a desktop shows.
    pub presence: Presence,
    /// The line's calls and its connection state in each.
    pub calls: Vec<(CallId, ConnState)>,
}

impl From<&LineState> for LineView {
    fn from(line: &LineState) -> Self {
        Self {
            device: line.device.clone(),
            agent: line.agent.clone(),
            presence: line.presence(),
            calls: line.calls.iter().map(|(call, state)| (call.clone(), *state)).collect(),
        }
    }
}

/// A call as subscribers see it (its legs and timeline stay in the model until the call log).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallView {
    /// Its id now.
    pub id: CallId,
    /// Its first id.
    pub root: CallId,
    /// Parties now.
    pub parties: Vec<Party>,
    /// Who placed it.
    pub calling: String,
    /// Where to.
    pub called: String,
    /// Which way it goes, once known.
    pub direction: Option<Direction>,
    /// The queue it came through.
    pub queue: Option<DeviceId>,
    /// Its park id while parked.
    pub park_id: Option<String>,
    /// Where the PBX records it.
    pub recording_url: Option<String>,
    /// The agent's notes.
    pub notes: String,
    /// The agent's disposition.
    pub disposition: Option<String>,
    /// When the gateway first heard of it.
    pub created_at: Millis,
    /// When it ended, once it has.
    pub ended_at: Option<Millis>,
}

impl From<&CallState> for CallView {
    fn from(call: &CallState) -> Self {
        Self {
            id: call.id.clone(),
            root: call.root.clone(),
            parties: call.parties.clone(),
            calling: call.calling.clone(),
            called: call.called.clone(),
            direction: call.direction,
            queue: call.queue.clone(),
            park_id: call.park_id.clone(),
            recording_url: call.recording_url.clone(),
            notes: call.notes.clone(),
            disposition: call.disposition.clone(),
            created_at: call.created_at,
            ended_at: call.ended_at,
        }
    }
}

/// One change in the model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelEvent {
    /// A line changed.
    Line(LineView),
    /// A call changed (or ended: `ended_at` is set).
    Call(CallView),
    /// Calls got a new id (transfer, conference).
    CallRenamed {
        /// The ids that are gone.
        old: Vec<CallId>,
        /// The id they continue under.
        new: CallId,
    },
    /// An agent leg's call log record, made when the call ended.
    CallLog(CallLogRecord),
    /// Whom a call is with, from the CRM, for the agent's screen.
    ScreenPop(ScreenPop),
}

/// What the CRM knows of a call's outside party, for one agent's screen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScreenPop {
    /// The call.
    pub call: CallId,
    /// The agent line whose screen pops.
    pub device: DeviceId,
    /// The outside number as the PBX gave it.
    pub number: String,
    /// What the CRM found.
    pub result: PopResult,
}

/// What a screen pop shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PopResult {
    /// One record: open it.
    Single(CrmRecord),
    /// Several: list them.
    Multiple(Vec<CrmRecord>),
    /// None: offer a new Contact or Lead.
    NoMatch,
    /// The CRM could not be asked (why, in words).
    Failed(String),
}

impl PopResult {
    /// The result in words (a metric label value).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            Self::Multiple(_) => "multiple",
            Self::NoMatch => "none",
            Self::Failed(_) => "failed",
        }
    }
}

/// A model event with its place in the one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// Rises by one per event, from 1.
    pub sequence: u64,
    /// The change.
    pub event: ModelEvent,
}

/// Why a subscription could not resume where it asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("events after {asked} are no longer kept (the oldest kept is {oldest}); take a fresh snapshot")]
pub struct TooOld {
    /// The sequence number the subscriber had.
    pub asked: u64,
    /// The oldest sequence number still kept.
    pub oldest: u64,
}

/// The events kept for subscribers that resume, encoded (postcard) one after another in one ring of
/// bytes. Kept as themselves, each of the tens of thousands would hold a dozen strings, and the
/// oldest, going, would free them all from memory long out of the caches, which slowed the whole
/// event path (BENCHMARKS.md, ninth round). In the ring, the oldest goes by moving its start,
/// touching nothing; a resume, which is rare, decodes what it needs.
struct History {
    next_sequence: u64,
    /// The kept events' encodings, oldest first.
    bytes: VecDeque<u8>,
    /// The length of each kept event's encoding, oldest first. Kept events are the last ones
    /// numbered, with no gap: the oldest's sequence number is `next_sequence - lengths.len()`.
    lengths: VecDeque<usize>,
}

impl History {
    /// The next sequence number, taken.
    fn number(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence - 1
    }

    /// The sequence number of the oldest event kept (the next one's when none is).
    fn oldest(&self) -> u64 {
        self.next_sequence - self.lengths.len() as u64
    }

    /// Keeps the event just numbered, letting the oldest go to keep at most `keep`.
    fn keep(&mut self, encoded: &[u8], keep: usize) {
        while self.lengths.len() >= keep {
            let Some(oldest) = self.lengths.pop_front() else { break };
            self.bytes.drain(..oldest);
        }
        self.bytes.extend(encoded);
        self.lengths.push_back(encoded.len());
    }

    /// Lets every kept event go: a resume from before now fails and takes a fresh snapshot.
    fn forget(&mut self) {
        self.bytes.clear();
        self.lengths.clear();
    }

    /// The encodings of the kept events after `after` (which must not be before the oldest kept but
    /// one), copied out with each one's sequence number and length.
    fn after(&self, after: u64) -> (Vec<u8>, Vec<(u64, usize)>) {
        let skip = usize::try_from(after + 1 - self.oldest()).unwrap_or(usize::MAX).min(self.lengths.len());
        let skipped: usize = self.lengths.iter().take(skip).sum();
        let (front, back) = self.bytes.as_slices();
        let mut bytes = Vec::with_capacity(self.bytes.len() - skipped);
        if skipped < front.len() {
            bytes.extend_from_slice(&front[skipped..]);
            bytes.extend_from_slice(back);
        } else {
            bytes.extend_from_slice(&back[skipped - front.len()..]);
        }
        let first = self.oldest() + skip as u64;
        let events =
            self.lengths.iter().skip(skip).zip(first..).map(|(&length, sequence)| (sequence, length)).collect();
        (bytes, events)
    }
}

/// Why a kept event could not be read back for a resume. Not expected: what was encoded decodes.
#[derive(Debug, thiserror::Error)]
enum HistoryError {
    #[error("{0}")]
    Decoding(#[from] postcard::Error),
    #[error("{0} bytes after its end")]
    Trailing(usize),
}

thread_local! {
    /// Where [`Publisher::publish`] encodes, reused by every event one thread publishes.
    static ENCODING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest buffer [`ENCODING`] holds on to between events; a rare larger event's is let go.
const ENCODING_KEPT: usize = 64 * 1024;

/// Reads back one kept event, all of its bytes.
fn decode(encoded: &[u8]) -> Result<ModelEvent, HistoryError> {
    let (event, rest) = postcard::take_from_bytes(encoded)?;
    if !rest.is_empty() {
        return Err(HistoryError::Trailing(rest.len()));
    }
    Ok(event)
}

/// The lines a model answers for, when it watches more lines than it serves: a cluster node also
/// watches the lines it stands by for, ready to take them, and says nothing about them until it
/// does (their owner does).
pub trait Scope: Send + Sync {
    /// Whether this node answers for `device`.
    fn serves(&self, device: &str) -> bool;
}

/// Numbers, keeps and fans out model events.
pub struct Publisher {
    history: Mutex<History>,
    /// Events kept for subscribers that resume, at most.
    keep: usize,
    sender: broadcast::Sender<Arc<Sequenced>>,
    /// Events about lines out of scope only are not published; with none, every event is.
    scope: OnceLock<Arc<dyn Scope>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("subscribers", &self.sender.receiver_count()).finish()
    }
}

impl Publisher {
    /// A publisher whose subscribers may fall `buffer` events behind, keeping the last `keep`
    /// events for subscribers that resume.
    pub fn new(buffer: usize, keep: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        Self {
            history: Mutex::new(History { next_sequence: 1, bytes: VecDeque::new(), lengths: VecDeque::new() }),
            keep,
            sender,
            scope: OnceLock::new(),
        }
    }

    /// Publishes from now on only events about lines `scope` serves (set once; later calls are
    /// ignored and return false).
    pub fn set_scope(&self, scope: Arc<dyn Scope>) -> bool {
        self.scope.set(scope).is_ok()
    }

    /// Whether a scope is set.
    pub fn is_scoped(&self) -> bool {
        self.scope.get().is_some()
    }

    /// Whether `device` is in scope (every device is, without a scope).
    pub fn serves(&self, device: &str) -> bool {
        self.scope.get().is_none_or(|scope| scope.serves(device))
    }

    /// Whether `event` concerns a line in scope: a call does if any of its parties is on one.
    pub fn in_scope(&self, event: &ModelEvent) -> bool {
        let Some(scope) = self.scope.get() else { return true };
        match event {
            ModelEvent::Line(line) => scope.serves(&line.device),
            ModelEvent::Call(call) => call.parties.iter().any(|party| scope.serves(&party.device)),
            ModelEvent::CallLog(record) => scope.serves(&record.device),
            ModelEvent::ScreenPop(pop) => scope.serves(&pop.device),
            // Says only that ids changed; the calls' own events are scoped.
            ModelEvent::CallRenamed { .. } => true,
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers and sends one event, and keeps it for resumes.
    pub fn publish(&self, event: ModelEvent) {
        if !self.in_scope(&event) {
            return;
        }
        if self.keep == 0 {
            let sequence = self.history().number();
            // No subscriber is not an error.
            let _ = self.sender.send(Arc::new(Sequenced { sequence, event }));
            return;
        }
        ENCODING.with_borrow_mut(|buffer| {
            // Encoded before the lock is taken: other actors publishing meanwhile need not wait.
            buffer.clear();
            let encoded = postcard::to_extend(&event, std::mem::take(buffer));
            let mut history = self.history();
            let sequence = history.number();
            match encoded {
                Ok(written) => {
                    history.keep(&written, self.keep);
                    if written.capacity() <= ENCODING_KEPT {
                        *buffer = written;
                    }
                }
                // Not expected (every event type encodes). A gap in what is kept would let a resume
                // skip this event unseen: with everything before it let go too, a resume from
                // before it fails and takes a fresh snapshot.
                Err(error) => {
                    tracing::error!(sequence, %error, "an event could not be kept for resumes; older ones are let go");
                    history.forget();
                }
            }
            // No subscriber is not an error: the event is still kept for those who come later.
            let _ = self.sender.send(Arc::new(Sequenced { sequence, event }));
        });
    }

    /// The sequence number of the last event published (0 before any).
    pub fn last_sequence(&self) -> u64 {
        self.history().next_sequence - 1
    }

    /// Subscribes to every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Sequenced>> {
        self.sender.subscribe()
    }

    /// Subscribes to every event after `after`: the kept ones it missed, then the live ones, with no
    /// gap and no repeat between them.
    pub fn resume(&self, after: u64) -> Result<Resumed, TooOld> {
        let history = self.history();
        let last = history.next_sequence - 1;
        let oldest = history.oldest();
        // From the future (another gateway run), or from before the oldest kept.
        if after > last || after + 1 < oldest {
            return Err(TooOld { asked: after, oldest });
        }
        let (bytes, kept) = history.after(after);
        // Subscribed under the lock, so no event falls between what was kept and what is live.
        let live = self.sender.subscribe();
        // Decoded after the lock is let go: publishing need not wait for a long resume.
        drop(history);
        let mut missed = Vec::with_capacity(kept.len());
        let mut start = 0;
        for (sequence, length) in kept {
            let end = start + length;
            match decode(&bytes[start..end]) {
                Ok(event) => missed.push(Arc::new(Sequenced { sequence, event })),
                Err(error) => {
                    tracing::error!(sequence, %error, "a kept event could not be read back");
                    return Err(TooOld { asked: after, oldest: sequence + 1 });
                }
            }
            start = end;
        }
        Ok((missed, live))
    }

    /// A subscription to every event from now on.
    pub fn subscription(&self) -> Subscription {
        let history = self.history();
        let last_seen = history.next_sequence - 1;
        Subscription { missed: VecDeque::new(), live: self.sender.subscribe(), last_seen }
    }

    /// A subscription to every event after `after`, or why that is no longer possible.
    pub fn resume_subscription(&self, after: u64) -> Result<Subscription, TooOld> {
        let (missed, live) = self.resume(after)?;
        Ok(Subscription { missed: missed.into(), live, last_seen: after })
    }

    /// How many subscribers there are now.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionEnded {
    /// The subscriber read too slowly: it was cut off rather than allowed to hold the model back.
    #[error(
        "the subscriber fell {missed} events behind and was cut off; resume after sequence {last_seen} or take a fresh snapshot"
    )]
    TooSlow {
        /// Events it missed.
        missed: u64,
        /// The last sequence number it received.
        last_seen: u64,
    },
    /// The model stopped.
    #[error("the model is shutting down")]
    Closed,
}

/// One subscriber's ordered view of the model's events: the missed ones first when resuming, then
/// the live ones, ending with a reason.
#[derive(Debug)]
pub struct Subscription {
    missed: VecDeque<Arc<Sequenced>>,
    live: broadcast::Receiver<Arc<Sequenced>>,
    last_seen: u64,
}

impl Subscription {
    /// The next event, or why there will be none.
    pub async fn next(&mut self) -> Result<Arc<Sequenced>, SubscriptionEnded> {
        if let Some(event) = self.missed.pop_front() {
            self.last_seen = event.sequence;
            return Ok(event);
        }
        loop {
            match self.live.recv().await {
                // Never hand out an event twice, whatever the overlap between history and live.
                Ok(event) if event.sequence <= self.last_seen => continue,
                Ok(event) => {
                    self.last_seen = event.sequence;
                    return Ok(event);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(SubscriptionEnded::TooSlow { missed, last_seen: self.last_seen });
                }
                Err(broadcast::error::RecvError::Closed) => return Err(SubscriptionEnded::Closed),
            }
        }
    }

    /// The sequence number of the last event handed out (0 before any).
    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }
}

/// What [`Publisher::resume`] hands back: the events missed, then the live stream.
pub type Resumed = (Vec<Arc<Sequenced>>, broadcast::Receiver<Arc<Sequenced>>);

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(n: u64) -> ModelEvent {
        ModelEvent::CallRenamed { old: vec![format!("C{n}")], new: format!("C{}", n + 1) }
    }

    struct Served(&'static [&'static str]);

    impl Scope for Served {
        fn serves(&self, device: &str) -> bool {
            self.0.contains(&device)
        }
    }

    fn line(device: &str) -> ModelEvent {
        ModelEvent::Line(LineView {
            device: device.into(),
            agent: None,
            presence: Presence::Offline,
            calls: Vec::new(),
        })
    }

    fn call(parties: &[&str]) -> ModelEvent {
        let mut call = CallState::new("C1".into(), 0);
        call.parties = parties
            .iter()
            .map(|device| Party {
                device: (*device).into(),
                kind: crate::domain::DeviceKind::Line,
                state: ConnState::Connected,
            })
            .collect();
        ModelEvent::Call(CallView::from(&call))
    }

    #[test]
    fn with_a_scope_only_events_about_served_lines_are_numbered_and_sent() {
        let publisher = Publisher::new(16, 16);
        let mut receiver = publisher.subscribe();
        publisher.publish(line("2002"));
        assert!(publisher.set_scope(Arc::new(Served(&["2001"]))));
        assert!(!publisher.set_scope(Arc::new(Served(&[]))), "the scope is set once");
        publisher.publish(line("2002"));
        publisher.publish(call(&["+4930", "2002"]));
        publisher.publish(line("2001"));
        publisher.publish(call(&["2002", "2001"]));
        publisher.publish(renamed(1));
        let sent: Vec<u64> = std::iter::from_fn(|| receiver.try_recv().ok()).map(|event| event.sequence).collect();
        assert_eq!(sent, [1, 2, 3, 4], "the watched-only line's events and its call are left out");
        assert!(publisher.serves("2001") && !publisher.serves("2002"));
        assert!(Publisher::new(1, 0).serves("2002"), "without a scope every line is served");
    }

    #[test]
    fn events_are_numbered_in_order() {
        let publisher = Publisher::new(16, 16);
        let mut subscriber = publisher.subscribe();
        for n in 0..3 {
            publisher.publish(renamed(n));
        }
        for expected in 1..=3 {
            assert_eq!(subscriber.try_recv().unwrap().sequence, expected);
        }
        assert_eq!(publisher.last_sequence(), 3);
    }

    #[test]
    fn a_subscriber_resumes_with_what_it_missed_then_live_events() {
        let publisher = Publisher::new(16, 4);
        for n in 0..6 {
            publisher.publish(renamed(n));
        }
        let (missed, mut live) = publisher.resume(4).unwrap();
        assert_eq!(missed.iter().map(|event| event.sequence).collect::<Vec<_>>(), vec![5, 6]);
        publisher.publish(renamed(7));
        assert_eq!(live.try_recv().unwrap().sequence, 7);
        assert_eq!(publisher.resume(7).unwrap().0.len(), 0, "up to date: nothing missed");
    }

    #[test]
    fn resuming_from_too_far_back_asks_for_a_snapshot() {
        let publisher = Publisher::new(16, 4);
        for n in 0..10 {
            publisher.publish(renamed(n));
        }
        let error = publisher.resume(2).unwrap_err();
        assert_eq!(error, TooOld { asked: 2, oldest: 7 });
        assert_eq!(
            error.to_string(),
            "events after 2 are no longer kept (the oldest kept is 7); take a fresh snapshot"
        );
        assert!(publisher.resume(6).is_ok(), "the event right before the oldest kept is fine");
        assert!(publisher.resume(11).is_err(), "a sequence from the future (another gateway run)");
    }

    #[tokio::test]
    async fn a_subscription_resumes_then_ends_with_a_clear_reason_when_too_slow() {
        let publisher = Publisher::new(2, 8);
        for n in 0..3 {
            publisher.publish(renamed(n));
        }
        let mut subscription = publisher.resume_subscription(1).unwrap();
        assert_eq!(subscription.next().await.unwrap().sequence, 2);
        assert_eq!(subscription.next().await.unwrap().sequence, 3);
        for n in 3..8 {
            publisher.publish(renamed(n));
        }
        let ended = subscription.next().await.unwrap_err();
        assert_eq!(ended, SubscriptionEnded::TooSlow { missed: 3, last_seen: 3 });
        assert_eq!(
            ended.to_string(),
            "the subscriber fell 3 events behind and was cut off; resume after sequence 3 or take a fresh snapshot"
        );
        // It can resume where it was, from history.
        let mut resumed = publisher.resume_subscription(subscription.last_seen()).unwrap();
        assert_eq!(resumed.next().await.unwrap().sequence, 4);
    }

    fn record(device: &str) -> CallLogRecord {
        CallLogRecord {
            root_call_id: "C1".into(),
            call_id: "C2".into(),
            device: device.into(),
            agent_id: Some("agent.ü@example.com".into()),
            direction: Direction::Inbound,
            outcome: crate::domain::LegOutcome::Transferred,
            via_queue: true,
            queue: Some("6000".into()),
            calling: "+49 30 1234567".into(),
            called: "6000".into(),
            parties: vec!["+49 30 1234567".into(), device.into(), "2002".into()],
            offered_at: 1_764_000_000_000,
            answered_at: Some(1_764_000_004_000),
            ended_at: 1_764_000_090_000,
            talk_seconds: 80,
            hold_seconds: 6,
            notes: "called back about order #12 \u{1F4DE}\nsecond line".into(),
            disposition: None,
            recording_url: Some("https://recordings.example/C1.wav".into()),
        }
    }

    /// One event of every kind, with every optional part filled in one of them and empty in another.
    fn one_of_each() -> Vec<ModelEvent> {
        let mut full = CallState::new("C2".into(), 1_764_000_000_000);
        full.root = "C1".into();
        full.parties = vec![
            Party { device: "+4930".into(), kind: crate::domain::DeviceKind::External, state: ConnState::Connected },
            Party { device: "2001".into(), kind: crate::domain::DeviceKind::Line, state: ConnState::Held },
        ];
        full.calling = "+4930".into();
        full.called = "6000".into();
        full.direction = Some(Direction::Inbound);
        full.queue = Some("6000".into());
        full.park_id = Some("71".into());
        full.recording_url = Some("https://recordings.example/C1.wav".into());
        full.notes = "Rückruf erbeten".into();
        full.disposition = Some("sale".into());
        full.ended_at = Some(1_764_000_090_000);
        let crm = |kind, id: &str| crate::crm::port::CrmRecord {
            kind,
            id: id.into(),
            name: "Ada Lovelace".into(),
            phones: vec!["+4930".into(), String::new()],
        };
        let pop = |result| {
            ModelEvent::ScreenPop(ScreenPop {
                call: "C2".into(),
                device: "2001".into(),
                number: "+4930".into(),
                result,
            })
        };
        vec![
            line("2001"),
            ModelEvent::Line(LineView {
                device: "2001".into(),
                agent: Some(Agent {
                    login_id: "ada".into(),
                    state: crate::domain::AgentState::NotReady,
                    roles: vec!["agent".into(), "operator".into()],
                    reason: "lunch".into(),
                }),
                presence: Presence::Away,
                calls: vec![("C1".into(), ConnState::Held), ("C3".into(), ConnState::Alerting)],
            }),
            call(&[]),
            ModelEvent::Call(CallView::from(&full)),
            renamed(1),
            ModelEvent::CallLog(record("2001")),
            pop(PopResult::Single(crm(crate::crm::port::RecordKind::Contact, "003A"))),
            pop(PopResult::Multiple(vec![
                crm(crate::crm::port::RecordKind::Lead, "00QA"),
                crm(crate::crm::port::RecordKind::Account, "001A"),
            ])),
            pop(PopResult::NoMatch),
            pop(PopResult::Failed("the CRM answered 503".into())),
        ]
    }

    #[test]
    fn every_kind_of_event_is_kept_and_read_back_whole_on_resume() {
        let publisher = Publisher::new(64, 64);
        let events = one_of_each();
        for event in &events {
            publisher.publish(event.clone());
        }
        let (missed, _) = publisher.resume(0).unwrap();
        assert_eq!(
            missed.iter().map(|kept| kept.sequence).collect::<Vec<_>>(),
            (1..=events.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(missed.into_iter().map(|kept| kept.event.clone()).collect::<Vec<_>>(), events);
    }

    #[test]
    fn a_kept_event_that_cannot_be_read_back_makes_a_resume_from_before_it_ask_for_a_snapshot() {
        let publisher = Publisher::new(16, 16);
        for n in 0..5 {
            publisher.publish(renamed(n));
        }
        {
            // The third event's first byte names a kind of event there is not.
            let mut history = publisher.history();
            let third: usize = history.lengths.iter().take(2).sum();
            history.bytes[third] = 0x7f;
        }
        assert_eq!(publisher.resume(1).unwrap_err(), TooOld { asked: 1, oldest: 4 });
        let (missed, _) = publisher.resume(3).expect("after the unreadable event, resuming works");
        assert_eq!(missed.iter().map(|kept| kept.sequence).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn after_the_history_is_let_go_a_resume_from_before_it_asks_for_a_snapshot() {
        // What `publish` does when an event cannot be encoded: no gap may stay in what is kept.
        let publisher = Publisher::new(16, 16);
        for n in 0..3 {
            publisher.publish(renamed(n));
        }
        publisher.history().forget();
        publisher.publish(renamed(3));
        assert_eq!(publisher.resume(2).unwrap_err(), TooOld { asked: 2, oldest: 4 });
        let (missed, _) = publisher.resume(3).unwrap();
        assert_eq!(
            missed.iter().map(|kept| (kept.sequence, kept.event.clone())).collect::<Vec<_>>(),
            [(4, renamed(3))]
        );
    }

    proptest::proptest! {
        /// Any text in any field comes back as it went in, the kept events stay in order, and only
        /// the last `keep` are kept.
        #[test]
        fn kept_events_read_back_as_published(
            texts in proptest::collection::vec(".*", 1..40),
            keep in 1usize..8,
            back in 0usize..8,
        ) {
            let publisher = Publisher::new(64, keep);
            let mut published = Vec::new();
            for (n, text) in texts.iter().enumerate() {
                let mut record = record(text);
                record.notes = text.repeat(n);
                record.disposition = (n % 2 == 0).then(|| text.clone());
                let event = match n % 3 {
                    0 => ModelEvent::CallLog(record),
                    1 => line(text),
                    _ => ModelEvent::CallRenamed { old: vec![text.clone(), String::new()], new: text.clone() },
                };
                publisher.publish(event.clone());
                published.push(event);
            }
            // Resumed from anywhere in what is kept: the ring has wrapped by then, most times.
            let after = published.len().saturating_sub(back.min(keep)) as u64;
            let (missed, _) = publisher.resume(after).unwrap();
            let expected = &published[after as usize..];
            proptest::prop_assert_eq!(missed.iter().map(|kept| kept.event.clone()).collect::<Vec<_>>(), expected.to_vec());
            let oldest = published.len().saturating_sub(keep) as u64;
            if oldest >= 1 {
                proptest::prop_assert_eq!(publisher.resume(oldest - 1).unwrap_err(), TooOld { asked: oldest - 1, oldest: oldest + 1 });
            }
        }
    }

    #[test]
    fn a_slow_subscriber_is_cut_off_without_slowing_the_publisher() {
        let publisher = Publisher::new(2, 0);
        let mut slow = publisher.subscribe();
        for n in 0..5 {
            publisher.publish(renamed(n));
        }
        assert!(matches!(slow.try_recv(), Err(broadcast::error::TryRecvError::Lagged(3))));
    }
}
