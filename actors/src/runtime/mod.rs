//! The running model: one ractor actor per agent line and one per call, a registry that finds them,
//! a supervisor that restarts them, the router that feeds them, and the [`Model`] handle that
//! commands and queries them.
//!
//! Each actor's state lives behind a lock the registry also holds, so queries read it without a
//! message round trip, and a crashed actor's successor starts from the last state (then checks it
//! against a PBX snapshot) instead of from nothing.

mod call_actor;
mod commands;
mod line_actor;
mod mailbox;
mod router;
mod supervisor;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::mpsc;

pub use commands::CommandError;

/// The hasher of the maps of ids on the hot path (boxed in one place to change it).
pub type IdHasher = foldhash::fast::RandomState;
pub use mailbox::MailboxDepth;
pub use router::Router;

use self::call_actor::{CallActor, CallMsg, CallOrder};
use self::line_actor::{LineActor, LineMsg};
use self::mailbox::{Mailbox, Tally};
use self::supervisor::Supervisor;
use crate::call::{CallInput, CallState, LegNote, Party};
use crate::domain::{CallId, ConnState, DeviceId, Direction, Millis};
use crate::events::{CallView, LineView, ModelEvent, Publisher};
use crate::line::{Agent, LineInput, LineState};
use crate::port::PbxPort;

/// What the edge (the gateway's translation of the PBX link) feeds the model, in link order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelInput {
    /// Inputs for one call, in order. A call the model does not know is created by an input that
    /// adds a party or describes it; inputs that only remove things from an unknown call are dropped.
    Call {
        /// The call.
        call: CallId,
        /// What happened to it.
        inputs: Vec<CallInput>,
    },
    /// An input for one agent line (its actor is created on first sight).
    Line {
        /// The line.
        device: DeviceId,
        /// What happened to it.
        input: LineInput,
    },
    /// Calls joined under a new id (boxed: merges are rare, and every input is moved several times
    /// on its way to an actor).
    Merge(Box<Merge>),
    /// A resync begins: calls that no snapshot (or event) mentions before it completes have ended.
    ResyncStarted,
    /// One call as the PBX has it now.
    CallSnapshot(Box<CallSnapshot>),
    /// Lines no longer mirrored here (a cluster handed them to another gateway node): their actors
    /// stop, and calls left with no line the model mirrors are dropped without a call log record,
    /// which the lines' new owner writes.
    Forget {
        /// The lines.
        devices: Vec<DeviceId>,
    },
    /// Every monitored device has been snapshotted.
    ResyncComplete {
        /// The PBX's time, or the gateway's when unknown.
        at: Millis,
    },
}

/// Calls joined under a new id: a transfer (`leaving` is the transferring line), a conference
/// (`leaving` is `None`), or a single-step transfer (`secondary` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The held (or only) call.
    pub primary: CallId,
    /// The active call, for transfer and conference.
    pub secondary: Option<CallId>,
    /// The new id.
    pub new: CallId,
    /// The line that leaves.
    pub leaving: Option<DeviceId>,
    /// The new call's devices, from the PBX's old-to-new connection pairs.
    pub devices: Vec<DeviceId>,
    /// The PBX's linkage id for the new call, if it gives one (see [`CallInput::Linkage`]).
    pub linkage: Option<CallId>,
    /// When.
    pub at: Millis,
}

// Every input is moved from the translator into a batch, and from there into its actor's message:
// rare, large inputs are boxed so that this stays small.
const _: () = assert!(std::mem::size_of::<ModelInput>() <= 72);
const _: () = assert!(std::mem::size_of::<LineInput>() <= 48);

