//! The CallControl service: each RPC checks its fields, then runs the model's command once per
//! request id. In a cluster a request for a line another node serves runs there (the owner keeps
//! the request ids), and a request by call id alone asks every member.

use std::sync::Arc;

use actors::runtime::Model;
use proto::api::call_control_client::CallControlClient;
use proto::api::{self, call_control_server::CallControl};
use tonic::{Request, Response, Status};

use super::convert;
use super::forward::{self, Routing, call_control, here_or_owner};
use super::guard::{Guard, Scope};
use super::idempotency::RequestIds;
use super::status::{command_status, required};
use crate::bridge::LinkPort;

/// The CallControl service over the model.
pub(crate) struct CallControlService {
    pub(crate) model: Model<LinkPort>,
    pub(crate) request_ids: Arc<RequestIds>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) routing: Routing,
}

type Reply<T> = Result<Response<T>, Status>;

impl CallControlService {
    async fn once<T: prost::Message + Default>(
        &self,
        method: &str,
        request_id: &str,
        attempt: impl Future<Output = Result<T, Status>>,
    ) -> Reply<T> {
        self.request_ids.once(method, request_id, attempt).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl CallControl for CallControlService {
    async fn make_call(&self, request: Request<api::MakeCallRequest>) -> Reply<api::MakeCallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("MakeCall"), CallControlClient, make_call);
        let line = required("line", &request.line)?;
        let number = required("number", &request.number)?;
        self.once("MakeCall", &request.request_id, async {
            let call_id = self.model.make_call(line, number).await.map_err(command_status)?;
            Ok(api::MakeCallResponse { call_id })
        })
        .await
    }

