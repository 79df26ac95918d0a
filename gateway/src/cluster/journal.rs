//! The open-leg journal a cluster shares in etcd: the owner of a line records each open agent leg
//! under `{prefix}/legs/{line}/{leg key}`, so whichever node takes the line next (after a failover
//! or a handover) can continue the leg or, if its call ended in the gap, log it. Every write is
//! fenced: it applies only while `owners/{line}` still has the create revision the writer holds as
//! its token, so a node that lost a line can no longer change what the next owner reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::call::CallLogRecord;
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::etcd::{Etcd, EtcdError, TxnOp};
use crate::config::ClusterConfig;

/// Lines one transaction fences at most, and writes it carries at most: etcd refuses more than
/// 128 operations per transaction by default (`--max-txn-ops`).
const LINES_PER_TXN: usize = 64;
const OPS_PER_TXN: usize = 120;
/// How long a tombstone (a leg the next owner closed) stays: long enough for a crashed node to
/// come back and learn that the leg it had not confirmed was logged by another.
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Open legs as the journal holds them: by line, then leg key.
pub type JournaledLegs = BTreeMap<String, BTreeMap<String, CallLogRecord>>;

/// What the journal holds for some lines: their open legs, and the keys of legs logged lately.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journaled {
    /// Open legs, by line, then key.
    pub open: JournaledLegs,
    /// Legs logged (by their owner, or by the node that took their line), by key.
    pub logged: BTreeSet<String>,
}

/// What the journal holds for one leg.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JournalEntry {
    /// The leg is open; its record as it would read now.
    Open {
        /// The record.
        record: Box<CallLogRecord>,
    },
    /// The node that took the line logged the leg as ended in the gap.
    Closed {
        /// That node.
        by: String,
    },
    /// The line's owner logged the leg. Kept a while (twice the standby window at least), so a
    /// node that stood by for the line and takes it knows not to log the leg again.
    Logged {
        /// That node.
        by: String,
    },
}

/// Why the journal could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// etcd did not answer as it should.
    #[error("leg journal: {0}")]
    Etcd(#[from] EtcdError),
    /// A journaled value could not be read.
    #[error("leg journal: unreadable entry {key}: {reason}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The writes to one line's legs, fenced by the writer's token for the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineWrites {
    /// The line.
    pub line: String,
    /// The create revision of the writer's claim on the line.
    pub token: i64,
    /// By leg key: the entry to write, or `None` to delete it.
    pub legs: BTreeMap<String, Option<JournalEntry>>,
}

/// How one line's writes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied.
    Applied,
    /// The writer's token is stale (the line has another owner, or none): nothing was applied.
    Fenced,
    /// No answer; nothing is known to be applied.
    Failed(String),
}

/// The journal's port: the cluster's call log path reads and writes legs through it.
pub trait LegJournal: Send + Sync {
    /// The open legs journaled on `lines`, by line and key, and the legs logged lately.
    fn load<'a>(&'a self, lines: &'a BTreeSet<String>) -> BoxFuture<'a, Result<Journaled, JournalError>>;
    /// Applies each line's writes, fenced by its token.
    fn write<'a>(&'a self, writes: &'a [LineWrites]) -> BoxFuture<'a, Vec<WriteOutcome>>;
    /// What the journal holds for leg `key` on `line`.
    fn entry<'a>(&'a self, line: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<JournalEntry>, JournalError>>;
}

/// The line of a leg key (`{root call id}:{line}`).
pub fn line_of(key: &str) -> &str {
    key.rsplit_once(':').map_or(key, |(_, line)| line)
}

