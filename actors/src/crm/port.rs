//! The CRM as the budget actor sees it: a trait the gateway implements over Salesforce's REST API,
//! and the durable outbox the gateway keeps call logs in. Neither knows HTTP or SQL here.

use std::future::Future;
use std::pin::Pin;

use crate::call::CallLogRecord;
use crate::crm::budget::BlockGrant;

/// A kind of CRM record a caller can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum RecordKind {
    /// A person we do business with.
    Contact,
    /// A prospect.
    Lead,
    /// A company.
    Account,
}

impl RecordKind {
    /// The Salesforce object name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contact => "Contact",
            Self::Lead => "Lead",
            Self::Account => "Account",
        }
    }
}

/// A record a phone search found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CrmRecord {
    /// What it is.
    pub kind: RecordKind,
    /// Its id.
    pub id: String,
    /// Its name as the CRM shows it.
    pub name: String,
    /// The values of its phone fields, as stored.
    pub phones: Vec<String>,
}

/// What the org reported of its API usage (`Sforce-Limit-Info: api-usage=used/max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiUsage {
    /// Requests counted in the org's rolling 24 hours.
    pub used: u64,
    /// The org's allocation.
    pub max: u64,
}

/// An answer from the CRM with what it said of the org's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<T> {
    /// The answer.
    pub value: T,
    /// Usage after this request, when the CRM said.
    pub usage: Option<ApiUsage>,
}

/// A call log as the CRM stores it: a Task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Our key for it (the external id): the same on every retry, so a retry lands once.
    pub key: String,
    /// Its subject line.
    pub subject: String,
    /// Its body.
    pub description: String,
    /// Inbound, Outbound or Internal.
    pub call_type: &'static str,
    /// Seconds talked.
    pub duration_seconds: u64,
    /// The call's id at the PBX.
    pub call_object: String,
    /// The call's result (the agent's disposition, or the outcome).
    pub disposition: String,
    /// The Contact or Lead it concerns, when exactly one was found.
    pub who_id: Option<String>,
    /// The Account it concerns, when exactly one was found.
    pub what_id: Option<String>,
    /// The day of the call, `YYYY-MM-DD` (UTC).
    pub activity_date: String,
}

/// A record the CRM should create for an unknown number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Contact or Lead.
    pub kind: RecordKind,
    /// Its last name (the CRM's required name field).
    pub last_name: String,
    /// Its phone.
    pub phone: String,
}

/// How one record of a batch write fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    /// Stored, under this id.
    Stored {
        /// The CRM's id.
        id: String,
    },
    /// Refused.
    Refused {
        /// The CRM's error code (`UNABLE_TO_LOCK_ROW`, `STRING_TOO_LONG`, ...).
        code: String,
        /// Its message.
        message: String,
        /// Whether sending it again may work (lock contention) or never will (bad data).
        retryable: bool,
    },
}

/// Why a CRM request failed, sorted by what to do about it (the error catalogue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    /// The credentials were refused or a fresh session could not be had; alert.
    #[error("salesforce refused our credentials: {0}")]
    Auth(String),
    /// The org's daily allocation is spent: stop optional traffic until usage shows room.
    #[error("salesforce api allocation exhausted: {0}")]
    LimitExceeded(String),
    /// Too many long requests at once: fewer in flight, back off for seconds.
    #[error("salesforce concurrency limit: {0}")]
    Concurrency(String),
    /// Worth retrying with backoff: 5xx, timeouts, a dropped connection.
    #[error("salesforce unavailable: {0}")]
    Transient(String),
    /// The request itself is wrong and will never succeed (400s); dead-letter and alert.
    #[error("salesforce rejected the request ({code}): {message}")]
    Rejected {
        /// The error code.
        code: String,
        /// Its message.
        message: String,
    },
}

impl CrmError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }
}

/// A CRM request that failed, with the usage the failure reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub error: CrmError,
    /// Usage after the request, when the CRM said.
    pub usage: Option<ApiUsage>,
}

impl From<CrmError> for Failure {
    fn from(error: CrmError) -> Self {
        Self { error, usage: None }
    }
}

/// What the budget actor asks of the CRM. Every method is one API request (token refreshes are the
/// implementation's business and are not counted against the org's allocation).
pub trait CrmPort: Send + Sync + 'static {
    /// Finds the records whose phone fields hold any of `numbers` (digits), in one request.
    fn search(&self, numbers: &[String]) -> impl Future<Output = Result<Reply<Vec<CrmRecord>>, Failure>> + Send;

    /// Creates or updates `tasks` by their keys, in one request; one result per task, in order.
    fn upsert_tasks(
        &self,
        tasks: &[TaskRecord],
    ) -> impl Future<Output = Result<Reply<Vec<RecordResult>>, Failure>> + Send;

    /// Creates one record; its id.
    fn create(&self, record: &NewRecord) -> impl Future<Output = Result<Reply<String>, Failure>> + Send;

    /// Asks only for the org's usage (to learn when an exhausted allocation has room again).
    fn usage(&self) -> impl Future<Output = Result<Reply<()>, Failure>> + Send;
}

/// Why the outbox could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call log outbox: {0}")]
pub struct OutboxError(pub String);

/// A call log waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLog {
    /// Its key (the Task's external id).
    pub key: String,
    /// The record.
    pub record: CallLogRecord,
    /// Deliveries tried so far.
    pub attempts: u32,
}

/// A call log Salesforce refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its key.
    pub key: String,
    /// The record; `None` when this version cannot read what was stored (the reason says why).
    pub record: Option<CallLogRecord>,
    /// Why it was refused.
    pub reason: String,
    /// When, in ms since the epoch.
    pub at: u64,
}

/// The durable store of call logs until the CRM accepts them. Calls block (the gateway's SQLite);
/// the budget actor makes them off its own thread.
pub trait Outbox: Send + Sync + 'static {
    /// Every log still to deliver, oldest first.
    fn pending(&self) -> Result<Vec<PendingLog>, OutboxError>;
    /// The CRM accepted these: forget them.
    fn delivered(&self, keys: &[String]) -> Result<(), OutboxError>;
    /// A delivery failed and will be tried again.
    fn attempted(&self, keys: &[String]) -> Result<(), OutboxError>;
    /// The CRM refused this log for good: keep it aside with the reason.
    fn dead_letter(&self, key: &str, reason: &str) -> Result<(), OutboxError>;
}

/// Why the shared allowance's ledger gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("salesforce budget ledger: {0}")]
pub struct LedgerError(pub String);

/// What a ledger's answer is awaited as.
pub type LedgerAnswer<'a> = Pin<Box<dyn Future<Output = Result<BlockGrant, LedgerError>> + Send + 'a>>;

/// The counter a cluster's nodes take blocks of the org's allowance from (the gateway keeps it in
/// etcd). Object-safe: a single node runs without one.
pub trait BudgetLedger: Send + Sync + 'static {
    /// Takes `requests` more of the current window's allowance, of which the cluster may spend
    /// `window_cap` in all: fewer when less is left, none when it is spent.
    fn take(&self, requests: u64, window_cap: u64) -> LedgerAnswer<'_>;
}