/// A call as a PBX snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSnapshot {
    /// The call.
    pub call: CallId,
    /// Its parties now.
    pub parties: Vec<Party>,
    /// Who placed it.
    pub calling: String,
    /// Where to.
    pub called: String,
    /// Which way it goes.
    pub direction: Direction,
    /// Its queue, if any.
    pub queue: Option<DeviceId>,
    /// Its park id while parked.
    pub park_id: Option<String>,
    /// Its recording, if any.
    pub recording_url: Option<String>,
    /// When the PBX created it.
    pub created_at: Millis,
    /// The PBX's linkage id for it, if it gives one (see [`CallInput::Linkage`]).
    pub linkage: Option<CallId>,
    /// When the snapshot was taken.
    pub at: Millis,
}

/// How the model runs.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Events a subscriber may fall behind before it is cut off.
    pub event_buffer: usize,
    /// Recent events kept for subscribers that resume.
    pub event_history: usize,
    /// Leave out call log records of queue agents who were offered a call and did not answer it.
    pub skip_missed_queue_records: bool,
    /// Tell the durable path about open legs too ([`LegNote::Open`], [`LegNote::Moved`]), not only
    /// about ended ones, so a call that ends while the gateway is down is still logged.
    pub journal_legs: bool,
    /// How often to look for calls whose end was never reported.
    pub sweep_interval: Duration,
    /// A call with no news for this long is checked against the PBX by the sweep.
    pub sweep_idle: Duration,
    /// A line actor with nothing to do for this long (one to two times it) is stopped; the line's
    /// state stays in the registry and its next news starts an actor again. Zero: never.
    pub line_idle: Duration,
    /// A call whose last monitored party left (a transfer to an outside number, or to a line
    /// another cluster node serves) is checked against the PBX this long after: if the PBX still
    /// has it with no party the gateway monitors, no event will ever say how it ends, so it ends
    /// here and its records are written. Zero: leave it to the sweep.
    pub out_of_view_check: Duration,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            event_buffer: 65_536,
            event_history: 65_536,
            skip_missed_queue_records: false,
            journal_legs: false,
            sweep_interval: Duration::from_secs(60),
            sweep_idle: Duration::from_secs(300),
            line_idle: Duration::from_secs(60),
            out_of_view_check: Duration::from_secs(2),
        }
    }
}

/// Counters of the model's life.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Calls given an actor (a new one, or an idle one from the pool).
    pub calls_started: AtomicU64,
    /// Calls ended (their records written).
    pub calls_ended: AtomicU64,
    /// Calls ended, by outcome, in the order of [`CallOutcome::ALL`].
    pub calls_ended_by_outcome: [AtomicU64; CallOutcome::ALL.len()],
    /// Call log records produced.
    pub records: AtomicU64,
    /// Actors restarted after a crash.
    pub restarts: AtomicU64,
    /// Calls closed by the sweep or a resync because the PBX no longer had them.
    pub orphans_closed: AtomicU64,
    /// Calls ended here because they went on among outside parties only (see
    /// [`ModelConfig::out_of_view_check`]).
    pub out_of_view_closed: AtomicU64,
    /// Line actors stopped because their line was idle (see [`ModelConfig::line_idle`]).
    pub lines_rested: AtomicU64,
    /// Inputs routed.
    pub inputs: AtomicU64,
}

/// How a call ended, as a whole: bounded, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// An agent talked with the caller.
    Answered,
    /// The caller hung up while an agent's line rang, and no agent answered.
    Abandoned,
    /// No agent answered, and none was ringing when it ended (missed, or no agent leg at all).
    Unanswered,
}

impl CallOutcome {
    /// Every outcome, to register metric labels at zero.
    pub const ALL: [CallOutcome; 3] = [Self::Answered, Self::Abandoned, Self::Unanswered];

    /// The outcome in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Abandoned => "abandoned",
            Self::Unanswered => "unanswered",
        }
    }

    /// The call's outcome from its agent legs' outcomes.
    pub fn of(legs: impl IntoIterator<Item = crate::domain::LegOutcome>) -> Self {
        use crate::domain::LegOutcome;
        let mut outcome = Self::Unanswered;
        for leg in legs {
            match leg {
                LegOutcome::Answered | LegOutcome::Transferred => return Self::Answered,
                LegOutcome::Abandoned => outcome = Self::Abandoned,
                LegOutcome::Missed => {}
            }
        }
        outcome
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|outcome| *outcome == self).unwrap_or(0)
    }
}

