//! The cluster's one Salesforce budget: a counter per UTC day in etcd (`sf_budget/{day}`, the day
//! numbered from the Unix epoch) that nodes take blocks of requests from with a compare-and-set, so
//! that together they never pass the configured share of the org's allocation. Each node paces
//! what it holds with its own governor, and the org's reported usage still rules over both
//! (`actors::crm::budget`).
//!
//! A block taken is spent as far as the counter knows: what a node dies holding is lost for the
//! day, which errs on the safe side. A write whose answer is lost (etcd timed out after applying
//! it) loses its block the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actors::crm::budget::BlockGrant;
use actors::crm::port::{BudgetLedger, LedgerAnswer, LedgerError};

use super::Etcd;

const DAY_SECS: u64 = 86_400;

/// Compare-and-set attempts before giving up for now: each lost race means another node took a
/// block, so a handful is plenty even with every node asking at once.
const ATTEMPTS: usize = 16;

/// The shared allowance, kept in etcd.
#[derive(Debug)]
pub struct EtcdLedger {
    etcd: Etcd,
    prefix: String,
}

impl EtcdLedger {
    /// A ledger under `prefix` (the cluster's key prefix) in `etcd`.
    pub fn new(etcd: Etcd, prefix: &str) -> Self {
        Self { etcd, prefix: prefix.trim_end_matches('/').to_owned() }
    }

    fn key(&self, day: u64) -> String {
        format!("{}/sf_budget/{day}", self.prefix)
    }

    /// [`BudgetLedger::take`] at a given moment (seconds since the Unix epoch).
    pub async fn take_at(&self, requests: u64, window_cap: u64, unix_secs: u64) -> Result<BlockGrant, LedgerError> {
        let day = unix_secs / DAY_SECS;
        let key = self.key(day);
        let etcd_error = |error: super::EtcdError| LedgerError(error.to_string());
        for _ in 0..ATTEMPTS {
            let current = self.etcd.get(&key).await.map_err(etcd_error)?;
            let (spent, revision) = match &current {
                Some(kv) => {
                    let spent = kv
                        .value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| LedgerError(format!("{key} holds {:?}, not a count of requests", kv.value)))?;
                    (spent, Some(kv.mod_revision))
                }
                None => (0, None),
            };
            if spent >= window_cap {
                let next_day = (day + 1) * DAY_SECS;
                return Ok(BlockGrant::Spent { retry_after: Duration::from_secs(next_day - unix_secs) });
            }
            let granted = requests.min(window_cap - spent);
            if self.etcd.put_if_unchanged(&key, &(spent + granted).to_string(), revision).await.map_err(etcd_error)? {
                if revision.is_none() && day >= 2 {
                    // The first block of a day clears the day before yesterday's counter; yesterday's
                    // stays for a node whose clock is behind.
                    if let Err(error) = self.etcd.delete(&self.key(day - 2)).await {
                        tracing::debug!(%error, "an old salesforce budget counter stays in etcd");
                    }
                }
                return Ok(BlockGrant::Granted(granted));
            }
        }
        Err(LedgerError(format!("{key}: {ATTEMPTS} compare-and-sets lost to other nodes in a row")))
    }
}

impl BudgetLedger for EtcdLedger {
    fn take(&self, requests: u64, window_cap: u64) -> LedgerAnswer<'_> {
        let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        Box::pin(self.take_at(requests, window_cap, unix_secs))
    }
}
