//! The budget actor's decisions, without the actor: which numbers to search and when, which call
//! logs to write in which batch, what to pop on whose screen, and what a CRM answer changes. Pure:
//! time comes in as an argument, requests go out as [`Action`]s, so every rule is tested without
//! HTTP or timers.
//!
//! Two lanes share one [`Budget`]: searches first (a ringing call's lookup is urgent and flushes
//! its batch within `urgent_window`; a lookup made ahead of time, when the call first shows, waits
//! up to `lookup_window` so that many calls share one search), then call logs, batched up to
//! `log_batch_max` records or `log_batch_age`, whichever comes first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::crm::budget::{Budget, BudgetConfig, BudgetState};
use crate::crm::lookup::{CacheConfig, Lookup, LookupCache, share_out};
use crate::crm::phone::{self, Caller};
use crate::crm::port::{
    CrmError, CrmRecord, Failure, NewRecord, PendingLog, RecordKind, RecordResult, Reply, TaskRecord,
};
use crate::crm::task::{TaskTemplates, task_for};
use crate::domain::{CallId, ConnState, DeviceId, Direction};
use crate::events::{CallView, LineView, ModelEvent, PopResult, ScreenPop};

/// When an agent's screen pops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PopTrigger {
    /// When the line rings (or, for a call the agent places, when it dials).
    #[default]
    Ringing,
    /// When the agent answers.
    Answered,
    /// When the agent's part of the call ends (for wrap-up).
    Ended,
}

/// What to create for an unknown number, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutoCreate {
    /// For an unknown caller.
    pub inbound: Option<RecordKind>,
    /// For an unknown number an agent calls.
    pub outbound: Option<RecordKind>,
}

/// What an administrator may change while the gateway runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmSettings {
    /// Off: no searches, no pops, no deliveries; call logs wait in the outbox until it is on again.
    pub enabled: bool,
    /// When screens pop.
    pub pop_trigger: PopTrigger,
    /// The call log Task's subject and description.
    pub templates: TaskTemplates,
    /// Records to create for unknown numbers.
    pub auto_create: AutoCreate,
}

impl Default for CrmSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            pop_trigger: PopTrigger::Ringing,
            templates: TaskTemplates::default(),
            auto_create: AutoCreate::default(),
        }
    }
}

/// The budget actor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmConfig {
    /// What may change at run time.
    pub settings: CrmSettings,
    /// Pacing.
    pub budget: BudgetConfig,
    /// The number cache.
    pub cache: CacheConfig,
    /// A ringing call's search goes out at most this long after it is asked for.
    pub urgent_window: Duration,
    /// A lookup made ahead of time waits at most this long for company.
    pub lookup_window: Duration,
    /// Numbers in one search at most (SOSL's query length bounds it).
    pub search_batch_max: usize,
    /// Call logs in one write at most (sObject Collections take 200).
    pub log_batch_max: usize,
    /// A call log waits at most this long for company.
    pub log_batch_age: Duration,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Numbers of at most this many digits are extensions, never searched.
    pub internal_max_digits: usize,
    /// The first retry's delay; it doubles, with jitter, up to `retry_max`.
    pub retry_base: Duration,
    /// The longest delay between retries.
    pub retry_max: Duration,
}

