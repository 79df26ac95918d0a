//! Commands: each is checked against the line's state first, then sent to the PBX; both kinds of
//! refusal come back typed.

use super::call_actor::CallOrder;
use super::{Model, lock};
use crate::call::CallInput;
use crate::domain::{AgentState, CallId, DeviceId};
use crate::line::{CommandRefusal, LineCommand};
use crate::port::{PbxCommand, PbxOutcome, PbxPort, PortError};

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No such agent line is monitored.
    #[error("no agent line {0}")]
    UnknownLine(DeviceId),
    /// No such call is in progress.
    #[error("no call {0} in progress")]
    UnknownCall(CallId),
    /// The line's state does not allow the command.
    #[error(transparent)]
    Refused(#[from] CommandRefusal),
    /// An argument is malformed.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The PBX did not carry it out.
    #[error(transparent)]
    Pbx(#[from] PortError),
}

/// A dialable number: digits, optionally after a `+`, 2 to 32 of them.
fn check_number(field: &str, number: &str) -> Result<(), CommandError> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    if (2..=32).contains(&digits.len()) && digits.bytes().all(|byte| byte.is_ascii_digit()) {
        Ok(())
    } else {
        Err(CommandError::Invalid(format!("{field} {number:?} is not a dialable number (digits, optionally after +)")))
    }
}

impl<P: PbxPort> Model<P> {
    /// Checks `command` against `line`'s state.
    fn check(&self, line: &str, command: &LineCommand) -> Result<(), CommandError> {
        let entry = self.context.lines.get(line).ok_or_else(|| CommandError::UnknownLine(line.to_owned()))?;
        let outcome = lock(&entry.state).check(command);
        outcome.map_err(|refusal| match refusal {
            CommandRefusal::NotInCall { call, .. } if !self.context.calls.contains_key(&call) => {
                CommandError::UnknownCall(call)
            }
            refusal => CommandError::Refused(refusal),
        })
    }

    async fn send(&self, command: PbxCommand) -> Result<PbxOutcome, CommandError> {
        Ok(self.context.port.execute(command).await?)
    }

    async fn send_for_call(&self, command: PbxCommand) -> Result<CallId, CommandError> {
        match self.send(command).await? {
            PbxOutcome::Call(call) => Ok(call),
            other => Err(CommandError::Pbx(PortError::Rejected(format!("unexpected answer {other:?}")))),
        }
    }

