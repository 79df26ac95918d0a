//! The model's one way out to the phone system: a trait the gateway implements over the PBX link,
//! so this crate never sees a socket.

use std::collections::BTreeMap;
use std::future::Future;

use crate::call::Party;
use crate::domain::{AgentState, CallId, ConnState, DeviceId};
use crate::line::Agent;

/// A service to ask of the PBX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PbxCommand {
    /// Answer a ringing connection.
    Answer {
        /// The call.
        call: CallId,
        /// The ringing device.
        device: DeviceId,
    },
    /// Drop a device from a call.
    ClearConnection {
        /// The call.
        call: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Hold a connected call.
    Hold {
        /// The call.
        call: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Take a held call back.
    Retrieve {
        /// The call.
        call: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Park the other party; the device leaves the call.
    Park {
        /// The call.
        call: CallId,
        /// The parking device.
        device: DeviceId,
    },
    /// Pick a parked call up.
    RetrieveParked {
        /// The park id.
        park_id: String,
        /// The device that takes it.
        device: DeviceId,
    },
    /// Send the call on, blind.
    SingleStepTransfer {
        /// The call.
        call: CallId,
        /// The transferring device.
        device: DeviceId,
        /// Where to.
        to: String,
    },
    /// Hold the call and call `to` for advice.
    Consult {
        /// The call to hold.
        call: CallId,
        /// The device.
        device: DeviceId,
        /// Whom to consult.
        to: String,
    },
    /// Join the held call's and the active call's other parties; the device leaves.
    Transfer {
        /// The held call.
        held: CallId,
        /// The active call.
        active: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Join both calls, the device included.
    Conference {
        /// The held call.
        held: CallId,
        /// The active call.
        active: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Hold the active call, retrieve the held one.
    Alternate {
        /// The active call.
        active: CallId,
        /// The held call.
        held: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Leave the active call, retrieve the held one.
    Reconnect {
        /// The active call.
        active: CallId,
        /// The held call.
        held: CallId,
        /// The device.
        device: DeviceId,
    },
    /// Click-to-dial from a line.
    MakeCall {
        /// The calling line.
        device: DeviceId,
        /// The number to call.
        number: String,
    },
    /// Log on, log off, or change an agent's state.
    SetAgentState {
        /// The line.
        device: DeviceId,
        /// The state asked for.
        state: AgentState,
        /// The agent's login id (to log on).
        agent_id: String,
        /// The agent's roles (to log on).
        roles: Vec<String>,
        /// Why not ready, if so.
        reason: String,
    },
    /// Ask what the PBX knows of a call now.
    SnapshotCall {
        /// The call.
        call: CallId,
    },
    /// Ask what the PBX knows of a line now.
    SnapshotLine {
        /// The line.
        device: DeviceId,
    },
}

/// What the PBX answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PbxOutcome {
    /// Done, nothing to report.
    Done,
    /// A call was created or got a new id (make call, consult, transfer, conference).
    Call(CallId),
    /// The call was parked under this id.
    Parked(String),
    /// The call's parties now, or `None` if the PBX has no such call.
    Snapshot(Option<Vec<Party>>),
    /// The line's agent and calls now.
    LineSnapshot {
        /// The agent logged on, if any.
        agent: Option<Agent>,
        /// The line's calls and its connection state in each.
        calls: BTreeMap<CallId, ConnState>,
    },
}

/// Why the PBX did not carry a command out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The PBX refused: the target does not exist.
    #[error("pbx: not found: {0}")]
    NotFound(String),
    /// The PBX refused: the state does not allow it.
    #[error("pbx: {0}")]
    Rejected(String),
    /// The PBX refused: the request itself is wrong (a malformed number, say).
    #[error("pbx: invalid request: {0}")]
    Invalid(String),
    /// The PBX cannot be reached or is overloaded; try again later.
    #[error("pbx unavailable: {0}")]
    Unavailable(String),
    /// The PBX did not answer in time; the command may have been carried out.
    #[error("pbx did not answer in time: {0}")]
    Timeout(String),
}

/// Sends commands to the phone system. The gateway implements it over the PBX link.
pub trait PbxPort: Send + Sync + 'static {
    /// Carries one command out.
    fn execute(&self, command: PbxCommand) -> impl Future<Output = Result<PbxOutcome, PortError>> + Send;
}
