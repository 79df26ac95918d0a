//! The Salesforce budget actor: runs the [`Engine`] over the model's events and the outbox's call
//! logs, makes the requests it decides on through a [`CrmPort`] (a bounded number at a time, each
//! in its own task), publishes screen pops, and tells the [`Outbox`] what was delivered.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::crm::budget::{BlockGrant, BudgetState};
use crate::crm::engine::{Action, CrmConfig, CrmSettings, Engine, Outputs, Settled};
use crate::crm::port::{
    ApiUsage, BudgetLedger, CrmPort, CrmRecord, Failure, LedgerError, Outbox, OutboxError, PendingLog, RecordKind,
    RecordResult, Reply,
};
use crate::events::{ModelEvent, PopResult, Publisher, Sequenced, SubscriptionEnded};

/// Where the budget actor reports what it does (the gateway turns it into metrics).
pub trait CrmObserver: Send + Sync + 'static {
    /// A screen popped, `latency` after its trigger.
    fn popped(&self, result: &PopResult, latency: Duration);
    /// Lookups answered from the cache, sent to the CRM, or joined to another's search.
    fn lookups(&self, hits: u64, misses: u64, coalesced: u64);
    /// The budget's state and the org's usage, after any change.
    fn budget(&self, state: BudgetState, usage: Option<ApiUsage>);
    /// Call logs held (in the outbox, not yet accepted) and the age of the oldest.
    fn backlog(&self, held: usize, oldest_age: Option<Duration>);
    /// What became of a write's logs.
    fn settled(&self, settled: &Settled);
    /// A record was created for an unknown number.
    fn created(&self, kind: RecordKind);
    /// The outbox failed (the logs stay where they were and are retried).
    fn outbox_failed(&self, error: &OutboxError);
    /// The ledger answered a request for a block of the shared allowance; `held` permits are in
    /// hand after it.
    fn block(&self, answer: &Result<BlockGrant, LedgerError>, held: u64);
}

/// Where the budget stands, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmStatus {
    /// The settings now.
    pub settings: CrmSettings,
    /// The budget's state.
    pub state: BudgetState,
    /// The org's usage as last reported.
    pub usage: Option<ApiUsage>,
    /// Requests per second allowed now.
    pub rate: f64,
    /// Call logs not yet accepted.
    pub logs_held: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Numbers cached.
    pub cached_numbers: usize,
}

/// What the budget actor is told.
pub enum CrmMsg {
    /// A change in the model.
    Event(Arc<Sequenced>),
    /// Call logs the outbox now holds (new, or replayed from the dead letters).
    Logs(Vec<PendingLog>),
    /// New settings.
    Settings(CrmSettings),
    /// Where things stand.
    Status(RpcReplyPort<CrmStatus>),
    /// Time to look again.
    Wake,
    /// A search's answer.
    Searched(u64, Result<Reply<Vec<CrmRecord>>, Failure>),
    /// A write's answer.
    Upserted(u64, Result<Reply<Vec<RecordResult>>, Failure>),
    /// A creation's answer.
    Created(u64, Result<Reply<String>, Failure>),
    /// A probe's answer.
    Probed(u64, Result<Reply<()>, Failure>),
    /// The ledger's answer to a request for a block of the shared allowance.
    Block(Result<BlockGrant, LedgerError>),
}

/// The parts the actor works with.
pub struct CrmParts<C, O, M> {
    /// The CRM.
    pub port: Arc<C>,
    /// The durable call log store.
    pub outbox: Arc<O>,
    /// Where to report.
    pub observer: Arc<M>,
    /// Where screen pops go (and model events come from).
    pub publisher: Arc<Publisher>,
    /// The cluster's shared allowance; `None` on a single node.
    pub ledger: Option<Arc<dyn BudgetLedger>>,
}

impl<C, O, M> Clone for CrmParts<C, O, M> {
    fn clone(&self) -> Self {
        Self {
            port: self.port.clone(),
            outbox: self.outbox.clone(),
            observer: self.observer.clone(),
            publisher: self.publisher.clone(),
            ledger: self.ledger.clone(),
        }
    }
}

/// The actor's type parameters, as a marker (the actor itself holds nothing).
type Parts<C, O, M> = std::marker::PhantomData<fn() -> (C, O, M)>;

/// The behaviour.
pub struct CrmActor<C, O, M>(Parts<C, O, M>);

/// The actor's state.
pub struct CrmActorState<C, O, M> {
    engine: Engine,
    parts: CrmParts<C, O, M>,
    origin: Instant,
    /// The earliest wake-up already scheduled.
    wake_at: Option<Duration>,
    last_state: Option<(BudgetState, Option<ApiUsage>)>,
}