impl ModelStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl ModelStats {
    pub(crate) fn call_ended(&self, outcome: CallOutcome) {
        bump(&self.calls_ended);
        bump(&self.calls_ended_by_outcome[outcome.index()]);
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A state shared by an actor and the registry.
pub(crate) type Shared<T> = Arc<Mutex<T>>;

/// Locks a shared state. A poisoned lock means an actor panicked mid-update; the state is still the
/// best there is, and the restarted actor checks it against the PBX.
pub(crate) fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
pub(crate) struct CallEntry {
    pub(crate) mailbox: Mailbox<CallMsg>,
    pub(crate) state: Shared<CallState>,
}

impl CallEntry {
    /// Sends `order` to the actor, addressed to this entry's call (see [`CallMsg`]).
    pub(crate) fn cast(&self, order: CallOrder) -> Result<(), ractor::MessagingErr<CallMsg>> {
        self.mailbox.cast(CallMsg { call: self.state.clone(), order })
    }

    pub(crate) fn actor(&self) -> &ActorRef<CallMsg> {
        self.mailbox.actor()
    }
}

/// Idle call actors kept for the next calls. Calls start and end all the time, and the router
/// starts the calls of the next batches of events while the actors still finish the last ones: a
/// thousand idle actors (some 7 MB) cover bursts of thousands of calls per second, where an empty
/// pool makes the router wait for each new actor's start (and a full one stops what it turns away).
const CALL_POOL: usize = 1_024;

/// A line in the registry. Its actor is stopped when the line has been idle for
/// [`ModelConfig::line_idle`] and started again, over the same state, by the line's next news:
/// an idle line costs its state, not an actor.
#[derive(Clone)]
pub(crate) struct LineEntry {
    pub(crate) mailbox: Option<Mailbox<LineMsg>>,
    pub(crate) state: Shared<LineState>,
}

impl LineEntry {
    pub(crate) fn actor(&self) -> Option<&ActorRef<LineMsg>> {
        self.mailbox.as_ref().map(Mailbox::actor)
    }
}

/// What an actor runs, so the supervisor knows what to restart.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    Call(CallId),
    Line(DeviceId),
}

/// Everything the actors share.
pub(crate) struct Context<P> {
    pub(crate) config: ModelConfig,
    pub(crate) calls: DashMap<CallId, CallEntry, IdHasher>,
    pub(crate) lines: DashMap<DeviceId, LineEntry, IdHasher>,
    pub(crate) members: DashMap<ractor::ActorId, Member, IdHasher>,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) logs: mpsc::Sender<LegNote>,
    pub(crate) port: Arc<P>,
    pub(crate) stats: ModelStats,
    pub(crate) supervisor: std::sync::OnceLock<ActorCell>,
    /// Call actors whose call ended, waiting for another (at most [`CALL_POOL`]).
    idle_calls: Mutex<Vec<Mailbox<CallMsg>>>,
    /// The periodic sweeps (orphan calls, idle lines).
    sweepers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<P: PbxPort> Context<P> {
    fn supervisor(&self) -> Result<ActorCell, ractor::SpawnErr> {
        self.supervisor
            .get()
            .cloned()
            .ok_or_else(|| ractor::SpawnErr::StartupFailed("the model's supervisor is not running".into()))
    }

    /// Gives a new call an actor, an idle one from the pool if there is one, and registers it;
    /// `first` are the call's first inputs, which the actor applies as it takes the call on.
    pub(crate) async fn spawn_call(
        self: &Arc<Self>,
        state: CallState,
        mut first: Vec<CallInput>,
    ) -> Result<CallEntry, ractor::SpawnErr> {
        let id = state.id.clone();
        let shared = Arc::new(Mutex::new(state));
        loop {
            let idle = lock(&self.idle_calls).pop();
            let Some(mailbox) = idle else { break };
            let entry = CallEntry { mailbox, state: shared.clone() };
            // Registered before it adopts the call, so that a crash on adopting is restarted.
            self.members.insert(entry.actor().get_id(), Member::Call(id.clone()));
            // In the registry before the actor has the call: its first inputs may end the call, and
            // the actor then takes it out of the registry at once.
            self.calls.insert(id.clone(), entry.clone());
            match entry.cast(CallOrder::Adopt(first)) {
                Ok(()) => {
                    bump(&self.stats.calls_started);
                    return Ok(entry);
                }
                // It stopped while idle (the model is shutting down): try the next.
                Err(error) => {
                    self.calls.remove_if(&id, |_, registered| Arc::ptr_eq(&registered.state, &shared));
                    self.members.remove(&entry.actor().get_id());
                    first = match error {
                        ractor::MessagingErr::SendErr(CallMsg { order: CallOrder::Adopt(first), .. }) => first,
                        // Not for a local actor: a failed send hands the message back.
                        _ => Vec::new(),
                    };
                }
            }
        }
        // Boxed: starting an actor is rare (the pool covers most calls) and its future is large;
        // inline, every caller's future would be that large and copied on each call.
        let entry = Box::pin(self.start_call_actor(id, shared)).await?;
        if !first.is_empty() && entry.cast(CallOrder::Apply(first)).is_err() {
            tracing::debug!("a call actor stopped as it started; its input is left to a resnapshot");
        }
        Ok(entry)
    }

    /// Keeps a call actor whose call is over for the next call; false when the pool is full.
    pub(crate) fn pool_call_actor(&self, mailbox: Mailbox<CallMsg>) -> bool {
        let mut idle = lock(&self.idle_calls);
        if idle.len() >= CALL_POOL {
            return false;
        }
        idle.push(mailbox);
        true
    }

    pub(crate) async fn start_call_actor(
        self: &Arc<Self>,
        id: CallId,
        shared: Shared<CallState>,
    ) -> Result<CallEntry, ractor::SpawnErr> {
        let queued = Arc::<Tally>::default();
        let arguments = (self.clone(), shared.clone(), queued.clone());
        let (actor, _) = Actor::spawn_linked(None, CallActor::new(), arguments, self.supervisor()?).await?;
        self.members.insert(actor.get_id(), Member::Call(id.clone()));
        let entry = CallEntry { mailbox: Mailbox::new(actor, queued), state: shared };
        self.calls.insert(id, entry.clone());
        bump(&self.stats.calls_started);
        Ok(entry)
    }

    /// Starts a line actor over `state` with `first` in its mailbox, and registers it. The first
    /// message is sent before the actor is registered, so the idle sweep cannot find it idle (and
    /// stop it) before it has had it.
    pub(crate) async fn start_line_actor(
        self: &Arc<Self>,
        device: DeviceId,
        shared: Shared<LineState>,
        first: LineMsg,
    ) -> Result<(), ractor::SpawnErr> {
        let tally = Arc::<Tally>::default();
        let arguments = (self.clone(), shared.clone(), tally.clone());
        let (actor, _) = Actor::spawn_linked(None, LineActor::new(), arguments, self.supervisor()?).await?;
        self.members.insert(actor.get_id(), Member::Line(device.clone()));
        let mailbox = Mailbox::new(actor, tally);
        if mailbox.cast(first).is_err() {
            tracing::debug!(device, "a line actor stopped as it started; its input is left to a resnapshot");
        }
        self.lines.insert(device, LineEntry { mailbox: Some(mailbox), state: shared });
        Ok(())
    }

    /// The login id of the agent on a line, for call log records.
    pub(crate) fn agent_on(&self, device: &str) -> Option<String> {
        let entry = self.lines.get(device)?;
        lock(&entry.state).agent.as_ref().map(|agent| agent.login_id.clone())
    }
}

/// The handle to the running model: commands, queries and subscriptions. Cheap to clone.
pub struct Model<P> {
    pub(crate) context: Arc<Context<P>>,
    supervisor: ActorRef<supervisor::SupervisorMsg>,
}

impl<P> Clone for Model<P> {
    fn clone(&self) -> Self {
        Self { context: self.context.clone(), supervisor: self.supervisor.clone() }
    }
}

impl<P> std::fmt::Debug for Model<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("lines", &self.context.lines.len())
            .field("calls", &self.context.calls.len())
            .finish_non_exhaustive()
    }
}

