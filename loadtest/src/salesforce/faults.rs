//! Fault injection: the ways Salesforce misbehaves that a CTI gateway must survive, each set at run
//! time through [`super::Sandbox::set_faults`] or `POST /sandbox/faults`.

use serde::{Deserialize, Serialize};

/// Faults in force. Counts are used up as requests arrive; `POST /sandbox/faults` replaces them all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Milliseconds every `/services/...` request waits before it is handled.
    pub latency_ms: u64,
    /// Authenticated data requests still to fail with `fail_with`. They count against the allocation,
    /// as Salesforce counts the requests it served.
    pub fail_requests: u32,
    /// How those requests fail.
    pub fail_with: InjectedFailure,
    /// Upsert records still to fail with `UNABLE_TO_LOCK_ROW` (the next valid ones, in order).
    pub lock_records: u32,
    /// External ids whose next upsert fails with `UNABLE_TO_LOCK_ROW`; an id listed twice fails twice.
    pub lock_external_ids: Vec<String>,
    /// Token requests still to fail with `invalid_grant`.
    pub fail_token_requests: u32,
}

/// The failure an injected request gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectedFailure {
    /// 500 `UNKNOWN_EXCEPTION`.
    #[default]
    ServerError,
    /// 503 `SERVER_UNAVAILABLE`, "Server is busy".
    Unavailable,
    /// 403 `REQUEST_LIMIT_EXCEEDED`, "ConcurrentPerOrgLongTxn Limit exceeded.".
    ConcurrentLimit,
}

impl InjectedFailure {
    /// The HTTP status, error code and message of the failure.
    pub fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            InjectedFailure::ServerError => (
                500,
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-1234567890)",
            ),
            InjectedFailure::Unavailable => (503, "SERVER_UNAVAILABLE", "Server is busy"),
            InjectedFailure::ConcurrentLimit => {
                (403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.")
            }
        }
    }
}