/// The record of a leg another node journaled (`journaled`) and this node's model rebuilt from a
/// snapshot (`fresh`): the fresh state, with the journal's key (the call's first id) and the
/// times the snapshot cannot know.
pub fn continue_leg(journaled: &CallLogRecord, fresh: CallLogRecord) -> CallLogRecord {
    let mut record = fresh;
    record.root_call_id.clone_from(&journaled.root_call_id);
    record.offered_at = record.offered_at.min(journaled.offered_at);
    record.via_queue |= journaled.via_queue;
    if record.queue.is_none() {
        record.queue.clone_from(&journaled.queue);
    }
    match (journaled.answered_at, record.answered_at) {
        (Some(then), Some(now)) if then < now => {
            record.talk_seconds += (now - then) / 1000;
            record.answered_at = Some(then);
        }
        (Some(then), None) => record.answered_at = Some(then),
        _ => {}
    }
    record.hold_seconds += journaled.hold_seconds;
    let mut parties = journaled.parties.clone();
    for party in std::mem::take(&mut record.parties) {
        if !parties.contains(&party) {
            parties.push(party);
        }
    }
    record.parties = parties;
    if record.notes.is_empty() {
        record.notes.clone_from(&journaled.notes);
    }
    if record.disposition.is_none() {
        record.disposition.clone_from(&journaled.disposition);
    }
    record
}

/// Counters of the journal's writes, by line.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Line writes applied.
    pub applied: AtomicU64,
    /// Line writes refused because the writer's token was stale.
    pub fenced: AtomicU64,
    /// Line writes that got no answer.
    pub failed: AtomicU64,
}

/// The journal in etcd.
pub struct EtcdJournal {
    etcd: Etcd,
    prefix: String,
    node_id: String,
    /// The lease tombstones go on, and when it was granted.
    tombstone_lease: Mutex<Option<(i64, Instant)>>,
    /// The lease owners' `Logged` marks go on, and when it was granted.
    logged_lease: Mutex<Option<(i64, Instant)>>,
    /// How long a `Logged` mark lives at most (at least half of it).
    logged_ttl: Duration,
    stats: Arc<JournalStats>,
}

