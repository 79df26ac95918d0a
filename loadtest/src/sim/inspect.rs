//! A plain, comparable picture of the whole phone system: what the gateway must mirror, and what
//! `pbx-sim` serves as JSON.

use proto::pbx::{self, AgentState, ConnectionState};
use serde::{Deserialize, Serialize};

use super::model::{Pbx, state_name};

/// Every station's agent and every call in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDump {
    /// Stations, by device id.
    pub agents: Vec<AgentDump>,
    /// Calls in progress, by call id.
    pub calls: Vec<CallDump>,
}

/// One station and the agent on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDump {
    /// The station's device id.
    pub device: String,
    /// `logged_off`, `ready`, `not_ready`, `working_after_call` or `do_not_disturb`.
    pub state: String,
    /// The agent logged on, or empty.
    pub agent_id: String,
    /// The agent's roles.
    pub roles: Vec<String>,
}

/// One call and its parties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallDump {
    /// The call's current id.
    pub call_id: String,
    /// Parties in the order they joined.
    pub parties: Vec<PartyDump>,
    /// Who placed the call.
    pub calling: String,
    /// Where it was placed to.
    pub called: String,
    /// The ACD queue it came through, or empty.
    pub queue: String,
    /// Its park id while parked, or empty.
    pub park_id: String,
}

/// One party of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyDump {
    /// The party's device id (an outside number for a trunk party).
    pub device: String,
    /// The connection state, in words (`alerting`, `connected`, ...).
    pub state: String,
}

/// An agent state's name in words.
pub fn agent_state_name(state: AgentState) -> &'static str {
    match state {
        AgentState::Unspecified => "unspecified",
        AgentState::LoggedOff => "logged_off",
        AgentState::Ready => "ready",
        AgentState::NotReady => "not_ready",
        AgentState::WorkingAfterCall => "working_after_call",
        AgentState::DoNotDisturb => "do_not_disturb",
    }
}

impl StateDump {
    /// The picture of `pbx` now.
    pub fn of(pbx: &Pbx) -> Self {
        let agents = pbx
            .devices()
            .into_iter()
            .filter_map(|device| Some(AgentDump::new(device.device_id.clone(), pbx.agent(&device.device_id)?)))
            .collect();
        let calls = pbx.call_ids().filter_map(|call_id| pbx.snapshot_call(call_id)).map(CallDump::from).collect();
        Self { agents, calls }
    }

    /// The picture a client gets from snapshotting every device: stations' agents, and every call any
    /// snapshotted device is in. Equal to [`StateDump::of`] when every device was snapshotted at one moment.
    pub fn from_snapshots<'a>(snapshots: impl IntoIterator<Item = &'a pbx::SnapshotDeviceResult>) -> Self {
        let mut agents = std::collections::BTreeMap::new();
        let mut calls = std::collections::BTreeMap::new();
        for snapshot in snapshots {
            let Some(device) = &snapshot.device else { continue };
            if let Some(agent) = &snapshot.agent {
                agents.insert(device.device_id.clone(), AgentDump::new(device.device_id.clone(), agent));
            }
            for call in &snapshot.calls {
                calls.insert(call.call_id.clone(), CallDump::from(call.clone()));
            }
        }
        Self { agents: agents.into_values().collect(), calls: calls.into_values().collect() }
    }
}

impl AgentDump {
    fn new(device: String, agent: &pbx::AgentInfo) -> Self {
        Self {
            device,
            state: agent_state_name(AgentState::try_from(agent.state).unwrap_or_default()).to_owned(),
            agent_id: agent.agent_id.clone(),
            roles: agent.roles.clone(),
        }
    }
}

impl From<pbx::CallSnapshot> for CallDump {
    fn from(call: pbx::CallSnapshot) -> Self {
        Self {
            call_id: call.call_id,
            parties: call
                .parties
                .into_iter()
                .map(|party| PartyDump {
                    device: party.device_id,
                    state: state_name(ConnectionState::try_from(party.state).unwrap_or_default()).to_owned(),
                })
                .collect(),
            calling: call.calling_device,
            called: call.called_device,
            queue: call.queue_device,
            park_id: call.park_id,
        }
    }
}
