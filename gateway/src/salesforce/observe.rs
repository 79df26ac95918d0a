//! What the Salesforce side reports as metrics (through the typed helpers in `crate::metrics`):
//! each request by operation and outcome, its latency and batch size, and the budget actor's pops,
//! cache, budget state and outbox backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::crm::actor::CrmObserver;
use actors::crm::budget::{BlockGrant, BudgetState};
use actors::crm::engine::Settled;
use actors::crm::port::{ApiUsage, LedgerError, OutboxError, RecordKind};
use actors::events::PopResult;

use crate::metrics::{self as m, CacheResult, RecordObject, ScreenPopResult};
pub use crate::metrics::{SalesforceOperation as Operation, SalesforceOutcome as Outcome};

/// Counts one request.
pub fn request(operation: Operation, outcome: Outcome, took: Duration, batch: Option<usize>) {
    m::salesforce_request(operation, outcome, took.as_secs_f64());
    if let Some(size) = batch {
        m::salesforce_batch(operation, size);
    }
}

/// Records the org's usage as Salesforce reported it.
pub fn usage(usage: ApiUsage) {
    m::salesforce_api_usage(usage.used, usage.max);
}

/// The budget actor's reports, as metrics.
#[derive(Debug, Default)]
pub struct MetricsObserver {
    /// Dead letters held, for the outbox gauge.
    dead_letters: AtomicU64,
}

impl MetricsObserver {
    /// An observer that starts from `dead_letters` already held.
    pub fn new(dead_letters: u64) -> Self {
        Self { dead_letters: AtomicU64::new(dead_letters) }
    }

    /// Dead letters were replayed (or counted afresh).
    pub fn set_dead_letters(&self, count: u64) {
        self.dead_letters.store(count, Ordering::Relaxed);
    }
}

impl CrmObserver for MetricsObserver {
    fn block(&self, answer: &Result<BlockGrant, LedgerError>, held: u64) {
        let result = match answer {
            Ok(BlockGrant::Granted(_)) => "granted",
            Ok(BlockGrant::Spent { .. }) => "spent",
            Err(_) => "unreachable",
        };
        m::salesforce_budget_block(result, held);
    }

    fn popped(&self, result: &PopResult, latency: Duration) {
        let result = match result {
            PopResult::Single(_) => ScreenPopResult::Single,
            PopResult::Multiple(_) => ScreenPopResult::Multiple,
            PopResult::NoMatch => ScreenPopResult::None,
            PopResult::Failed(_) => ScreenPopResult::Failed,
        };
        m::salesforce_screen_pop(result, Some(latency.as_secs_f64()));
    }

    fn lookups(&self, hits: u64, misses: u64, coalesced: u64) {
        for _ in 0..hits {
            m::salesforce_cache_lookup(CacheResult::Hit);
        }
        for _ in 0..misses {
            m::salesforce_cache_lookup(CacheResult::Miss);
        }
        for _ in 0..coalesced {
            m::salesforce_coalesced_lookup();
        }
    }

    fn budget(&self, state: BudgetState, usage: Option<ApiUsage>) {
        m::salesforce_budget_state(match state {
            BudgetState::Normal => m::BudgetState::Normal,
            BudgetState::Throttled => m::BudgetState::Throttled,
            BudgetState::ReadsOnly => m::BudgetState::ReadsOnly,
            BudgetState::Stopped => m::BudgetState::Stopped,
        });
        if let Some(reported) = usage {
            self::usage(reported);
        }
    }

    fn backlog(&self, held: usize, oldest_age: Option<Duration>) {
        let dead = self.dead_letters.load(Ordering::Relaxed);
        m::outbox_state(held as u64, oldest_age.map_or(0.0, |age| age.as_secs_f64()), dead);
    }

    fn settled(&self, settled: &Settled) {
        m::outbox_delivered(settled.delivered.len() as u64);
        for _ in &settled.retried {
            m::outbox_retried();
        }
        for _ in &settled.dead {
            m::outbox_dead_lettered();
        }
        self.dead_letters.fetch_add(settled.dead.len() as u64, Ordering::Relaxed);
    }

    fn created(&self, kind: RecordKind) {
        match kind {
            RecordKind::Contact => m::salesforce_record_created(RecordObject::Contact),
            RecordKind::Lead => m::salesforce_record_created(RecordObject::Lead),
            // The engine creates Contacts and Leads only.
            RecordKind::Account => {}
        }
    }

    fn outbox_failed(&self, error: &OutboxError) {
        tracing::error!(%error, "call log outbox");
    }
}
