//! The seeded traffic generator: callers, agents at their phones and far ends, playing a contact
//! center's day on the simulated phone system. The same seed and the same timing give the same day.
//!
//! It reacts to the phone system's events (a phone rings: the agent answers after a while) and keeps
//! a timetable of what each person does next. Every action is looked up against the phone system's
//! state when it is due, so an action overtaken by events (the caller hung up first) is skipped.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use proto::pbx::event_report::Event;
use proto::pbx::{self, AgentState, ConnectionState as State, DeviceKind};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::model::{Pbx, PbxEvent};

/// What the generated day looks like. Probabilities are of one answered call doing that thing.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Seeds every decision.
    pub seed: u64,
    /// How many stations, from the first, have an agent the generator plays.
    pub agents: u32,
    /// New calls per second: inbound to the queues, and agents' outbound calls.
    pub calls_per_sec: f64,
    /// Share of new calls that agents place to outside numbers (click-to-dial).
    pub outbound_share: f64,
    /// Stop placing new calls after this many (calls in progress still finish).
    pub max_calls: Option<u64>,
    /// Mean talk time of a call segment.
    pub mean_talk: Duration,
    /// Mean time a ringing phone takes to be answered.
    pub mean_ring: Duration,
    /// How long a caller waits in the queue before hanging up.
    pub caller_patience: Duration,
    /// After-call work before an agent is ready again.
    pub after_call_work: Duration,
    /// An agent does not answer a ringing ACD call (ring-no-answer).
    pub no_answer_probability: f64,
    /// The call is put on hold and taken back.
    pub hold_probability: f64,
    /// The call is parked and picked up by another agent (or recalled).
    pub park_probability: f64,
    /// The call is transferred blind to another agent or the queue.
    pub blind_transfer_probability: f64,
    /// The agent consults another agent, then transfers.
    pub consult_transfer_probability: f64,
    /// The agent consults another agent, then makes a conference.
    pub conference_probability: f64,
    /// The agent consults another agent, alternates between the two calls, then reconnects.
    pub alternate_probability: f64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            agents: 20,
            calls_per_sec: 2.0,
            outbound_share: 0.2,
            max_calls: None,
            mean_talk: Duration::from_secs(8),
            mean_ring: Duration::from_millis(1500),
            caller_patience: Duration::from_secs(30),
            after_call_work: Duration::from_secs(2),
            no_answer_probability: 0.03,
            hold_probability: 0.15,
            park_probability: 0.05,
            blind_transfer_probability: 0.05,
            consult_transfer_probability: 0.05,
            conference_probability: 0.03,
            alternate_probability: 0.03,
        }
    }
}

/// What one person does at one moment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// Answer a ringing (or click-to-dial initiated) connection.
    Answer { call_id: String, device: String },
    /// The caller gives up waiting in the queue.
    Abandon { call_id: String, caller: String },
    /// An agent's next step in handling the call it talks on.
    Step { agent: String },
    /// Another agent picks up a parked call.
    PickUpParked { park_id: String },
    /// An agent is ready again after after-call work or a ring-no-answer.
    Ready { agent: String },
    /// Outside parties left talking with no station in their call finish and hang up.
    OutsidePartiesHangUp { call_id: String },
}

/// What an agent does with the call it answered, step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Talk,
    Hold,
    Retrieve,
    Park,
    BlindTransfer,
    Consult,
    Transfer,
    Conference,
    Alternate,
    Reconnect,
    AgentHangsUp,
    CallerHangsUp,
}

/// The traffic generator's state.
#[derive(Debug)]
pub struct Traffic {
    config: TrafficConfig,
    rng: SmallRng,
    agents: BTreeSet<String>,
    timetable: BinaryHeap<Reverse<(u64, u64, Action)>>,
    sequence: u64,
    next_arrival_ms: u64,
    calls_started: u64,
    calls_finished: u64,
    /// Each busy agent's remaining steps.
    scripts: HashMap<String, Vec<Step>>,
    /// Agents who took a consultation call: they talk, then hang up, whatever the consulter does.
    consultees: HashSet<String>,
    /// Closing time: no new calls, and a call answered from now on (a parked call picked up, a
    /// recall) is talked and ended rather than sent round again.
    closing: bool,
}