impl<C: CrmPort, O: Outbox, M: CrmObserver> Actor for CrmActor<C, O, M> {
    type Msg = CrmMsg;
    type State = CrmActorState<C, O, M>;
    type Arguments = (CrmConfig, CrmParts<C, O, M>);

    async fn pre_start(
        &self,
        myself: ActorRef<CrmMsg>,
        (config, parts): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = CrmActorState {
            engine: Engine::new(config),
            parts,
            origin: Instant::now(),
            wake_at: None,
            last_state: None,
        };
        // What a previous run left undelivered goes first.
        let outbox = state.parts.outbox.clone();
        let pending = tokio::task::spawn_blocking(move || outbox.pending()).await??;
        if !pending.is_empty() {
            tracing::info!(logs = pending.len(), "delivering call logs left from a previous run");
        }
        let mut out = Outputs::default();
        let now = state.now();
        state.engine.on_logs(pending, now, &mut out);
        state.run(&myself, out);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CrmMsg>,
        message: CrmMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.now();
        let mut out = Outputs::default();
        match message {
            CrmMsg::Event(event) => state.engine.on_event(&event.event, now, &mut out),
            CrmMsg::Logs(logs) => state.engine.on_logs(logs, now, &mut out),
            CrmMsg::Settings(settings) => {
                tracing::info!(enabled = settings.enabled, "salesforce settings changed");
                state.engine.set_settings(settings);
            }
            CrmMsg::Status(reply) => {
                let budget = state.engine.budget();
                let _ = reply.send(CrmStatus {
                    settings: state.engine.settings().clone(),
                    state: budget.state(),
                    usage: budget.usage(),
                    rate: budget.rate(),
                    logs_held: state.engine.logs_held(),
                    in_flight: state.engine.in_flight(),
                    cached_numbers: state.engine.cached_numbers(),
                });
            }
            CrmMsg::Wake => {
                if state.wake_at.is_some_and(|at| at <= now) {
                    state.wake_at = None;
                }
            }
            CrmMsg::Searched(id, result) => state.engine.on_search(id, result, now, &mut out),
            CrmMsg::Created(id, result) => state.engine.on_created(id, result, now, &mut out),
            CrmMsg::Probed(id, result) => state.engine.on_probe(id, result, now),
            CrmMsg::Block(answer) => {
                if let Err(error) = &answer {
                    tracing::warn!(%error, "no block of the shared salesforce allowance; retrying");
                }
                state.engine.on_block(answer.as_ref().ok().cloned(), now);
                let held = state.engine.budget().held().unwrap_or_default();
                state.parts.observer.block(&answer, held);
            }
            CrmMsg::Upserted(id, result) => {
                let settled = state.engine.on_upsert(id, result, now);
                state.parts.observer.settled(&settled);
                state.settle(settled);
            }
        }
        state.run(&myself, out);
        Ok(())
    }
}

impl<C: CrmPort, O: Outbox, M: CrmObserver> CrmActorState<C, O, M> {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Publishes pops, makes the requests decided on, and schedules the next look.
    fn run(&mut self, myself: &ActorRef<CrmMsg>, mut out: Outputs) {
        let now = self.now();
        let wake = self.engine.poll(now, &mut out);
        let observer = &self.parts.observer;
        observer.lookups(out.cache_hits, out.cache_misses, out.coalesced);
        for pop in out.pops {
            observer.popped(&pop.pop.result, now.saturating_sub(pop.triggered_at));
            self.parts.publisher.publish(ModelEvent::ScreenPop(pop.pop));
        }
        for action in out.actions {
            self.send(myself, action);
        }
        let budget = self.engine.budget();
        let current = (budget.state(), budget.usage());
        if self.last_state != Some(current) {
            self.last_state = Some(current);
            observer.budget(current.0, current.1);
        }
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let oldest =
            self.engine.oldest_log_ended_at().map(|ended| Duration::from_millis(wall_now.saturating_sub(ended)));
        observer.backlog(self.engine.logs_held(), oldest);
        if let Some(at) = wake
            && self.wake_at.is_none_or(|scheduled| at < scheduled)
        {
            self.wake_at = Some(at);
            // The timer's handle is not needed: a wake-up that finds nothing due does nothing.
            drop(myself.send_after(at.saturating_sub(now), || CrmMsg::Wake));
        }
    }

