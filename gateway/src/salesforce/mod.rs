//! Salesforce at the edge: the REST client ([`client`]), the durable call log outbox ([`outbox`]),
//! how answers map to the error catalogue ([`errors`]), the metrics ([`observe`]), and
//! [`Salesforce`], which starts the budget actor over them and feeds it the model's call logs.

pub mod client;
pub mod errors;
pub mod observe;
pub mod outbox;
pub mod shared;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actors::call::LegNote;
use actors::crm::actor::{self, CrmHandle, CrmParts, CrmStatus};
use actors::crm::engine::CrmSettings;
use actors::crm::port::{BudgetLedger, DeadLetter, OutboxError, PendingLog};
use actors::events::Publisher;
use tokio_util::sync::CancellationToken;

use self::shared::SharedLegs;
use crate::cluster::journal::{JournalEntry, LegJournal, WriteOutcome, line_of};

pub use self::client::SalesforceClient;
pub use self::observe::MetricsObserver;
pub use self::outbox::SqliteOutbox;
use crate::config::{ConfigError, SalesforceConfig};

/// Why the Salesforce side could not start.
#[derive(Debug, thiserror::Error)]
pub enum SalesforceError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client could not be built.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The outbox could not be opened or read.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The budget actor could not start.
    #[error("starting the salesforce budget actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

/// The running Salesforce side: the budget actor and the outbox it delivers from.
pub struct Salesforce {
    crm: Arc<CrmHandle>,
    outbox: Arc<SqliteOutbox>,
    observer: Arc<MetricsObserver>,
    shared: Option<SharedPath>,
    stop: CancellationToken,
}

/// The lines a cluster node owns, with the fencing token of each, and those it stands by for.
#[derive(Debug, Clone, Default)]
pub struct NodeLines {
    /// Owned lines and their tokens.
    pub owned: BTreeMap<String, i64>,
    /// Lines stood by for.
    pub standby: BTreeSet<String>,
}

/// The cluster's shared leg journal, as a node's call log path uses it.
pub struct SharedJournal {
    /// The journal.
    pub journal: Arc<dyn LegJournal>,
    /// This node.
    pub node_id: String,
    /// How long what the model says about standby lines is kept
    /// ([`crate::config::ClusterConfig::standby_window`]).
    pub standby_window: Duration,
}

/// A cluster node's call log path: open legs live in the cluster's shared journal, not in the
/// outbox's.
struct SharedPath {
    journal: Arc<dyn LegJournal>,
    legs: tokio::sync::Mutex<SharedLegs>,
}

/// The time now in Unix milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// Waits out a retry delay (doubling it, up to 5 s); false when `stop` came first.
async fn back_off(delay: &mut Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(*delay) => {
            *delay = (*delay * 2).min(Duration::from_secs(5));
            true
        }
        () = stop.cancelled() => false,
    }
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce").finish_non_exhaustive()
    }
}

impl Salesforce {
    /// Opens the outbox, builds the client and starts the budget actor, which first sends what a
    /// previous run left in the outbox. In a cluster, `budget` is the cluster's ledger of the
    /// shared allowance and the size of the blocks to take from it; `journal` is the shared
    /// open-leg journal and `node_id` this node: logs a previous run committed but had not yet
    /// cleared with the journal are held back until the journal says whether this node or the
    /// line's next owner logs them.
    pub async fn start(
        config: &SalesforceConfig,
        publisher: Arc<Publisher>,
        budget: Option<(Arc<dyn BudgetLedger>, u32)>,
        journal: Option<SharedJournal>,
    ) -> Result<Self, SalesforceError> {
        let mut crm_config = config.crm()?;
        crm_config.budget.shared_block = budget.as_ref().map(|(_, block)| *block);
        let client = Arc::new(SalesforceClient::new(config)?);
        let path = config.outbox_path.clone();
        let outbox = Arc::new(
            tokio::task::spawn_blocking(move || SqliteOutbox::open(Path::new(&path)))
                .await
                .map_err(|error| OutboxError(error.to_string()))??,
        );
        let observer = Arc::new(MetricsObserver::new(outbox.dead_letter_count()?));
        let ledger = budget.map(|(ledger, _)| ledger);
        let parts = CrmParts { port: client, outbox: outbox.clone(), observer: observer.clone(), publisher, ledger };
        let crm = Arc::new(actor::start(crm_config, parts).await?);
        let stop = CancellationToken::new();
        let shared = match journal {
            Some(SharedJournal { journal, node_id, standby_window }) => {
                let held = outbox.unconfirmed()?;
                if !held.is_empty() {
                    let (outbox, crm, stop) = (outbox.clone(), crm.clone(), stop.clone());
                    let deliver = move |logs| crm.logs(logs);
                    tokio::spawn(settle_held_back(held, journal.clone(), node_id.clone(), outbox, deliver, stop));
                }
                let legs = tokio::sync::Mutex::new(SharedLegs::new(node_id, standby_window));
                Some(SharedPath { journal, legs })
            }
            None => None,
        };
        Ok(Self { crm, outbox, observer, shared, stop })
    }