impl Traffic {
    /// Logs the generator's agents on, ready, and plans the first call.
    pub fn new(config: TrafficConfig, pbx: &mut Pbx, now_ms: u64) -> Self {
        let layout = pbx.layout().clone();
        let agents: BTreeSet<String> =
            (0..config.agents.min(layout.stations)).map(|index| (layout.first_station + index).to_string()).collect();
        for (index, agent) in agents.iter().enumerate() {
            let roles = if index % 10 == 0 {
                vec!["agent".to_owned(), "operator".to_owned()]
            } else {
                vec!["agent".to_owned()]
            };
            if pbx.agent(agent).is_some_and(|info| info.state == AgentState::LoggedOff as i32) {
                let _ = pbx.set_agent_state(agent, AgentState::Ready, &format!("A{agent}"), &roles, "");
            }
        }
        let mut traffic = Self {
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            agents,
            timetable: BinaryHeap::new(),
            sequence: 0,
            next_arrival_ms: now_ms,
            calls_started: 0,
            calls_finished: 0,
            scripts: HashMap::new(),
            consultees: HashSet::new(),
            closing: false,
        };
        traffic.next_arrival_ms = now_ms + traffic.interarrival_ms();
        traffic
    }

    /// Calls that have ended since the generator started.
    pub fn calls_finished(&self) -> u64 {
        self.calls_finished
    }

    /// Calls the generator has placed.
    pub fn calls_started(&self) -> u64 {
        self.calls_started
    }

    /// Places no new call from now on; calls in progress play to their end, as at closing time:
    /// scripts already begun run on, but an agent who answers a call from now on talks and ends it
    /// (without it, a parked call picked up would start a script of transfers and parks anew, and
    /// the last calls would go round for half a minute).
    pub fn stop_placing(&mut self) {
        self.config.max_calls = Some(self.calls_started);
        self.closing = true;
    }

