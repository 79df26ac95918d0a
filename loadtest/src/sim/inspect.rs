//! A plain, comparable picture of the whole phone system: what the gateway must mirror, and what
//! `pbx-sim` serves as JSON.

use proto::pbx::{AgentState, ConnectionState};
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
            .filter_map(|device| {
                let agent = pbx.agent(&device.device_id)?;
                Some(AgentDump {
                    device: device.device_id,
                    state: agent_state_name(AgentState::try_from(agent.state).unwrap_or_default()).to_owned(),
                    agent_id: agent.agent_id.clone(),
                    roles: agent.roles.clone(),
                })
            })
            .collect();
        let calls = pbx
            .call_ids()
            .filter_map(|call_id| pbx.snapshot_call(call_id))
            .map(|call| CallDump {
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
            })
            .collect();
        Self { agents, calls }
    }
}
