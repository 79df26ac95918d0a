//! Link events to model inputs: one PBX event becomes the inputs of the call and the lines it
//! touches; snapshots become line snapshots, call snapshots and the resync's bounds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use actors::call::{CallInput, Party};
use actors::domain::{AgentState, Cause, ConnState, DeviceKind, Direction, Millis};
use actors::line::{Agent, LineInput};
use actors::runtime::{CallSnapshot, IdHasher, Merge, ModelInput};
use proto::pbx::{self, EventCause, event_report::Event};

use crate::pbx::LinkEvent;

/// What kind each device the PBX has told of is; anything else is an outside number.
#[derive(Debug, Clone, Default)]
pub struct Directory(Arc<RwLock<HashMap<String, DeviceKind, IdHasher>>>);

impl Directory {
    /// The kind of `device`.
    pub fn kind(&self, device: &str) -> DeviceKind {
        self.kinds().kind(device)
    }

    /// The directory as it is now, read under one lock for several look-ups (an event needs up
    /// to four); nothing may learn or forget a device while it is held.
    fn kinds(&self) -> Kinds<'_> {
        Kinds(self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn forget(&self, device: &str) {
        let mut known = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        known.remove(device);
    }

    fn learn(&self, device: &str, kind: DeviceKind) {
        let mut known = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        known.insert(device.to_owned(), kind);
    }

    /// The parties of a PBX call snapshot, in the model's terms.
    pub fn parties(&self, call: &pbx::CallSnapshot) -> Vec<Party> {
        call.parties
            .iter()
            .map(|party| Party {
                device: party.device_id.clone(),
                kind: self.kind(&party.device_id),
                state: conn_state(party.state),
            })
            .collect()
    }

    /// Which way a call goes, judged from its two ends.
    pub fn direction(&self, calling: &str, called: &str) -> Direction {
        self.kinds().direction(calling, called)
    }
}

/// The device kinds, read under one lock: what translating one event looks up.
struct Kinds<'a>(RwLockReadGuard<'a, HashMap<String, DeviceKind, IdHasher>>);