    /// Reacts to what the phone system just did: schedules answers, scripts and after-call work.
    pub fn observe(&mut self, pbx: &Pbx, events: &[PbxEvent]) {
        let now = pbx.now_ms();
        for event in events {
            match &event.event {
                Event::Delivered(delivered) => {
                    let Some(alerting) = &delivered.alerting else { continue };
                    let ours = self.agents.contains(&alerting.device_id);
                    let outside = pbx.device_kind(&alerting.device_id) == Some(DeviceKind::External);
                    let from_queue = !delivered.last_redirection_device.is_empty()
                        && pbx.device_kind(&delivered.last_redirection_device) == Some(DeviceKind::AcdQueue);
                    if ours && from_queue && self.chance(self.config.no_answer_probability) {
                        continue;
                    }
                    if ours || outside {
                        let delay = self.around(self.config.mean_ring);
                        self.schedule(
                            now + delay,
                            Action::Answer { call_id: alerting.call_id.clone(), device: alerting.device_id.clone() },
                        );
                    }
                }
                Event::ServiceInitiated(initiated) => {
                    // Click-to-dial rings the agent's own phone first; the agent picks up.
                    let Some(connection) = &initiated.initiated else { continue };
                    if self.agents.contains(&connection.device_id)
                        && pbx.connection_state(&connection.call_id, &connection.device_id) == Some(State::Initiated)
                    {
                        let delay = self.around(Duration::from_millis(600));
                        self.schedule(
                            now + delay,
                            Action::Answer {
                                call_id: connection.call_id.clone(),
                                device: connection.device_id.clone(),
                            },
                        );
                    }
                }
                Event::Queued(queued) => {
                    let Some(connection) = &queued.queued else { continue };
                    let caller = queued.calling_device.clone();
                    let patience = self.around(self.config.caller_patience);
                    self.schedule(now + patience, Action::Abandon { call_id: connection.call_id.clone(), caller });
                }
                Event::Established(_) | Event::Retrieved(_) => {
                    let call_id = match &event.event {
                        Event::Established(established) => established.answering.as_ref().map(|c| c.call_id.clone()),
                        Event::Retrieved(retrieved) => retrieved.retrieved.as_ref().map(|c| c.call_id.clone()),
                        _ => None,
                    };
                    let Some(call_id) = call_id else { continue };
                    self.start_scripts(pbx, &call_id, now);
                }
                Event::Transferred(pbx::TransferredEvent { connections, new_call_id, .. })
                | Event::Conferenced(pbx::ConferencedEvent { connections, new_call_id, .. }) => {
                    // The call has a new id now, so what was planned under the old one finds nothing: an
                    // agent who answered the old call just before gets its script in the new one, and a
                    // phone that still rings in the new call is answered under the new id.
                    self.start_scripts(pbx, new_call_id, now);
                    self.outside_parties_finish(pbx, new_call_id, now);
                    for moved in connections.iter().filter_map(|pair| pair.new_connection.as_ref()) {
                        let ours = self.agents.contains(&moved.device_id);
                        let outside = pbx.device_kind(&moved.device_id) == Some(DeviceKind::External);
                        let ringing = pbx.connection_state(&moved.call_id, &moved.device_id) == Some(State::Alerting);
                        if (ours || outside) && ringing {
                            let delay = self.around(self.config.mean_ring);
                            let action =
                                Action::Answer { call_id: moved.call_id.clone(), device: moved.device_id.clone() };
                            self.schedule(now + delay, action);
                        }
                    }
                }
                // Most parked calls are picked up by another agent; the rest ring their parker again.
                Event::Parked(parked) if self.chance(0.8) => {
                    let delay = self.around(Duration::from_secs(5));
                    self.schedule(now + delay, Action::PickUpParked { park_id: parked.park_id.clone() });
                }
                Event::ConnectionCleared(cleared) => {
                    let Some(dropped) = &cleared.dropped else { continue };
                    self.outside_parties_finish(pbx, &dropped.call_id, now);
                    let agent = &dropped.device_id;
                    if self.agents.contains(agent) && !pbx.has_calls(agent) {
                        self.scripts.remove(agent);
                        self.consultees.remove(agent);
                        let work = self.around(self.config.after_call_work);
                        self.schedule(now + work, Action::Ready { agent: agent.clone() });
                    }
                }
                Event::AgentState(agent_state) => {
                    let not_ready_by_switch = agent_state.agent.as_ref().is_some_and(|agent| {
                        agent.state == AgentState::NotReady as i32 && agent.reason == "ring-no-answer"
                    });
                    if self.agents.contains(&agent_state.device_id) && not_ready_by_switch {
                        let pause = self.around(Duration::from_secs(5));
                        self.schedule(now + pause, Action::Ready { agent: agent_state.device_id.clone() });
                    }
                }
                Event::CallCleared(_) => self.calls_finished += 1,
                _ => {}
            }
        }
    }

    /// An agent who transfers a caller to an outside number, or leaves a conference with two, leaves
    /// outside parties talking with no station in their call: no script of ours ends it, so they
    /// hang up after a talk of their own (or closing time would never come).
    fn outside_parties_finish(&mut self, pbx: &Pbx, call_id: &str, now: u64) {
        let outside_only = pbx.snapshot_call(call_id).is_some_and(|call| {
            call.parties.iter().all(|party| pbx.device_kind(&party.device_id) == Some(DeviceKind::External))
        });
        if outside_only {
            let talk = self.around(self.config.mean_talk);
            self.schedule(now + talk, Action::OutsidePartiesHangUp { call_id: call_id.to_owned() });
        }
    }