    async fn answer(&self, request: Request<api::CallRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("Answer"), CallControlClient, answer);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        self.once("Answer", &request.request_id, async {
            self.model.answer(line, call).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn hang_up(&self, request: Request<api::CallRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("HangUp"), CallControlClient, hang_up);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        self.once("HangUp", &request.request_id, async {
            self.model.hang_up(line, call).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn hold(&self, request: Request<api::CallRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("Hold"), CallControlClient, hold);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        self.once("Hold", &request.request_id, async {
            self.model.hold(line, call).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn retrieve(&self, request: Request<api::CallRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("Retrieve"), CallControlClient, retrieve);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        self.once("Retrieve", &request.request_id, async {
            self.model.retrieve(line, call).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn park(&self, request: Request<api::CallRequest>) -> Reply<api::ParkResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("Park"), CallControlClient, park);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        self.once("Park", &request.request_id, async {
            let park_id = self.model.park(line, call).await.map_err(command_status)?;
            Ok(api::ParkResponse { park_id })
        })
        .await
    }

    async fn retrieve_parked(
        &self,
        request: Request<api::RetrieveParkedRequest>,
    ) -> Reply<api::RetrieveParkedResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("RetrieveParked"), CallControlClient, retrieve_parked);
        let (line, park_id) = (required("line", &request.line)?, required("park_id", &request.park_id)?);
        self.once("RetrieveParked", &request.request_id, async {
            let call_id = self.model.retrieve_parked(line, park_id).await.map_err(command_status)?;
            Ok(api::RetrieveParkedResponse { call_id })
        })
        .await
    }

    async fn blind_transfer(&self, request: Request<api::BlindTransferRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("BlindTransfer"), CallControlClient, blind_transfer);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        let destination = required("destination", &request.destination)?;
        self.once("BlindTransfer", &request.request_id, async {
            self.model.blind_transfer(line, call, destination).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn start_consultation(
        &self,
        request: Request<api::StartConsultationRequest>,
    ) -> Reply<api::StartConsultationResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request =
            here_or_owner!(self, request, call_control("StartConsultation"), CallControlClient, start_consultation);
        let (line, call) = (required("line", &request.line)?, required("call_id", &request.call_id)?);
        let destination = required("destination", &request.destination)?;
        self.once("StartConsultation", &request.request_id, async {
            let consultation_call_id =
                self.model.consult_start(line, call, destination).await.map_err(command_status)?;
            Ok(api::StartConsultationResponse { consultation_call_id })
        })
        .await
    }

    async fn complete_consultation(
        &self,
        request: Request<api::TwoCallRequest>,
    ) -> Reply<api::CompleteConsultationResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(
            self,
            request,
            call_control("CompleteConsultation"),
            CallControlClient,
            complete_consultation
        );
        let (line, held, active) = two_calls(&request)?;
        self.once("CompleteConsultation", &request.request_id, async {
            let call_id = self.model.consult_complete(line, held, active).await.map_err(command_status)?;
            Ok(api::CompleteConsultationResponse { call_id })
        })
        .await
    }

    async fn cancel_consultation(&self, request: Request<api::TwoCallRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request =
            here_or_owner!(self, request, call_control("CancelConsultation"), CallControlClient, cancel_consultation);
        let (line, held, active) = two_calls(&request)?;
        self.once("CancelConsultation", &request.request_id, async {
            self.model.consult_cancel(line, held, active).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn conference(&self, request: Request<api::TwoCallRequest>) -> Reply<api::ConferenceResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("Conference"), CallControlClient, conference);
        let (line, held, active) = two_calls(&request)?;
        self.once("Conference", &request.request_id, async {
            let call_id = self.model.conference(line, held, active).await.map_err(command_status)?;
            Ok(api::ConferenceResponse { call_id })
        })
        .await
    }

    async fn alternate(&self, request: Request<api::TwoCallRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, call_control("Alternate"), CallControlClient, alternate);
        let (line, held, active) = two_calls(&request)?;
        self.once("Alternate", &request.request_id, async {
            self.model.alternate(line, active, held).await.map_err(command_status)?;
            Ok(api::CallResponse {})
        })
        .await
    }

    async fn set_call_notes(&self, request: Request<api::SetCallNotesRequest>) -> Reply<api::CallResponse> {
        self.guard.admit(&request, Scope::Control)?;
        let (metadata, _, request) = request.into_parts();
        let call = required("call_id", &request.call_id)?;
        if request.notes.len() > 32 * 1024 || request.disposition.len() > 1024 {
            return Err(Status::invalid_argument("notes are limited to 32 KiB and a disposition to 1 KiB"));
        }
        let here = self.set_notes_here(call, &request);
        // A call between lines of several nodes is in each of their models, and each node logs its
        // own lines' legs: the notes go to every member that has the call.
        let rpc = call_control("SetCallNotes");
        forward::here_or_anywhere(&self.routing, rpc, call, here, &metadata, &request, |channel, request| async move {
            CallControlClient::new(channel).set_call_notes(request).await
        })
        .await
    }

    async fn get_call(&self, request: Request<api::GetCallRequest>) -> Reply<api::Call> {
        self.guard.admit(&request, Scope::Read)?;
        let (metadata, _, request) = request.into_parts();
        let call = required("call_id", &request.call_id)?;
        let here: Result<api::Call, Status> = match self.model.call(call) {
            Some(view) => return Ok(Response::new(convert::call(view))),
            None => Err(Status::not_found(format!("no call {call} in progress"))),
        };
        // Call ids are the PBX's, so they say nothing of where a call is: ask the members at once.
        let rpc = call_control("GetCall");
        forward::here_or_anywhere(&self.routing, rpc, call, here, &metadata, &request, |channel, request| async move {
            CallControlClient::new(channel).get_call(request).await
        })
        .await
    }
}

impl CallControlService {
    fn set_notes_here(&self, call: &str, request: &api::SetCallNotesRequest) -> Result<api::CallResponse, Status> {
        self.model.set_notes(call, &request.notes).map_err(command_status)?;
        if !request.disposition.is_empty() {
            self.model.set_disposition(call, &request.disposition).map_err(command_status)?;
        }
        Ok(api::CallResponse {})
    }
}

fn two_calls(request: &api::TwoCallRequest) -> Result<(&str, &str, &str), Status> {
    Ok((
        required("line", &request.line)?,
        required("held_call_id", &request.held_call_id)?,
        required("active_call_id", &request.active_call_id)?,
    ))
}