impl Default for CrmConfig {
    fn default() -> Self {
        Self {
            settings: CrmSettings::default(),
            budget: BudgetConfig::default(),
            cache: CacheConfig::default(),
            urgent_window: Duration::from_millis(50),
            lookup_window: Duration::from_secs(1),
            search_batch_max: 100,
            log_batch_max: 200,
            log_batch_age: Duration::from_secs(2),
            max_in_flight: 4,
            internal_max_digits: 6,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl CrmConfig {
    /// With `naive`, the settings of a connector that spends one request per operation, as
    /// vendors' connectors do: every lookup its own search, every call log its own write, nothing
    /// cached, nothing waited for. Kept to measure the budget mode against, never for production.
    pub fn with_mode(mut self, naive: bool) -> Self {
        if naive {
            self.search_batch_max = 1;
            self.log_batch_max = 1;
            self.log_batch_age = Duration::ZERO;
            self.lookup_window = Duration::ZERO;
            self.urgent_window = Duration::ZERO;
            self.cache.capacity = 0;
        }
        self
    }
}

/// The key of a call log: the Task's external id, the same on every retry and after a restart.
pub fn log_key(record: &crate::call::CallLogRecord) -> String {
    record.key()
}

/// A request to make, numbered so its answer finds its way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Search these numbers (digits).
    Search {
        /// The request's number.
        id: u64,
        /// The numbers.
        numbers: Vec<String>,
    },
    /// Write these Tasks (one per log, in order).
    Upsert {
        /// The request's number.
        id: u64,
        /// The Tasks.
        tasks: Vec<TaskRecord>,
    },
    /// Create a record for an unknown number.
    Create {
        /// The request's number.
        id: u64,
        /// The record.
        record: NewRecord,
    },
    /// Ask the org's usage (the allocation was exhausted).
    Probe {
        /// The request's number.
        id: u64,
    },
    /// Take a block of the cluster's shared allowance from the ledger (no API request).
    TakeBlock {
        /// Requests to take.
        requests: u64,
        /// The most the cluster may spend in the window.
        window_cap: u64,
    },
}

/// A screen pop to publish, with when its call rang (for the ring-to-pop latency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop {
    /// The pop.
    pub pop: ScreenPop,
    /// When the trigger fired.
    pub triggered_at: Duration,
}

/// What became of the logs of one write, for the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Accepted: remove from the outbox.
    pub delivered: Vec<String>,
    /// To be sent again later.
    pub retried: Vec<String>,
    /// Refused for good, with the reason.
    pub dead: Vec<(String, String)>,
}

/// What the engine tells its runner besides requests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Requests to make.
    pub actions: Vec<Action>,
    /// Screens to pop.
    pub pops: Vec<Pop>,
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Lookups that had to go to the CRM.
    pub cache_misses: u64,
    /// Lookups that joined another's pending or running search.
    pub coalesced: u64,
}

/// A call the engine follows.
#[derive(Debug, Clone)]
struct FollowedCall {
    /// The outside party's number, as the PBX gave it.
    raw_number: String,
    /// What it is.
    caller: Caller,
    direction: Direction,
    /// Lines that have popped for it.
    popped: HashSet<DeviceId>,
    /// Lines on it, for the end-of-call trigger.
    lines: HashSet<DeviceId>,
}

/// A lookup waiting to be searched.
#[derive(Debug, Clone, Copy)]
struct PendingLookup {
    /// Go no later than this.
    due: Duration,
    /// Not before this (after a failure).
    not_before: Duration,
}

/// A call log ready to write.
#[derive(Debug, Clone)]
struct ReadyLog {
    log: PendingLog,
    lookup: Option<Lookup>,
    queued_at: Duration,
    not_before: Duration,
}

/// A screen waiting for its number's answer.
#[derive(Debug, Clone)]
struct Waiter {
    call: CallId,
    device: DeviceId,
    triggered_at: Duration,
}

