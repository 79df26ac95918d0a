//! One call's state machine: its parties, timeline and agent legs, and the call log records it
//! yields when it ends. Pure: inputs carry the PBX's time; nothing here waits or talks to anyone.
//!
//! An agent's **leg** is that line's part in the call, across transfers and conferences (which give
//! the call new ids): one leg, and so one call log record, per line per call.

use crate::domain::{CallId, Cause, ConnState, DeviceId, DeviceKind, Direction, LegOutcome, Millis};

/// A party to the call now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Party {
    /// The device.
    pub device: DeviceId,
    /// What kind of device it is.
    pub kind: DeviceKind,
    /// Its connection's state.
    pub state: ConnState,
}

/// Something the PBX said about this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallInput {
    /// The PBX's global linkage id for the call (ECMA-269 `callLinkageData`, Avaya's UCID): one
    /// id for the customer's call across transfers and conferences. It becomes the call's root, so
    /// a node that first sees the call after a transfer keys its legs as the node that saw the
    /// call begin does.
    Linkage {
        /// The id.
        id: CallId,
    },
    /// Who placed the call and where to; the first report fixes the direction.
    Info {
        /// The calling device or number.
        calling: String,
        /// The called device or number.
        called: String,
        /// The direction, as the translator judged it from the devices' kinds.
        direction: Direction,
    },
    /// The call came through an ACD queue.
    Queue {
        /// The queue.
        queue: DeviceId,
    },
    /// The PBX records the call here.
    Recording {
        /// Where the recording is.
        url: String,
    },
    /// A party joined or changed state.
    PartyState {
        /// The device.
        device: DeviceId,
        /// Its kind.
        kind: DeviceKind,
        /// Its new state.
        state: ConnState,
        /// Why.
        cause: Cause,
        /// When.
        at: Millis,
    },
    /// A party left.
    PartyCleared {
        /// The device.
        device: DeviceId,
        /// Why.
        cause: Cause,
        /// When.
        at: Millis,
    },
    /// The call was parked.
    Parked {
        /// The park id anyone can retrieve it with.
        park_id: String,
        /// The line that parked it.
        parked_by: DeviceId,
        /// When.
        at: Millis,
    },
    /// The call left its park orbit (retrieved or recalled).
    Unparked {
        /// When.
        at: Millis,
    },
    /// The call is over.
    Ended {
        /// Why.
        cause: Cause,
        /// When.
        at: Millis,
    },
    /// The agent's notes on the call.
    Notes {
        /// The notes, replacing earlier ones.
        notes: String,
    },
    /// The agent's disposition (wrap-up code).
    Disposition {
        /// The disposition.
        disposition: String,
    },
}

/// A moment in the call's life, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moment {
    /// A device started ringing.
    Ringing(DeviceId),
    /// A device answered (or was connected).
    Answered(DeviceId),
    /// A device put the call on hold.
    Held(DeviceId),
    /// A device took the call off hold.
    Retrieved(DeviceId),
    /// The call waits in a queue.
    Queued(DeviceId),
    /// The call was parked.
    Parked {
        /// The park id.
        park_id: String,
        /// Who parked it.
        by: DeviceId,
    },
    /// The call left its park orbit.
    Unparked,
    /// Calls were joined into this one by a transfer.
    Transferred {
        /// The ids the call had before.
        from: Vec<CallId>,
        /// The line that transferred, if any left.
        by: Option<DeviceId>,
    },
    /// Calls were joined into this one by a conference.
    Conferenced {
        /// The ids the call had before.
        from: Vec<CallId>,
    },
    /// A device left.
    Left(DeviceId),
    /// The call ended.
    Ended,
}

/// A timeline entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// When, on the PBX's clock.
    pub at: Millis,
    /// What happened.
    pub moment: Moment,
}

