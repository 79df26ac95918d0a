//! The running gateway: the PBX link, the bridge that feeds the model, the model of lines and
//! calls, and the call log sink; started together and stopped in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actors::call::LegNote;
use actors::crm::port::BudgetLedger;
use actors::runtime::{self, Model, ModelConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Directory, LinkPort, Translator};
use crate::cluster::journal::{EtcdJournal, LegJournal};
use crate::cluster::{Cluster, ClusterError, Etcd, EtcdLedger, LeaseClock, Serve, Serving};
use crate::config::Config;
use crate::pbx::{self, LinkEvent, LinkHandle, LinkStatus};
use crate::salesforce::{NodeLines, Salesforce, SalesforceError, SharedJournal};

/// What the gateway has seen of the phone system, for the status line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Sessions that came up.
    pub sessions: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// Device snapshots taken.
    pub snapshots: u64,
    /// Events received in order.
    pub events: u64,
    /// Call log records written.
    pub call_logs: u64,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The model's actors could not be spawned.
    #[error("starting the model of lines and calls: {0}")]
    Model(#[from] ractor::SpawnErr),
    /// The Salesforce side could not start.
    #[error("starting salesforce: {0}")]
    Salesforce(#[from] SalesforceError),
    /// The cluster member could not start.
    #[error("starting the cluster member: {0}")]
    Cluster(#[from] ClusterError),
}

/// The lines this node serves, with their fencing tokens, and those it stands by for, as the
/// cluster publishes them.
type Owned = (watch::Receiver<Arc<BTreeMap<String, i64>>>, watch::Receiver<Arc<BTreeSet<String>>>);

/// A running gateway.
pub struct Gateway {
    link: LinkHandle,
    model: Model<LinkPort>,
    shutdown: CancellationToken,
    link_task: JoinHandle<()>,
    feed_task: JoinHandle<()>,
    log_task: JoinHandle<()>,
    stop_logs: CancellationToken,
    progress: watch::Receiver<Progress>,
    salesforce: Option<Arc<Salesforce>>,
    cluster: Option<Cluster>,
    lines_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("link", &self.link).field("model", &self.model).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts the gateway's parts with `config`.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let shutdown = CancellationToken::new();
        // Some 8,000 events at most wait for the model (bursts are at most 64 frames' events, one
        // turn of the link's reading, but for a gap closing); then the link stops reading.
        let (events_tx, events) = pbx::event_channel(128);
        // In a cluster the link monitors only the lines this node owns, as the cluster says.
        let (link, link_task) = if config.cluster.enabled {
            pbx::start_selective(config.pbx.clone(), events_tx, shutdown.child_token())
        } else {
            pbx::start(config.pbx.clone(), events_tx, shutdown.child_token())
        };
        let directory = Directory::default();
        let port = Arc::new(LinkPort::new(link.clone(), directory.clone()));
        let (logs_tx, logs) = mpsc::channel(4_096);
        // With Salesforce on, open legs are journaled too, so a call that ends while the gateway is
        // down is still logged after a restart.
        let model_config = ModelConfig { journal_legs: config.salesforce.enabled, ..config.calls.model() };
        let present_tx = model_config.journal_legs.then(|| logs_tx.clone());
        let logs_tx_for_promotions = logs_tx.clone();
        let (model, router) = runtime::start(model_config.clone(), port, logs_tx).await?;
        let node_id = config.cluster.node_id(&config.grpc.listen);
        // One etcd client (one connection pool) for the node's parts, each with its own deadline.
        let etcd_timeout = LeaseClock::new(Duration::from_secs(config.cluster.lease_ttl_secs)).request_timeout();
        let etcd = if config.cluster.enabled {
            Some(Etcd::new(&config.cluster.etcd_endpoints, etcd_timeout).map_err(ClusterError::from)?)
        } else {
            None
        };
        // In a cluster, open legs are journaled in etcd, where the next owner of a line finds them.
        let journal = if let Some(etcd) = etcd.as_ref().filter(|_| model_config.journal_legs) {
            let journal = EtcdJournal::new(&config.cluster, etcd, node_id.clone());
            let journal: Arc<dyn LegJournal> = Arc::new(journal);
            let standby_window = config.cluster.standby_window();
            Some(SharedJournal { journal, node_id: node_id.clone(), standby_window })
        } else {
            None
        };
        let shared_journal = journal.is_some();
        let salesforce = if config.salesforce.enabled {
            // A cluster's nodes spend one allowance, taken in blocks from a counter in etcd.
            let budget = if let Some(etcd) = &etcd {
                let etcd = etcd.with_timeout(etcd_timeout);
                let ledger: Arc<dyn BudgetLedger> = Arc::new(EtcdLedger::new(etcd, &config.cluster.key_prefix));
                Some((ledger, config.cluster.salesforce_budget_block))
            } else {
                None
            };
            Some(Arc::new(Salesforce::start(&config.salesforce, model.publisher().clone(), budget, journal).await?))
        } else {
            None
        };
        let (cluster, lines_task) = if let Some(etcd) = &etcd {
            let (lines_tx, lines) = watch::channel(Arc::new(BTreeSet::new()));
            let lines_task =
                tokio::spawn(list_lines(config.pbx.devices.clone(), link.clone(), lines_tx, shutdown.child_token()));
            let promotions = Promotions {
                model: model.clone(),
                notes: shared_journal.then(|| logs_tx_for_promotions.clone()),
                standby: Arc::default(),
            };
            let serving = link.clone();
            let serve: Serve = Arc::new(move |lines| {
                let (link, promotions) = (serving.clone(), promotions.clone());
                Box::pin(async move { promotions.serve(&link, lines).await })
            });
            let advertise = config.cluster.advertise(&config.grpc.listen);
            let cluster = Cluster::start(&config.cluster, etcd, node_id, advertise, lines, serve)?;
            // Standby lines are watched, not served: the model says nothing of them until taken.
            model.publisher().set_scope(Arc::new(cluster.placement()));
            (Some(cluster), Some(lines_task))
        } else {
            (None, None)
        };
        let owned = cluster.as_ref().map(|cluster| (cluster.watch_owned(), cluster.watch_standby()));
        let (progress_tx, progress) = watch::channel(Progress::default());
        let first_resync = present_tx.map(|notes| ResyncNotes {
            model: model.clone(),
            notes,
            first_resync_due: true,
            taken_lines: shared_journal,
        });
        let feed_task =
            tokio::spawn(feed(events, Translator::new(directory), router, progress_tx.clone(), first_resync));
        let stop_logs = CancellationToken::new();
        let log_task = tokio::spawn(write_call_logs(logs, salesforce.clone(), owned, progress_tx, stop_logs.clone()));
        Ok(Self {
            link,
            model,
            shutdown,
            link_task,
            feed_task,
            log_task,
            stop_logs,
            progress,
            salesforce,
            cluster,
            lines_task,
        })
    }

    /// The cluster member, when `cluster.enabled`.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Stops at once, as a crash (`kill -9`) would: the link drops, the model stops, and in a
    /// cluster nothing is released and the lease is not revoked, so the others take the lines
    /// only once it lapses. For failover tests and drills.
    pub async fn kill(self) {
        if let Some(cluster) = self.cluster {
            cluster.kill();
        }
        if let Some(lines_task) = self.lines_task {
            lines_task.abort();
        }
        self.link_task.abort();
        self.feed_task.abort();
        self.log_task.abort();
        self.model.shutdown().await;
    }

    /// The PBX link, for sending requests and watching its status.
    pub fn link(&self) -> &LinkHandle {
        &self.link
    }

    /// The model of lines and calls: commands, queries, events.
    pub fn model(&self) -> &Model<LinkPort> {
        &self.model
    }

    /// Waits until the model has applied a complete resync (every monitored device's snapshot).
    pub async fn wait_resynced(&self) {
        let mut progress = self.progress.clone();
        // The sender lives as long as the feed; if it is gone, there is nothing left to wait for.
        let _ = progress.wait_for(|progress| progress.resyncs >= 1).await;
    }

    /// The Salesforce side, when enabled.
    pub fn salesforce(&self) -> Option<&Arc<Salesforce>> {
        self.salesforce.as_ref()
    }

    /// What the gateway has seen so far.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// A receiver that sees what the gateway has seen, as it changes.
    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Stops the link (failing requests in flight with a clear error), lets the feed apply what the
    /// link had delivered, stops the model, then lets the log sink write every record it was given.
    /// Waits at most `grace` for each part.
    pub async fn shutdown(self, grace: Duration) {
        // A cluster member first stops serving and gives its lines up, so the others take them
        // at once instead of after its lease's TTL.
        if let Some(cluster) = self.cluster {
            cluster.shutdown(grace).await;
        }
        self.shutdown.cancel();
        if let Some(lines_task) = self.lines_task {
            lines_task.abort();
        }
        if tokio::time::timeout(grace, self.link_task).await.is_err() {
            tracing::warn!("pbx link did not stop in time");
        }
        if tokio::time::timeout(grace, self.feed_task).await.is_err() {
            tracing::warn!("the model feed did not drain in time");
        }
        self.model.shutdown().await;
        self.stop_logs.cancel();
        if tokio::time::timeout(grace, self.log_task).await.is_err() {
            tracing::warn!("call log sink did not drain in time");
        }
        // Every call log is in the outbox now; what the budget actor has not delivered waits there
        // for the next start.
        if let Some(salesforce) = &self.salesforce {
            salesforce.shutdown().await;
        }
    }
}

/// Applies the cluster's line set to the link, and tells the model and the journal of lines taken
/// that were watched already.
#[derive(Clone)]
struct Promotions {
    model: Model<LinkPort>,
    /// Where the journal hears of lines taken, when legs are journaled.
    notes: Option<mpsc::Sender<LegNote>>,
    /// The lines stood by for last: those owned now among them were taken already watched.
    standby: Arc<tokio::sync::Mutex<BTreeSet<String>>>,
}

impl Promotions {
    /// Monitors the lines owned and stood by for. A line that goes from standby to owned gets no
    /// new snapshot (it is monitored already, and the model has its calls): its state is published
    /// now that it is in scope, and the journal is told it was taken, as a snapshot would.
    async fn serve(&self, link: &LinkHandle, lines: Serving) {
        let watched: BTreeSet<String> = lines.owned.union(&lines.standby).cloned().collect();
        let promoted: Vec<String> = {
            let mut standby = self.standby.lock().await;
            let promoted = lines.owned.iter().filter(|line| standby.contains(*line)).cloned().collect();
            *standby = lines.standby;
            promoted
        };
        // Told before the link is asked, in a task of its own: the cluster stops waiting for the
        // link after a while, and the journal must hear of every line taken. The lines taken are
        // monitored already; the link's change concerns others.
        if !promoted.is_empty() {
            tracing::info!(lines = promoted.len(), "took lines this node stood by for");
            let (model, notes) = (self.model.clone(), self.notes.clone());
            tokio::spawn(async move {
                model.settled().await;
                model.announce(&promoted);
                if let Some(notes) = notes {
                    let legs = model.legs_on(&promoted);
                    let _ = notes.send(LegNote::Taken { lines: promoted, legs }).await;
                }
            });
        }
        link.monitor_only(watched).await;
    }
}

/// Who to tell which calls the model holds once after the first resync since start, and (in a
/// cluster with a shared journal) after each batch of lines taken from another node or resynced:
/// the durable journal then closes the legs of calls that ended while no gateway watched.
struct ResyncNotes {
    model: Model<LinkPort>,
    notes: mpsc::Sender<LegNote>,
    first_resync_due: bool,
    taken_lines: bool,
}

impl ResyncNotes {
    /// Sent on the actors' own channel, after everything they said about the snapshots and before
    /// anything they say about later events.
    async fn tell(&mut self, resynced: bool, taken: Vec<String>) {
        let first_resync = resynced && self.first_resync_due;
        if first_resync || (self.taken_lines && !taken.is_empty()) {
            self.model.settled().await;
        }
        if first_resync {
            self.first_resync_due = false;
            let calls = self.model.calls().into_iter().map(|call| call.id).collect();
            let _ = self.notes.send(LegNote::Present(calls)).await;
        }
        if self.taken_lines && !taken.is_empty() {
            let legs = self.model.legs_on(&taken);
            let _ = self.notes.send(LegNote::Taken { lines: taken, legs }).await;
        }
    }
}

/// Translates link events and routes them into the model, in link order. Progress is counted once
/// the model has the batch, so "resynced" means the model has every snapshot.
async fn feed(
    mut events: pbx::LinkEvents,
    mut translator: Translator,
    mut router: runtime::Router<LinkPort>,
    progress: watch::Sender<Progress>,
    mut resync_notes: Option<ResyncNotes>,
) {
    let mut inputs = Vec::new();
    // Lines snapshotted in the resync under way (it may span batches).
    let mut resyncing = Vec::new();
    while let Some(first) = events.recv().await {
        // Take what the link has delivered already, up to a bound, and route it as one batch: an
        // actor then gets one message per batch instead of one per event.
        let mut seen = Progress::default();
        // Lines whose snapshot the model has just applied: taken mid-session, or resynced.
        let mut taken = Vec::new();
        let mut event = Some(first);
        let mut batched = 0;
        let first_resync_due = resync_notes.as_ref().is_some_and(|notes| notes.first_resync_due);
        while let Some(next) = event.take() {
            let resynced = matches!(next, LinkEvent::ResyncComplete { .. });
            match &next {
                LinkEvent::Acquired { snapshot, .. } => {
                    taken.extend(snapshot.device.iter().map(|d| d.device_id.clone()))
                }
                LinkEvent::Snapshot { snapshot, .. } => {
                    resyncing.extend(snapshot.device.iter().map(|d| d.device_id.clone()))
                }
                LinkEvent::ResyncComplete { .. } => taken.append(&mut resyncing),
                _ => {}
            }
            note(&mut seen, &next);
            translator.translate(next, &mut inputs);
            batched += 1;
            // A batch ends at a resync, so the model can be read as the snapshot left it.
            if batched < FEED_BATCH && !(resynced && first_resync_due) {
                event = events.try_recv();
            }
        }
        router.route_all(&mut inputs).await;
        if let Some(notes) = &mut resync_notes {
            notes.tell(seen.resyncs > 0, taken).await;
        }
        progress.send_modify(|progress| {
            progress.sessions += seen.sessions;
            progress.resyncs += seen.resyncs;
            progress.snapshots += seen.snapshots;
            progress.events += seen.events;
        });
    }
}

/// Link events routed together at most.
const FEED_BATCH: usize = 1_024;

fn note(seen: &mut Progress, event: &LinkEvent) {
    match event {
        LinkEvent::Up { session, pbx_name } => {
            tracing::info!(session, pbx_name, "pbx link up; resyncing");
            seen.sessions += 1;
        }
        LinkEvent::Snapshot { .. } | LinkEvent::Acquired { .. } => seen.snapshots += 1,
        LinkEvent::Released { devices, .. } => tracing::info!(lines = devices.len(), "lines released"),
        LinkEvent::ResyncComplete { devices, .. } => {
            tracing::info!(devices, "resync complete");
            seen.resyncs += 1;
        }
        LinkEvent::Event(_) => seen.events += 1,
        LinkEvent::Down { reason, .. } => tracing::warn!(reason, "pbx link down"),
    }
}

/// The lines to share in a cluster: the configured devices, or every device the PBX lists (listed
/// again on each new link session, since the PBX's devices may have changed).
async fn list_lines(
    configured: Vec<String>,
    link: LinkHandle,
    lines: watch::Sender<Arc<BTreeSet<String>>>,
    shutdown: CancellationToken,
) {
    if !configured.is_empty() {
        lines.send_replace(Arc::new(configured.into_iter().collect()));
        return;
    }
    let mut status = link.watch_status();
    let mut listed_session = 0;
    loop {
        let session = match &*status.borrow_and_update() {
            LinkStatus::Up { session, .. } => *session,
            LinkStatus::Stopped => return,
            LinkStatus::Connecting { .. } => 0,
        };
        if session != 0 && session != listed_session {
            match link.list_devices().await {
                Ok(list) => {
                    let devices: BTreeSet<String> = list
                        .into_iter()
                        .filter(|device| device.kind != proto::pbx::DeviceKind::External as i32)
                        .map(|device| device.device_id)
                        .collect();
                    tracing::info!(devices = devices.len(), "pbx devices listed for the cluster to share");
                    lines.send_replace(Arc::new(devices));
                    listed_session = session;
                }
                Err(error) => tracing::warn!(%error, "cannot list the pbx's devices; trying again"),
            }
            if listed_session != session {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Where the model's leg notes go: the outbox and its journal when Salesforce is on (committed in
/// batches, one disk sync for many), the log in any case. When told to stop, it takes no new note
/// but stores every one already given. In a cluster, only notes of lines this node owns are kept:
/// the model of a call also holds the legs of lines other nodes own, and those nodes write theirs.
async fn write_call_logs(
    mut logs: mpsc::Receiver<LegNote>,
    salesforce: Option<Arc<Salesforce>>,
    owned: Option<Owned>,
    progress: watch::Sender<Progress>,
    stop: CancellationToken,
) {
    // Storing is given up only if the process must stop and the disk still refuses the logs.
    let abandon = CancellationToken::new();
    loop {
        let first = tokio::select! {
            () = stop.cancelled(), if !logs.is_closed() => {
                logs.close();
                continue;
            }
            note = logs.recv() => match note {
                Some(note) => note,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < LOG_BATCH {
            match logs.try_recv() {
                Ok(note) => batch.push(note),
                Err(_) => break,
            }
        }
        let lines = owned.as_ref().map(|(owned, standby)| NodeLines {
            owned: (**owned.borrow()).clone(),
            standby: (**standby.borrow()).clone(),
        });
        if let Some(lines) = &lines {
            batch.retain(|note| match note {
                LegNote::Open(record) | LegNote::Closed(record) | LegNote::Skipped(record) => {
                    lines.owned.contains_key(&record.device) || lines.standby.contains(&record.device)
                }
                LegNote::Moved(_) | LegNote::Present(_) | LegNote::Taken { .. } => true,
            });
            if batch.is_empty() {
                continue;
            }
        }
        let mut records = 0;
        for note in &batch {
            if let LegNote::Closed(record) = note {
                // A standby line's record is kept, not logged (its owner logs it).
                if lines.as_ref().is_some_and(|lines| !lines.owned.contains_key(&record.device)) {
                    continue;
                }
                records += 1;
                tracing::debug!(
                    call = record.root_call_id,
                    line = record.device,
                    agent = record.agent_id.as_deref().unwrap_or(""),
                    outcome = record.outcome.as_str(),
                    direction = record.direction.as_str(),
                    talk_seconds = record.talk_seconds,
                    "call log"
                );
            }
        }
        if let Some(salesforce) = &salesforce {
            salesforce.record(batch, lines.as_ref(), &abandon).await;
        }
        progress.send_modify(|progress| progress.call_logs += records);
    }
}

/// Call logs committed to the outbox together at most.
const LOG_BATCH: usize = 512;