/// The budget actor's state and rules.
#[derive(Debug)]
pub struct Engine {
    config: CrmConfig,
    budget: Budget,
    cache: LookupCache,
    calls: HashMap<CallId, FollowedCall>,
    /// What the lines last said of each call (a line may show a call before the call's own event
    /// says who is calling).
    line_states: HashMap<CallId, BTreeMap<DeviceId, ConnState>>,
    /// The calls each line showed last, so a line's news touches only its own entries.
    line_calls: HashMap<DeviceId, Vec<CallId>>,
    /// Numbers to search, by number.
    pending: BTreeMap<String, PendingLookup>,
    /// Numbers being searched, by request.
    searching: HashMap<u64, Vec<String>>,
    /// Screens waiting for a number.
    waiters: HashMap<String, Vec<Waiter>>,
    /// Logs waiting for their number's answer before they can be written.
    logs_awaiting: HashMap<String, Vec<ReadyLog>>,
    /// Logs ready to write, oldest first.
    ready: VecDeque<ReadyLog>,
    /// Logs being written, by request.
    writing: HashMap<u64, Vec<ReadyLog>>,
    /// Every log key held, to take each once.
    keys: HashSet<String>,
    /// Records being created, by request: the number and the record.
    creating: HashMap<u64, (String, NewRecord)>,
    /// Numbers whose record is being created.
    numbers_creating: HashSet<String>,
    in_flight: usize,
    next_request: u64,
    next_probe: Duration,
    /// Consecutive failed requests, for the backoff.
    failures: u32,
    /// A seed for retry jitter (deterministic, so tests are repeatable).
    jitter: u64,
}