/// One agent line's part in the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The line.
    pub device: DeviceId,
    /// It was offered by an ACD queue.
    pub via_queue: bool,
    /// When it first rang (or was first connected, for calls it placed or picked up).
    pub offered_at: Millis,
    /// When it first talked.
    pub answered_at: Option<Millis>,
    /// When it left the call, while it is not in it.
    pub left_at: Option<Millis>,
    /// Milliseconds it talked.
    pub talk_ms: u64,
    /// Milliseconds it held the call.
    pub hold_ms: u64,
    /// Its connection's state now (`Null` once it left).
    state: ConnState,
    /// Since when it has been in `state`.
    since: Millis,
    /// How it ended, once it has.
    outcome: Option<LegOutcome>,
}

impl Leg {
    fn new(device: DeviceId, via_queue: bool, at: Millis) -> Self {
        Self {
            device,
            via_queue,
            offered_at: at,
            answered_at: None,
            left_at: None,
            talk_ms: 0,
            hold_ms: 0,
            state: ConnState::Null,
            since: at,
            outcome: None,
        }
    }

    /// Counts the time spent in the current state up to `at`, then moves to `state`.
    fn enter(&mut self, state: ConnState, at: Millis) {
        let spent = at.saturating_sub(self.since);
        match self.state {
            ConnState::Connected => self.talk_ms += spent,
            ConnState::Held => self.hold_ms += spent,
            _ => {}
        }
        if state == ConnState::Connected && self.answered_at.is_none() {
            self.answered_at = Some(at);
        }
        if state != ConnState::Null {
            // Rejoining (a parked call recalled to its parker) reopens the leg.
            self.left_at = None;
            self.outcome = None;
        }
        self.state = state;
        self.since = at;
    }

    fn leave(&mut self, outcome: LegOutcome, at: Millis) {
        self.enter(ConnState::Null, at);
        self.left_at = Some(at);
        self.outcome = Some(outcome);
    }

