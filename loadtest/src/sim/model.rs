//! The simulated phone system's state and rules: devices, calls, connections, the ACD queue and park
//! orbits. Pure and synchronous: time comes in as an argument, events go out through [`Pbx::drain_events`].
//!
//! This is the ground truth the gateway must mirror, so it is written for clarity over speed, and it
//! follows ECMA-269's connection model: one connection per device per call, with CSTA's states.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use proto::pbx::event_report::Event;
use proto::pbx::{self, AgentState, ConnectionState as State, DeviceKind, ErrorCause, EventCause, request, response};

/// The shape of the simulated phone system.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The PBX's name, reported at registration.
    pub pbx_name: String,
    /// The first agent extension; stations are numbered on from it.
    pub first_station: u32,
    /// How many agent extensions there are.
    pub stations: u32,
    /// The ACD queues' device ids.
    pub queues: Vec<String>,
    /// The first park orbit (also its park id); orbits are numbered on from it.
    pub first_park_orbit: u32,
    /// How many park orbits there are.
    pub park_orbits: u32,
    /// How long a call stays parked before it rings the parker again.
    pub park_timeout_ms: u64,
    /// How long an ACD call rings an agent before it goes back to the queue (ring-no-answer).
    pub ring_no_answer_ms: u64,
    /// Whether calls get a recording link.
    pub record_calls: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            pbx_name: "pbx-sim".to_owned(),
            first_station: 2000,
            stations: 50,
            queues: vec!["6000".to_owned()],
            first_park_orbit: 700,
            park_orbits: 50,
            park_timeout_ms: 60_000,
            ring_no_answer_ms: 15_000,
            record_calls: true,
        }
    }
}

/// A refused service: the CSTA-style cause and words a developer can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    /// The cause sent in the error frame.
    pub cause: ErrorCause,
    /// The message sent in the error frame.
    pub message: String,
}

fn refuse<T>(cause: ErrorCause, message: impl Into<String>) -> Result<T, ServiceError> {
    Err(ServiceError { cause, message: message.into() })
}

/// An event the PBX reports, with the devices it concerns (their monitors receive it).
#[derive(Debug, Clone, PartialEq)]
pub struct PbxEvent {
    /// When it happened, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Why it happened.
    pub cause: EventCause,
    /// What happened.
    pub event: Event,
    /// Every device with, or just without, a connection in the call; or the device itself.
    pub devices: BTreeSet<String>,
    /// The call's global linkage id (its first id, kept across transfers and conferences); empty
    /// for an event about no call.
    pub linkage: String,
}

#[derive(Debug, Clone)]
struct Station {
    name: String,
    agent: pbx::AgentInfo,
    /// When the agent last became ready and idle: the ACD offers calls to the longest-idle agent.
    idle_since_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Call {
    id: String,
    /// Parties in the order they joined.
    parties: Vec<(String, State)>,
    calling: String,
    called: String,
    /// The ACD queue the call came through.
    queue: String,
    park: Option<Park>,
    /// Click-to-dial: the number to dial once the calling device answers.
    pending_dial: Option<String>,
    /// The ring-no-answer timer of the ACD offer ringing now: an earlier offer's timer must not cut it short.
    ring_no_answer_timer: Option<u64>,
    created_ms: u64,
    recording_url: String,
    /// The call's first id: transfers and conferences keep the held call's.
    root: String,
    /// Every station that had a connection in the call (or a call merged into it), and whether it
    /// was ever connected: the ground truth for call log records.
    legs: BTreeMap<String, bool>,
}

/// One station's part in a finished call: what a call log record must say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FinishedLeg {
    /// The call's first id.
    pub root_call_id: String,
    /// The station.
    pub device: String,
    /// Whether it talked in the call.
    pub answered: bool,
}

#[derive(Debug, Clone)]
struct Park {
    park_id: String,
    parked_by: String,
    /// The recall timer of this park: an earlier park's timer must not recall it early.
    recall_timer: u64,
}

/// A timer. A park recall names the orbit: when it fires, the orbit tells which call is parked there now.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ParkRecall { park_id: String },
    RingNoAnswer { call_id: String, device: String },
}

/// The phone system. Every mutation happens through a method here; each appends the events it causes.
#[derive(Debug)]
pub struct Pbx {
    layout: Layout,
    now_ms: u64,
    stations: BTreeMap<String, Station>,
    orbits: BTreeMap<String, Option<String>>,
    calls: BTreeMap<String, Call>,
    /// Call ids each device has a connection in.
    device_calls: BTreeMap<String, BTreeSet<String>>,
    /// Calls waiting in an ACD queue, oldest first.
    waiting: VecDeque<String>,
    /// Ready agents with no call, by how long they have been idle.
    idle_agents: BTreeSet<(u64, String)>,
    timers: BinaryHeap<Reverse<(u64, u64, Timer)>>,
    timer_seq: u64,
    next_call: u64,
    events: Vec<PbxEvent>,
    /// Legs of calls that have ended, until taken.
    finished_legs: Vec<FinishedLeg>,
    /// The largest body an answer may have: a device list longer than this comes in pages.
    max_answer_bytes: usize,
}

/// Devices in a page when the client names no page size (the frame limit may make it fewer).
pub const DEFAULT_DEVICE_PAGE: usize = 1_000;

/// Room a result's envelope takes around a device list: the `Response` case's tag and length, and
/// the next page token.
const LIST_ENVELOPE_BYTES: usize = 32;

/// The most parties a call may have: a conference or transfer that would join more is refused, so
/// one call's snapshot always fits in a frame of the smallest length a client may state
/// ([`proto::wire::MIN_MAX_FRAME_LENGTH`]).
pub const MAX_CALL_PARTIES: usize = 32;

/// Splits a device snapshot into pages whose `Response` bodies take at most `max_body_bytes` each
/// (docs/pbx-link.md §7): every page repeats the device and its agent, holds at least one call and
/// as many more as fit, and all but the last have `more` set. A snapshot that fits is one page.
pub fn snapshot_pages(snapshot: pbx::SnapshotDeviceResult, max_body_bytes: usize) -> Vec<pbx::SnapshotDeviceResult> {
    use prost::Message as _;
    let envelope = |page_len: usize| 1 + prost::length_delimiter_len(page_len) + page_len;
    if envelope(snapshot.encoded_len()) <= max_body_bytes {
        return vec![snapshot];
    }
    let pbx::SnapshotDeviceResult { device, agent, calls, .. } = snapshot;
    let empty = pbx::SnapshotDeviceResult { device, agent, calls: Vec::new(), more: true };
    let base = empty.encoded_len();
    let mut pages = Vec::new();
    let mut page = empty.clone();
    let mut page_len = base;
    for call in calls {
        let size = call.encoded_len();
        let field = 1 + prost::length_delimiter_len(size) + size;
        if !page.calls.is_empty() && envelope(page_len + field) > max_body_bytes {
            pages.push(std::mem::replace(&mut page, empty.clone()));
            page_len = base;
        }
        page_len += field;
        page.calls.push(call);
    }
    page.more = false;
    pages.push(page);
    pages
}

fn is_dialable_number(number: &str) -> bool {
    let digits = number.strip_prefix('+').unwrap_or(number);
    (3..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn connection(call_id: &str, device: &str) -> pbx::ConnectionId {
    pbx::ConnectionId { call_id: call_id.to_owned(), device_id: device.to_owned() }
}

fn required<'a>(connection: &'a Option<pbx::ConnectionId>, field: &str) -> Result<&'a pbx::ConnectionId, ServiceError> {
    match connection {
        Some(connection) => Ok(connection),
        None => refuse(ErrorCause::MalformedRequest, format!("{field} is required")),
    }
}