impl Engine {
    /// An engine with `config`.
    pub fn new(config: CrmConfig) -> Self {
        Self {
            budget: Budget::new(config.budget),
            cache: LookupCache::new(config.cache),
            config,
            calls: HashMap::new(),
            line_states: HashMap::new(),
            line_calls: HashMap::new(),
            pending: BTreeMap::new(),
            searching: HashMap::new(),
            waiters: HashMap::new(),
            logs_awaiting: HashMap::new(),
            ready: VecDeque::new(),
            writing: HashMap::new(),
            keys: HashSet::new(),
            creating: HashMap::new(),
            numbers_creating: HashSet::new(),
            in_flight: 0,
            next_request: 1,
            next_probe: Duration::ZERO,
            failures: 0,
            jitter: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The settings now.
    pub fn settings(&self) -> &CrmSettings {
        &self.config.settings
    }

    /// Replaces the settings (templates apply to every log not yet written).
    pub fn set_settings(&mut self, settings: CrmSettings) {
        self.config.settings = settings;
    }

    /// Where the budget stands.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Call logs held and not yet accepted by the CRM.
    pub fn logs_held(&self) -> usize {
        self.keys.len()
    }

    /// When the oldest held log's call ended (ms since the epoch).
    pub fn oldest_log_ended_at(&self) -> Option<u64> {
        let awaiting = self.logs_awaiting.values().flatten();
        let writing = self.writing.values().flatten();
        self.ready.iter().chain(awaiting).chain(writing).map(|ready| ready.log.record.ended_at).min()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Numbers in the cache.
    pub fn cached_numbers(&self) -> usize {
        self.cache.len()
    }

    /// Takes in one change of the model.
    pub fn on_event(&mut self, event: &ModelEvent, now: Duration, out: &mut Outputs) {
        if !self.config.settings.enabled {
            return;
        }
        match event {
            ModelEvent::Call(call) => self.on_call(call, now, out),
            ModelEvent::Line(line) => self.on_line(line, now, out),
            ModelEvent::CallRenamed { old, new } => {
                for id in old {
                    if let Some(call) = self.calls.remove(id) {
                        self.calls.entry(new.clone()).or_insert(call);
                    }
                    if let Some(states) = self.line_states.remove(id) {
                        self.line_states.entry(new.clone()).or_default().extend(states);
                    }
                    for waiters in self.waiters.values_mut() {
                        for waiter in waiters.iter_mut().filter(|waiter| &waiter.call == id) {
                            waiter.call = new.clone();
                        }
                    }
                }
            }
            ModelEvent::CallLog(_) | ModelEvent::ScreenPop(_) => {}
        }
    }

    fn on_call(&mut self, call: &CallView, now: Duration, out: &mut Outputs) {
        if call.ended_at.is_some() {
            self.line_states.remove(&call.id);
            if let Some(followed) = self.calls.remove(&call.id) {
                if self.config.settings.pop_trigger == PopTrigger::Ended {
                    let mut lines: Vec<_> = followed.lines.iter().cloned().collect();
                    lines.sort();
                    for device in lines {
                        self.trigger(&call.id, &followed, device, now, out);
                    }
                }
                for waiters in self.waiters.values_mut() {
                    waiters.retain(|waiter| waiter.call != call.id);
                }
            }
            return;
        }
        if self.calls.contains_key(&call.id) {
            return;
        }
        let Some(direction) = call.direction else { return };
        let raw_number = match direction {
            Direction::Inbound => call.calling.clone(),
            Direction::Outbound => call.called.clone(),
            Direction::Internal => return,
        };
        let caller = phone::classify(&raw_number, self.config.internal_max_digits);
        if let Caller::Searchable(number) = &caller {
            // Look the number up now, ahead of the ring, so the pop is ready when the agent is.
            self.want(number, self.config.lookup_window, now, out);
        }
        self.calls.insert(
            call.id.clone(),
            FollowedCall { raw_number, caller, direction, popped: HashSet::new(), lines: HashSet::new() },
        );
        // Lines that showed the call before it was known.
        let states: Vec<(DeviceId, ConnState)> = self
            .line_states
            .get(&call.id)
            .map(|states| states.iter().map(|(device, state)| (device.clone(), *state)).collect())
            .unwrap_or_default();
        for (device, state) in states {
            self.line_changed(&call.id, &device, state, now, out);
        }
    }

    fn on_line(&mut self, line: &LineView, now: Duration, out: &mut Outputs) {
        for call in self.line_calls.remove(&line.device).unwrap_or_default() {
            if let Some(states) = self.line_states.get_mut(&call) {
                states.remove(&line.device);
                if states.is_empty() {
                    self.line_states.remove(&call);
                }
            }
        }
        if !line.calls.is_empty() {
            self.line_calls.insert(line.device.clone(), line.calls.iter().map(|(call, _)| call.clone()).collect());
        }
        for (call_id, state) in &line.calls {
            self.line_states.entry(call_id.clone()).or_default().insert(line.device.clone(), *state);
            self.line_changed(call_id, &line.device, *state, now, out);
        }
    }

    /// A line shows `call_id` in `state`: pop its screen if the trigger fires.
    fn line_changed(
        &mut self,
        call_id: &CallId,
        device: &DeviceId,
        state: ConnState,
        now: Duration,
        out: &mut Outputs,
    ) {
        {
            let Some(call) = self.calls.get_mut(call_id) else { return };
            call.lines.insert(device.clone());
            if call.popped.contains(device) {
                return;
            }
            let fires = match self.config.settings.pop_trigger {
                PopTrigger::Ringing => match call.direction {
                    Direction::Outbound => {
                        matches!(state, ConnState::Initiated | ConnState::Alerting | ConnState::Connected)
                    }
                    _ => matches!(state, ConnState::Alerting | ConnState::Connected),
                },
                PopTrigger::Answered => state == ConnState::Connected,
                PopTrigger::Ended => false,
            };
            if !fires {
                return;
            }
        }
        let call = self.calls[call_id].clone();
        self.trigger(call_id, &call, device.clone(), now, out);
    }

    /// Pops `device`'s screen for `call` now if the answer is known, or as soon as it is.
    fn trigger(&mut self, call_id: &CallId, call: &FollowedCall, device: DeviceId, now: Duration, out: &mut Outputs) {
        if let Some(followed) = self.calls.get_mut(call_id) {
            followed.popped.insert(device.clone());
        }
        let Caller::Searchable(number) = &call.caller else { return };
        if let Some(lookup) = self.cache.get(number, now).cloned()
            && !self.numbers_creating.contains(number)
        {
            out.cache_hits += 1;
            out.pops.push(Pop { pop: pop(call_id, &device, &call.raw_number, &lookup), triggered_at: now });
            return;
        }
        self.waiters.entry(number.clone()).or_default().push(Waiter {
            call: call_id.clone(),
            device,
            triggered_at: now,
        });
        if !self.budget.state().allows_reads() {
            // An exhausted allocation: the cache is all there is.
            self.fail_waiters(number, "the salesforce api allocation is exhausted", out);
            return;
        }
        if !self.numbers_creating.contains(number) {
            self.want(number, self.config.urgent_window, now, out);
        }
    }

    /// Asks for `number` to be searched within `within`, unless it is cached, pending or running.
    fn want(&mut self, number: &str, within: Duration, now: Duration, out: &mut Outputs) {
        if self.cache.get(number, now).is_some() {
            out.cache_hits += 1;
            return;
        }
        if self.searching.values().flatten().any(|searching| searching == number) {
            out.coalesced += 1;
            return;
        }
        let due = now + within;
        match self.pending.get_mut(number) {
            Some(pending) => {
                out.coalesced += 1;
                pending.due = pending.due.min(due);
            }
            None => {
                out.cache_misses += 1;
                self.pending.insert(number.to_owned(), PendingLookup { due, not_before: Duration::ZERO });
            }
        }
    }

    /// Takes in call logs the outbox now holds.
    pub fn on_logs(&mut self, logs: Vec<PendingLog>, now: Duration, out: &mut Outputs) {
        for log in logs {
            if !self.keys.insert(log.key.clone()) {
                continue;
            }
            let raw = match log.record.direction {
                Direction::Inbound => &log.record.calling,
                Direction::Outbound => &log.record.called,
                Direction::Internal => "",
            };
            let ready = ReadyLog { log: log.clone(), lookup: None, queued_at: now, not_before: Duration::ZERO };
            match phone::classify(raw, self.config.internal_max_digits) {
                Caller::Searchable(number) if self.config.settings.enabled => {
                    if let Some(lookup) = self.cache.get(&number, now).cloned() {
                        out.cache_hits += 1;
                        self.ready.push_back(ReadyLog { lookup: Some(lookup), ..ready });
                    } else {
                        self.logs_awaiting.entry(number.clone()).or_default().push(ready);
                        if !self.numbers_creating.contains(&number) {
                            self.want(&number, self.config.lookup_window, now, out);
                        }
                    }
                }
                _ => self.ready.push_back(ready),
            }
        }
    }

    /// Decides what to send now. Returns when to be asked again, if nothing else happens first.
    pub fn poll(&mut self, now: Duration, out: &mut Outputs) -> Option<Duration> {
        if !self.config.settings.enabled {
            return None;
        }
        let wake = self.send_what_is_due(now, out);
        // In a cluster, a block of the shared allowance is asked for once what was just spent
        // leaves half a block or less, whatever the org's state: a probe needs none, but what
        // follows a probe that finds room does.
        if let Some(requests) = self.budget.ask_for_block(now) {
            out.actions.push(Action::TakeBlock { requests, window_cap: self.budget.window_cap() });
        }
        wake
    }

    fn send_what_is_due(&mut self, now: Duration, out: &mut Outputs) -> Option<Duration> {
        let mut wake: Option<Duration> = None;
        let mut wake_at = |at: Duration| wake = Some(wake.map_or(at, |wake: Duration| wake.min(at)));
        let state = self.budget.state();

        if state == BudgetState::Stopped {
            if self.in_flight == 0 {
                if now >= self.next_probe {
                    let id = self.request_id();
                    self.in_flight += 1;
                    self.next_probe = now + self.budget.probe_interval();
                    out.actions.push(Action::Probe { id });
                } else {
                    wake_at(self.next_probe);
                }
            }
            return wake;
        }

        // Searches first.
        while state.allows_reads() && self.in_flight < self.config.max_in_flight && !self.pending.is_empty() {
            let eligible: Vec<(&String, &PendingLookup)> =
                self.pending.iter().filter(|(_, pending)| pending.not_before <= now).collect();
            if eligible.is_empty() {
                if let Some(at) = self.pending.values().map(|pending| pending.not_before).min() {
                    wake_at(at);
                }
                break;
            }
            let due = eligible.iter().map(|(_, pending)| pending.due).min().expect("not empty");
            if due > now && eligible.len() < self.config.search_batch_max {
                wake_at(due);
                break;
            }
            if let Err(wait) = self.budget.try_acquire(now) {
                wake_at(now + wait);
                return wake;
            }
            // The most urgent numbers first.
            let mut chosen: Vec<(String, Duration)> =
                eligible.iter().map(|(number, pending)| ((*number).clone(), pending.due)).collect();
            chosen.sort_by_key(|(number, due)| (*due, number.clone()));
            chosen.truncate(self.config.search_batch_max);
            let numbers: Vec<String> = chosen.into_iter().map(|(number, _)| number).collect();
            for number in &numbers {
                self.pending.remove(number);
            }
            let id = self.request_id();
            self.in_flight += 1;
            self.searching.insert(id, numbers.clone());
            out.actions.push(Action::Search { id, numbers });
        }

        // Then writes: records for unknown numbers, then call logs.
        if !state.allows_writes() {
            return wake;
        }
        while self.in_flight < self.config.max_in_flight {
            let Some(position) = self.ready.iter().position(|ready| ready.not_before <= now) else {
                if let Some(at) = self.ready.iter().map(|ready| ready.not_before).min() {
                    wake_at(at);
                }
                break;
            };
            let eligible = self.ready.iter().filter(|ready| ready.not_before <= now).count();
            let oldest = self.ready[position].queued_at;
            let due = oldest + self.config.log_batch_age;
            if eligible < self.config.log_batch_max && due > now {
                wake_at(due);
                break;
            }
            if let Err(wait) = self.budget.try_acquire(now) {
                wake_at(now + wait);
                break;
            }
            let mut batch = Vec::new();
            let mut rest = VecDeque::new();
            while let Some(ready) = self.ready.pop_front() {
                if batch.len() < self.config.log_batch_max && ready.not_before <= now {
                    batch.push(ready);
                } else {
                    rest.push_back(ready);
                }
            }
            self.ready = rest;
            let tasks = batch
                .iter()
                .map(|ready| {
                    task_for(&ready.log.key, &ready.log.record, ready.lookup.as_ref(), &self.config.settings.templates)
                })
                .collect();
            let id = self.request_id();
            self.in_flight += 1;
            self.writing.insert(id, batch);
            out.actions.push(Action::Upsert { id, tasks });
        }
        wake
    }

    /// Takes in a search's answer.
    pub fn on_search(
        &mut self,
        id: u64,
        result: Result<Reply<Vec<CrmRecord>>, Failure>,
        now: Duration,
        out: &mut Outputs,
    ) {
        let Some(numbers) = self.searching.remove(&id) else { return };
        self.in_flight -= 1;
        match result {
            Ok(reply) => {
                self.succeeded(reply.usage);
                for (number, lookup) in share_out(&numbers, &reply.value) {
                    if lookup == Lookup::NotFound
                        && let Some(kind) = self.auto_create_kind(&number)
                    {
                        self.create(&number, kind, out);
                        continue;
                    }
                    self.answer(&number, lookup, now, out);
                }
            }
            Err(failure) => {
                let retry_at = self.failed(&failure, now);
                let reason = failure.error.to_string();
                for number in numbers {
                    // Nobody should stare at a ringing phone waiting for a retry: pop without a match.
                    self.fail_waiters(&number, &reason, out);
                    if failure.error.is_retryable() && self.logs_awaiting.contains_key(&number) {
                        // The call logs still want to know whom the call was with.
                        self.pending.insert(number, PendingLookup { due: retry_at, not_before: retry_at });
                    } else if let Some(logs) = self.logs_awaiting.remove(&number) {
                        self.ready.extend(logs);
                    }
                }
            }
        }
    }

    /// Which record to create for an unknown number, if the settings say so.
    fn auto_create_kind(&self, number: &str) -> Option<RecordKind> {
        let auto = self.config.settings.auto_create;
        let direction = self
            .calls
            .values()
            .find(|call| call.caller == Caller::Searchable(number.to_owned()))
            .map(|call| call.direction)
            .or_else(|| {
                self.logs_awaiting.get(number).and_then(|logs| logs.first()).map(|ready| ready.log.record.direction)
            })?;
        match direction {
            Direction::Inbound => auto.inbound,
            Direction::Outbound => auto.outbound,
            Direction::Internal => None,
        }
    }

    fn create(&mut self, number: &str, kind: RecordKind, out: &mut Outputs) {
        self.numbers_creating.insert(number.to_owned());
        let id = self.request_id();
        // Creation is a write, but one the caller is waiting on: it is not held for a batch.
        self.in_flight += 1;
        let phone = self
            .calls
            .values()
            .find(|call| call.caller == Caller::Searchable(number.to_owned()))
            .map_or_else(|| format!("+{number}"), |call| call.raw_number.clone());
        let record = NewRecord { kind, last_name: format!("Automatic New Contact -{phone}"), phone };
        self.creating.insert(id, (number.to_owned(), record.clone()));
        out.actions.push(Action::Create { id, record });
    }

    /// Takes in a record creation's answer.
    pub fn on_created(&mut self, id: u64, result: Result<Reply<String>, Failure>, now: Duration, out: &mut Outputs) {
        let Some((number, asked)) = self.creating.remove(&id) else { return };
        self.in_flight -= 1;
        self.numbers_creating.remove(&number);
        match result {
            Ok(reply) => {
                self.succeeded(reply.usage);
                let record =
                    CrmRecord { kind: asked.kind, id: reply.value, name: asked.last_name, phones: vec![asked.phone] };
                self.answer(&number, Lookup::Found(vec![record]), now, out);
            }
            Err(failure) => {
                self.failed(&failure, now);
                // Without the record, the caller is still unknown: say so rather than retry a
                // creation that may have happened.
                self.answer(&number, Lookup::NotFound, now, out);
            }
        }
    }

    /// Records `lookup` for `number` and hands it to whoever waits for it.
    fn answer(&mut self, number: &str, lookup: Lookup, now: Duration, out: &mut Outputs) {
        self.cache.put(number.to_owned(), lookup.clone(), now);
        for waiter in self.waiters.remove(number).unwrap_or_default() {
            let raw = self.calls.get(&waiter.call).map_or_else(|| number.to_owned(), |call| call.raw_number.clone());
            out.pops
                .push(Pop { pop: pop(&waiter.call, &waiter.device, &raw, &lookup), triggered_at: waiter.triggered_at });
        }
        for mut ready in self.logs_awaiting.remove(number).unwrap_or_default() {
            ready.lookup = Some(lookup.clone());
            self.ready.push_back(ready);
        }
    }

    fn fail_waiters(&mut self, number: &str, reason: &str, out: &mut Outputs) {
        for waiter in self.waiters.remove(number).unwrap_or_default() {
            let raw = self.calls.get(&waiter.call).map_or_else(|| number.to_owned(), |call| call.raw_number.clone());
            out.pops.push(Pop {
                pop: ScreenPop {
                    call: waiter.call,
                    device: waiter.device,
                    number: raw,
                    result: PopResult::Failed(reason.to_owned()),
                },
                triggered_at: waiter.triggered_at,
            });
        }
    }

    /// Takes in a write's answer; says what the outbox should do with each log.
    pub fn on_upsert(&mut self, id: u64, result: Result<Reply<Vec<RecordResult>>, Failure>, now: Duration) -> Settled {
        let Some(batch) = self.writing.remove(&id) else { return Settled::default() };
        self.in_flight -= 1;
        let mut settled = Settled::default();
        match result {
            Ok(reply) => {
                self.succeeded(reply.usage);
                let mut results = reply.value.into_iter();
                let mut retry = Vec::new();
                for ready in batch {
                    match results.next() {
                        Some(RecordResult::Stored { .. }) => {
                            self.keys.remove(&ready.log.key);
                            settled.delivered.push(ready.log.key);
                        }
                        Some(RecordResult::Refused { retryable: false, code, message }) => {
                            self.keys.remove(&ready.log.key);
                            settled.dead.push((ready.log.key, format!("{code}: {message}")));
                        }
                        // A lock held elsewhere, or a result missing from the answer: send it again.
                        Some(RecordResult::Refused { retryable: true, .. }) | None => retry.push(ready),
                    }
                }
                let at = now + self.backoff(1);
                for mut ready in retry {
                    ready.log.attempts += 1;
                    ready.not_before = at;
                    settled.retried.push(ready.log.key.clone());
                    self.ready.push_back(ready);
                }
            }
            Err(failure) if !failure.error.is_retryable() => {
                self.failed(&failure, now);
                let reason = failure.error.to_string();
                for ready in batch {
                    self.keys.remove(&ready.log.key);
                    settled.dead.push((ready.log.key, reason.clone()));
                }
            }
            Err(failure) => {
                let at = self.failed(&failure, now);
                for mut ready in batch {
                    ready.log.attempts += 1;
                    ready.not_before = at;
                    settled.retried.push(ready.log.key.clone());
                    // Back to the front: these are the oldest.
                    self.ready.push_front(ready);
                }
            }
        }
        settled
    }

    /// Takes in a probe's answer.
    pub fn on_probe(&mut self, id: u64, result: Result<Reply<()>, Failure>, now: Duration) {
        let _ = id;
        self.in_flight -= 1;
        match result {
            Ok(reply) => self.succeeded(reply.usage),
            Err(failure) => {
                self.failed(&failure, now);
            }
        }
    }

    /// Takes in the ledger's answer to an [`Action::TakeBlock`] (`None`: it could not be reached).
    pub fn on_block(&mut self, grant: Option<crate::crm::budget::BlockGrant>, now: Duration) {
        self.budget.block_answered(grant, now);
    }

    /// Hands back logs dead-lettered earlier (an administrator replays them).
    pub fn replay(&mut self, logs: Vec<PendingLog>, now: Duration, out: &mut Outputs) {
        self.on_logs(logs, now, out);
    }

    fn succeeded(&mut self, usage: Option<crate::crm::port::ApiUsage>) {
        self.failures = 0;
        if let Some(usage) = usage {
            self.budget.observe(usage);
        }
    }

    /// Counts a failure and returns when to try again.
    fn failed(&mut self, failure: &Failure, now: Duration) -> Duration {
        if let Some(usage) = failure.usage {
            self.budget.observe(usage);
        }
        match &failure.error {
            CrmError::LimitExceeded(_) => {
                self.budget.exhausted();
                self.next_probe = now + self.budget.probe_interval();
                // Nothing goes before a probe shows room; the stopped budget holds everything.
                now
            }
            _ => {
                self.failures = self.failures.saturating_add(1);
                now + self.backoff(self.failures)
            }
        }
    }

    /// The delay before retry number `attempt`: doubling from `retry_base`, capped, with up to 50%
    /// jitter so that retries from many gateways do not arrive together.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let delay = self.config.retry_base.saturating_mul(1 << exponent).min(self.config.retry_max);
        // xorshift: cheap and deterministic.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let fraction = (self.jitter % 1_000) as f64 / 2_000.0;
        delay.mul_f64(1.0 - fraction)
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }
}

fn pop(call: &CallId, device: &DeviceId, number: &str, lookup: &Lookup) -> ScreenPop {
    let result = match lookup {
        Lookup::NotFound => PopResult::NoMatch,
        Lookup::Found(records) => match records.as_slice() {
            [one] => PopResult::Single(one.clone()),
            many => PopResult::Multiple(many.to_vec()),
        },
    };
    ScreenPop { call: call.clone(), device: device.clone(), number: number.to_owned(), result }
}

#[cfg(test)]
mod tests;