    /// Where the integration stands.
    pub async fn status(&self) -> Option<(CrmStatus, u64)> {
        let status = self.crm.status().await?;
        let outbox = self.outbox.clone();
        let dead = tokio::task::spawn_blocking(move || outbox.dead_letter_count()).await.ok()?.ok()?;
        Some((status, dead))
    }

    /// Changes the settings at run time.
    pub fn set_settings(&self, settings: CrmSettings) {
        self.crm.set_settings(settings);
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || outbox.dead_letters(limit))
            .await
            .map_err(|error| OutboxError(error.to_string()))?
    }

    /// Sends dead letters again (these keys, or all); how many.
    pub async fn replay(&self, keys: Vec<String>) -> Result<usize, OutboxError> {
        let outbox = self.outbox.clone();
        let replayed = tokio::task::spawn_blocking(move || outbox.replay(&keys))
            .await
            .map_err(|error| OutboxError(error.to_string()))??;
        let count = replayed.len();
        self.observer.set_dead_letters(self.outbox.dead_letter_count()?);
        self.crm.logs(replayed);
        Ok(count)
    }

    /// Commits the model's leg notes to the outbox (retrying until the disk takes them: a log is
    /// never dropped), then hands the new call logs to the budget actor. In a cluster, `lines` says
    /// what this node owns now (with each line's fencing token) and stands by for, and open legs go
    /// to the shared journal ([`Self::record_shared`]).
    pub async fn record(&self, notes: Vec<LegNote>, lines: Option<&NodeLines>, stop: &CancellationToken) {
        if let (Some(shared), Some(lines)) = (&self.shared, lines) {
            return self.record_shared(shared, &notes, lines, stop).await;
        }
        let notes = Arc::new(notes);
        let mut delay = Duration::from_millis(100);
        loop {
            let outbox = self.outbox.clone();
            let batch = notes.clone();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
            match tokio::task::spawn_blocking(move || outbox.apply(&batch, now_ms)).await {
                Ok(Ok(added)) => {
                    tracing::debug!(notes = notes.len(), logs = added.len(), "leg notes committed");
                    if !added.is_empty() {
                        self.crm.logs(added);
                    }
                    return;
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, notes = notes.len(), "writing call logs to the outbox; retrying")
                }
                Err(error) => tracing::error!(%error, "the outbox writer failed; retrying"),
            }
            // Waiting here holds the model's call log channel, which holds the call actors: the
            // back-pressure a full disk should cause. Stopping gives up only on a shutdown.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => {
                    tracing::error!(notes = notes.len(), "shutting down with call logs the outbox could not take");
                    return;
                }
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// A cluster node's path: reads the journal of lines newly owned, plans the notes, commits the
    /// ended legs' logs to the outbox held back, writes the journal fenced by each line's token,
    /// then releases the logs of lines whose writes applied to the budget actor and withdraws
    /// those of lines another node owns now (the journal, which this node could no longer change,
    /// gives them to that node). Retries until etcd answers, or `stop`: held-back logs then wait
    /// for the next start.
    async fn record_shared(&self, shared: &SharedPath, notes: &[LegNote], lines: &NodeLines, stop: &CancellationToken) {
        let owned = &lines.owned;
        let mut legs = shared.legs.lock().await;
        let mut delay = Duration::from_millis(100);
        loop {
            let lines = legs.to_load(owned);
            if lines.is_empty() {
                break;
            }
            match shared.journal.load(&lines).await {
                Ok(found) => legs.loaded(&lines, owned, found),
                Err(error) => tracing::warn!(%error, lines = lines.len(), "reading the leg journal; retrying"),
            }
            if legs.to_load(owned).is_empty() {
                break;
            }
            if !back_off(&mut delay, stop).await {
                tracing::error!(notes = notes.len(), "shutting down before the leg journal could be read");
                return;
            }
        }
        let plan = legs.plan(notes, owned, &lines.standby, unix_ms());
        let log_keys: Vec<String> = plan.logs.iter().map(actors::call::CallLogRecord::key).collect();
        if !plan.logs.is_empty() {
            let outbox = self.outbox.clone();
            let logs = Arc::new(plan.logs);
            let mut delay = Duration::from_millis(100);
            loop {
                let (outbox, batch) = (outbox.clone(), logs.clone());
                match tokio::task::spawn_blocking(move || outbox.append_unconfirmed(&batch, unix_ms())).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(error)) => tracing::error!(%error, "writing call logs to the outbox; retrying"),
                    Err(error) => tracing::error!(%error, "the outbox writer failed; retrying"),
                }
                if !back_off(&mut delay, stop).await {
                    tracing::error!(logs = logs.len(), "shutting down with call logs the outbox could not take");
                    return;
                }
            }
        }
        let mut writes = plan.writes;
        let (mut applied, mut fenced) = (BTreeSet::new(), BTreeSet::new());
        let mut delay = Duration::from_millis(100);
        while !writes.is_empty() {
            let outcomes = shared.journal.write(&writes).await;
            let mut again = Vec::new();
            for (write, outcome) in writes.into_iter().zip(outcomes) {
                match outcome {
                    WriteOutcome::Applied => {
                        applied.insert(write.line);
                    }
                    WriteOutcome::Fenced => {
                        legs.forget(&write.line);
                        fenced.insert(write.line);
                    }
                    WriteOutcome::Failed(error) => {
                        tracing::warn!(line = write.line, error, "writing the leg journal; retrying");
                        again.push(write);
                    }
                }
            }
            writes = again;
            if !writes.is_empty() && !back_off(&mut delay, stop).await {
                tracing::error!(lines = writes.len(), "shutting down before the leg journal took every write");
                break;
            }
        }
        drop(legs);
        let keys_of = |lines: &BTreeSet<String>| -> Vec<String> {
            log_keys.iter().filter(|key| lines.contains(line_of(key))).cloned().collect()
        };
        let (release, withdraw) = (keys_of(&applied), keys_of(&fenced));
        self.settle(release, withdraw).await;
    }

    /// Releases held-back logs to the budget actor and withdraws others.
    async fn settle(&self, release: Vec<String>, withdraw: Vec<String>) {
        if release.is_empty() && withdraw.is_empty() {
            return;
        }
        let outbox = self.outbox.clone();
        let settled = tokio::task::spawn_blocking(move || {
            outbox.withdraw(&withdraw)?;
            outbox.confirm(&release)
        })
        .await;
        match settled {
            Ok(Ok(released)) if !released.is_empty() => self.crm.logs(released),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "settling held-back call logs; the next start will"),
            Err(error) => tracing::error!(%error, "settling held-back call logs; the next start will"),
        }
    }

    /// Stops the budget actor; what it had not delivered stays in the outbox for the next start.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.crm.shutdown().await;
    }
}