impl Pbx {
    /// A phone system with the given layout, its clock at `now_ms`, every agent logged off.
    pub fn new(layout: Layout, now_ms: u64) -> Self {
        let stations = (0..layout.stations)
            .map(|index| {
                let id = (layout.first_station + index).to_string();
                let station = Station {
                    name: format!("Agent line {id}"),
                    agent: pbx::AgentInfo { state: AgentState::LoggedOff as i32, ..Default::default() },
                    idle_since_ms: None,
                };
                (id, station)
            })
            .collect();
        let orbits =
            (0..layout.park_orbits).map(|index| ((layout.first_park_orbit + index).to_string(), None)).collect();
        Self {
            layout,
            now_ms,
            stations,
            orbits,
            calls: BTreeMap::new(),
            device_calls: BTreeMap::new(),
            waiting: VecDeque::new(),
            idle_agents: BTreeSet::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            next_call: 1,
            events: Vec::new(),
            finished_legs: Vec::new(),
            max_answer_bytes: proto::wire::DEFAULT_MAX_FRAME_LENGTH - proto::wire::HEADER_LEN,
        }
    }

    /// Keeps every answer within frames of `max_frame_length` bytes (header included), by paging
    /// the device list.
    pub fn set_max_frame_length(&mut self, max_frame_length: usize) {
        self.max_answer_bytes = max_frame_length.saturating_sub(proto::wire::HEADER_LEN);
    }

    /// The layout this PBX was built with.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The PBX's clock, milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Takes the events caused since the last call, in the order they happened.
    pub fn drain_events(&mut self) -> Vec<PbxEvent> {
        std::mem::take(&mut self.events)
    }

    /// When the next timer (park recall, ring-no-answer) is due, if any.
    pub fn next_timer_ms(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Moves the clock forward to `now_ms` (never back) and fires every timer due by then.
    pub fn advance_to(&mut self, now_ms: u64) {
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now_ms {
                break;
            }
            let Some(Reverse((due, seq, timer))) = self.timers.pop() else { break };
            self.now_ms = self.now_ms.max(due);
            self.fire(seq, timer);
        }
        self.now_ms = self.now_ms.max(now_ms);
    }

    // ===== Inspection =====

    /// Every device: stations, queues and park orbits.
    pub fn devices(&self) -> Vec<pbx::DeviceInfo> {
        let stations = self.stations.iter().map(|(id, station)| pbx::DeviceInfo {
            device_id: id.clone(),
            kind: DeviceKind::Station as i32,
            name: station.name.clone(),
        });
        let queues = self.layout.queues.iter().map(|id| pbx::DeviceInfo {
            device_id: id.clone(),
            kind: DeviceKind::AcdQueue as i32,
            name: format!("ACD queue {id}"),
        });
        let orbits = self.orbits.keys().map(|id| pbx::DeviceInfo {
            device_id: id.clone(),
            kind: DeviceKind::ParkOrbit as i32,
            name: format!("Park orbit {id}"),
        });
        stations.chain(queues).chain(orbits).collect()
    }

    /// One page of [`Pbx::devices`], as ListDevices answers: from `page_token` (empty: the first
    /// device), at most `page_size` devices (0: [`DEFAULT_DEVICE_PAGE`]) and never more than fit
    /// in one answer; `next_page_token` is empty on the last page. The token is the index of the
    /// page's first device: the simulator's devices never change while it runs.
    pub fn list_devices(&self, request: &pbx::ListDevicesRequest) -> Result<pbx::ListDevicesResult, ServiceError> {
        self.list_devices_within(request, self.max_answer_bytes)
    }

    /// [`Pbx::list_devices`] with pages of at most `max_answer_bytes` (the smaller of the PBX's and
    /// the client's frame limits, less the header).
    pub fn list_devices_within(
        &self,
        request: &pbx::ListDevicesRequest,
        max_answer_bytes: usize,
    ) -> Result<pbx::ListDevicesResult, ServiceError> {
        let devices = self.devices();
        let start = match request.page_token.as_str() {
            "" => 0,
            token => match token.parse::<usize>() {
                Ok(start) if start > 0 && start < devices.len() => start,
                _ => {
                    return refuse(
                        ErrorCause::MalformedRequest,
                        format!("page token {token:?} is not one this PBX gave"),
                    );
                }
            },
        };
        let page_size = match request.page_size {
            0 => DEFAULT_DEVICE_PAGE,
            size => size as usize,
        };
        let budget = max_answer_bytes.min(self.max_answer_bytes).saturating_sub(LIST_ENVELOPE_BYTES);
        let mut used = 0;
        let mut page = Vec::new();
        for device in devices.into_iter().skip(start).take(page_size) {
            let size = prost::Message::encoded_len(&device);
            let field = 1 + prost::length_delimiter_len(size) + size;
            // A page holds at least one device, so the list always moves on.
            if !page.is_empty() && used + field > budget {
                break;
            }
            used += field;
            page.push(device);
        }
        let end = start + page.len();
        let next_page_token = if end < self.devices_count() { end.to_string() } else { String::new() };
        Ok(pbx::ListDevicesResult { devices: page, next_page_token })
    }

    fn devices_count(&self) -> usize {
        self.stations.len() + self.layout.queues.len() + self.orbits.len()
    }

    /// A device's name, as the device list gives it.
    fn device_name(&self, device: &str, kind: DeviceKind) -> String {
        match kind {
            DeviceKind::Station => self.stations.get(device).map(|station| station.name.clone()).unwrap_or_default(),
            DeviceKind::AcdQueue => format!("ACD queue {device}"),
            DeviceKind::ParkOrbit => format!("Park orbit {device}"),
            DeviceKind::External | DeviceKind::Unspecified => String::new(),
        }
    }

    /// The kind of a device id, if this PBX knows it.
    pub fn device_kind(&self, device: &str) -> Option<DeviceKind> {
        if self.stations.contains_key(device) {
            Some(DeviceKind::Station)
        } else if self.layout.queues.iter().any(|queue| queue == device) {
            Some(DeviceKind::AcdQueue)
        } else if self.orbits.contains_key(device) {
            Some(DeviceKind::ParkOrbit)
        } else if is_dialable_number(device) {
            Some(DeviceKind::External)
        } else {
            None
        }
    }

    /// The agent on a station.
    pub fn agent(&self, device: &str) -> Option<&pbx::AgentInfo> {
        self.stations.get(device).map(|station| &station.agent)
    }

    /// Every call in progress.
    pub fn call_ids(&self) -> impl Iterator<Item = &str> {
        self.calls.keys().map(String::as_str)
    }

    /// Call ids a device has a connection in.
    /// Whether `device` has a connection in any call; unlike [`Pbx::calls_of`], copies nothing.
    pub fn has_calls(&self, device: &str) -> bool {
        self.device_calls.contains_key(device)
    }

    /// Ready agents with no call, as the ACD offers calls to them: what the traffic picks from, at
    /// the cost of the idle agents only, not of every station.
    pub fn idle_agents(&self) -> impl Iterator<Item = &str> {
        self.idle_agents.iter().map(|(_, device)| device.as_str())
    }

    pub fn calls_of(&self, device: &str) -> Vec<String> {
        self.device_calls.get(device).map(|calls| calls.iter().cloned().collect()).unwrap_or_default()
    }

    /// A call with all its parties.
    pub fn snapshot_call(&self, call_id: &str) -> Option<pbx::CallSnapshot> {
        let call = self.calls.get(call_id)?;
        Some(pbx::CallSnapshot {
            call_id: call.id.clone(),
            parties: call
                .parties
                .iter()
                .map(|(device, state)| pbx::Party { device_id: device.clone(), state: *state as i32 })
                .collect(),
            calling_device: call.calling.clone(),
            called_device: call.called.clone(),
            queue_device: call.queue.clone(),
            park_id: call.park.as_ref().map(|park| park.park_id.clone()).unwrap_or_default(),
            recording_url: call.recording_url.clone(),
            created_ms: call.created_ms,
            call_linkage_id: call.root.clone(),
        })
    }