    /// Places the calls that have arrived and carries out what is due by `now_ms`.
    pub fn tick(&mut self, pbx: &mut Pbx, now_ms: u64) {
        while self.next_arrival_ms <= now_ms && self.config.max_calls.is_none_or(|max| self.calls_started < max) {
            self.place_call(pbx);
            self.next_arrival_ms += self.interarrival_ms();
        }
        while let Some(Reverse((due, _, _))) = self.timetable.peek() {
            if *due > now_ms {
                break;
            }
            let Some(Reverse((_, _, action))) = self.timetable.pop() else { break };
            self.act(pbx, action);
        }
    }

    fn place_call(&mut self, pbx: &mut Pbx) {
        self.calls_started += 1;
        let caller = format!("+4930{:07}", self.rng.random_range(0..10_000_000u32));
        if self.chance(self.config.outbound_share) {
            let idle: Vec<String> = self.idle_agents(pbx);
            if !idle.is_empty() {
                let agent = idle[self.rng.random_range(0..idle.len())].clone();
                if pbx.make_call(&agent, &caller).is_ok() {
                    return;
                }
            }
        }
        let queues = &pbx.layout().queues;
        if queues.is_empty() {
            return;
        }
        let queue = queues[self.rng.random_range(0..queues.len())].clone();
        let _ = pbx.inbound_call(&caller, &queue);
    }

    fn start_scripts(&mut self, pbx: &Pbx, call_id: &str, now: u64) {
        let Some(call) = pbx.snapshot_call(call_id) else { return };
        for party in &call.parties {
            let agent = &party.device_id;
            if party.state != State::Connected as i32
                || !self.agents.contains(agent)
                || self.scripts.contains_key(agent)
            {
                continue;
            }
            // Scripts are popped from the back: a consultee talks first, then hangs up.
            let script =
                if self.consultees.contains(agent) { vec![Step::AgentHangsUp, Step::Talk] } else { self.pick_script() };
            self.scripts.insert(agent.clone(), script);
            let talk = self.around(self.config.mean_talk);
            self.schedule(now + talk, Action::Step { agent: agent.clone() });
        }
    }

    fn pick_script(&mut self) -> Vec<Step> {
        let config = self.config.clone();
        let roll: f64 = self.rng.random();
        let hang_up = if self.chance(0.5) { Step::AgentHangsUp } else { Step::CallerHangsUp };
        if self.closing {
            return vec![hang_up];
        }
        let thresholds = [
            config.hold_probability,
            config.park_probability,
            config.blind_transfer_probability,
            config.consult_transfer_probability,
            config.conference_probability,
            config.alternate_probability,
        ];
        let mut cumulative = 0.0;
        let mut choice = thresholds.len();
        for (index, probability) in thresholds.iter().enumerate() {
            cumulative += probability;
            if roll < cumulative {
                choice = index;
                break;
            }
        }
        // Scripts are popped from the back: the first step is last.
        let mut steps = match choice {
            0 => vec![Step::Hold, Step::Retrieve, Step::Talk, hang_up],
            1 => vec![Step::Park],
            2 => vec![Step::BlindTransfer],
            3 => vec![Step::Consult, Step::Transfer],
            4 => vec![Step::Consult, Step::Conference, Step::Talk, hang_up],
            5 => vec![Step::Consult, Step::Alternate, Step::Alternate, Step::Reconnect, Step::Talk, hang_up],
            _ => vec![hang_up],
        };
        steps.reverse();
        steps
    }