impl Kinds<'_> {
    fn kind(&self, device: &str) -> DeviceKind {
        self.0.get(device).copied().unwrap_or(DeviceKind::External)
    }

    fn direction(&self, calling: &str, called: &str) -> Direction {
        match (self.kind(calling), self.kind(called)) {
            (DeviceKind::External, _) => Direction::Inbound,
            (_, DeviceKind::External) => Direction::Outbound,
            _ => Direction::Internal,
        }
    }

    /// Takes the event's own strings: the report is consumed, so nothing needs copying.
    fn info(&self, calling: String, called: String) -> CallInput {
        CallInput::Info { direction: self.direction(&calling, &called), calling, called }
    }

    /// The inputs for a party changing state: the call's, and the line's when it is a line.
    fn party(
        &self,
        connection: pbx::ConnectionId,
        state: ConnState,
        cause: Cause,
        at: Millis,
        mut call_inputs: Vec<CallInput>,
        out: &mut Vec<ModelInput>,
    ) {
        let pbx::ConnectionId { call_id: call, device_id: device } = connection;
        let kind = self.kind(&device);
        // Only a line needs the ids twice; an outside party's are moved, not copied.
        let line = (kind == DeviceKind::Line).then(|| (device.clone(), call.clone()));
        call_inputs.push(if state == ConnState::Null {
            CallInput::PartyCleared { device, cause, at }
        } else {
            CallInput::PartyState { device, kind, state, cause, at }
        });
        out.push(ModelInput::Call { call, inputs: call_inputs });
        if let Some((device, call)) = line {
            out.push(ModelInput::Line { device, input: LineInput::Call { call, state } });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn merge(
        &self,
        primary: String,
        secondary: Option<String>,
        new: String,
        leaving: Option<String>,
        pairs: Vec<pbx::ConnectionPair>,
        linkage: Option<String>,
        at: Millis,
        out: &mut Vec<ModelInput>,
    ) {
        let mut devices = Vec::new();
        let mut line_inputs = Vec::new();
        for pair in &pairs {
            let (Some(old), Some(new_connection)) = (&pair.old_connection, &pair.new_connection) else { continue };
            if !devices.contains(&new_connection.device_id) {
                devices.push(new_connection.device_id.clone());
            }
            if self.kind(&old.device_id) == DeviceKind::Line {
                let input = LineInput::Renamed { old: old.call_id.clone(), new: new.clone() };
                line_inputs.push(ModelInput::Line { device: old.device_id.clone(), input });
            }
        }
        if let Some(leaving) = leaving.as_ref().filter(|device| self.kind(device) == DeviceKind::Line) {
            for call in std::iter::once(&primary).chain(secondary.as_ref()) {
                let input = LineInput::Call { call: call.clone(), state: ConnState::Null };
                line_inputs.push(ModelInput::Line { device: leaving.clone(), input });
            }
        }
        out.push(ModelInput::Merge(Box::new(Merge { primary, secondary, new, leaving, devices, linkage, at })));
        out.extend(line_inputs);
    }
}

/// A connection state in the model's terms.
pub(super) fn conn_state(state: i32) -> ConnState {
    use pbx::ConnectionState as S;
    match S::try_from(state).unwrap_or(S::Null) {
        S::Null => ConnState::Null,
        S::Initiated => ConnState::Initiated,
        S::Alerting => ConnState::Alerting,
        S::Connected => ConnState::Connected,
        S::Held => ConnState::Held,
        S::Queued => ConnState::Queued,
        S::Failed => ConnState::Failed,
    }
}

fn device_kind(kind: i32) -> DeviceKind {
    match pbx::DeviceKind::try_from(kind).unwrap_or(pbx::DeviceKind::Unspecified) {
        pbx::DeviceKind::Station => DeviceKind::Line,
        pbx::DeviceKind::AcdQueue => DeviceKind::Queue,
        pbx::DeviceKind::ParkOrbit => DeviceKind::ParkOrbit,
        pbx::DeviceKind::External | pbx::DeviceKind::Unspecified => DeviceKind::External,
    }
}

/// The agent on a line in the model's terms (`None` when logged off).
pub(super) fn agent(info: Option<&pbx::AgentInfo>) -> Option<Agent> {
    let info = info?;
    let state = match pbx::AgentState::try_from(info.state).unwrap_or(pbx::AgentState::Unspecified) {
        pbx::AgentState::LoggedOff | pbx::AgentState::Unspecified => return None,
        pbx::AgentState::Ready => AgentState::Ready,
        pbx::AgentState::NotReady => AgentState::NotReady,
        pbx::AgentState::WorkingAfterCall => AgentState::WorkingAfterCall,
        pbx::AgentState::DoNotDisturb => AgentState::DoNotDisturb,
    };
    Some(Agent { login_id: info.agent_id.clone(), state, roles: info.roles.clone(), reason: info.reason.clone() })
}

/// Turns the link's ordered events into the model's ordered inputs.
#[derive(Debug, Default)]
pub struct Translator {
    directory: Directory,
    in_resync: bool,
}

impl Translator {
    /// A translator that records device kinds in `directory` (shared with the [`super::LinkPort`]).
    pub fn new(directory: Directory) -> Self {
        Self { directory, in_resync: false }
    }

    /// Appends the inputs `event` means to `out`.
    pub fn translate(&mut self, event: LinkEvent, out: &mut Vec<ModelInput>) {
        match event {
            LinkEvent::Up { .. } => self.begin_resync(out),
            LinkEvent::Snapshot { snapshot, .. } => {
                self.begin_resync(out);
                self.snapshot(snapshot, out);
            }
            LinkEvent::Acquired { snapshot, .. } => self.snapshot(snapshot, out),
            LinkEvent::Released { devices, .. } => {
                // Unmonitored devices count as outside parties, as on a single node that monitors
                // a few devices only; otherwise an event naming one would bring its line back.
                for device in &devices {
                    self.directory.forget(device);
                }
                out.push(ModelInput::Forget { devices });
            }
            LinkEvent::ResyncComplete { .. } => {
                self.in_resync = false;
                out.push(ModelInput::ResyncComplete { at: wall_clock_ms() });
            }
            LinkEvent::Event(report) => self.event(report, out),
            LinkEvent::Down { .. } => {}
        }
    }

    fn begin_resync(&mut self, out: &mut Vec<ModelInput>) {
        if !self.in_resync {
            self.in_resync = true;
            out.push(ModelInput::ResyncStarted);
        }
    }

    fn snapshot(&mut self, snapshot: pbx::SnapshotDeviceResult, out: &mut Vec<ModelInput>) {
        let Some(device) = snapshot.device else { return };
        let kind = device_kind(device.kind);
        self.directory.learn(&device.device_id, kind);
        if kind == DeviceKind::Line {
            let calls: BTreeMap<String, ConnState> = snapshot
                .calls
                .iter()
                .filter_map(|call| {
                    let party = call.parties.iter().find(|party| party.device_id == device.device_id)?;
                    Some((call.call_id.clone(), conn_state(party.state)))
                })
                .collect();
            let input = LineInput::Snapshot { agent: agent(snapshot.agent.as_ref()).map(Box::new), calls };
            out.push(ModelInput::Line { device: device.device_id.clone(), input });
        }
        let at = wall_clock_ms();
        for call in snapshot.calls {
            // Devices in the call that the directory does not know yet are learned from later
            // snapshots; until then they count as outside parties.
            let parties = self.directory.parties(&call);
            out.push(ModelInput::CallSnapshot(Box::new(CallSnapshot {
                direction: self.directory.direction(&call.calling_device, &call.called_device),
                parties,
                queue: non_empty(call.queue_device),
                park_id: non_empty(call.park_id),
                recording_url: non_empty(call.recording_url),
                calling: call.calling_device,
                called: call.called_device,
                created_at: call.created_ms,
                linkage: non_empty(call.call_linkage_id),
                call: call.call_id,
                at,
            })));
        }
    }

    fn event(&mut self, report: pbx::EventReport, out: &mut Vec<ModelInput>) {
        let at = report.timestamp_ms;
        // The PBX's linkage id goes first into inputs that may create the call, so the call's
        // root is set before it has any leg.
        let mut linkage = non_empty(report.call_linkage_id);
        // Allocated once, with room for the event's own inputs and the party's, which
        // `Kinds::party` adds last: an event's inputs are one allocation, not two or three.
        let mut linked = |own: &mut dyn Iterator<Item = CallInput>| -> Vec<CallInput> {
            let mut inputs = Vec::with_capacity(5);
            inputs.extend(linkage.take().map(|id| CallInput::Linkage { id }));
            inputs.extend(own);
            inputs
        };
        let event_cause = EventCause::try_from(report.cause).unwrap_or(EventCause::Unspecified);
        let cause = match event_cause {
            EventCause::Park => Cause::Park,
            EventCause::Recall => Cause::Recall,
            EventCause::AcdDistribution | EventCause::Redirected => Cause::Distribution,
            EventCause::Transfer | EventCause::SingleStepTransfer => Cause::Transfer,
            EventCause::Conference => Cause::Conference,
            EventCause::Busy | EventCause::DestinationNotObtainable => Cause::Failed,
            _ => Cause::Normal,
        };
        let Some(event) = report.event else { return };
        let kinds = self.directory.kinds();
        match event {
            Event::ServiceInitiated(event) => {
                if let Some(connection) = event.initiated {
                    let info = (!event.called_device.is_empty())
                        .then(|| kinds.info(event.calling_device, event.called_device));
                    kinds.party(connection, ConnState::Initiated, cause, at, linked(&mut info.into_iter()), out);
                }
            }
            Event::Originated(event) => {
                if let Some(connection) = event.originating {
                    let info = kinds.info(event.calling_device, event.called_device);
                    kinds.party(connection, ConnState::Connected, cause, at, linked(&mut std::iter::once(info)), out);
                }
            }
            Event::Delivered(event) => {
                if let Some(connection) = event.alerting {
                    let info = kinds.info(event.calling_device, event.called_device);
                    let queue = (kinds.kind(&event.last_redirection_device) == DeviceKind::Queue)
                        .then_some(CallInput::Queue { queue: event.last_redirection_device });
                    let inputs = linked(&mut std::iter::once(info).chain(queue));
                    kinds.party(connection, ConnState::Alerting, cause, at, inputs, out);
                }
            }
            Event::Established(event) => {
                if let Some(connection) = event.answering {
                    let info = kinds.info(event.calling_device, event.called_device);
                    let recording = non_empty(event.recording_url).map(|url| CallInput::Recording { url });
                    let unparked = (cause == Cause::Park).then_some(CallInput::Unparked { at });
                    let inputs = linked(&mut std::iter::once(info).chain(recording).chain(unparked));
                    kinds.party(connection, ConnState::Connected, cause, at, inputs, out);
                }
            }
            Event::Held(event) => {
                if let Some(connection) = event.held {
                    kinds.party(connection, ConnState::Held, cause, at, linked(&mut std::iter::empty()), out);
                }
            }
            Event::Retrieved(event) => {
                if let Some(connection) = event.retrieved {
                    kinds.party(connection, ConnState::Connected, cause, at, linked(&mut std::iter::empty()), out);
                }
            }
            Event::Queued(event) => {
                if let Some(connection) = event.queued {
                    let info = kinds.info(event.calling_device, event.called_device);
                    let inputs = linked(&mut [info, CallInput::Queue { queue: event.queue_device }].into_iter());
                    kinds.party(connection, ConnState::Queued, cause, at, inputs, out);
                }
            }
            Event::Diverted(event) => {
                if let Some(connection) = event.connection {
                    kinds.party(connection, ConnState::Null, Cause::Distribution, at, Vec::new(), out);
                }
            }
            Event::Failed(event) => {
                if let Some(connection) = event.failed {
                    kinds.party(connection, ConnState::Failed, Cause::Failed, at, linked(&mut std::iter::empty()), out);
                }
            }
            Event::ConnectionCleared(event) => {
                if let Some(connection) = event.dropped {
                    kinds.party(connection, ConnState::Null, cause, at, Vec::new(), out);
                }
            }
            Event::CallCleared(event) => {
                out.push(ModelInput::Call { call: event.call_id, inputs: vec![CallInput::Ended { cause, at }] });
            }
            Event::Transferred(event) => {
                let secondary = non_empty(event.secondary_old_call);
                kinds.merge(
                    event.primary_old_call,
                    secondary,
                    event.new_call_id,
                    Some(event.transferring_device),
                    event.connections,
                    linkage,
                    at,
                    out,
                );
            }
            Event::Conferenced(event) => {
                let secondary = non_empty(event.secondary_old_call);
                kinds.merge(
                    event.primary_old_call,
                    secondary,
                    event.new_call_id,
                    None,
                    event.connections,
                    linkage,
                    at,
                    out,
                );
            }
            Event::Parked(event) => {
                let Some(parked) = event.parked else { return };
                let mut inputs =
                    vec![CallInput::Parked { park_id: event.park_id.clone(), parked_by: event.parking_device, at }];
                // The park id names the orbit on PBXs whose orbits are devices; the orbit then waits in the call.
                if kinds.kind(&event.park_id) == DeviceKind::ParkOrbit {
                    inputs.push(CallInput::PartyState {
                        device: event.park_id,
                        kind: DeviceKind::ParkOrbit,
                        state: ConnState::Queued,
                        cause: Cause::Park,
                        at,
                    });
                }
                out.push(ModelInput::Call { call: parked.call_id, inputs });
            }
            Event::ParkRecall(event) => {
                out.push(ModelInput::Call { call: event.call_id, inputs: vec![CallInput::Unparked { at }] });
            }
            Event::AgentState(event) => {
                if kinds.kind(&event.device_id) == DeviceKind::Line {
                    let input = LineInput::Agent(agent(event.agent.as_ref()).map(Box::new));
                    out.push(ModelInput::Line { device: event.device_id, input });
                }
            }
            Event::MonitorEnded(event) => {
                tracing::warn!(device = event.device_id, "the pbx ended a monitor");
            }
        }
    }
}

fn non_empty(text: String) -> Option<String> {
    if text.is_empty() { None } else { Some(text) }
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(call: &str, device: &str) -> Option<pbx::ConnectionId> {
        Some(pbx::ConnectionId { call_id: call.to_owned(), device_id: device.to_owned() })
    }

    fn report(linkage: &str, event: Event) -> LinkEvent {
        LinkEvent::Event(pbx::EventReport {
            sequence: 1,
            timestamp_ms: 5000,
            monitor_ids: vec![1],
            cause: EventCause::Transfer as i32,
            event: Some(event),
            call_linkage_id: linkage.to_owned(),
        })
    }

    fn translated(event: LinkEvent) -> Vec<ModelInput> {
        let directory = Directory::default();
        directory.learn("2002", DeviceKind::Line);
        let mut out = Vec::new();
        Translator::new(directory).translate(event, &mut out);
        out
    }

    #[test]
    fn the_linkage_id_comes_first_in_the_inputs_of_an_event_that_may_create_the_call() {
        let delivered = pbx::DeliveredEvent {
            alerting: connection("C5", "2002"),
            calling_device: "+4930111".into(),
            called_device: "2002".into(),
            last_redirection_device: String::new(),
        };
        let out = translated(report("C1", Event::Delivered(delivered.clone())));
        let ModelInput::Call { call, inputs } = &out[0] else { panic!("{out:?}") };
        assert_eq!((call.as_str(), &inputs[0]), ("C5", &CallInput::Linkage { id: "C1".into() }));
        assert_eq!(inputs.iter().filter(|input| matches!(input, CallInput::Linkage { .. })).count(), 1);
        // From a PBX that has none, nothing.
        let out = translated(report("", Event::Delivered(delivered)));
        let ModelInput::Call { inputs, .. } = &out[0] else { panic!("{out:?}") };
        assert!(!inputs.iter().any(|input| matches!(input, CallInput::Linkage { .. })));
    }

    #[test]
    fn a_transfer_and_a_snapshot_carry_the_linkage_id() {
        let transferred = pbx::TransferredEvent {
            primary_old_call: "C1".into(),
            secondary_old_call: "C2".into(),
            transferring_device: "2001".into(),
            transferred_to_device: "2002".into(),
            new_call_id: "C3".into(),
            connections: vec![pbx::ConnectionPair {
                old_connection: connection("C2", "2002"),
                new_connection: connection("C3", "2002"),
            }],
        };
        let out = translated(report("C0", Event::Transferred(transferred)));
        assert!(
            matches!(&out[0], ModelInput::Merge(merge) if merge.new == "C3" && merge.linkage.as_deref() == Some("C0")),
            "{out:?}"
        );
        let snapshot = pbx::SnapshotDeviceResult {
            device: Some(pbx::DeviceInfo {
                device_id: "2002".into(),
                kind: pbx::DeviceKind::Station as i32,
                name: String::new(),
            }),
            agent: None,
            calls: vec![pbx::CallSnapshot {
                call_id: "C3".into(),
                parties: vec![pbx::Party { device_id: "2002".into(), state: pbx::ConnectionState::Connected as i32 }],
                call_linkage_id: "C0".into(),
                ..pbx::CallSnapshot::default()
            }],
            more: false,
        };
        let out = translated(LinkEvent::Acquired { snapshot, session: 1 });
        let call = out.iter().find_map(|input| match input {
            ModelInput::CallSnapshot(call) => Some(call),
            _ => None,
        });
        assert_eq!(call.and_then(|call| call.linkage.as_deref()), Some("C0"));
    }
}
