//! Salesforce at the edge: the REST client ([`client`]), the durable call log outbox ([`outbox`]),
//! how answers map to the error catalogue ([`errors`]), the metrics ([`observe`]), and
//! [`Salesforce`], which starts the budget actor over them and feeds it the model's call logs.

pub mod client;
pub mod errors;
pub mod observe;
pub mod outbox;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actors::call::LegNote;
use actors::crm::actor::{self, CrmHandle, CrmParts, CrmStatus};
use actors::crm::engine::CrmSettings;
use actors::crm::port::{BudgetLedger, DeadLetter, OutboxError};
use actors::events::Publisher;
use tokio_util::sync::CancellationToken;

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
    crm: CrmHandle,
    outbox: Arc<SqliteOutbox>,
    observer: Arc<MetricsObserver>,
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce").finish_non_exhaustive()
    }
}

impl Salesforce {
    /// Opens the outbox, builds the client and starts the budget actor, which first sends what a
    /// previous run left in the outbox.
    /// In a cluster, `shared` is the cluster's ledger of the shared allowance and the size of the
    /// blocks to take from it.
    pub async fn start(
        config: &SalesforceConfig,
        publisher: Arc<Publisher>,
        shared: Option<(Arc<dyn BudgetLedger>, u32)>,
    ) -> Result<Self, SalesforceError> {
        let mut crm_config = config.crm()?;
        crm_config.budget.shared_block = shared.as_ref().map(|(_, block)| *block);
        let client = Arc::new(SalesforceClient::new(config)?);
        let path = config.outbox_path.clone();
        let outbox = Arc::new(
            tokio::task::spawn_blocking(move || SqliteOutbox::open(Path::new(&path)))
                .await
                .map_err(|error| OutboxError(error.to_string()))??,
        );
        let observer = Arc::new(MetricsObserver::new(outbox.dead_letter_count()?));
        let ledger = shared.map(|(ledger, _)| ledger);
        let parts = CrmParts { port: client, outbox: outbox.clone(), observer: observer.clone(), publisher, ledger };
        let crm = actor::start(crm_config, parts).await?;
        Ok(Self { crm, outbox, observer })
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
    /// never dropped), then hands the new call logs to the budget actor.
    pub async fn record(&self, notes: Vec<LegNote>, stop: &CancellationToken) {
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

    /// Stops the budget actor; what it had not delivered stays in the outbox for the next start.
    pub async fn shutdown(&self) {
        self.crm.shutdown().await;
    }
}