    fn act(&mut self, pbx: &mut Pbx, action: Action) {
        match action {
            Action::Answer { call_id, device } => {
                let state = pbx.connection_state(&call_id, &device);
                if matches!(state, Some(State::Alerting | State::Initiated)) {
                    let _ = pbx.answer_call(&connection(&call_id, &device));
                }
            }
            Action::Abandon { call_id, caller } => {
                let Some(call) = pbx.snapshot_call(&call_id) else { return };
                // Only a caller still waiting gives up: one an agent has answered, and now holds or has
                // parked, is no longer waiting in the queue.
                let answered = !call.park_id.is_empty()
                    || call.parties.iter().any(|party| {
                        (party.state == State::Connected as i32 || party.state == State::Held as i32)
                            && pbx.device_kind(&party.device_id) == Some(DeviceKind::Station)
                    });
                if !answered && call.parties.iter().any(|party| party.device_id == caller) {
                    let _ = pbx.clear_connection(&connection(&call_id, &caller));
                }
            }
            Action::PickUpParked { park_id } => {
                let idle = self.idle_agents(pbx);
                if !idle.is_empty() {
                    let agent = idle[self.rng.random_range(0..idle.len())].clone();
                    let _ = pbx.retrieve_parked_call(&park_id, &agent);
                }
            }
            Action::Ready { agent } => {
                let ready_now = pbx.agent(&agent).is_some_and(|info| {
                    info.state == AgentState::WorkingAfterCall as i32 || info.state == AgentState::NotReady as i32
                });
                if ready_now && !pbx.has_calls(&agent) {
                    let _ = pbx.set_agent_state(&agent, AgentState::Ready, "", &[], "");
                }
            }
            Action::Step { agent } => self.step(pbx, &agent),
            Action::OutsidePartiesHangUp { call_id } => {
                let _ = pbx.clear_call(&call_id);
            }
        }
    }

    /// Carries out an agent's next step; if the call changed under it, the script ends.
    fn step(&mut self, pbx: &mut Pbx, agent: &str) {
        let Some(step) = self.scripts.get_mut(agent).and_then(Vec::pop) else { return };
        let active = find_connection(pbx, agent, State::Connected);
        let held = find_connection(pbx, agent, State::Held);
        let done = match step {
            Step::Talk => true,
            Step::Hold => active.is_some_and(|active| pbx.hold_call(&active).is_ok()),
            Step::Retrieve => held.is_some_and(|held| pbx.retrieve_call(&held).is_ok()),
            Step::Park => active.is_some_and(|active| pbx.park_call(&active, "").is_ok()),
            Step::BlindTransfer => {
                let target = self.other_idle_agent(pbx, agent).unwrap_or_else(|| pbx.layout().queues[0].clone());
                active.is_some_and(|active| pbx.single_step_transfer(&active, &target).is_ok())
            }
            Step::Consult => match (active, self.other_idle_agent(pbx, agent)) {
                (Some(active), Some(target)) => {
                    self.consultees.insert(target.clone());
                    pbx.consultation_call(&active, &target).is_ok()
                }
                _ => false,
            },
            Step::Transfer => match (held, active) {
                (Some(held), Some(active)) => pbx.transfer_call(&held, &active).is_ok(),
                _ => false,
            },
            Step::Conference => match (held, active) {
                (Some(held), Some(active)) => pbx.conference_call(&held, &active).is_ok(),
                _ => false,
            },
            Step::Alternate => match (held, active) {
                (Some(held), Some(active)) => pbx.alternate_call(&active, &held).is_ok(),
                _ => false,
            },
            Step::Reconnect => match (held, active) {
                (Some(held), Some(active)) => pbx.reconnect_call(&active, &held).is_ok(),
                _ => false,
            },
            Step::AgentHangsUp => active.or(held).is_some_and(|connection| pbx.clear_connection(&connection).is_ok()),
            Step::CallerHangsUp => {
                let outside = active.as_ref().and_then(|active| {
                    pbx.snapshot_call(&active.call_id)?
                        .parties
                        .into_iter()
                        .find(|party| pbx.device_kind(&party.device_id) == Some(DeviceKind::External))
                        .map(|party| connection(&active.call_id, &party.device_id))
                });
                match outside.or(active) {
                    Some(connection) => pbx.clear_connection(&connection).is_ok(),
                    None => false,
                }
            }
        };
        let more = self.scripts.get(agent).is_some_and(|steps| !steps.is_empty());
        if done && more {
            let pause = self.around(self.config.mean_talk / 2);
            self.schedule(pbx.now_ms() + pause, Action::Step { agent: agent.to_owned() });
        } else if !done {
            // The call moved on without this agent's step (hung up, transferred away): end the script,
            // but never leave a call open forever: hang up whatever is left.
            self.scripts.remove(agent);
            if let Some(connection) =
                find_connection(pbx, agent, State::Connected).or_else(|| find_connection(pbx, agent, State::Held))
            {
                let _ = pbx.clear_connection(&connection);
            }
            self.carry_on(pbx, agent);
        } else {
            self.scripts.remove(agent);
            self.carry_on(pbx, agent);
        }
    }