    /// Makes one request in its own task; its answer comes back as a message.
    fn send(&self, myself: &ActorRef<CrmMsg>, action: Action) {
        if let Action::TakeBlock { requests, window_cap } = action {
            let ledger = self.parts.ledger.clone();
            let myself = myself.clone();
            tokio::spawn(async move {
                let answer = match &ledger {
                    Some(ledger) => ledger.take(requests, window_cap).await,
                    None => Err(LedgerError("a shared budget is configured without a ledger".to_owned())),
                };
                let _ = myself.cast(CrmMsg::Block(answer));
            });
            return;
        }
        let port = self.parts.port.clone();
        let observer = self.parts.observer.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let message = match action {
                Action::Search { id, numbers } => CrmMsg::Searched(id, port.search(&numbers).await),
                Action::Upsert { id, tasks } => CrmMsg::Upserted(id, port.upsert_tasks(&tasks).await),
                Action::Create { id, record } => {
                    let result = port.create(&record).await;
                    if result.is_ok() {
                        observer.created(record.kind);
                    }
                    CrmMsg::Created(id, result)
                }
                Action::Probe { id } => CrmMsg::Probed(id, port.usage().await),
                Action::TakeBlock { .. } => unreachable!("taken by the ledger above"),
            };
            // The actor is gone only when the gateway stops; the outbox still has the logs.
            let _ = myself.cast(message);
        });
    }

    /// Tells the outbox what became of a write's logs, off the actor's thread.
    fn settle(&self, settled: Settled) {
        if settled == Settled::default() {
            return;
        }
        let outbox = self.parts.outbox.clone();
        let observer = self.parts.observer.clone();
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                if !settled.delivered.is_empty() {
                    outbox.delivered(&settled.delivered)?;
                }
                if !settled.retried.is_empty() {
                    outbox.attempted(&settled.retried)?;
                }
                for (key, reason) in &settled.dead {
                    outbox.dead_letter(key, reason)?;
                }
                Ok::<(), OutboxError>(())
            })();
            // A delivered log the outbox failed to forget is sent again after a restart: the
            // external id makes that land on the same Task.
            if let Err(error) = result {
                tracing::error!(%error, "recording call log deliveries in the outbox");
                observer.outbox_failed(&error);
            }
        });
    }
}

/// The running budget actor.
pub struct CrmHandle {
    actor: ActorRef<CrmMsg>,
    tasks: std::sync::Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for CrmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmHandle").finish_non_exhaustive()
    }
}

impl CrmHandle {
    /// Hands the actor call logs the outbox now holds.
    pub fn logs(&self, logs: Vec<PendingLog>) {
        let _ = self.actor.cast(CrmMsg::Logs(logs));
    }

    /// Changes the settings.
    pub fn set_settings(&self, settings: CrmSettings) {
        let _ = self.actor.cast(CrmMsg::Settings(settings));
    }

    /// Where things stand; `None` if the actor has stopped.
    pub async fn status(&self) -> Option<CrmStatus> {
        ractor::call_t!(self.actor, CrmMsg::Status, 5_000).ok()
    }

    /// Stops the actor (once; later calls return at once). Logs not yet accepted stay in the
    /// outbox for the next start.
    pub async fn shutdown(&self) {
        let tasks = self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some((actor_task, forwarder)) = tasks {
            forwarder.abort();
            self.actor.stop(None);
            let _ = actor_task.await;
        }
    }
}

/// Starts the budget actor over the model's events (from `parts.publisher`).
pub async fn start<C: CrmPort, O: Outbox, M: CrmObserver>(
    config: CrmConfig,
    parts: CrmParts<C, O, M>,
) -> Result<CrmHandle, ractor::SpawnErr> {
    let publisher = parts.publisher.clone();
    let mut subscription = publisher.subscription();
    let (actor, actor_task) = Actor::spawn(None, CrmActor(std::marker::PhantomData), (config, parts)).await?;
    let forward_to = actor.clone();
    let forwarder = tokio::spawn(async move {
        loop {
            match subscription.next().await {
                Ok(event) => {
                    if forward_to.cast(CrmMsg::Event(event)).is_err() {
                        return;
                    }
                }
                Err(SubscriptionEnded::TooSlow { missed, .. }) => {
                    // Screen pops for the calls in between are lost; call logs are not (they come
                    // through the outbox).
                    tracing::warn!(missed, "the salesforce actor fell behind the model's events; catching up");
                    subscription = publisher.subscription();
                }
                Err(SubscriptionEnded::Closed) => return,
            }
        }
    });
    Ok(CrmHandle { actor, tasks: std::sync::Mutex::new(Some((actor_task, forwarder))) })
}