    /// A device, its agent and its calls, as SnapshotDevice answers.
    pub fn snapshot_device(&self, device: &str) -> Result<pbx::SnapshotDeviceResult, ServiceError> {
        let Some(kind) = self.device_kind(device).filter(|kind| *kind != DeviceKind::External) else {
            return refuse(ErrorCause::InvalidDeviceId, format!("no device {device:?} on this PBX"));
        };
        let name = self.device_name(device, kind);
        Ok(pbx::SnapshotDeviceResult {
            device: Some(pbx::DeviceInfo { device_id: device.to_owned(), kind: kind as i32, name }),
            agent: self.agent(device).cloned(),
            calls: self.calls_of(device).iter().filter_map(|call| self.snapshot_call(call)).collect(),
            more: false,
        })
    }

    /// The state of `device`'s connection in `call_id`, if it has one.
    pub fn connection_state(&self, call_id: &str, device: &str) -> Option<State> {
        let call = self.calls.get(call_id)?;
        call.parties.iter().find(|(party, _)| party == device).map(|(_, state)| *state)
    }

    // ===== The service dispatcher =====

    /// Carries out one call-control, snapshot or agent service. Link services (register, heartbeat,
    /// monitors) belong to the link, not the phone system, and are refused here.
    pub fn execute(&mut self, service: request::Service) -> Result<response::Result, ServiceError> {
        use request::Service as S;
        use response::Result as R;
        let empty = pbx::Empty {};
        Ok(match service {
            S::Register(_) | S::Heartbeat(_) | S::MonitorStart(_) | S::MonitorStop(_) => {
                return refuse(
                    ErrorCause::ServiceNotSupported,
                    "link services are handled by the link, not the switch",
                );
            }
            S::SnapshotDevice(request) => R::SnapshotDevice(self.snapshot_device(&request.device_id)?),
            S::SnapshotCall(request) => match self.snapshot_call(&request.call_id) {
                Some(call) => R::SnapshotCall(pbx::SnapshotCallResult { call: Some(call) }),
                None => return refuse(ErrorCause::InvalidConnectionId, format!("no call {:?}", request.call_id)),
            },
            S::ListDevices(request) => R::ListDevices(self.list_devices(&request)?),
            S::MakeCall(request) => R::MakeCall(pbx::MakeCallResult {
                calling_connection: Some(self.make_call(&request.calling_device, &request.called_number)?),
            }),
            S::AnswerCall(request) => {
                self.answer_call(required(&request.connection, "connection")?)?;
                R::AnswerCall(empty)
            }
            S::ClearConnection(request) => {
                self.clear_connection(required(&request.connection, "connection")?)?;
                R::ClearConnection(empty)
            }
            S::ClearCall(request) => {
                self.clear_call(&request.call_id)?;
                R::ClearCall(empty)
            }
            S::HoldCall(request) => {
                self.hold_call(required(&request.connection, "connection")?)?;
                R::HoldCall(empty)
            }
            S::RetrieveCall(request) => {
                self.retrieve_call(required(&request.connection, "connection")?)?;
                R::RetrieveCall(empty)
            }
            S::ParkCall(request) => {
                R::ParkCall(self.park_call(required(&request.parking, "parking")?, &request.park_to)?)
            }
            S::RetrieveParkedCall(request) => R::RetrieveParkedCall(pbx::RetrieveParkedCallResult {
                connection: Some(self.retrieve_parked_call(&request.park_id, &request.device_id)?),
            }),
            S::SingleStepTransferCall(request) => {
                self.single_step_transfer(required(&request.active, "active")?, &request.transferred_to)?;
                R::SingleStepTransferCall(empty)
            }
            S::ConsultationCall(request) => R::ConsultationCall(pbx::ConsultationCallResult {
                initiated: Some(
                    self.consultation_call(required(&request.existing, "existing")?, &request.consulted_device)?,
                ),
            }),
            S::TransferCall(request) => R::TransferCall(pbx::TransferCallResult {
                call_id: self.transfer_call(required(&request.held, "held")?, required(&request.active, "active")?)?,
            }),
            S::ConferenceCall(request) => R::ConferenceCall(pbx::ConferenceCallResult {
                call_id: self
                    .conference_call(required(&request.held, "held")?, required(&request.active, "active")?)?,
            }),
            S::AlternateCall(request) => {
                self.alternate_call(required(&request.active, "active")?, required(&request.held, "held")?)?;
                R::AlternateCall(empty)
            }
            S::ReconnectCall(request) => {
                self.reconnect_call(required(&request.active, "active")?, required(&request.held, "held")?)?;
                R::ReconnectCall(empty)
            }
            S::SetAgentState(request) => {
                let requested = AgentState::try_from(request.requested).unwrap_or(AgentState::Unspecified);
                self.set_agent_state(
                    &request.device_id,
                    requested,
                    &request.agent_id,
                    &request.roles,
                    &request.reason,
                )?;
                R::SetAgentState(empty)
            }
        })
    }

    // ===== Calls from outside =====

    /// A call from an outside number (over a trunk) to a station or an ACD queue.
    pub fn inbound_call(&mut self, from: &str, to: &str) -> Result<String, ServiceError> {
        if !is_dialable_number(from) || self.device_kind(from) != Some(DeviceKind::External) {
            return refuse(ErrorCause::InvalidDeviceId, format!("{from:?} is not an outside number"));
        }
        match self.device_kind(to) {
            Some(DeviceKind::Station | DeviceKind::AcdQueue) => {}
            _ => return refuse(ErrorCause::InvalidCalledDevice, format!("{to:?} is not a station or queue here")),
        }
        let call_id = self.new_call(from, to, vec![(from.to_owned(), State::Connected)]);
        self.emit_for_call(
            &call_id,
            EventCause::NewCall,
            Event::Originated(pbx::OriginatedEvent {
                originating: Some(connection(&call_id, from)),
                calling_device: from.to_owned(),
                called_device: to.to_owned(),
            }),
            // The called device's monitors learn of the call, and so of its outside party, here.
            &[to],
        );
        self.dial(&call_id, to, EventCause::NewCall);
        self.distribute();
        Ok(call_id)
    }

    // ===== Call control =====