    /// Joins the same line's leg of another call (a transfer or conference brings both together).
    fn absorb(&mut self, other: Leg) {
        self.via_queue |= other.via_queue;
        self.offered_at = self.offered_at.min(other.offered_at);
        self.answered_at = match (self.answered_at, other.answered_at) {
            (Some(mine), Some(theirs)) => Some(mine.min(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
        self.talk_ms += other.talk_ms;
        self.hold_ms += other.hold_ms;
        // The connection that is still up wins: one of the two may have left already.
        if self.state == ConnState::Null && other.state != ConnState::Null {
            self.state = other.state;
            self.since = other.since;
            self.left_at = other.left_at;
            self.outcome = other.outcome;
        }
    }

    /// How the leg ended, or would end if the call ended now without it being answered.
    fn outcome_if_left(&self, caller_gone: bool, cause: Cause) -> LegOutcome {
        match (self.answered_at.is_some(), cause) {
            (true, Cause::Transfer | Cause::Park) => LegOutcome::Transferred,
            (true, _) => LegOutcome::Answered,
            (false, _) if caller_gone => LegOutcome::Abandoned,
            (false, _) => LegOutcome::Missed,
        }
    }
}

/// The call log record of one agent leg, made when the call ends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallLogRecord {
    /// The call's first id (the PBX's linkage id when it gives one): the same for every record of
    /// one customer call.
    pub root_call_id: CallId,
    /// The call's last id.
    pub call_id: CallId,
    /// The agent line.
    pub device: DeviceId,
    /// The login id of the agent on the line when the call ended, if known.
    pub agent_id: Option<String>,
    /// Which way the call went.
    pub direction: Direction,
    /// How the agent's part ended.
    pub outcome: LegOutcome,
    /// The agent's part came through an ACD queue.
    pub via_queue: bool,
    /// The queue the call came through, if any.
    pub queue: Option<DeviceId>,
    /// Who placed the call.
    pub calling: String,
    /// Where it was placed to.
    pub called: String,
    /// Every line and outside number that took part in the call, in the order they joined.
    pub parties: Vec<DeviceId>,
    /// When the line was offered the call.
    pub offered_at: Millis,
    /// When the line answered, if it did.
    pub answered_at: Option<Millis>,
    /// When the line's part ended.
    pub ended_at: Millis,
    /// Seconds talked, rounded down.
    pub talk_seconds: u64,
    /// Seconds on hold, rounded down.
    pub hold_seconds: u64,
    /// The agent's notes.
    pub notes: String,
    /// The agent's disposition.
    pub disposition: Option<String>,
    /// The recording, if the PBX made one.
    pub recording_url: Option<String>,
}

impl CallLogRecord {
    /// The record's key: the call's first id and the line, the same on every retry and after a
    /// restart (Salesforce's external id for the Task).
    pub fn key(&self) -> String {
        leg_key(&self.root_call_id, &self.device)
    }
}

/// The key of a line's leg of the call whose root is `root` (see [`CallLogRecord::key`]).
pub fn leg_key(root: &str, line: &str) -> String {
    format!("{root}:{line}")
}

/// What the model tells the durable path about agent legs, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegNote {
    /// A leg opened or changed (answered, or its call got a new id): what its record would say now.
    Open(CallLogRecord),
    /// These legs continue under another call (a merge); forget them by key.
    Moved(Vec<String>),
    /// The call ended: the leg's final record.
    Closed(CallLogRecord),
    /// The call ended, and the leg's record is left out by configuration (a queue agent's missed
    /// offer): forget the leg.
    Skipped(CallLogRecord),
    /// The calls the model holds once the first resync after start is applied (sent by the feed,
    /// so it is ordered with the notes of everything after it).
    Present(Vec<CallId>),
    /// Lines this node took over from another (a failover or a handover), once their snapshots are
    /// applied, and the legs the model holds on them then: the legs the previous owner journaled on
    /// these lines that are not among them ended while no node watched (their call ended, or the
    /// line left it).
    Taken {
        /// The lines taken.
        lines: Vec<DeviceId>,
        /// The legs the model holds on those lines: (call id, line).
        legs: Vec<(CallId, DeviceId)>,
    },
}

/// One call as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallState {
    /// Its id now.
    pub id: CallId,
    /// Its first id, or the PBX's linkage id for it ([`CallInput::Linkage`]).
    pub root: CallId,
    /// Ids it had before, oldest first.
    pub previous_ids: Vec<CallId>,
    /// Parties now, in the order they joined.
    pub parties: Vec<Party>,
    /// Who placed it.
    pub calling: String,
    /// Where it was placed to.
    pub called: String,
    /// Which way it goes; `None` until the PBX says who placed it.
    pub direction: Option<Direction>,
    /// The ACD queue it came through.
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
    /// What happened, in order.
    pub timeline: Vec<TimelineEntry>,
    /// Every agent line's part, by line.
    pub legs: Vec<Leg>,
    /// Every line and outside number that took part, in the order they joined.
    pub participants: Vec<DeviceId>,
}

impl CallState {
    /// A call first heard of at `at`.
    pub fn new(id: CallId, at: Millis) -> Self {
        Self {
            root: id.clone(),
            id,
            previous_ids: Vec::new(),
            parties: Vec::new(),
            calling: String::new(),
            called: String::new(),
            direction: None,
            queue: None,
            park_id: None,
            recording_url: None,
            notes: String::new(),
            disposition: None,
            created_at: at,
            ended_at: None,
            timeline: Vec::new(),
            legs: Vec::new(),
            participants: Vec::new(),
        }
    }

    /// A device's party, if it is in the call.
    pub fn party(&self, device: &str) -> Option<&Party> {
        self.parties.iter().find(|party| party.device == device)
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.ended_at.is_some()
    }