/// Settles the logs a previous run committed but had not cleared with the journal: a leg the
/// journal marks as logged by this node, or no longer has, was cleared (this node logs it); one it
/// still has open, or marked by another node, is that node's to log.
async fn settle_held_back(
    mut held: Vec<String>,
    journal: Arc<dyn LegJournal>,
    node_id: String,
    outbox: Arc<SqliteOutbox>,
    deliver: impl Fn(Vec<PendingLog>),
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(250);
    while !held.is_empty() {
        let (mut release, mut withdraw, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for key in held {
            match journal.entry(line_of(&key), &key).await {
                // Cleared: the mark this node left, or none once it has lapsed.
                Ok(None) => release.push(key),
                Ok(Some(JournalEntry::Logged { by })) if by == node_id => release.push(key),
                Ok(Some(_)) => withdraw.push(key),
                Err(error) => {
                    tracing::warn!(key, %error, "asking the leg journal about a held-back call log");
                    unknown.push(key);
                }
            }
        }
        tracing::info!(
            release = release.len(),
            withdraw = withdraw.len(),
            "held-back call logs settled with the journal"
        );
        let store = outbox.clone();
        let settled: Result<Vec<PendingLog>, OutboxError> = tokio::task::spawn_blocking(move || {
            store.withdraw(&withdraw)?;
            store.confirm(&release)
        })
        .await
        .unwrap_or_else(|error| Err(OutboxError(error.to_string())));
        match settled {
            Ok(released) if !released.is_empty() => deliver(released),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "settling held-back call logs"),
        }
        held = unknown;
        if !held.is_empty() && !back_off(&mut delay, &stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use actors::call::CallLogRecord;
    use actors::crm::port::Outbox;

    use super::outbox::tests::{record, temp_outbox};
    use super::*;
    use crate::cluster::EtcdError;
    use crate::cluster::journal::{JournalError, Journaled, LineWrites};

    /// A leg journal in memory: its entries by leg key, and keys whose next reads fail.
    #[derive(Default)]
    struct MemoryJournal {
        entries: Mutex<BTreeMap<String, JournalEntry>>,
        failing: Mutex<BTreeMap<String, usize>>,
    }

    impl LegJournal for MemoryJournal {
        fn load<'a>(&'a self, lines: &'a BTreeSet<String>) -> BoxFuture<'a, Result<Journaled, JournalError>> {
            let mut journaled = Journaled::default();
            for (key, entry) in self.entries.lock().unwrap().iter() {
                match entry {
                    JournalEntry::Open { record } if lines.contains(line_of(key)) => {
                        journaled
                            .open
                            .entry(line_of(key).to_owned())
                            .or_default()
                            .insert(key.clone(), (**record).clone());
                    }
                    JournalEntry::Open { .. } => {}
                    JournalEntry::Closed { .. } | JournalEntry::Logged { .. } => {
                        journaled.logged.insert(key.clone());
                    }
                }
            }
            Box::pin(async move { Ok(journaled) })
        }

        fn write<'a>(&'a self, writes: &'a [LineWrites]) -> BoxFuture<'a, Vec<WriteOutcome>> {
            let mut entries = self.entries.lock().unwrap();
            for write in writes {
                for (key, entry) in &write.legs {
                    match entry {
                        Some(entry) => entries.insert(key.clone(), entry.clone()),
                        None => entries.remove(key),
                    };
                }
            }
            Box::pin(std::future::ready(vec![WriteOutcome::Applied; writes.len()]))
        }

        fn entry<'a>(
            &'a self,
            _line: &'a str,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<JournalEntry>, JournalError>> {
            let mut failing = self.failing.lock().unwrap();
            let answer = match failing.get_mut(key) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    Err(JournalError::Etcd(EtcdError::Unreachable("etcd is away".to_owned())))
                }
                _ => Ok(self.entries.lock().unwrap().get(key).cloned()),
            };
            Box::pin(std::future::ready(answer))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn held_back_logs_are_delivered_when_the_journal_clears_them_and_dropped_when_another_node_logs_them() {
        let (_dir, outbox) = temp_outbox();
        let outbox = Arc::new(outbox);
        let roots = ["gone", "mine", "theirs", "open", "closed", "flaky"];
        let records: Vec<CallLogRecord> = roots.iter().map(|root| record(root)).collect();
        let held: Vec<String> =
            outbox.append_unconfirmed(&records, 1).unwrap().into_iter().map(|log| log.key).collect();
        let key = |root: &str| held.iter().find(|key| key.starts_with(root)).unwrap().clone();
        let journal = MemoryJournal::default();
        {
            let mut entries = journal.entries.lock().unwrap();
            // "gone": the mark this node left has lapsed, or the node never reached the journal.
            entries.insert(key("mine"), JournalEntry::Logged { by: "node-1".into() });
            entries.insert(key("theirs"), JournalEntry::Logged { by: "node-2".into() });
            entries.insert(key("open"), JournalEntry::Open { record: Box::new(record("open")) });
            entries.insert(key("closed"), JournalEntry::Closed { by: "node-2".into() });
        }
        // etcd fails twice for one leg: it stays held and is asked about again after a back-off.
        journal.failing.lock().unwrap().insert(key("flaky"), 2);
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let sink = delivered.clone();
        let deliver = move |logs: Vec<PendingLog>| sink.lock().unwrap().extend(logs.into_iter().map(|log| log.key));
        settle_held_back(
            held.clone(),
            Arc::new(journal),
            "node-1".into(),
            outbox.clone(),
            deliver,
            CancellationToken::new(),
        )
        .await;

        let delivered = delivered.lock().unwrap().clone();
        assert_eq!(delivered, vec![key("gone"), key("mine"), key("flaky")], "what this node logs, each once");
        assert!(outbox.unconfirmed().unwrap().is_empty(), "nothing is left held back");
        let mut pending: Vec<String> = outbox.pending().unwrap().into_iter().map(|log| log.key).collect();
        pending.sort();
        let mut expected = delivered.clone();
        expected.sort();
        assert_eq!(pending, expected, "the legs another node logs left the outbox");
    }

    #[tokio::test(start_paused = true)]
    async fn settling_stops_on_shutdown_and_leaves_unanswered_logs_held_for_the_next_start() {
        let (_dir, outbox) = temp_outbox();
        let outbox = Arc::new(outbox);
        let held: Vec<String> =
            outbox.append_unconfirmed(&[record("C1")], 1).unwrap().into_iter().map(|log| log.key).collect();
        let journal = MemoryJournal::default();
        journal.failing.lock().unwrap().insert(held[0].clone(), usize::MAX);
        let stop = CancellationToken::new();
        stop.cancel();
        let deliver = |_: Vec<PendingLog>| panic!("nothing the journal did not answer for is delivered");
        settle_held_back(held.clone(), Arc::new(journal), "node-1".into(), outbox.clone(), deliver, stop).await;
        assert_eq!(outbox.unconfirmed().unwrap(), held, "still held back");
        assert!(outbox.pending().unwrap().is_empty());
    }
}
