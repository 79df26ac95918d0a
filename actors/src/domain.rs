//! The model's vocabulary, independent of any wire format: the gateway maps the PBX link's values
//! onto these.

use std::fmt;

/// A device: an agent line (station), a queue, a park orbit, or an outside number.
pub type DeviceId = String;

/// A call's id as the PBX names it; it changes on transfer and conference.
pub type CallId = String;

/// Milliseconds since the Unix epoch, from the PBX's clock.
pub type Millis = u64;

/// A connection's state (CSTA LocalConnectionState).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum ConnState {
    /// No connection.
    Null,
    /// The device is placing the call (or, for click-to-dial, its phone rings to start it).
    Initiated,
    /// The device is ringing.
    Alerting,
    /// The device is talking.
    Connected,
    /// The device has put the call on hold.
    Held,
    /// The call waits at the device (an ACD queue or a park orbit).
    Queued,
    /// The call could not reach the device.
    Failed,
}

impl ConnState {
    /// The state in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Initiated => "initiated",
            Self::Alerting => "alerting",
            Self::Connected => "connected",
            Self::Held => "held",
            Self::Queued => "queued",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of device a party is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DeviceKind {
    /// An agent line: it gets a call log record for its leg.
    Line,
    /// An ACD queue.
    Queue,
    /// A park orbit.
    ParkOrbit,
    /// A party beyond a trunk.
    External,
}

/// Which way a call goes, from the contact center's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// An outside number called in.
    Inbound,
    /// An agent called an outside number.
    Outbound,
    /// Between the contact center's own devices.
    Internal,
}

impl Direction {
    /// The direction in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Internal => "internal",
        }
    }
}

/// The PBX's agent state on a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AgentState {
    /// No agent is logged on.
    LoggedOff,
    /// Ready for calls.
    Ready,
    /// Logged on but not taking calls.
    NotReady,
    /// Wrapping up the last call.
    WorkingAfterCall,
    /// Refusing calls.
    DoNotDisturb,
}

/// What a desktop shows of an agent: derived from the agent state and the line's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Presence {
    /// No agent logged on.
    Offline,
    /// Ready, with no call.
    Available,
    /// On a call (ringing, talking or holding).
    Busy,
    /// Logged on, not ready.
    Away,
    /// Do-not-disturb.
    DoNotDisturb,
    /// Wrapping up the last call.
    AfterCallWork,
}

impl Presence {
    /// Every presence, to register metric labels.
    pub const ALL: [Presence; 6] =
        [Self::Offline, Self::Available, Self::Busy, Self::Away, Self::DoNotDisturb, Self::AfterCallWork];

    /// The presence in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Available => "available",
            Self::Busy => "busy",
            Self::Away => "away",
            Self::DoNotDisturb => "do_not_disturb",
            Self::AfterCallWork => "after_call_work",
        }
    }
}

/// How an agent's leg of a call ended, for the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegOutcome {
    /// The agent talked with the caller, and the call ended.
    Answered,
    /// The line rang but the call went elsewhere (ring-no-answer, picked up by someone else).
    Missed,
    /// The line rang and the caller hung up before it was answered.
    Abandoned,
    /// The agent talked, then handed the call on (transfer or park).
    Transferred,
}

impl LegOutcome {
    /// The outcome in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Missed => "missed",
            Self::Abandoned => "abandoned",
            Self::Transferred => "transferred",
        }
    }
}

/// Why a party left or a call changed, as far as the model needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Ordinary call handling.
    Normal,
    /// A transfer (blind or consulted).
    Transfer,
    /// A conference.
    Conference,
    /// A park, or the retrieval of a parked call.
    Park,
    /// A parked call ringing its parker again.
    Recall,
    /// The ACD offered or took back the call.
    Distribution,
    /// The destination was busy or unreachable.
    Failed,
}