    /// Answers a ringing call on a line.
    pub async fn answer(&self, line: &str, call: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::Answer(call.to_owned()))?;
        self.send(PbxCommand::Answer { call: call.to_owned(), device: line.to_owned() }).await.map(drop)
    }

    /// Takes a line out of a call (hangs up).
    pub async fn hang_up(&self, line: &str, call: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::HangUp(call.to_owned()))?;
        self.send(PbxCommand::ClearConnection { call: call.to_owned(), device: line.to_owned() }).await.map(drop)
    }

    /// Holds a line's active call.
    pub async fn hold(&self, line: &str, call: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::Hold(call.to_owned()))?;
        self.send(PbxCommand::Hold { call: call.to_owned(), device: line.to_owned() }).await.map(drop)
    }

    /// Takes a held call back.
    pub async fn retrieve(&self, line: &str, call: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::Retrieve(call.to_owned()))?;
        self.send(PbxCommand::Retrieve { call: call.to_owned(), device: line.to_owned() }).await.map(drop)
    }

    /// Parks a call; returns the park id anyone can retrieve it with.
    pub async fn park(&self, line: &str, call: &str) -> Result<String, CommandError> {
        self.check(line, &LineCommand::Park(call.to_owned()))?;
        match self.send(PbxCommand::Park { call: call.to_owned(), device: line.to_owned() }).await? {
            PbxOutcome::Parked(park_id) => Ok(park_id),
            other => Err(CommandError::Pbx(PortError::Rejected(format!("unexpected answer {other:?}")))),
        }
    }

    /// Picks a parked call up at a line; returns the call.
    pub async fn retrieve_parked(&self, line: &str, park_id: &str) -> Result<CallId, CommandError> {
        if park_id.is_empty() {
            return Err(CommandError::Invalid("park id is empty".to_owned()));
        }
        self.check(line, &LineCommand::RetrieveParked)?;
        self.send_for_call(PbxCommand::RetrieveParked { park_id: park_id.to_owned(), device: line.to_owned() }).await
    }

    /// Sends a call on, blind.
    pub async fn blind_transfer(&self, line: &str, call: &str, to: &str) -> Result<(), CommandError> {
        check_number("destination", to)?;
        self.check(line, &LineCommand::BlindTransfer(call.to_owned()))?;
        let command =
            PbxCommand::SingleStepTransfer { call: call.to_owned(), device: line.to_owned(), to: to.to_owned() };
        self.send(command).await.map(drop)
    }

    /// Holds the call and calls `to` for advice; returns the consultation call.
    pub async fn consult_start(&self, line: &str, call: &str, to: &str) -> Result<CallId, CommandError> {
        check_number("destination", to)?;
        self.check(line, &LineCommand::ConsultStart(call.to_owned()))?;
        self.send_for_call(PbxCommand::Consult { call: call.to_owned(), device: line.to_owned(), to: to.to_owned() })
            .await
    }

    /// Completes a consultation transfer; returns the joined call.
    pub async fn consult_complete(&self, line: &str, held: &str, active: &str) -> Result<CallId, CommandError> {
        self.check(line, &LineCommand::ConsultComplete { held: held.to_owned(), active: active.to_owned() })?;
        let command =
            PbxCommand::Transfer { held: held.to_owned(), active: active.to_owned(), device: line.to_owned() };
        self.send_for_call(command).await
    }

    /// Cancels a consultation: leaves it and takes the held call back.
    pub async fn consult_cancel(&self, line: &str, held: &str, active: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::ConsultCancel { held: held.to_owned(), active: active.to_owned() })?;
        let command =
            PbxCommand::Reconnect { active: active.to_owned(), held: held.to_owned(), device: line.to_owned() };
        self.send(command).await.map(drop)
    }

    /// Joins both calls and the line; returns the conference call.
    pub async fn conference(&self, line: &str, held: &str, active: &str) -> Result<CallId, CommandError> {
        self.check(line, &LineCommand::Conference { held: held.to_owned(), active: active.to_owned() })?;
        let command =
            PbxCommand::Conference { held: held.to_owned(), active: active.to_owned(), device: line.to_owned() };
        self.send_for_call(command).await
    }

    /// Swaps between the active call and a held one.
    pub async fn alternate(&self, line: &str, active: &str, held: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::Alternate { active: active.to_owned(), held: held.to_owned() })?;
        let command =
            PbxCommand::Alternate { active: active.to_owned(), held: held.to_owned(), device: line.to_owned() };
        self.send(command).await.map(drop)
    }

    /// Click-to-dial: rings the line, then calls `number`; returns the call.
    pub async fn make_call(&self, line: &str, number: &str) -> Result<CallId, CommandError> {
        check_number("number", number)?;
        self.check(line, &LineCommand::MakeCall)?;
        self.send_for_call(PbxCommand::MakeCall { device: line.to_owned(), number: number.to_owned() }).await
    }

    /// Logs an agent on at a line, ready or not.
    pub async fn log_on(&self, line: &str, agent_id: &str, roles: &[String], ready: bool) -> Result<(), CommandError> {
        if agent_id.trim().is_empty() {
            return Err(CommandError::Invalid("agent id is empty".to_owned()));
        }
        self.check(line, &LineCommand::LogOn(agent_id.to_owned()))?;
        let state = if ready { AgentState::Ready } else { AgentState::NotReady };
        let command = PbxCommand::SetAgentState {
            device: line.to_owned(),
            state,
            agent_id: agent_id.to_owned(),
            roles: roles.to_vec(),
            reason: String::new(),
        };
        self.send(command).await.map(drop)
    }

    /// Logs the agent off a line.
    pub async fn log_off(&self, line: &str) -> Result<(), CommandError> {
        self.check(line, &LineCommand::LogOff)?;
        let command = PbxCommand::SetAgentState {
            device: line.to_owned(),
            state: AgentState::LoggedOff,
            agent_id: String::new(),
            roles: Vec::new(),
            reason: String::new(),
        };
        self.send(command).await.map(drop)
    }

    /// Sets the agent's state (ready, not ready with a reason, after-call work, do-not-disturb).
    pub async fn set_agent_state(&self, line: &str, state: AgentState, reason: &str) -> Result<(), CommandError> {
        if state == AgentState::LoggedOff {
            return self.log_off(line).await;
        }
        self.check(line, &LineCommand::SetState(state))?;
        let command = PbxCommand::SetAgentState {
            device: line.to_owned(),
            state,
            agent_id: String::new(),
            roles: Vec::new(),
            reason: reason.to_owned(),
        };
        self.send(command).await.map(drop)
    }

    /// Sets the agent's notes on a call; they go into its call log records.
    pub fn set_notes(&self, call: &str, notes: &str) -> Result<(), CommandError> {
        self.to_call(call, CallInput::Notes { notes: notes.to_owned() })
    }

    /// Sets the agent's disposition (wrap-up code) on a call.
    pub fn set_disposition(&self, call: &str, disposition: &str) -> Result<(), CommandError> {
        self.to_call(call, CallInput::Disposition { disposition: disposition.to_owned() })
    }

    fn to_call(&self, call: &str, input: CallInput) -> Result<(), CommandError> {
        let entry = self.context.calls.get(call).ok_or_else(|| CommandError::UnknownCall(call.to_owned()))?;
        entry.cast(CallOrder::Apply(vec![input])).map_err(|_| CommandError::UnknownCall(call.to_owned()))
    }
}
