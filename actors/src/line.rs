//! One agent line's state machine: the agent logged on, the line's calls, the presence a desktop
//! shows, and the checks a command must pass before it goes to the PBX. Pure.

use std::collections::BTreeMap;

use crate::domain::{AgentState, CallId, ConnState, DeviceId, Presence};

/// The agent logged on at a line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    /// The agent's own login id (it follows the agent from desk to desk).
    pub login_id: String,
    /// The PBX's agent state.
    pub state: AgentState,
    /// Roles such as `agent` or `operator`.
    pub roles: Vec<String>,
    /// Why the agent is not ready, if given.
    pub reason: String,
}

/// Something the PBX said about this line. The agent, rare and large, is boxed: a line's calls are
/// the common input, and every input is moved several times on its way to the line's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineInput {
    /// The agent on the line changed (`None`: logged off).
    Agent(Option<Box<Agent>>),
    /// The line's connection in a call is now in `state` (`Null`: it left the call).
    Call {
        /// The call.
        call: CallId,
        /// The line's connection state in it.
        state: ConnState,
    },
    /// A call got a new id (transfer, conference).
    Renamed {
        /// The old id.
        old: CallId,
        /// The new id.
        new: CallId,
    },
    /// The PBX's snapshot of the line: it replaces everything known.
    Snapshot {
        /// The agent, if one is logged on.
        agent: Option<Box<Agent>>,
        /// Every call the line is in, with its connection state.
        calls: BTreeMap<CallId, ConnState>,
    },
}

/// A request to act on the line, checked against its state before it is sent to the PBX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineCommand {
    /// Answer a ringing call.
    Answer(CallId),
    /// Leave a call.
    HangUp(CallId),
    /// Hold the active call.
    Hold(CallId),
    /// Take a held call back.
    Retrieve(CallId),
    /// Park the active (or held) call.
    Park(CallId),
    /// Send the active call on, blind.
    BlindTransfer(CallId),
    /// Hold the active call and call someone for advice.
    ConsultStart(CallId),
    /// Join the held call's customer with the consulted party; the line leaves.
    ConsultComplete {
        /// The held call.
        held: CallId,
        /// The consultation call.
        active: CallId,
    },
    /// End the consultation and go back to the held call.
    ConsultCancel {
        /// The held call.
        held: CallId,
        /// The consultation call.
        active: CallId,
    },
    /// Join both calls and the line in a conference.
    Conference {
        /// The held call.
        held: CallId,
        /// The active call.
        active: CallId,
    },
    /// Swap between the active call and a held one.
    Alternate {
        /// The active call.
        active: CallId,
        /// The held call.
        held: CallId,
    },
    /// Place a call from this line (click-to-dial).
    MakeCall,
    /// Retrieve a parked call onto this line.
    RetrieveParked,
    /// Log an agent on.
    LogOn(String),
    /// Log the agent off.
    LogOff,
    /// Change the agent's state.
    SetState(AgentState),
}

/// Why a command cannot apply to the line as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    /// The line is not in the call.
    #[error("line {line} is not in call {call}")]
    NotInCall {
        /// The line.
        line: DeviceId,
        /// The call.
        call: CallId,
    },
    /// The line's connection is in the wrong state.
    #[error("cannot {action} call {call} on line {line}: it is {state}, not {needed}")]
    WrongState {
        /// What was asked.
        action: &'static str,
        /// The line.
        line: DeviceId,
        /// The call.
        call: CallId,
        /// Its state.
        state: ConnState,
        /// The state the command needs.
        needed: &'static str,
    },
    /// The two calls of a two-call command are the same call.
    #[error("{action} needs two different calls, got {call} twice")]
    SameCall {
        /// What was asked.
        action: &'static str,
        /// The call.
        call: CallId,
    },
    /// No agent is logged on at the line.
    #[error("no agent is logged on at line {line}")]
    NotLoggedOn {
        /// The line.
        line: DeviceId,
    },
    /// An agent is logged on already.
    #[error("agent {agent} is already logged on at line {line}")]
    AlreadyLoggedOn {
        /// The line.
        line: DeviceId,
        /// The agent there.
        agent: String,
    },
    /// The line is in do-not-disturb.
    #[error("line {line} is in do-not-disturb")]
    DoNotDisturb {
        /// The line.
        line: DeviceId,
    },
    /// Calls must end before the agent logs off.
    #[error("line {line} still has {calls} call(s); end them before logging off")]
    CallsInProgress {
        /// The line.
        line: DeviceId,
        /// How many.
        calls: usize,
    },
}

/// One agent line as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineState {
    /// The line's device id.
    pub device: DeviceId,
    /// The agent logged on, if any.
    pub agent: Option<Agent>,
    /// The line's calls and its connection state in each.
    pub calls: BTreeMap<CallId, ConnState>,
}

impl LineState {
    /// A line with no agent and no call.
    pub fn new(device: DeviceId) -> Self {
        Self { device, agent: None, calls: BTreeMap::new() }
    }

    /// What a desktop shows.
    pub fn presence(&self) -> Presence {
        let Some(agent) = &self.agent else { return Presence::Offline };
        if agent.state == AgentState::DoNotDisturb {
            return Presence::DoNotDisturb;
        }
        let on_a_call = self.calls.values().any(|state| {
            matches!(state, ConnState::Initiated | ConnState::Alerting | ConnState::Connected | ConnState::Held)
        });
        match agent.state {
            _ if on_a_call => Presence::Busy,
            AgentState::Ready => Presence::Available,
            AgentState::WorkingAfterCall => Presence::AfterCallWork,
            AgentState::NotReady | AgentState::LoggedOff | AgentState::DoNotDisturb => Presence::Away,
        }
    }