impl std::fmt::Debug for EtcdJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdJournal").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl EtcdJournal {
    /// The journal of the cluster `config` describes, over `etcd`'s connections, written as
    /// `node_id`.
    pub fn new(config: &ClusterConfig, etcd: &Etcd, node_id: String) -> Self {
        let timeout = super::LeaseClock::new(Duration::from_secs(config.lease_ttl_secs)).request_timeout();
        Self {
            etcd: etcd.with_timeout(timeout.max(Duration::from_secs(1))),
            prefix: config.key_prefix.trim_end_matches('/').to_owned(),
            node_id,
            tombstone_lease: Mutex::new(None),
            logged_lease: Mutex::new(None),
            logged_ttl: config.standby_window() * 4,
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    fn legs_prefix(&self) -> String {
        format!("{}/legs/", self.prefix)
    }

    fn leg_key(&self, line: &str, key: &str) -> String {
        format!("{}/legs/{line}/{key}", self.prefix)
    }

    fn owner_key(&self, line: &str) -> String {
        format!("{}/owners/{line}", self.prefix)
    }

    /// The lease for marks that live `ttl`: granted once, and again when half its life is gone
    /// (so a mark lives at least half of `ttl`).
    async fn mark_lease(&self, slot: &Mutex<Option<(i64, Instant)>>, ttl: Duration) -> Result<i64, EtcdError> {
        let mut lease = slot.lock().await;
        if let Some((id, granted)) = *lease
            && granted.elapsed() < ttl / 2
        {
            return Ok(id);
        }
        let (id, _) = self.etcd.grant(ttl.as_secs() as i64).await?;
        *lease = Some((id, Instant::now()));
        Ok(id)
    }

    async fn ops(&self, writes: &LineWrites) -> Result<Vec<TxnOp>, EtcdError> {
        let mut ops = Vec::with_capacity(writes.legs.len());
        for (key, entry) in &writes.legs {
            let key = self.leg_key(&writes.line, key);
            ops.push(match entry {
                None => TxnOp::Delete { key },
                Some(entry) => {
                    // Open legs outlive their writer's lease (the next owner needs them); a
                    // tombstone lives a day; an owner's mark, a few standby windows.
                    let lease = match entry {
                        JournalEntry::Open { .. } => 0,
                        JournalEntry::Closed { .. } => self.mark_lease(&self.tombstone_lease, TOMBSTONE_TTL).await?,
                        JournalEntry::Logged { .. } => self.mark_lease(&self.logged_lease, self.logged_ttl).await?,
                    };
                    let value = serde_json::to_string(entry).unwrap_or_default();
                    TxnOp::Put { key, value, lease }
                }
            });
        }
        Ok(ops)
    }

    /// One transaction over several lines' writes; `None` when a compare failed (some line is
    /// fenced: the caller asks line by line).
    async fn apply(&self, writes: &[&LineWrites]) -> Result<bool, EtcdError> {
        let fences: Vec<(String, i64)> = writes.iter().map(|line| (self.owner_key(&line.line), line.token)).collect();
        let mut ops = Vec::new();
        for line in writes {
            ops.extend(self.ops(line).await?);
        }
        if ops.len() <= OPS_PER_TXN {
            return self.etcd.txn_if_created(&fences, &ops).await;
        }
        // A line with more writes than one transaction takes: in chunks, each fenced alike.
        for chunk in ops.chunks(OPS_PER_TXN) {
            if !self.etcd.txn_if_created(&fences, chunk).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn count(&self, outcome: &WriteOutcome) {
        let (counter, label) = match outcome {
            WriteOutcome::Applied => (&self.stats.applied, "applied"),
            WriteOutcome::Fenced => (&self.stats.fenced, "fenced"),
            WriteOutcome::Failed(_) => (&self.stats.failed, "failed"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::cluster_journal_write(label);
        if let WriteOutcome::Fenced = outcome {
            tracing::warn!(node = self.node_id, "a journal write under a stale token was refused");
        }
    }

    async fn write_all(&self, writes: &[LineWrites]) -> Vec<WriteOutcome> {
        let mut outcomes = vec![WriteOutcome::Applied; writes.len()];
        let indices: Vec<usize> = (0..writes.len()).filter(|index| !writes[*index].legs.is_empty()).collect();
        for group in indices.chunks(LINES_PER_TXN) {
            let lines: Vec<&LineWrites> = group.iter().map(|index| &writes[*index]).collect();
            match self.apply(&lines).await {
                Ok(true) => {}
                // Some line is fenced: find which, line by line.
                Ok(false) => {
                    for index in group {
                        outcomes[*index] = match self.apply(&[&writes[*index]]).await {
                            Ok(true) => WriteOutcome::Applied,
                            Ok(false) => WriteOutcome::Fenced,
                            Err(error) => WriteOutcome::Failed(error.to_string()),
                        };
                    }
                }
                Err(error) => {
                    for index in group {
                        outcomes[*index] = WriteOutcome::Failed(error.to_string());
                    }
                }
            }
        }
        for index in indices {
            self.count(&outcomes[index]);
        }
        outcomes
    }
}

impl LegJournal for EtcdJournal {
    fn load<'a>(&'a self, lines: &'a BTreeSet<String>) -> BoxFuture<'a, Result<Journaled, JournalError>> {
        Box::pin(async move {
            // One range over every line's legs: at a failover thousands of lines are taken at once.
            let prefix = self.legs_prefix();
            let (kvs, _) = self.etcd.range_prefix(&prefix).await?;
            let mut journaled = Journaled::default();
            for kv in kvs {
                let Some((line, key)) = kv.key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) else {
                    continue;
                };
                if !lines.contains(line) {
                    continue;
                }
                let entry: JournalEntry = serde_json::from_str(&kv.value)
                    .map_err(|error| JournalError::Unreadable { key: kv.key.clone(), reason: error.to_string() })?;
                match entry {
                    JournalEntry::Open { record } => {
                        journaled.open.entry(line.to_owned()).or_default().insert(key.to_owned(), *record);
                    }
                    JournalEntry::Closed { .. } | JournalEntry::Logged { .. } => {
                        journaled.logged.insert(key.to_owned());
                    }
                }
            }
            Ok(journaled)
        })
    }

    fn write<'a>(&'a self, writes: &'a [LineWrites]) -> BoxFuture<'a, Vec<WriteOutcome>> {
        Box::pin(self.write_all(writes))
    }

    fn entry<'a>(&'a self, line: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<JournalEntry>, JournalError>> {
        Box::pin(async move {
            let Some(kv) = self.etcd.get(&self.leg_key(line, key)).await? else {
                return Ok(None);
            };
            serde_json::from_str(&kv.value)
                .map(Some)
                .map_err(|error| JournalError::Unreadable { key: kv.key, reason: error.to_string() })
        })
    }
}

#[cfg(test)]
mod tests {
    use actors::domain::{Direction, LegOutcome};

    use super::*;

    fn record(root: &str, call: &str, offered_at: u64, answered_at: Option<u64>) -> CallLogRecord {
        CallLogRecord {
            root_call_id: root.into(),
            call_id: call.into(),
            device: "2001".into(),
            agent_id: Some("a1".into()),
            direction: Direction::Inbound,
            outcome: LegOutcome::Answered,
            via_queue: false,
            queue: None,
            calling: "+4930".into(),
            called: "2001".into(),
            parties: vec!["+4930".into(), "2001".into()],
            offered_at,
            answered_at,
            ended_at: 0,
            talk_seconds: 0,
            hold_seconds: 0,
            notes: String::new(),
            disposition: None,
            recording_url: None,
        }
    }

    #[test]
    fn a_continued_leg_keeps_the_journals_first_id_and_start_times() {
        let mut journaled = record("C1", "C2", 1_000, Some(3_000));
        journaled.via_queue = true;
        journaled.queue = Some("5000".into());
        journaled.hold_seconds = 4;
        journaled.parties.push("2002".into());
        let mut fresh = record("C2", "C2", 60_000, Some(60_000));
        fresh.talk_seconds = 10;
        fresh.parties = vec!["2001".into(), "2003".into()];
        let merged = continue_leg(&journaled, fresh);
        assert_eq!(merged.key(), "C1:2001");
        assert_eq!((merged.offered_at, merged.answered_at), (1_000, Some(3_000)));
        assert_eq!((merged.talk_seconds, merged.hold_seconds), (10 + 57, 4));
        assert!(merged.via_queue);
        assert_eq!(merged.queue.as_deref(), Some("5000"));
        assert_eq!(merged.parties, ["+4930", "2001", "2002", "2003"]);
        assert_eq!(merged.call_id, "C2");
    }

    #[test]
    fn an_answer_the_snapshot_missed_is_kept() {
        let merged = continue_leg(&record("C1", "C1", 1_000, Some(2_000)), record("C1", "C1", 5_000, None));
        assert_eq!(merged.answered_at, Some(2_000));
    }

    #[test]
    fn a_leg_key_names_its_line_last() {
        assert_eq!(line_of("C1:2001"), "2001");
        assert_eq!(line_of("sim:C:7:2001"), "2001");
        assert_eq!(line_of("2001"), "2001");
    }

    #[test]
    fn entries_round_trip_as_tagged_json() {
        let open = JournalEntry::Open { record: Box::new(record("C1", "C1", 1, None)) };
        let json = serde_json::to_string(&open).unwrap();
        assert!(json.starts_with(r#"{"state":"open""#), "{json}");
        assert_eq!(serde_json::from_str::<JournalEntry>(&json).unwrap(), open);
        for mark in [JournalEntry::Closed { by: "node-2".into() }, JournalEntry::Logged { by: "node-1".into() }] {
            assert_eq!(serde_json::from_str::<JournalEntry>(&serde_json::to_string(&mark).unwrap()).unwrap(), mark);
        }
    }
}