/// Starts the model: its supervisor and sweep. Feed it through the returned [`Router`]; call log
/// records go to `logs` (the durable path), every change to [`Model::publisher`].
pub async fn start<P: PbxPort>(
    config: ModelConfig,
    port: Arc<P>,
    logs: mpsc::Sender<LegNote>,
) -> Result<(Model<P>, Router<P>), ractor::SpawnErr> {
    let publisher = Arc::new(Publisher::new(config.event_buffer, config.event_history));
    let context = Arc::new(Context {
        config,
        calls: DashMap::with_hasher(IdHasher::default()),
        lines: DashMap::with_hasher(IdHasher::default()),
        members: DashMap::with_hasher(IdHasher::default()),
        publisher,
        logs,
        port,
        stats: ModelStats::default(),
        supervisor: std::sync::OnceLock::new(),
        idle_calls: Mutex::new(Vec::new()),
        sweepers: Mutex::new(Vec::new()),
    });
    let (supervisor, _) = Actor::spawn(None, Supervisor::new(), context.clone()).await?;
    let _ = context.supervisor.set(supervisor.get_cell());
    let mut sweepers = vec![tokio::spawn(supervisor::sweep(context.clone()))];
    if !context.config.line_idle.is_zero() {
        sweepers.push(tokio::spawn(supervisor::rest_idle_lines(context.clone())));
    }
    *lock(&context.sweepers) = sweepers;
    let router = Router::new(context.clone());
    Ok((Model { context, supervisor }, router))
}

