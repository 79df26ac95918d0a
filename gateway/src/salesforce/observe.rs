//! What the Salesforce side reports as metrics: each request by operation and outcome, its latency
//! and batch size, and the budget actor's pops, cache, budget state and outbox backlog.

use std::time::Duration;

use actors::crm::actor::CrmObserver;
use actors::crm::budget::BudgetState;
use actors::crm::engine::Settled;
use actors::crm::port::{ApiUsage, OutboxError, RecordKind};
use actors::events::PopResult;
use metrics::{counter, gauge, histogram};

use crate::metrics as names;

/// A kind of Salesforce request (a metric label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// SOSL phone search.
    Search,
    /// Task upsert through sObject Collections.
    UpsertTasks,
    /// Contact or Lead creation.
    CreateRecord,
    /// OAuth token.
    Token,
    /// `/limits`.
    Limits,
}

impl Operation {
    /// Every operation, to register labels at start-up.
    pub const ALL: [Self; 5] = [Self::Search, Self::UpsertTasks, Self::CreateRecord, Self::Token, Self::Limits];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::UpsertTasks => "upsert_tasks",
            Self::CreateRecord => "create_record",
            Self::Token => "token",
            Self::Limits => "limits",
        }
    }
}

/// How a request ended (a metric label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// Refused as malformed (4xx other than auth and limits).
    ClientError,
    /// Credentials or permissions refused.
    AuthError,
    /// The allocation or the concurrency limit.
    LimitExceeded,
    /// 5xx.
    ServerError,
    /// No answer: connection, timeout.
    TransportError,
}

impl Outcome {
    /// Every outcome, to register labels at start-up.
    pub const ALL: [Self; 6] =
        [Self::Ok, Self::ClientError, Self::AuthError, Self::LimitExceeded, Self::ServerError, Self::TransportError];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::AuthError => "auth_error",
            Self::LimitExceeded => "limit_exceeded",
            Self::ServerError => "server_error",
            Self::TransportError => "transport_error",
        }
    }
}

/// Counts one request.
pub fn request(operation: Operation, outcome: Outcome, took: Duration, batch: Option<usize>) {
    let op = operation.as_str();
    counter!(names::SALESFORCE_REQUESTS, "operation" => op, "outcome" => outcome.as_str()).increment(1);
    histogram!(names::SALESFORCE_REQUEST_DURATION, "operation" => op).record(took.as_secs_f64());
    if let Some(size) = batch {
        histogram!(names::SALESFORCE_BATCH_SIZE, "operation" => op).record(size as f64);
    }
}

/// Records the org's usage as Salesforce reported it.
pub fn usage(usage: ApiUsage) {
    gauge!(names::SALESFORCE_API_USAGE).set(usage.used as f64);
    gauge!(names::SALESFORCE_API_LIMIT).set(usage.max as f64);
}

/// The budget actor's reports, as metrics.
#[derive(Debug, Default)]
pub struct MetricsObserver;

impl CrmObserver for MetricsObserver {
    fn popped(&self, result: &PopResult, latency: Duration) {
        counter!(names::SALESFORCE_SCREEN_POPS, "result" => result.as_str()).increment(1);
        histogram!(names::SALESFORCE_SCREEN_POP_SECONDS).record(latency.as_secs_f64());
    }

    fn lookups(&self, hits: u64, misses: u64, coalesced: u64) {
        if hits > 0 {
            counter!(names::SALESFORCE_CACHE_LOOKUPS, "result" => "hit").increment(hits);
        }
        if misses > 0 {
            counter!(names::SALESFORCE_CACHE_LOOKUPS, "result" => "miss").increment(misses);
        }
        if coalesced > 0 {
            counter!(names::SALESFORCE_COALESCED_LOOKUPS).increment(coalesced);
        }
    }

    fn budget(&self, state: BudgetState, usage: Option<ApiUsage>) {
        for each in BudgetState::ALL {
            gauge!(names::SALESFORCE_BUDGET_STATE, "state" => each.as_str()).set(f64::from(u8::from(each == state)));
        }
        if let Some(reported) = usage {
            self::usage(reported);
        }
    }

    fn backlog(&self, held: usize, oldest_age: Option<Duration>) {
        gauge!(names::OUTBOX_DEPTH).set(held as f64);
        gauge!(names::OUTBOX_OLDEST_AGE).set(oldest_age.map_or(0.0, |age| age.as_secs_f64()));
    }

    fn settled(&self, settled: &Settled) {
        counter!(names::OUTBOX_DELIVERED).increment(settled.delivered.len() as u64);
        counter!(names::OUTBOX_RETRIES).increment(settled.retried.len() as u64);
        counter!(names::OUTBOX_DEAD_LETTERED).increment(settled.dead.len() as u64);
        if !settled.dead.is_empty() {
            gauge!(names::OUTBOX_DEAD_LETTERS).increment(settled.dead.len() as f64);
        }
    }

    fn created(&self, kind: RecordKind) {
        let object = match kind {
            RecordKind::Contact => "contact",
            RecordKind::Lead => "lead",
            RecordKind::Account => "account",
        };
        counter!(names::SALESFORCE_RECORDS_CREATED, "object" => object).increment(1);
    }

    fn outbox_failed(&self, error: &OutboxError) {
        tracing::error!(%error, "call log outbox");
    }
}