    /// Click-to-dial: rings (initiates) the calling station; when it answers, dials `called`.
    pub fn make_call(&mut self, calling: &str, called: &str) -> Result<pbx::ConnectionId, ServiceError> {
        self.station(calling)?;
        self.check_destination(calling, called)?;
        let call_id = self.new_call(calling, called, vec![(calling.to_owned(), State::Initiated)]);
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.pending_dial = Some(called.to_owned());
        }
        self.emit_for_call(
            &call_id,
            EventCause::NewCall,
            Event::ServiceInitiated(pbx::ServiceInitiatedEvent {
                initiated: Some(connection(&call_id, calling)),
                calling_device: calling.to_owned(),
                called_device: called.to_owned(),
            }),
            &[],
        );
        self.refresh_idle(calling);
        Ok(connection(&call_id, calling))
    }

    /// Answers a ringing connection (or, for click-to-dial, the initiated one). Any other call the
    /// device has up is held first, as a phone does on call waiting.
    pub fn answer_call(&mut self, target: &pbx::ConnectionId) -> Result<(), ServiceError> {
        let state = self.state_of(target)?;
        if !matches!(state, State::Alerting | State::Initiated) {
            return refuse(
                ErrorCause::InvalidObjectState,
                format!(
                    "cannot answer {}/{}: it is {}, not alerting",
                    target.call_id,
                    target.device_id,
                    state_name(state)
                ),
            );
        }
        self.hold_other_active(&target.device_id, &target.call_id);
        self.set_state(&target.call_id, &target.device_id, State::Connected);
        let call = &self.calls[&target.call_id];
        let (calling, called, pending) = (call.calling.clone(), call.called.clone(), call.pending_dial.clone());
        if let (State::Initiated, Some(number)) = (state, pending) {
            if let Some(call) = self.calls.get_mut(&target.call_id) {
                call.pending_dial = None;
            }
            self.emit_for_call(
                &target.call_id,
                EventCause::NewCall,
                Event::Originated(pbx::OriginatedEvent {
                    originating: Some(target.clone()),
                    calling_device: calling,
                    called_device: number.clone(),
                }),
                &[],
            );
            self.dial(&target.call_id, &number, EventCause::NewCall);
        } else {
            self.emit_for_call(
                &target.call_id,
                EventCause::NewCall,
                Event::Established(pbx::EstablishedEvent {
                    answering: Some(target.clone()),
                    calling_device: calling,
                    called_device: called,
                    recording_url: self
                        .calls
                        .get(&target.call_id)
                        .map(|call| call.recording_url.clone())
                        .unwrap_or_default(),
                }),
                &[],
            );
        }
        self.distribute();
        Ok(())
    }

    /// Drops one party. A call left with fewer than two parties ends, except an ACD call whose
    /// ringing agent rejected it, which goes back to its queue.
    pub fn clear_connection(&mut self, target: &pbx::ConnectionId) -> Result<(), ServiceError> {
        let state = self.state_of(target)?;
        self.drop_party(&target.call_id, &target.device_id, state, EventCause::NormalClearing);
        self.distribute();
        Ok(())
    }

    /// Ends a call for every party.
    pub fn clear_call(&mut self, call_id: &str) -> Result<(), ServiceError> {
        if !self.calls.contains_key(call_id) {
            return refuse(ErrorCause::InvalidConnectionId, format!("no call {call_id:?}"));
        }
        self.end_call(call_id, EventCause::NormalClearing, &[]);
        self.distribute();
        Ok(())
    }

    /// Puts a connected call on hold.
    pub fn hold_call(&mut self, target: &pbx::ConnectionId) -> Result<(), ServiceError> {
        self.require_station_state(target, State::Connected, "hold")?;
        self.set_state(&target.call_id, &target.device_id, State::Held);
        self.emit_for_call(
            &target.call_id,
            EventCause::KeyOperation,
            Event::Held(pbx::HeldEvent { held: Some(target.clone()) }),
            &[],
        );
        Ok(())
    }

    /// Takes a held call back; any other call the device has up is held first.
    pub fn retrieve_call(&mut self, target: &pbx::ConnectionId) -> Result<(), ServiceError> {
        self.require_station_state(target, State::Held, "retrieve")?;
        self.hold_other_active(&target.device_id, &target.call_id);
        self.set_state(&target.call_id, &target.device_id, State::Connected);
        self.emit_for_call(
            &target.call_id,
            EventCause::KeyOperation,
            Event::Retrieved(pbx::RetrievedEvent { retrieved: Some(target.clone()) }),
            &[],
        );
        Ok(())
    }

    /// Parks the other party of a two-party call in an orbit; the parking station leaves the call.
    pub fn park_call(
        &mut self,
        parking: &pbx::ConnectionId,
        park_to: &str,
    ) -> Result<pbx::ParkCallResult, ServiceError> {
        let state = self.state_of(parking)?;
        self.station(&parking.device_id)?;
        if !matches!(state, State::Connected | State::Held) {
            return refuse(
                ErrorCause::InvalidObjectState,
                format!("cannot park from {}/{}: it is {}", parking.call_id, parking.device_id, state_name(state)),
            );
        }
        let call = &self.calls[&parking.call_id];
        let others: Vec<&(String, State)> =
            call.parties.iter().filter(|(device, _)| *device != parking.device_id).collect();
        let [(parked_device, State::Connected)] = others.as_slice() else {
            return refuse(
                ErrorCause::InvalidObjectState,
                format!("call {} must have exactly one other, connected party to park it", parking.call_id),
            );
        };
        let parked_device = parked_device.clone();
        let orbit = if park_to.is_empty() {
            match self.orbits.iter().find(|(_, occupant)| occupant.is_none()) {
                Some((orbit, _)) => orbit.clone(),
                None => return refuse(ErrorCause::ResourceBusy, "every park orbit is occupied"),
            }
        } else {
            match self.orbits.get(park_to) {
                Some(None) => park_to.to_owned(),
                Some(Some(_)) => return refuse(ErrorCause::ResourceBusy, format!("park orbit {park_to} is occupied")),
                None => return refuse(ErrorCause::InvalidDeviceId, format!("{park_to:?} is not a park orbit")),
            }
        };
        let call_id = parking.call_id.clone();
        self.remove_party(&call_id, &parking.device_id);
        self.emit_for_call(
            &call_id,
            EventCause::Park,
            Event::ConnectionCleared(pbx::ConnectionClearedEvent { dropped: Some(parking.clone()) }),
            &[&parking.device_id],
        );
        self.add_party(&call_id, &orbit, State::Queued);
        self.orbits.insert(orbit.clone(), Some(call_id.clone()));
        let recall_timer = self.schedule(self.layout.park_timeout_ms, Timer::ParkRecall { park_id: orbit.clone() });
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.park = Some(Park { park_id: orbit.clone(), parked_by: parking.device_id.clone(), recall_timer });
        }
        let parked = connection(&call_id, &parked_device);
        self.emit_for_call(
            &call_id,
            EventCause::Park,
            Event::Parked(pbx::ParkedEvent {
                parked: Some(parked.clone()),
                parking_device: parking.device_id.clone(),
                park_id: orbit.clone(),
            }),
            &[&parking.device_id],
        );
        self.distribute();
        Ok(pbx::ParkCallResult { park_id: orbit, parked: Some(parked) })
    }

    /// Picks a parked call up at a station, connected at once.
    pub fn retrieve_parked_call(&mut self, park_id: &str, device: &str) -> Result<pbx::ConnectionId, ServiceError> {
        self.station(device)?;
        let Some(Some(call_id)) = self.orbits.get(park_id).cloned() else {
            return refuse(ErrorCause::InvalidParkId, format!("no call is parked at {park_id:?}"));
        };
        if self.connection_state(&call_id, device).is_some() {
            return refuse(ErrorCause::InvalidObjectState, format!("{device} is the party parked at {park_id}"));
        }
        self.unpark(&call_id, park_id);
        self.hold_other_active(device, &call_id);
        self.add_party(&call_id, device, State::Connected);
        let call = &self.calls[&call_id];
        let (calling, called) = (call.calling.clone(), call.called.clone());
        let answering = connection(&call_id, device);
        self.emit_for_call(
            &call_id,
            EventCause::Park,
            Event::Established(pbx::EstablishedEvent {
                answering: Some(answering.clone()),
                calling_device: calling,
                called_device: called,
                recording_url: self.calls.get(&call_id).map(|call| call.recording_url.clone()).unwrap_or_default(),
            }),
            &[park_id],
        );
        Ok(answering)
    }

    /// Blind transfer: the station leaves and the call rings `to`. The call gets a new id.
    pub fn single_step_transfer(&mut self, active: &pbx::ConnectionId, to: &str) -> Result<String, ServiceError> {
        self.require_station_state(active, State::Connected, "transfer")?;
        if self.calls[&active.call_id].park.is_some() {
            // The parked party would leave the orbit alone in the call, and the recall could ring the
            // parker twice: a parked call is picked up, not transferred.
            return refuse(ErrorCause::InvalidObjectState, format!("call {} is parked", active.call_id));
        }
        self.check_destination(&active.device_id, to)?;
        if self.connection_state(&active.call_id, to).is_some() {
            return refuse(ErrorCause::InvalidCalledDevice, format!("{to} is already in call {}", active.call_id));
        }
        let new_id = self.rekey_call(&active.call_id);
        self.remove_party(&new_id, &active.device_id);
        let connections = self.pairs(&active.call_id, &new_id);
        self.emit_for_call(
            &new_id,
            EventCause::SingleStepTransfer,
            Event::Transferred(pbx::TransferredEvent {
                primary_old_call: active.call_id.clone(),
                secondary_old_call: String::new(),
                transferring_device: active.device_id.clone(),
                transferred_to_device: to.to_owned(),
                new_call_id: new_id.clone(),
                connections,
            }),
            &[&active.device_id],
        );
        self.dial(&new_id, to, EventCause::SingleStepTransfer);
        self.refresh_idle(&active.device_id);
        self.distribute();
        Ok(new_id)
    }

    /// Holds the existing call and places a consultation call from the same station.
    pub fn consultation_call(
        &mut self,
        existing: &pbx::ConnectionId,
        consulted: &str,
    ) -> Result<pbx::ConnectionId, ServiceError> {
        self.require_station_state(existing, State::Connected, "consult from")?;
        self.check_destination(&existing.device_id, consulted)?;
        self.hold_call(existing)?;
        let device = existing.device_id.clone();
        let call_id = self.new_call(&device, consulted, vec![(device.clone(), State::Connected)]);
        let initiated = connection(&call_id, &device);
        self.emit_for_call(
            &call_id,
            EventCause::Consultation,
            Event::ServiceInitiated(pbx::ServiceInitiatedEvent {
                initiated: Some(initiated.clone()),
                calling_device: device.clone(),
                called_device: consulted.to_owned(),
            }),
            &[],
        );
        self.emit_for_call(
            &call_id,
            EventCause::Consultation,
            Event::Originated(pbx::OriginatedEvent {
                originating: Some(initiated.clone()),
                calling_device: device,
                called_device: consulted.to_owned(),
            }),
            &[],
        );
        self.dial(&call_id, consulted, EventCause::Consultation);
        self.distribute();
        Ok(initiated)
    }

    /// Joins the other parties of the held and the active call into one new call; the station leaves.
    pub fn transfer_call(
        &mut self,
        held: &pbx::ConnectionId,
        active: &pbx::ConnectionId,
    ) -> Result<String, ServiceError> {
        let device = self.check_pair(held, active, "transfer")?;
        self.check_merge(held, active, "transfer")?;
        let (new_id, connections) = self.merge_calls(&held.call_id, &active.call_id, Some(&device));
        let transferred_to = self.calls[&new_id].called.clone();
        self.emit_for_call(
            &new_id,
            EventCause::Transfer,
            Event::Transferred(pbx::TransferredEvent {
                primary_old_call: held.call_id.clone(),
                secondary_old_call: active.call_id.clone(),
                transferring_device: device.clone(),
                transferred_to_device: transferred_to,
                new_call_id: new_id.clone(),
                connections,
            }),
            &[&device],
        );
        self.refresh_idle(&device);
        self.end_if_lonely(&new_id, EventCause::Transfer, &[&device]);
        self.distribute();
        Ok(new_id)
    }

    /// Joins the held and the active call, the station included, into one new conference call.
    pub fn conference_call(
        &mut self,
        held: &pbx::ConnectionId,
        active: &pbx::ConnectionId,
    ) -> Result<String, ServiceError> {
        let device = self.check_pair(held, active, "conference")?;
        self.check_merge(held, active, "conference")?;
        let added = self.calls[&active.call_id].called.clone();
        let (new_id, connections) = self.merge_calls(&held.call_id, &active.call_id, None);
        self.emit_for_call(
            &new_id,
            EventCause::Conference,
            Event::Conferenced(pbx::ConferencedEvent {
                primary_old_call: held.call_id.clone(),
                secondary_old_call: active.call_id.clone(),
                conferencing_device: device,
                added_party: added,
                new_call_id: new_id.clone(),
                connections,
            }),
            &[],
        );
        Ok(new_id)
    }

    /// Holds the active call and retrieves the held one, on one station.
    pub fn alternate_call(&mut self, active: &pbx::ConnectionId, held: &pbx::ConnectionId) -> Result<(), ServiceError> {
        self.check_pair(held, active, "alternate")?;
        self.set_state(&active.call_id, &active.device_id, State::Held);
        self.emit_for_call(
            &active.call_id,
            EventCause::Alternate,
            Event::Held(pbx::HeldEvent { held: Some(active.clone()) }),
            &[],
        );
        self.set_state(&held.call_id, &held.device_id, State::Connected);
        self.emit_for_call(
            &held.call_id,
            EventCause::Alternate,
            Event::Retrieved(pbx::RetrievedEvent { retrieved: Some(held.clone()) }),
            &[],
        );
        Ok(())
    }

    /// Drops the station from the active call and retrieves the held one.
    pub fn reconnect_call(&mut self, active: &pbx::ConnectionId, held: &pbx::ConnectionId) -> Result<(), ServiceError> {
        self.require_station_state(held, State::Held, "reconnect to")?;
        let active_state = self.state_of(active)?;
        if active.device_id != held.device_id || active.call_id == held.call_id {
            return refuse(ErrorCause::InvalidConnectionId, "active and held must be two calls of one station");
        }
        self.drop_party(&active.call_id, &active.device_id, active_state, EventCause::Reconnect);
        // The active connection may have been a ringing or held one while a third call was connected.
        self.hold_other_active(&held.device_id, &held.call_id);
        self.set_state(&held.call_id, &held.device_id, State::Connected);
        self.emit_for_call(
            &held.call_id,
            EventCause::Reconnect,
            Event::Retrieved(pbx::RetrievedEvent { retrieved: Some(held.clone()) }),
            &[],
        );
        self.distribute();
        Ok(())
    }

    // ===== Agents =====

    /// Logs an agent on or off a station, or changes its state. Logging on needs an agent id; an
    /// agent can be logged on at one station only.
    pub fn set_agent_state(
        &mut self,
        device: &str,
        requested: AgentState,
        agent_id: &str,
        roles: &[String],
        reason: &str,
    ) -> Result<(), ServiceError> {
        let current = self.station(device)?.agent.clone();
        let logged_off = current.state == AgentState::LoggedOff as i32;
        if requested == AgentState::Unspecified {
            return refuse(ErrorCause::InvalidAgentState, "requested agent state is unspecified");
        }
        if logged_off && requested != AgentState::LoggedOff {
            if agent_id.is_empty() {
                return refuse(
                    ErrorCause::InvalidAgentState,
                    format!("no agent is logged on at {device}; give an agent id"),
                );
            }
            if let Some((other, _)) = self.stations.iter().find(|(_, station)| station.agent.agent_id == agent_id) {
                return refuse(ErrorCause::ResourceBusy, format!("agent {agent_id} is logged on at {other}"));
            }
        } else if !logged_off && !agent_id.is_empty() && agent_id != current.agent_id {
            return refuse(
                ErrorCause::InvalidAgentState,
                format!("agent {} is logged on at {device}, not {agent_id}", current.agent_id),
            );
        }
        let agent = if requested == AgentState::LoggedOff {
            pbx::AgentInfo { state: AgentState::LoggedOff as i32, ..Default::default() }
        } else {
            pbx::AgentInfo {
                state: requested as i32,
                agent_id: if logged_off { agent_id.to_owned() } else { current.agent_id.clone() },
                roles: if logged_off || !roles.is_empty() { roles.to_vec() } else { current.roles.clone() },
                reason: if requested == AgentState::NotReady { reason.to_owned() } else { String::new() },
            }
        };
        self.update_agent(device, agent);
        self.distribute();
        Ok(())
    }

    // ===== Internals: parties and the device index =====

    fn station(&self, device: &str) -> Result<&Station, ServiceError> {
        match self.stations.get(device) {
            Some(station) => Ok(station),
            None => refuse(ErrorCause::InvalidDeviceId, format!("{device:?} is not a station on this PBX")),
        }
    }

    fn state_of(&self, target: &pbx::ConnectionId) -> Result<State, ServiceError> {
        match self.connection_state(&target.call_id, &target.device_id) {
            Some(state) => Ok(state),
            None => refuse(
                ErrorCause::InvalidConnectionId,
                format!("no connection {}/{}", target.call_id, target.device_id),
            ),
        }
    }

    fn require_station_state(&self, target: &pbx::ConnectionId, wanted: State, verb: &str) -> Result<(), ServiceError> {
        self.station(&target.device_id)?;
        let state = self.state_of(target)?;
        if state != wanted {
            return refuse(
                ErrorCause::InvalidObjectState,
                format!(
                    "cannot {verb} {}/{}: it is {}, not {}",
                    target.call_id,
                    target.device_id,
                    state_name(state),
                    state_name(wanted)
                ),
            );
        }
        Ok(())
    }

    /// Checks a held/active pair of connections on one station; returns the station.
    fn check_pair(
        &self,
        held: &pbx::ConnectionId,
        active: &pbx::ConnectionId,
        verb: &str,
    ) -> Result<String, ServiceError> {
        if held.device_id != active.device_id || held.call_id == active.call_id {
            return refuse(
                ErrorCause::InvalidConnectionId,
                format!("to {verb}, held and active must be two calls of one station"),
            );
        }
        self.require_station_state(held, State::Held, verb)?;
        self.require_station_state(active, State::Connected, verb)?;
        Ok(held.device_id.clone())
    }

    /// Checks that a held and an active call can become one: the station must be the only party they
    /// share (one connection per device per call), neither may be parked, and only one of them may wait
    /// in a queue.
    fn check_merge(
        &self,
        held: &pbx::ConnectionId,
        active: &pbx::ConnectionId,
        verb: &str,
    ) -> Result<(), ServiceError> {
        let (held_call, active_call) = (&self.calls[&held.call_id], &self.calls[&active.call_id]);
        let shared = held_call.parties.iter().find(|(device, _)| {
            *device != held.device_id && active_call.parties.iter().any(|(other, _)| other == device)
        });
        if let Some((device, _)) = shared {
            return refuse(
                ErrorCause::InvalidObjectState,
                format!("cannot {verb} {} and {}: {device} is in both", held.call_id, active.call_id),
            );
        }
        if let Some(parked) = [held_call, active_call].into_iter().find(|call| call.park.is_some()) {
            // A parked call belongs to its orbit (and its recall timer): it is picked up, not merged.
            return refuse(ErrorCause::InvalidObjectState, format!("cannot {verb} {}: it is parked", parked.id));
        }
        if self.waiting.contains(&held.call_id) && self.waiting.contains(&active.call_id) {
            return refuse(
                ErrorCause::InvalidObjectState,
                format!("cannot {verb} {} and {}: both wait in a queue", held.call_id, active.call_id),
            );
        }
        // The station is in both calls and stays at most once.
        let joined = held_call.parties.len() + active_call.parties.len() - 1;
        if joined > MAX_CALL_PARTIES {
            return refuse(
                ErrorCause::ResourceBusy,
                format!(
                    "cannot {verb} {} and {}: {joined} parties, and a call holds at most {MAX_CALL_PARTIES}",
                    held.call_id, active.call_id
                ),
            );
        }
        Ok(())
    }

    fn check_destination(&self, from: &str, to: &str) -> Result<(), ServiceError> {
        if to == from {
            return refuse(ErrorCause::InvalidCalledDevice, format!("{from} cannot call itself"));
        }
        match self.device_kind(to) {
            Some(DeviceKind::Station) => {
                if self.stations[to].agent.state == AgentState::DoNotDisturb as i32 {
                    return refuse(ErrorCause::InvalidCalledDevice, format!("{to} is in do-not-disturb"));
                }
                Ok(())
            }
            Some(DeviceKind::AcdQueue | DeviceKind::External) => Ok(()),
            _ => refuse(ErrorCause::InvalidCalledDevice, format!("{to:?} is not a number this PBX can dial")),
        }
    }

    fn new_call(&mut self, calling: &str, called: &str, parties: Vec<(String, State)>) -> String {
        let id = format!("C{}", self.next_call);
        self.next_call += 1;
        let recording_url = if self.layout.record_calls {
            format!("https://recordings.pbx-sim.invalid/{id}.wav")
        } else {
            String::new()
        };
        let call = Call {
            id: id.clone(),
            parties: Vec::new(),
            calling: calling.to_owned(),
            called: called.to_owned(),
            queue: String::new(),
            park: None,
            pending_dial: None,
            ring_no_answer_timer: None,
            created_ms: self.now_ms,
            recording_url,
            root: id.clone(),
            legs: BTreeMap::new(),
        };
        self.calls.insert(id.clone(), call);
        for (device, state) in parties {
            self.add_party(&id, &device, state);
        }
        id
    }

    fn add_party(&mut self, call_id: &str, device: &str, state: State) {
        let station = self.stations.contains_key(device);
        if let Some(call) = self.calls.get_mut(call_id) {
            call.parties.push((device.to_owned(), state));
            if station {
                *call.legs.entry(device.to_owned()).or_default() |= state == State::Connected;
            }
            self.device_calls.entry(device.to_owned()).or_default().insert(call_id.to_owned());
            self.refresh_idle(device);
        }
    }

    fn remove_party(&mut self, call_id: &str, device: &str) {
        if let Some(call) = self.calls.get_mut(call_id) {
            call.parties.retain(|(party, _)| party != device);
        }
        if let Some(calls) = self.device_calls.get_mut(device) {
            calls.remove(call_id);
            if calls.is_empty() {
                self.device_calls.remove(device);
            }
        }
        self.refresh_idle(device);
    }

    fn set_state(&mut self, call_id: &str, device: &str, state: State) {
        if let Some(call) = self.calls.get_mut(call_id)
            && let Some(party) = call.parties.iter_mut().find(|(party, _)| party == device)
        {
            party.1 = state;
            if let Some(answered) = call.legs.get_mut(device) {
                *answered |= state == State::Connected;
            }
        }
    }

    /// Takes the legs of the calls that have ended since the last call: the records a gateway
    /// must have written, one per station per call.
    pub fn take_finished_legs(&mut self) -> Vec<FinishedLeg> {
        std::mem::take(&mut self.finished_legs)
    }

    /// Holds whatever other call `device` has connected, as phones do before taking another.
    fn hold_other_active(&mut self, device: &str, except_call: &str) {
        // Only a station's calls meet at one phone: an outside number on two trunk calls (or a queue) is
        // two lines, and the PBX cannot put a party beyond the trunk on hold.
        if self.device_kind(device) != Some(DeviceKind::Station) {
            return;
        }
        let active: Vec<String> = self
            .calls_of(device)
            .into_iter()
            .filter(|call| call != except_call && self.connection_state(call, device) == Some(State::Connected))
            .collect();
        for call in active {
            let held = connection(&call, device);
            self.set_state(&call, device, State::Held);
            self.emit_for_call(&call, EventCause::KeyOperation, Event::Held(pbx::HeldEvent { held: Some(held) }), &[]);
        }
    }

    /// Gives a call a new id (as transfer and conference do), moving every reference to it.
    fn rekey_call(&mut self, old_id: &str) -> String {
        let new_id = format!("C{}", self.next_call);
        self.next_call += 1;
        let Some(mut call) = self.calls.remove(old_id) else { return new_id };
        call.id = new_id.clone();
        for (device, _) in &call.parties {
            if let Some(calls) = self.device_calls.get_mut(device) {
                calls.remove(old_id);
                calls.insert(new_id.clone());
            }
        }
        if let Some(park) = &call.park {
            self.orbits.insert(park.park_id.clone(), Some(new_id.clone()));
        }
        for waiting in &mut self.waiting {
            if waiting == old_id {
                *waiting = new_id.clone();
            }
        }
        self.calls.insert(new_id.clone(), call);
        new_id
    }

    /// Merges the held call's and the active call's parties into a new call; `leaving` (the
    /// transferring station) drops out of both, otherwise the station stays once, connected.
    /// Returns the new call's id and the old-to-new pair of every connection that moved.
    fn merge_calls(
        &mut self,
        held_call: &str,
        active_call: &str,
        leaving: Option<&str>,
    ) -> (String, Vec<pbx::ConnectionPair>) {
        let held = self.calls.get(held_call).cloned();
        let active = self.calls.get(active_call).cloned();
        let (Some(held), Some(active)) = (held, active) else { return (String::new(), Vec::new()) };
        let station = held.parties.iter().find(|(device, _)| active.parties.iter().any(|(other, _)| other == device));
        let station = station.map(|(device, _)| device.clone()).unwrap_or_default();
        let new_id = self.rekey_call(held_call);
        for (device, _) in &active.parties {
            self.remove_party(active_call, device);
        }
        self.calls.remove(active_call);
        if let Some(call) = self.calls.get_mut(&new_id) {
            for (device, answered) in &active.legs {
                *call.legs.entry(device.clone()).or_default() |= *answered;
            }
        }
        // A queued consultation call keeps its place in the queue as the new call.
        if self.waiting.iter().any(|call| call == active_call) {
            for waiting in &mut self.waiting {
                if waiting == active_call {
                    *waiting = new_id.clone();
                }
            }
            if let Some(call) = self.calls.get_mut(&new_id) {
                call.queue = active.queue.clone();
            }
        }
        match leaving {
            Some(leaving) => self.remove_party(&new_id, leaving),
            None => self.set_state(&new_id, &station, State::Connected),
        }
        for (device, state) in &active.parties {
            if *device != station {
                self.add_party(&new_id, device, *state);
            }
        }
        if let Some(call) = self.calls.get_mut(&new_id) {
            call.called = active.called.clone();
        }
        let moved = |old: &Call| -> Vec<pbx::ConnectionPair> {
            old.parties
                .iter()
                .filter(|(device, _)| Some(device.as_str()) != leaving)
                .map(|(device, _)| pbx::ConnectionPair {
                    old_connection: Some(connection(&old.id, device)),
                    new_connection: Some(connection(&new_id, device)),
                })
                .collect()
        };
        let mut pairs = moved(&held);
        pairs.extend(moved(&active));
        (new_id, pairs)
    }

    /// Old-to-new connection pairs for every party of `new_id`, all of which came from `old_id`.
    fn pairs(&self, old_id: &str, new_id: &str) -> Vec<pbx::ConnectionPair> {
        let Some(call) = self.calls.get(new_id) else { return Vec::new() };
        call.parties
            .iter()
            .map(|(device, _)| pbx::ConnectionPair {
                old_connection: Some(connection(old_id, device)),
                new_connection: Some(connection(new_id, device)),
            })
            .collect()
    }

    // ===== Internals: routing, queueing, parking, ending =====

    /// Sends a call on to `to`: a station rings, a queue queues it, an outside number rings beyond
    /// the trunk. A station in do-not-disturb fails the call.
    fn dial(&mut self, call_id: &str, to: &str, cause: EventCause) {
        let (calling, called) = match self.calls.get(call_id) {
            Some(call) => (call.calling.clone(), call.called.clone()),
            None => return,
        };
        match self.device_kind(to) {
            Some(DeviceKind::AcdQueue) => {
                self.add_party(call_id, to, State::Queued);
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.queue = to.to_owned();
                }
                self.waiting.push_back(call_id.to_owned());
                let calls_in_queue = self.waiting.len() as u32;
                self.emit_for_call(
                    call_id,
                    cause,
                    Event::Queued(pbx::QueuedEvent {
                        queued: Some(connection(call_id, to)),
                        queue_device: to.to_owned(),
                        calling_device: calling,
                        called_device: called,
                        calls_in_queue,
                    }),
                    &[],
                );
            }
            Some(DeviceKind::Station) if self.stations[to].agent.state == AgentState::DoNotDisturb as i32 => {
                self.emit_for_call(
                    call_id,
                    EventCause::Busy,
                    Event::Failed(pbx::FailedEvent {
                        failed: Some(connection(call_id, to)),
                        called_device: to.to_owned(),
                    }),
                    &[to],
                );
                self.end_call(call_id, EventCause::Busy, &[]);
            }
            Some(DeviceKind::Station | DeviceKind::External) => {
                self.add_party(call_id, to, State::Alerting);
                self.emit_for_call(
                    call_id,
                    cause,
                    Event::Delivered(pbx::DeliveredEvent {
                        alerting: Some(connection(call_id, to)),
                        calling_device: calling,
                        called_device: called,
                        last_redirection_device: String::new(),
                    }),
                    &[],
                );
            }
            _ => {
                self.emit_for_call(
                    call_id,
                    EventCause::DestinationNotObtainable,
                    Event::Failed(pbx::FailedEvent {
                        failed: Some(connection(call_id, to)),
                        called_device: to.to_owned(),
                    }),
                    &[],
                );
                self.end_call(call_id, EventCause::DestinationNotObtainable, &[]);
            }
        }
    }

    /// Offers waiting ACD calls to the longest-idle ready agents.
    fn distribute(&mut self) {
        while !self.waiting.is_empty() {
            let Some((_, agent)) = self.idle_agents.first().cloned() else { return };
            let Some(call_id) = self.waiting.pop_front() else { return };
            let Some(call) = self.calls.get(&call_id) else { continue };
            let queue = call.queue.clone();
            let (calling, called) = (call.calling.clone(), call.called.clone());
            self.remove_party(&call_id, &queue);
            self.emit_for_call(
                &call_id,
                EventCause::AcdDistribution,
                Event::Diverted(pbx::DivertedEvent {
                    connection: Some(connection(&call_id, &queue)),
                    diverting_device: queue.clone(),
                    new_destination: agent.clone(),
                }),
                &[&queue],
            );
            self.add_party(&call_id, &agent, State::Alerting);
            self.emit_for_call(
                &call_id,
                EventCause::AcdDistribution,
                Event::Delivered(pbx::DeliveredEvent {
                    alerting: Some(connection(&call_id, &agent)),
                    calling_device: calling,
                    called_device: called,
                    last_redirection_device: queue,
                }),
                &[],
            );
            let timer = self.schedule(
                self.layout.ring_no_answer_ms,
                Timer::RingNoAnswer { call_id: call_id.clone(), device: agent },
            );
            if let Some(call) = self.calls.get_mut(&call_id) {
                call.ring_no_answer_timer = Some(timer);
            }
        }
    }

    /// Puts an ACD call whose agent did not take it back at the head of its queue.
    fn requeue(&mut self, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else { return };
        let queue = call.queue.clone();
        let (calling, called) = (call.calling.clone(), call.called.clone());
        self.add_party(call_id, &queue, State::Queued);
        self.waiting.push_front(call_id.to_owned());
        let calls_in_queue = self.waiting.len() as u32;
        self.emit_for_call(
            call_id,
            EventCause::Redirected,
            Event::Queued(pbx::QueuedEvent {
                queued: Some(connection(call_id, &queue)),
                queue_device: queue,
                calling_device: calling,
                called_device: called,
                calls_in_queue,
            }),
            &[],
        );
    }

    fn drop_party(&mut self, call_id: &str, device: &str, state: State, cause: EventCause) {
        if self.calls.get(call_id).is_some_and(|call| call.parties.len() == 1) {
            // The only party (a click-to-dial not answered yet) hangs up: ending the call with it still in
            // it clears its connection and tells it the call is over, and leaves no call without parties.
            self.end_call(call_id, cause, &[]);
            return;
        }
        self.remove_party(call_id, device);
        // A queue dropping out lets the call go: it no longer waits. (An orbit dropping out ends the
        // parked call, which is only ever the orbit and the parked party, and ending it frees the orbit.)
        if self.device_kind(device) == Some(DeviceKind::AcdQueue) {
            self.waiting.retain(|waiting| waiting != call_id);
        }
        self.emit_for_call(
            call_id,
            cause,
            Event::ConnectionCleared(pbx::ConnectionClearedEvent { dropped: Some(connection(call_id, device)) }),
            &[device],
        );
        let Some(call) = self.calls.get(call_id) else { return };
        let only_outside_left =
            call.parties.iter().all(|(party, _)| self.device_kind(party) == Some(DeviceKind::External));
        if state == State::Alerting && !call.queue.is_empty() && !call.parties.is_empty() && only_outside_left {
            self.requeue(call_id);
        } else {
            self.end_if_lonely(call_id, cause, &[device]);
        }
    }

    /// Ends a call left with fewer than two parties. `left` just dropped out: its monitors hear the
    /// end too ("has, or has just lost, a connection", docs/pbx-link.md section 6).
    fn end_if_lonely(&mut self, call_id: &str, cause: EventCause, left: &[&str]) {
        let lonely = self.calls.get(call_id).is_some_and(|call| call.parties.len() < 2 && call.pending_dial.is_none());
        if lonely {
            self.end_call(call_id, cause, left);
        }
    }

    fn end_call(&mut self, call_id: &str, cause: EventCause, left: &[&str]) {
        let Some(call) = self.calls.get(call_id) else { return };
        let parties: Vec<String> = call.parties.iter().map(|(device, _)| device.clone()).collect();
        if let Some(park) = call.park.clone() {
            self.orbits.insert(park.park_id, None);
        }
        self.waiting.retain(|waiting| waiting != call_id);
        for device in &parties {
            self.remove_party(call_id, device);
            let mut also = left.to_vec();
            also.push(device);
            self.emit_for_call(
                call_id,
                cause,
                Event::ConnectionCleared(pbx::ConnectionClearedEvent { dropped: Some(connection(call_id, device)) }),
                &also,
            );
        }
        let mut devices: Vec<&str> = parties.iter().map(String::as_str).collect();
        devices.extend_from_slice(left);
        self.emit_for_call(
            call_id,
            cause,
            Event::CallCleared(pbx::CallClearedEvent { call_id: call_id.to_owned() }),
            &devices,
        );
        if let Some(call) = self.calls.remove(call_id) {
            let root = call.root;
            self.finished_legs.extend(call.legs.into_iter().map(|(device, answered)| FinishedLeg {
                root_call_id: root.clone(),
                device,
                answered,
            }));
        }
    }

    fn unpark(&mut self, call_id: &str, park_id: &str) {
        self.orbits.insert(park_id.to_owned(), None);
        self.remove_party(call_id, park_id);
        if let Some(call) = self.calls.get_mut(call_id) {
            call.park = None;
        }
    }

    /// Sets a timer; returns its sequence number, which tells it apart from older timers of the same kind.
    fn schedule(&mut self, after_ms: u64, timer: Timer) -> u64 {
        self.timer_seq += 1;
        self.timers.push(Reverse((self.now_ms + after_ms, self.timer_seq, timer)));
        self.timer_seq
    }

    fn fire(&mut self, seq: u64, timer: Timer) {
        match timer {
            Timer::ParkRecall { park_id } => {
                // The timer outlives the park when the call was picked up or ended, and the orbit may hold
                // another park since: check that the park it was set for is still there.
                let Some(Some(call_id)) = self.orbits.get(&park_id).cloned() else { return };
                let Some(parked_by) = self
                    .calls
                    .get(&call_id)
                    .and_then(|call| call.park.as_ref())
                    .filter(|park| park.park_id == park_id && park.recall_timer == seq)
                    .map(|park| park.parked_by.clone())
                else {
                    return;
                };
                self.unpark(&call_id, &park_id);
                self.emit_for_call(
                    &call_id,
                    EventCause::Recall,
                    Event::ParkRecall(pbx::ParkRecallEvent {
                        call_id: call_id.clone(),
                        park_id: park_id.clone(),
                        recall_device: parked_by.clone(),
                    }),
                    &[&park_id],
                );
                let (calling, called) = {
                    let call = &self.calls[&call_id];
                    (call.calling.clone(), call.called.clone())
                };
                self.add_party(&call_id, &parked_by, State::Alerting);
                self.emit_for_call(
                    &call_id,
                    EventCause::Recall,
                    Event::Delivered(pbx::DeliveredEvent {
                        alerting: Some(connection(&call_id, &parked_by)),
                        calling_device: calling,
                        called_device: called,
                        last_redirection_device: park_id,
                    }),
                    &[],
                );
            }
            Timer::RingNoAnswer { call_id, device } => {
                // An offer rejected and made again restarts the timer: only the latest offer's counts.
                let latest = self.calls.get(&call_id).is_some_and(|call| call.ring_no_answer_timer == Some(seq));
                if !latest || self.connection_state(&call_id, &device) != Some(State::Alerting) {
                    return;
                }
                self.drop_party(&call_id, &device, State::Alerting, EventCause::Redirected);
                if let Some(station) = self.stations.get(&device)
                    && station.agent.state == AgentState::Ready as i32
                {
                    let mut agent = station.agent.clone();
                    agent.state = AgentState::NotReady as i32;
                    agent.reason = "ring-no-answer".to_owned();
                    self.update_agent(&device, agent);
                }
                self.distribute();
            }
        }
    }

    fn update_agent(&mut self, device: &str, agent: pbx::AgentInfo) {
        let Some(station) = self.stations.get_mut(device) else { return };
        station.agent = agent.clone();
        self.refresh_idle(device);
        self.emit(
            EventCause::KeyOperation,
            Event::AgentState(pbx::AgentStateEvent { device_id: device.to_owned(), agent: Some(agent) }),
            [device.to_owned()].into(),
        );
    }

    /// Keeps `idle_agents` true for one station: ready and with no connection at all.
    fn refresh_idle(&mut self, device: &str) {
        let has_calls = self.device_calls.contains_key(device);
        let now = self.now_ms;
        let Some(station) = self.stations.get_mut(device) else { return };
        let idle = station.agent.state == AgentState::Ready as i32 && !has_calls;
        match (idle, station.idle_since_ms) {
            (true, None) => {
                station.idle_since_ms = Some(now);
                self.idle_agents.insert((now, device.to_owned()));
            }
            (false, Some(since)) => {
                station.idle_since_ms = None;
                self.idle_agents.remove(&(since, device.to_owned()));
            }
            _ => {}
        }
    }

    // ===== Internals: events =====

    fn emit_for_call(&mut self, call_id: &str, cause: EventCause, event: Event, also: &[&str]) {
        let mut devices: BTreeSet<String> = self
            .calls
            .get(call_id)
            .map(|call| call.parties.iter().map(|(device, _)| device.clone()).collect())
            .unwrap_or_default();
        devices.extend(also.iter().map(|device| (*device).to_owned()));
        let linkage = self.calls.get(call_id).map(|call| call.root.clone()).unwrap_or_default();
        self.events.push(PbxEvent { timestamp_ms: self.now_ms, cause, event, devices, linkage });
    }

    fn emit(&mut self, cause: EventCause, event: Event, devices: BTreeSet<String>) {
        self.events.push(PbxEvent { timestamp_ms: self.now_ms, cause, event, devices, linkage: String::new() });
    }
}

/// A connection state's name in words, for error messages.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Null => "null",
        State::Initiated => "initiated",
        State::Alerting => "alerting",
        State::Connected => "connected",
        State::Held => "held",
        State::Queued => "queued",
        State::Failed => "failed",
    }
}

#[cfg(test)]
mod tests;