impl<P: PbxPort> Model<P> {
    /// Where every change is published.
    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.context.publisher
    }

    /// The model's counters.
    pub fn stats(&self) -> &ModelStats {
        &self.context.stats
    }

    /// One line as it is now.
    pub fn line(&self, device: &str) -> Option<LineView> {
        let entry = self.context.lines.get(device)?;
        let view = LineView::from(&*lock(&entry.state));
        Some(view)
    }

    /// Every line in the publisher's scope (every line, without one), by device id.
    pub fn lines(&self) -> Vec<LineView> {
        let publisher = &self.context.publisher;
        let mut lines: Vec<LineView> = self
            .context
            .lines
            .iter()
            .filter(|entry| publisher.serves(entry.key()))
            .map(|entry| LineView::from(&*lock(&entry.state)))
            .collect();
        lines.sort_by(|a, b| a.device.cmp(&b.device));
        lines
    }

    /// One call in progress.
    pub fn call(&self, id: &str) -> Option<CallView> {
        let entry = self.context.calls.get(id)?;
        let view = CallView::from(&*lock(&entry.state));
        Some(view)
    }

    /// Waits until every call actor has handled the orders routed to it before: the leg notes
    /// those made are then in the record channel, ahead of anything sent after this returns.
    pub async fn settled(&self) {
        let actors: Vec<_> =
            self.context.calls.iter().map(|entry| (entry.mailbox.clone(), entry.state.clone())).collect();
        for (mailbox, call) in actors {
            let barrier = |reply| CallMsg { call: call.clone(), order: CallOrder::Barrier(reply) };
            // An actor that stopped or moved on to another call has nothing left to say about this one.
            let _ = mailbox.call(barrier, None).await;
        }
    }

    /// Publishes how `devices` and their calls stand now, as events: for lines that came into
    /// scope already watched (a cluster node taking lines it stood by for), whose subscribers have
    /// heard nothing of them from this node yet.
    pub fn announce(&self, devices: &[DeviceId]) {
        for device in devices {
            if let Some(line) = self.line(device) {
                self.context.publisher.publish(ModelEvent::Line(line));
            }
        }
        for call in self.calls() {
            if call.parties.iter().any(|party| devices.contains(&party.device)) {
                self.context.publisher.publish(ModelEvent::Call(call));
            }
        }
    }

    /// The legs of calls in progress on `lines` (whatever the scope), as (call id, line): what the
    /// model will write a record for when the call ends.
    pub fn legs_on(&self, lines: &[DeviceId]) -> Vec<(CallId, DeviceId)> {
        let mut legs = Vec::new();
        for entry in self.context.calls.iter() {
            let call = lock(&entry.state);
            if call.is_ended() {
                continue;
            }
            for leg in call.legs.iter().filter(|leg| lines.contains(&leg.device)) {
                legs.push((call.id.clone(), leg.device.clone()));
            }
        }
        legs
    }

    /// Every call in progress with a party on a line in the publisher's scope (every call, without
    /// one), by id.
    pub fn calls(&self) -> Vec<CallView> {
        let publisher = &self.context.publisher;
        let mut calls: Vec<CallView> = self
            .context
            .calls
            .iter()
            .map(|entry| CallView::from(&*lock(&entry.state)))
            .filter(|call| call.ended_at.is_none())
            .filter(|call| !publisher.is_scoped() || call.parties.iter().any(|party| publisher.serves(&party.device)))
            .collect();
        calls.sort_by(|a, b| a.id.cmp(&b.id));
        calls
    }

    /// Live actors: (lines, calls). An idle line has none (see [`ModelConfig::line_idle`]).
    pub fn actor_counts(&self) -> (usize, usize) {
        let lines = self.context.lines.iter().filter(|entry| entry.mailbox.is_some()).count();
        (lines, self.context.calls.len())
    }

    /// How many messages wait in the line actors' and the call actors' mailboxes. Reads one count
    /// per actor: cheap enough for every scrape, even at 100,000 lines.
    pub fn mailbox_depths(&self) -> (MailboxDepth, MailboxDepth) {
        let mut lines = MailboxDepth::default();
        for entry in self.context.lines.iter() {
            if let Some(mailbox) = &entry.mailbox {
                lines.add(mailbox.queued());
            }
        }
        let mut calls = MailboxDepth::default();
        for entry in self.context.calls.iter() {
            calls.add(entry.mailbox.queued());
        }
        (lines, calls)
    }

    /// Makes a call actor panic, as a bug would, to exercise supervision.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn crash_call(&self, id: &str) -> bool {
        self.context.calls.get(id).is_some_and(|entry| entry.cast(CallOrder::Crash).is_ok())
    }

    /// Makes a line actor panic, as a bug would, to exercise supervision.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn crash_line(&self, device: &str) -> bool {
        self.context
            .lines
            .get(device)
            .is_some_and(|entry| entry.mailbox.as_ref().is_some_and(|mailbox| mailbox.cast(LineMsg::Crash).is_ok()))
    }

    /// Stops every actor and the sweeps.
    pub async fn shutdown(&self) {
        for sweeper in lock(&self.context.sweepers).drain(..) {
            sweeper.abort();
        }
        let _ = self.supervisor.stop_and_wait(Some("model shutting down".to_owned()), None).await;
    }
}

/// The lines' agent and calls, in the form [`LineInput::Snapshot`] takes.
pub fn line_snapshot(agent: Option<Agent>, calls: BTreeMap<CallId, ConnState>) -> LineInput {
    LineInput::Snapshot { agent: agent.map(Box::new), calls }
}

/// Inputs that make an unknown call known.
fn creates_call(input: &CallInput) -> bool {
    match input {
        CallInput::PartyState { state, .. } => *state != ConnState::Null,
        CallInput::Info { .. } | CallInput::Queue { .. } | CallInput::Recording { .. } | CallInput::Parked { .. } => {
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