    /// The call the line talks on, if any.
    pub fn active_call(&self) -> Option<&CallId> {
        self.calls.iter().find(|(_, state)| **state == ConnState::Connected).map(|(call, _)| call)
    }

    /// Applies one input; returns whether anything changed.
    pub fn apply(&mut self, input: LineInput) -> bool {
        match input {
            LineInput::Agent(agent) => {
                let agent = agent.map(|agent| *agent).filter(|agent| agent.state != AgentState::LoggedOff);
                if self.agent == agent {
                    return false;
                }
                self.agent = agent;
                true
            }
            LineInput::Call { call, state: ConnState::Null } => self.calls.remove(&call).is_some(),
            LineInput::Call { call, state } => self.calls.insert(call, state) != Some(state),
            LineInput::Renamed { old, new } => match self.calls.remove(&old) {
                Some(state) => {
                    self.calls.insert(new, state);
                    true
                }
                None => false,
            },
            LineInput::Snapshot { agent, calls } => {
                let agent = agent.map(|agent| *agent).filter(|agent| agent.state != AgentState::LoggedOff);
                let changed = self.agent != agent || self.calls != calls;
                self.agent = agent;
                self.calls = calls;
                changed
            }
        }
    }

    /// Checks a command against the line's state; the PBX may still refuse it.
    pub fn check(&self, command: &LineCommand) -> Result<(), CommandRefusal> {
        use ConnState as S;
        match command {
            LineCommand::Answer(call) => self.expect(call, "answer", "ringing", &[S::Alerting, S::Initiated]),
            LineCommand::HangUp(call) => self.expect(
                call,
                "hang up",
                "in the call",
                &[S::Initiated, S::Alerting, S::Connected, S::Held, S::Queued, S::Failed],
            ),
            LineCommand::Hold(call) => self.expect(call, "hold", "connected", &[S::Connected]),
            LineCommand::Retrieve(call) => self.expect(call, "retrieve", "held", &[S::Held]),
            LineCommand::Park(call) => self.expect(call, "park", "connected or held", &[S::Connected, S::Held]),
            LineCommand::BlindTransfer(call) => self.expect(call, "transfer", "connected", &[S::Connected]),
            LineCommand::ConsultStart(call) => self.expect(call, "consult from", "connected", &[S::Connected]),
            LineCommand::ConsultComplete { held, active } => self.expect_pair("complete the transfer of", held, active),
            LineCommand::ConsultCancel { held, active } => {
                self.distinct("cancel the consultation of", held, active)?;
                self.expect(held, "go back to", "held", &[S::Held])?;
                self.expect(active, "cancel", "in the call", &[S::Initiated, S::Alerting, S::Connected, S::Held])
            }
            LineCommand::Conference { held, active } => self.expect_pair("conference", held, active),
            LineCommand::Alternate { active, held } => self.expect_pair("alternate", held, active),
            LineCommand::MakeCall | LineCommand::RetrieveParked => match &self.agent {
                Some(agent) if agent.state == AgentState::DoNotDisturb => {
                    Err(CommandRefusal::DoNotDisturb { line: self.device.clone() })
                }
                _ => Ok(()),
            },
            LineCommand::LogOn(_) => match &self.agent {
                Some(agent) => {
                    Err(CommandRefusal::AlreadyLoggedOn { line: self.device.clone(), agent: agent.login_id.clone() })
                }
                None => Ok(()),
            },
            LineCommand::LogOff => {
                self.logged_on()?;
                if self.calls.is_empty() {
                    Ok(())
                } else {
                    Err(CommandRefusal::CallsInProgress { line: self.device.clone(), calls: self.calls.len() })
                }
            }
            LineCommand::SetState(_) => self.logged_on(),
        }
    }

    fn logged_on(&self) -> Result<(), CommandRefusal> {
        match self.agent {
            Some(_) => Ok(()),
            None => Err(CommandRefusal::NotLoggedOn { line: self.device.clone() }),
        }
    }

    fn expect(
        &self,
        call: &CallId,
        action: &'static str,
        needed: &'static str,
        allowed: &[ConnState],
    ) -> Result<(), CommandRefusal> {
        match self.calls.get(call) {
            None => Err(CommandRefusal::NotInCall { line: self.device.clone(), call: call.clone() }),
            Some(state) if allowed.contains(state) => Ok(()),
            Some(state) => Err(CommandRefusal::WrongState {
                action,
                line: self.device.clone(),
                call: call.clone(),
                state: *state,
                needed,
            }),
        }
    }

    fn distinct(&self, action: &'static str, first: &CallId, second: &CallId) -> Result<(), CommandRefusal> {
        if first == second {
            return Err(CommandRefusal::SameCall { action, call: first.clone() });
        }
        Ok(())
    }

    fn expect_pair(&self, action: &'static str, held: &CallId, active: &CallId) -> Result<(), CommandRefusal> {
        self.distinct(action, held, active)?;
        self.expect(held, action, "held", &[ConnState::Held])?;
        self.expect(active, action, "connected", &[ConnState::Connected])
    }
}

#[cfg(test)]
mod tests;
