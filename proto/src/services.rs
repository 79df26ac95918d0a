//! Names of the link's services, for matching a result to its request, for logs and metric labels.

use crate::pbx::{request, response};

impl request::Service {
    /// The service's name: its field name in `Request`.
    pub fn name(&self) -> &'static str {
        use request::Service as S;
        match self {
            S::Register(_) => "register",
            S::Heartbeat(_) => "heartbeat",
            S::MonitorStart(_) => "monitor_start",
            S::MonitorStop(_) => "monitor_stop",
            S::SnapshotDevice(_) => "snapshot_device",
            S::SnapshotCall(_) => "snapshot_call",
            S::ListDevices(_) => "list_devices",
            S::MakeCall(_) => "make_call",
            S::AnswerCall(_) => "answer_call",
            S::ClearConnection(_) => "clear_connection",
            S::ClearCall(_) => "clear_call",
            S::HoldCall(_) => "hold_call",
            S::RetrieveCall(_) => "retrieve_call",
            S::ParkCall(_) => "park_call",
            S::RetrieveParkedCall(_) => "retrieve_parked_call",
            S::SingleStepTransferCall(_) => "single_step_transfer_call",
            S::ConsultationCall(_) => "consultation_call",
            S::TransferCall(_) => "transfer_call",
            S::ConferenceCall(_) => "conference_call",
            S::AlternateCall(_) => "alternate_call",
            S::ReconnectCall(_) => "reconnect_call",
            S::SetAgentState(_) => "set_agent_state",
        }
    }
}

impl response::Result {
    /// The name of the service this answers: its field name in `Response`, the same as the request's.
    pub fn name(&self) -> &'static str {
        use response::Result as R;
        match self {
            R::Register(_) => "register",
            R::Heartbeat(_) => "heartbeat",
            R::MonitorStart(_) => "monitor_start",
            R::MonitorStop(_) => "monitor_stop",
            R::SnapshotDevice(_) => "snapshot_device",
            R::SnapshotCall(_) => "snapshot_call",
            R::ListDevices(_) => "list_devices",
            R::MakeCall(_) => "make_call",
            R::AnswerCall(_) => "answer_call",
            R::ClearConnection(_) => "clear_connection",
            R::ClearCall(_) => "clear_call",
            R::HoldCall(_) => "hold_call",
            R::RetrieveCall(_) => "retrieve_call",
            R::ParkCall(_) => "park_call",
            R::RetrieveParkedCall(_) => "retrieve_parked_call",
            R::SingleStepTransferCall(_) => "single_step_transfer_call",
            R::ConsultationCall(_) => "consultation_call",
            R::TransferCall(_) => "transfer_call",
            R::ConferenceCall(_) => "conference_call",
            R::AlternateCall(_) => "alternate_call",
            R::ReconnectCall(_) => "reconnect_call",
            R::SetAgentState(_) => "set_agent_state",
        }
    }
}