    fn leg_mut(&mut self, device: &str) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|leg| leg.device == device)
    }

    fn note(&mut self, at: Millis, moment: Moment) {
        self.timeline.push(TimelineEntry { at, moment });
    }

    /// Whether any party is a device the gateway monitors (a line, a queue, a park orbit). A call
    /// with none left is out of the gateway's view: the PBX reports nothing more about it.
    pub fn in_view(&self) -> bool {
        self.parties.iter().any(|party| party.kind != DeviceKind::External)
    }

    fn caller_gone(&self) -> bool {
        !self.calling.is_empty() && self.party(&self.calling).is_none()
    }

    /// Applies one input; returns whether anything changed. Inputs for an ended call change nothing.
    pub fn apply(&mut self, input: CallInput) -> bool {
        if self.is_ended() {
            return false;
        }
        match input {
            CallInput::Linkage { id } => replace(&mut self.root, id),
            CallInput::Info { calling, called, direction } => {
                let changed = self.direction.is_none() || self.calling != calling || self.called != called;
                if self.direction.is_none() {
                    self.direction = Some(direction);
                    self.calling = calling;
                    self.called = called;
                }
                changed
            }
            CallInput::Queue { queue } => replace(&mut self.queue, Some(queue)),
            CallInput::Recording { url } => replace(&mut self.recording_url, Some(url)),
            CallInput::Notes { notes } => replace(&mut self.notes, notes),
            CallInput::Disposition { disposition } => replace(&mut self.disposition, Some(disposition)),
            CallInput::PartyState { device, kind, state, cause, at } => {
                self.party_state(device, kind, state, cause, at)
            }
            CallInput::PartyCleared { device, cause, at } => self.party_cleared(&device, cause, at),
            CallInput::Parked { park_id, parked_by, at } => {
                self.note(at, Moment::Parked { park_id: park_id.clone(), by: parked_by });
                self.park_id = Some(park_id);
                true
            }
            CallInput::Unparked { at } => {
                if self.park_id.take().is_none() {
                    return false;
                }
                // The orbit leaves with the park, whether or not the PBX reports it separately.
                let orbits: Vec<DeviceId> = self
                    .parties
                    .iter()
                    .filter(|party| party.kind == DeviceKind::ParkOrbit)
                    .map(|party| party.device.clone())
                    .collect();
                for orbit in orbits {
                    self.party_cleared(&orbit, Cause::Park, at);
                }
                self.note(at, Moment::Unparked);
                true
            }
            CallInput::Ended { cause, at } => {
                self.end(cause, at);
                true
            }
        }
    }

    fn party_state(&mut self, device: DeviceId, kind: DeviceKind, state: ConnState, cause: Cause, at: Millis) -> bool {
        if state == ConnState::Null {
            return self.party_cleared(&device, cause, at);
        }
        let previous = self.party(&device).map(|party| party.state);
        if previous == Some(state) {
            return self.party_kind_learned(device, kind, state, at);
        }
        match self.parties.iter_mut().find(|party| party.device == device) {
            Some(party) => party.state = state,
            None => self.parties.push(Party { device: device.clone(), kind, state }),
        }
        if matches!(kind, DeviceKind::Line | DeviceKind::External) && !self.participants.contains(&device) {
            self.participants.push(device.clone());
        }
        let moment = match (previous, state) {
            (_, ConnState::Alerting) => Some(Moment::Ringing(device.clone())),
            (Some(ConnState::Held), ConnState::Connected) => Some(Moment::Retrieved(device.clone())),
            (_, ConnState::Connected) => Some(Moment::Answered(device.clone())),
            (_, ConnState::Held) => Some(Moment::Held(device.clone())),
            (_, ConnState::Queued) if kind == DeviceKind::Queue => Some(Moment::Queued(device.clone())),
            _ => None,
        };
        if let Some(moment) = moment {
            self.note(at, moment);
        }
        // A line that never rang, talked or held (a failed attempt to reach it) has no leg.
        let takes_part =
            matches!(state, ConnState::Initiated | ConnState::Alerting | ConnState::Connected | ConnState::Held);
        if kind == DeviceKind::Line && (takes_part || self.leg_mut(&device).is_some()) {
            let via_queue = cause == Cause::Distribution;
            if self.leg_mut(&device).is_none() {
                self.legs.push(Leg::new(device.clone(), via_queue, at));
            }
            if let Some(leg) = self.leg_mut(&device) {
                leg.via_queue |= via_queue;
                leg.enter(state, at);
            }
        }
        true
    }

    /// A party's kind can be learned after it joined: its events came before the snapshot that
    /// says what the device is (calls that start while the gateway resyncs). A line found that way
    /// still gets its leg, from now, so its call is logged.
    fn party_kind_learned(&mut self, device: DeviceId, kind: DeviceKind, state: ConnState, at: Millis) -> bool {
        let Some(party) = self.parties.iter_mut().find(|party| party.device == device) else { return false };
        if party.kind == kind || kind == DeviceKind::External {
            return false;
        }
        party.kind = kind;
        let takes_part =
            matches!(state, ConnState::Initiated | ConnState::Alerting | ConnState::Connected | ConnState::Held);
        if kind == DeviceKind::Line && takes_part && self.leg_mut(&device).is_none() {
            let mut leg = Leg::new(device, false, at);
            leg.enter(state, at);
            self.legs.push(leg);
        }
        true
    }

    fn party_cleared(&mut self, device: &str, cause: Cause, at: Millis) -> bool {
        let Some(index) = self.parties.iter().position(|party| party.device == device) else { return false };
        self.parties.remove(index);
        self.note(at, Moment::Left(device.to_owned()));
        let caller_gone = self.caller_gone();
        if let Some(leg) = self.leg_mut(device) {
            let outcome = leg.outcome_if_left(caller_gone, cause);
            leg.leave(outcome, at);
        }
        true
    }

    fn end(&mut self, cause: Cause, at: Millis) {
        let caller_gone = self.caller_gone() || !self.parties.iter().any(|party| party.device == self.calling);
        for leg in self.legs.iter_mut().filter(|leg| leg.left_at.is_none()) {
            let outcome = leg.outcome_if_left(caller_gone, cause);
            leg.leave(outcome, at);
        }
        self.parties.clear();
        self.park_id = None;
        self.ended_at = Some(at);
        self.note(at, Moment::Ended);
    }

    /// The call after a single-step transfer: a new id, the transferring line gone.
    pub fn transferred_single_step(mut self, new_id: CallId, by: &str, at: Millis) -> Self {
        self.previous_ids.push(std::mem::replace(&mut self.id, new_id));
        let from = vec![self.previous_ids.last().cloned().unwrap_or_default()];
        self.party_cleared(by, Cause::Transfer, at);
        self.note(at, Moment::Transferred { from, by: Some(by.to_owned()) });
        self
    }

    /// The call that a transfer (`leaving` is the transferring line) or a conference (`leaving` is
    /// `None`) makes of `primary` (the held call) and `secondary` (the active one), under `new_id`.
    /// Legs of the same line in both calls become one.
    pub fn merged(
        primary: Self,
        secondary: Self,
        new_id: CallId,
        leaving: Option<&str>,
        parties: Vec<Party>,
        at: Millis,
    ) -> Self {
        let mut merged = primary;
        let mut secondary = secondary;
        // Count every open leg's time up to the merge, so the two legs of one line add up.
        for leg in merged.legs.iter_mut().chain(secondary.legs.iter_mut()) {
            leg.enter(leg.state, at);
        }
        let from = vec![merged.id.clone(), secondary.id.clone()];
        merged.previous_ids.push(std::mem::replace(&mut merged.id, new_id));
        merged.previous_ids.extend(secondary.previous_ids);
        merged.previous_ids.push(secondary.id);
        // The call now goes where the active call went (the PBX's `called` is the last dialled).
        if !secondary.called.is_empty() {
            merged.called = secondary.called.clone();
        }
        merged.queue = merged.queue.or(secondary.queue);
        merged.recording_url = merged.recording_url.or(secondary.recording_url);
        merged.park_id = None;
        for leg in secondary.legs {
            match merged.leg_mut(&leg.device) {
                Some(mine) => mine.absorb(leg),
                None => merged.legs.push(leg),
            }
        }
        for device in secondary.participants {
            if !merged.participants.contains(&device) {
                merged.participants.push(device);
            }
        }
        merged.timeline.extend(secondary.timeline);
        merged.timeline.sort_by_key(|entry| entry.at);
        // The PBX's list of who is in the new call is the truth; each leg follows its party.
        merged.parties = parties;
        for leg in &mut merged.legs {
            match merged.parties.iter().find(|party| party.device == leg.device) {
                Some(party) if leg.state != party.state => leg.enter(party.state, at),
                Some(_) => {}
                None if leg.left_at.is_none() => {
                    let outcome = if leg.answered_at.is_some() { LegOutcome::Transferred } else { LegOutcome::Missed };
                    leg.leave(outcome, at);
                }
                None => {}
            }
        }
        let moment = match leaving {
            Some(by) => Moment::Transferred { from, by: Some(by.to_owned()) },
            None => Moment::Conferenced { from },
        };
        merged.note(at, moment);
        merged
    }

    /// Makes the parties what a PBX snapshot says they are now; legs follow. Used after a resync
    /// and when an actor is rebuilt.
    pub fn reconcile(&mut self, parties: Vec<Party>, at: Millis) -> bool {
        if self.is_ended() || parties == self.parties {
            return false;
        }
        for party in &parties {
            self.party_state(party.device.clone(), party.kind, party.state, Cause::Normal, at);
        }
        let gone: Vec<DeviceId> = self
            .parties
            .iter()
            .filter(|mine| !parties.iter().any(|party| party.device == mine.device))
            .map(|party| party.device.clone())
            .collect();
        for device in gone {
            self.party_cleared(&device, Cause::Normal, at);
        }
        // Keep the PBX's order of parties.
        self.parties = parties;
        true
    }

    /// One record per agent leg; empty until the call has ended.
    pub fn log_records(&self) -> Vec<CallLogRecord> {
        let Some(ended_at) = self.ended_at else { return Vec::new() };
        self.records_as_of(ended_at)
    }

    /// The records the legs would have if the call ended at `at`: what the durable journal keeps
    /// while the call is up, so that a call that ends while the gateway is down is still logged.
    pub fn provisional_records(&self, at: Millis) -> Vec<CallLogRecord> {
        self.records_as_of(at)
    }

    fn records_as_of(&self, ended_at: Millis) -> Vec<CallLogRecord> {
        self.legs
            .iter()
            .map(|leg| CallLogRecord {
                root_call_id: self.root.clone(),
                call_id: self.id.clone(),
                device: leg.device.clone(),
                agent_id: None,
                direction: self.direction.unwrap_or(Direction::Internal),
                outcome: leg.outcome.unwrap_or(if leg.answered_at.is_some() {
                    LegOutcome::Answered
                } else {
                    LegOutcome::Missed
                }),
                via_queue: leg.via_queue,
                queue: self.queue.clone(),
                calling: self.calling.clone(),
                called: self.called.clone(),
                parties: self.participants.clone(),
                offered_at: leg.offered_at,
                answered_at: leg.answered_at,
                ended_at: leg.left_at.unwrap_or(ended_at),
                talk_seconds: leg.talk_ms / 1000,
                hold_seconds: leg.hold_ms / 1000,
                notes: self.notes.clone(),
                disposition: self.disposition.clone(),
                recording_url: self.recording_url.clone(),
            })
            .collect()
    }
}

fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

#[cfg(test)]
mod tests;
