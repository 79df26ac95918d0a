//! The model's commands carried out over the PBX link: each command becomes one service request,
//! each answer or refusal comes back in the model's terms.

use actors::domain::{AgentState, ConnState};
use actors::port::{PbxCommand, PbxOutcome, PbxPort, PortError};
use proto::pbx::{self, ErrorCause, request, response};

use super::translate::{Directory, agent, conn_state};
use crate::pbx::{LinkError, LinkHandle};

/// [`PbxPort`] over the PBX link.
#[derive(Debug, Clone)]
pub struct LinkPort {
    link: LinkHandle,
    directory: Directory,
}

impl LinkPort {
    /// A port sending through `link`, naming device kinds from `directory`.
    pub fn new(link: LinkHandle, directory: Directory) -> Self {
        Self { link, directory }
    }
}

fn connection(call: String, device: String) -> Option<pbx::ConnectionId> {
    Some(pbx::ConnectionId { call_id: call, device_id: device })
}

fn agent_state(state: AgentState) -> pbx::AgentState {
    match state {
        AgentState::LoggedOff => pbx::AgentState::LoggedOff,
        AgentState::Ready => pbx::AgentState::Ready,
        AgentState::NotReady => pbx::AgentState::NotReady,
        AgentState::WorkingAfterCall => pbx::AgentState::WorkingAfterCall,
        AgentState::DoNotDisturb => pbx::AgentState::DoNotDisturb,
    }
}

/// The request a command becomes.
fn service(command: PbxCommand) -> request::Service {
    use request::Service as S;
    match command {
        PbxCommand::Answer { call, device } => {
            S::AnswerCall(pbx::AnswerCallRequest { connection: connection(call, device) })
        }
        PbxCommand::ClearConnection { call, device } => {
            S::ClearConnection(pbx::ClearConnectionRequest { connection: connection(call, device) })
        }
        PbxCommand::Hold { call, device } => S::HoldCall(pbx::HoldCallRequest { connection: connection(call, device) }),
        PbxCommand::Retrieve { call, device } => {
            S::RetrieveCall(pbx::RetrieveCallRequest { connection: connection(call, device) })
        }
        PbxCommand::Park { call, device } => {
            S::ParkCall(pbx::ParkCallRequest { parking: connection(call, device), park_to: String::new() })
        }
        PbxCommand::RetrieveParked { park_id, device } => {
            S::RetrieveParkedCall(pbx::RetrieveParkedCallRequest { park_id, device_id: device })
        }
        PbxCommand::SingleStepTransfer { call, device, to } => {
            S::SingleStepTransferCall(pbx::SingleStepTransferCallRequest {
                active: connection(call, device),
                transferred_to: to,
            })
        }
        PbxCommand::Consult { call, device, to } => S::ConsultationCall(pbx::ConsultationCallRequest {
            existing: connection(call, device),
            consulted_device: to,
        }),
        PbxCommand::Transfer { held, active, device } => S::TransferCall(pbx::TransferCallRequest {
            held: connection(held, device.clone()),
            active: connection(active, device),
        }),
        PbxCommand::Conference { held, active, device } => S::ConferenceCall(pbx::ConferenceCallRequest {
            held: connection(held, device.clone()),
            active: connection(active, device),
        }),
        PbxCommand::Alternate { active, held, device } => S::AlternateCall(pbx::AlternateCallRequest {
            active: connection(active, device.clone()),
            held: connection(held, device),
        }),
        PbxCommand::Reconnect { active, held, device } => S::ReconnectCall(pbx::ReconnectCallRequest {
            active: connection(active, device.clone()),
            held: connection(held, device),
        }),
        PbxCommand::MakeCall { device, number } => {
            S::MakeCall(pbx::MakeCallRequest { calling_device: device, called_number: number })
        }
        PbxCommand::SetAgentState { device, state, agent_id, roles, reason } => {
            S::SetAgentState(pbx::SetAgentStateRequest {
                device_id: device,
                requested: agent_state(state) as i32,
                agent_id,
                password: String::new(),
                roles,
                reason,
            })
        }
        PbxCommand::SnapshotCall { call } => S::SnapshotCall(pbx::SnapshotCallRequest { call_id: call }),
        PbxCommand::SnapshotLine { device } => S::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: device }),
    }
}

/// A link failure in the model's terms.
fn port_error(error: LinkError) -> PortError {
    match error {
        LinkError::Refused { cause, message } => match cause {
            ErrorCause::InvalidConnectionId
            | ErrorCause::InvalidDeviceId
            | ErrorCause::InvalidParkId
            | ErrorCause::InvalidMonitorId => PortError::NotFound(message),
            ErrorCause::InvalidCalledDevice | ErrorCause::MalformedRequest => PortError::Invalid(message),
            ErrorCause::Congestion => PortError::Unavailable(message),
            _ => PortError::Rejected(message),
        },
        LinkError::DeadlineExceeded(_) | LinkError::Lost { .. } => PortError::Timeout(error.to_string()),
        other => PortError::Unavailable(other.to_string()),
    }
}

impl PbxPort for LinkPort {
    async fn execute(&self, command: PbxCommand) -> Result<PbxOutcome, PortError> {
        let snapshot_call = matches!(command, PbxCommand::SnapshotCall { .. });
        let line = match &command {
            PbxCommand::SnapshotLine { device } => Some(device.clone()),
            _ => None,
        };
        let outcome = match self.link.request(service(command)).await {
            Ok(result) => result,
            // A call the PBX no longer has is an answer for a snapshot, not a failure.
            Err(LinkError::Refused { cause: ErrorCause::InvalidConnectionId, .. }) if snapshot_call => {
                return Ok(PbxOutcome::Snapshot(None));
            }
            Err(error) => return Err(port_error(error)),
        };
        use response::Result as R;
        Ok(match outcome {
            R::MakeCall(made) => PbxOutcome::Call(made.calling_connection.map(|c| c.call_id).unwrap_or_default()),
            R::ConsultationCall(consulted) => {
                PbxOutcome::Call(consulted.initiated.map(|c| c.call_id).unwrap_or_default())
            }
            R::TransferCall(transferred) => PbxOutcome::Call(transferred.call_id),
            R::ConferenceCall(conference) => PbxOutcome::Call(conference.call_id),
            R::RetrieveParkedCall(picked) => PbxOutcome::Call(picked.connection.map(|c| c.call_id).unwrap_or_default()),
            R::ParkCall(parked) => PbxOutcome::Parked(parked.park_id),
            R::SnapshotCall(snapshot) => PbxOutcome::Snapshot(snapshot.call.map(|call| self.directory.parties(&call))),
            R::SnapshotDevice(snapshot) => {
                let device = line.unwrap_or_default();
                let calls = snapshot
                    .calls
                    .iter()
                    .filter_map(|call| {
                        let party = call.parties.iter().find(|party| party.device_id == device)?;
                        Some((call.call_id.clone(), conn_state(party.state)))
                    })
                    .collect::<std::collections::BTreeMap<String, ConnState>>();
                PbxOutcome::LineSnapshot { agent: agent(snapshot.agent.as_ref()), calls }
            }
            _ => PbxOutcome::Done,
        })
    }
}