    /// A busy agent can take a second call (a park recall rings it again) that no script plays, and
    /// answering it holds the first: once the script is over, the agent carries on with a call it still
    /// has, so that none is left held or open forever.
    fn carry_on(&mut self, pbx: &mut Pbx, agent: &str) {
        if let Some(active) = find_connection(pbx, agent, State::Connected) {
            self.start_scripts(pbx, &active.call_id, pbx.now_ms());
        } else if let Some(held) = find_connection(pbx, agent, State::Held) {
            // The Retrieved event starts a script for it.
            let _ = pbx.retrieve_call(&held);
        }
    }

    /// Ready agents with no call, in id order. From the PBX's idle set rather than by asking about
    /// every agent: at 6,000 agents and hundreds of calls a second, the walk over every agent under
    /// the simulator's lock was most of its time.
    fn idle_agents(&self, pbx: &Pbx) -> Vec<String> {
        let mut idle: Vec<String> = pbx
            .idle_agents()
            .filter(|agent| {
                self.agents.contains(*agent)
                    && pbx.agent(agent).is_some_and(|info| info.state == AgentState::Ready as i32)
                    && !pbx.has_calls(agent)
            })
            .map(str::to_owned)
            .collect();
        idle.sort_unstable();
        idle
    }

    fn other_idle_agent(&mut self, pbx: &Pbx, except: &str) -> Option<String> {
        let idle: Vec<String> = self.idle_agents(pbx).into_iter().filter(|agent| agent != except).collect();
        if idle.is_empty() {
            return None;
        }
        Some(idle[self.rng.random_range(0..idle.len())].clone())
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.random::<f64>() < probability
    }

    /// A duration around `mean`: uniform between half and one and a half times it, in milliseconds.
    fn around(&mut self, mean: Duration) -> u64 {
        let mean = mean.as_millis() as u64;
        if mean == 0 {
            return 0;
        }
        self.rng.random_range(mean / 2..=mean + mean / 2)
    }

    fn interarrival_ms(&mut self) -> u64 {
        if self.config.calls_per_sec <= 0.0 {
            return u64::MAX / 4;
        }
        // Poisson arrivals: exponential gaps with the configured mean.
        let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let gap_secs = -uniform.ln() / self.config.calls_per_sec;
        (gap_secs * 1000.0).round() as u64
    }

    fn schedule(&mut self, at_ms: u64, action: Action) {
        self.sequence += 1;
        self.timetable.push(Reverse((at_ms, self.sequence, action)));
    }
}

fn connection(call_id: &str, device: &str) -> pbx::ConnectionId {
    pbx::ConnectionId { call_id: call_id.to_owned(), device_id: device.to_owned() }
}

/// One of the agent's connections in the given state, if it has one.
fn find_connection(pbx: &Pbx, agent: &str, state: State) -> Option<pbx::ConnectionId> {
    pbx.calls_of(agent)
        .into_iter()
        .rev()
        .find(|call| pbx.connection_state(call, agent) == Some(state))
        .map(|call| connection(&call, agent))
}

#[cfg(test)]
mod tests;
