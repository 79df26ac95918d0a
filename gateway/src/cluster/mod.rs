//! Clustering on etcd: several gateway nodes share the agent lines of one PBX. Each node registers
//! under a lease it keeps alive, and stops serving its lines on its own (self-fencing) a margin
//! before etcd could expire that lease. Each line has one owner, claimed with a compare-and-set
//! whose revision is the owner's fencing token; lines are spread over the live members by
//! rendezvous hashing, so a join or a leave moves only the lines that must move.
//!
//! Keys under `cluster.key_prefix` (default `/switchboard`):
//! - `members/{node}`: `{"advertise": "ip:port"}`, on the node's lease;
//! - `owners/{line}`: the owner's node id, on the owner's lease, created only if absent;
//! - `legs/{line}/{leg key}`: the open-leg journal ([`journal`]), written by the line's owner
//!   fenced by its claim, with no lease (the next owner reads it).
//!
//! A lease's keys vanish together when it expires or is revoked, so a dead node's members key and
//! its claims disappear in one revision: survivors see it gone and claim its lines.
//!
//! [`Placement`] tells the gRPC edge where a line is served, so a request can be forwarded to its
//! owner.

mod budget;
mod etcd;
pub mod journal;
mod lease;
pub mod rendezvous;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use budget::EtcdLedger;
pub use etcd::{Created, Etcd, EtcdError, KeyValue, TxnOp};
pub use lease::LeaseClock;

use crate::config::ClusterConfig;

/// Claims sent to etcd at once: enough to take thousands of lines in a second or two without
/// queueing more than etcd answers promptly.
const CLAIMS_IN_FLIGHT: usize = 32;

/// Lines claimed in one transaction: under etcd's default limit of 128 operations.
const CLAIMS_PER_TXN: usize = 100;

/// Lines claimed together, and the revision of the claim if it applied.
type ChunkClaim = (Vec<String>, Result<Option<i64>, EtcdError>);

/// Claims released together (each with its token), and whether the transaction applied.
type ChunkRelease = (Vec<(String, i64)>, Result<bool, EtcdError>);

/// Why the cluster part could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The etcd client could not be built.
    #[error("cluster: {0}")]
    Etcd(#[from] EtcdError),
}

/// The lines a node serves (it owns them) and those it stands by for (it watches them, ready to
/// take them the moment their owner's lease lapses, and answers for none of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serving {
    /// Lines owned.
    pub owned: BTreeSet<String>,
    /// Lines watched for their owner (never one of `owned`).
    pub standby: BTreeSet<String>,
}

/// Starts and stops serving lines: the gateway's link monitors exactly the lines it is given
/// (owned and standby), and the future ends once monitors of lines left out have stopped.
pub type Serve = Arc<dyn Fn(Serving) -> BoxFuture<'static, ()> + Send + Sync>;

/// A live member as this node last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The address its gRPC API is reached at by the other nodes.
    pub advertise: String,
}

/// Counters of the cluster part's life, for tests and metrics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Lines claimed.
    pub claims: AtomicU64,
    /// Lines released on a handover.
    pub releases: AtomicU64,
    /// Times the node stopped serving every line because its lease could not be known valid.
    pub self_fences: AtomicU64,
    /// Leases granted (1 at start, one more after each fence).
    pub leases: AtomicU64,
    /// etcd requests that failed.
    pub etcd_errors: AtomicU64,
}

impl ClusterStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the node's loop and its fence guard share.
struct Shared {
    node_id: String,
    /// Lines served now, with the fencing token (claim revision) of each.
    owned: watch::Sender<Arc<BTreeMap<String, i64>>>,
    /// Lines this node stands by for, as the members last read say (owned ones left out).
    standby: watch::Sender<Arc<BTreeSet<String>>>,
    members: watch::Sender<Arc<BTreeMap<String, Member>>>,
    /// When the node must stop serving unless the lease is renewed; `None` while it holds none.
    fence_at: watch::Sender<Option<Instant>>,
    fenced: AtomicBool,
    stats: ClusterStats,
    serve: Serve,
    /// One change of what is served at a time: the loop's and the guard's.
    serving: Mutex<()>,
    /// Longest wait for the link to apply a change.
    apply_timeout: Duration,
}

impl Shared {
    /// Serves `owned`, and stands by for the lines this node is ranked second for.
    async fn serve(&self, owned: BTreeMap<String, i64>) {
        self.apply(owned, true).await;
    }

    /// Serves nothing and stands by for nothing: the node is fenced or leaving.
    async fn serve_nothing(&self) {
        self.apply(BTreeMap::new(), false).await;
    }

    async fn apply(&self, owned: BTreeMap<String, i64>, stands_by: bool) {
        let _one_at_a_time = self.serving.lock().await;
        // Checked under the lock the fence also takes: once fenced, nothing is served again until a
        // new lease is held.
        let fenced = self.fenced.load(Ordering::SeqCst);
        let owned = if fenced { BTreeMap::new() } else { owned };
        let lines: BTreeSet<String> = owned.keys().cloned().collect();
        let count = lines.len();
        // A node that owns nothing still stands by (with more nodes than lines, or as a line's
        // second choice): only a fenced or leaving node stands by for nothing.
        let standby: BTreeSet<String> = if stands_by && !fenced {
            self.standby.borrow().iter().filter(|line| !owned.contains_key(*line)).cloned().collect()
        } else {
            BTreeSet::new()
        };
        self.owned.send_replace(Arc::new(owned));
        crate::metrics::cluster(self.members.borrow().len() as u64, count as u64, standby.len() as u64);
        let serving = Serving { owned: lines, standby };
        if tokio::time::timeout(self.apply_timeout, (self.serve)(serving)).await.is_err() {
            tracing::warn!("the link did not apply the cluster's line set in time");
        }
    }

    /// Stops serving every line: the lease may lapse before it is renewed.
    async fn fence(&self, reason: &str) {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stats.self_fences.fetch_add(1, Ordering::Relaxed);
        crate::metrics::cluster_self_fence();
        let lines = self.owned.borrow().len();
        tracing::error!(node = self.node_id, lines, reason, "self-fencing: stopping every line this node served");
        self.serve_nothing().await;
    }
}

/// Where a line is served, as far as this node can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node serves it.
    Here,
    /// Another member holds its claim and is reached at `advertise`.
    Node {
        /// The member's node id.
        id: String,
        /// Its gRPC address.
        advertise: String,
    },
    /// The cluster shares it but no member serves it at the moment: it is being handed over, or
    /// its owner died and a survivor has yet to claim it.
    Moving,
    /// The cluster does not share such a line (the PBX does not list it).
    Unknown,
}

/// Where the lines are: this node's, the members' addresses and each line's claim in etcd. The
/// gRPC edge routes requests with it. Cheap to clone.
#[derive(Clone)]
pub struct Placement {
    shared: Arc<Shared>,
    etcd: Arc<Etcd>,
    prefix: String,
    lines: watch::Receiver<Arc<BTreeSet<String>>>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement").field("node", &self.shared.node_id).finish_non_exhaustive()
    }
}

impl Placement {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Whether this node serves `line` now.
    pub fn serves(&self, line: &str) -> bool {
        self.shared.owned.borrow().contains_key(line)
    }

    /// The live members as last read from etcd, this node included.
    pub fn members(&self) -> Arc<BTreeMap<String, Member>> {
        self.shared.members.borrow().clone()
    }

    /// A receiver that sees every change of the members.
    pub fn watch_members(&self) -> watch::Receiver<Arc<BTreeMap<String, Member>>> {
        self.shared.members.subscribe()
    }

    /// Where `line` is served. The claim in etcd is the truth (rendezvous hashing says only where
    /// a line should go, not whether it has got there); a member that claimed the line since this
    /// node last read the members is looked up in etcd too.
    pub async fn owner(&self, line: &str) -> Result<Owner, EtcdError> {
        if self.serves(line) {
            return Ok(Owner::Here);
        }
        let claim = self.etcd.get(&format!("{}/owners/{line}", self.prefix)).await?.map(|kv| kv.value);
        let holder = match claim {
            Some(holder) if holder != self.shared.node_id => holder,
            // Claimed here but not served yet (or being released): it is on its way.
            Some(_) => return Ok(Owner::Moving),
            None if self.lines.borrow().contains(line) => return Ok(Owner::Moving),
            None => return Ok(Owner::Unknown),
        };
        let advertise = self.shared.members.borrow().get(&holder).map(|member| member.advertise.clone());
        let advertise = match advertise {
            Some(advertise) => Some(advertise),
            None => {
                self.etcd.get(&format!("{}/members/{holder}", self.prefix)).await?.map(|kv| advertise_of(&kv.value))
            }
        };
        Ok(match advertise {
            Some(advertise) if !advertise.is_empty() => Owner::Node { id: holder, advertise },
            // The holder's member key is gone: its lease lapsed and the claim goes with it.
            _ => Owner::Moving,
        })
    }
}

/// Publishes the model's events about the lines this node owns only (not those it stands by for).
impl actors::events::Scope for Placement {
    fn serves(&self, device: &str) -> bool {
        Placement::serves(self, device)
    }
}

/// The address in a member's value (`{"advertise": "ip:port"}`); empty if it has none.
fn advertise_of(value: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
    value["advertise"].as_str().unwrap_or_default().to_owned()
}

/// A running cluster member.
pub struct Cluster {
    shared: Arc<Shared>,
    placement: Placement,
    shutdown: CancellationToken,
    node: JoinHandle<()>,
    guard: JoinHandle<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.shared.node_id)
            .field("owned", &self.shared.owned.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins the cluster as `node_id`, reachable at `advertise`, over `etcd`'s connections,
    /// sharing the lines `lines` lists (it may change), serving through `serve`.
    pub fn start(
        config: &ClusterConfig,
        etcd: &Etcd,
        node_id: String,
        advertise: String,
        lines: watch::Receiver<Arc<BTreeSet<String>>>,
        serve: Serve,
    ) -> Result<Self, ClusterError> {
        let clock = LeaseClock::new(Duration::from_secs(config.lease_ttl_secs));
        let etcd = Arc::new(etcd.with_timeout(clock.request_timeout()));
        let shared = Arc::new(Shared {
            node_id,
            owned: watch::channel(Arc::default()).0,
            standby: watch::channel(Arc::default()).0,
            members: watch::channel(Arc::default()).0,
            fence_at: watch::channel(None).0,
            fenced: AtomicBool::new(false),
            stats: ClusterStats::default(),
            serve,
            serving: Mutex::new(()),
            apply_timeout: clock.margin(),
        });
        let shutdown = CancellationToken::new();
        let guard = tokio::spawn(guard(shared.clone()));
        let prefix = config.key_prefix.trim_end_matches('/').to_owned();
        let placement =
            Placement { shared: shared.clone(), etcd: etcd.clone(), prefix: prefix.clone(), lines: lines.clone() };
        let node = Node { shared: shared.clone(), etcd, clock, prefix, advertise, lines, shutdown: shutdown.clone() };
        let node = tokio::spawn(node.run());
        Ok(Self { shared, placement, shutdown, node, guard })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The lines this node serves now, each with its fencing token.
    pub fn owned(&self) -> Arc<BTreeMap<String, i64>> {
        self.shared.owned.borrow().clone()
    }

    /// A receiver that sees every change of the lines served.
    pub fn watch_owned(&self) -> watch::Receiver<Arc<BTreeMap<String, i64>>> {
        self.shared.owned.subscribe()
    }

    /// A receiver that sees every change of the lines this node stands by for.
    pub fn watch_standby(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.shared.standby.subscribe()
    }

    /// The live members as last read from etcd.
    pub fn members(&self) -> Arc<BTreeMap<String, Member>> {
        self.shared.members.borrow().clone()
    }

    /// Where the lines are, for routing requests to their owners.
    pub fn placement(&self) -> Placement {
        self.placement.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }

    /// Leaves cleanly: stops serving, then revokes the lease, which releases every claim at once so
    /// the others take the lines without waiting for a TTL.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        if tokio::time::timeout(grace, self.node).await.is_err() {
            tracing::warn!("the cluster member did not leave in time");
        }
        self.guard.abort();
    }

    /// Stops at once, as a crash would: no release, no revoke; the lease lapses in etcd.
    pub fn kill(self) {
        self.node.abort();
        self.guard.abort();
    }
}

/// Fences the node when the lease's renewal is overdue, whatever the node's loop is waiting on.
async fn guard(shared: Arc<Shared>) {
    let mut fence_at = shared.fence_at.subscribe();
    loop {
        let deadline = *fence_at.borrow_and_update();
        match deadline {
            None => {
                if fence_at.changed().await.is_err() {
                    return;
                }
            }
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        if *fence_at.borrow() == Some(deadline) {
                            shared.fence("the lease was not renewed in time").await;
                            shared.fence_at.send_replace(None);
                        }
                    }
                    changed = fence_at.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}

/// Renews `lease` every keep-alive interval from `first_due` on, moving the fence guard's deadline
/// with each renewal; returns when the lease is gone or the node has fenced (the term is over).
/// A renewal that fails leaves the deadline where it was: the guard fences when it passes.
async fn keep_alive(etcd: Arc<Etcd>, shared: Arc<Shared>, clock: LeaseClock, lease: i64, first_due: Instant) {
    let mut due = first_due;
    loop {
        tokio::time::sleep_until(due).await;
        if shared.fenced.load(Ordering::SeqCst) {
            return;
        }
        let sent = Instant::now();
        due = sent + clock.keepalive_interval();
        match etcd.keep_alive(lease).await {
            Ok(ttl) => match clock.fence_at(sent, ttl) {
                Some(at) if !shared.fenced.load(Ordering::SeqCst) => {
                    shared.fence_at.send_replace(Some(at));
                }
                Some(_) => return,
                None => {
                    shared.fence("etcd says the lease has expired").await;
                    return;
                }
            },
            Err(error) => {
                // Keep serving: the guard fences when the lease may lapse.
                shared.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = shared.node_id, %error, "etcd: renewing the lease failed");
            }
        }
    }
}

/// Keeps a watch on the members open (opened again a `pause` after it breaks), telling `changed`
/// of every change.
async fn watch_members(etcd: Arc<Etcd>, prefix: String, changed: &Notify, pause: Duration) {
    loop {
        let error = etcd.watch_prefix(&prefix, || changed.notify_one()).await;
        tracing::debug!(%error, "the watch on the cluster's members broke; opening it again");
        tokio::time::sleep(pause).await;
    }
}

struct Node {
    shared: Arc<Shared>,
    etcd: Arc<Etcd>,
    clock: LeaseClock,
    prefix: String,
    advertise: String,
    lines: watch::Receiver<Arc<BTreeSet<String>>>,
    shutdown: CancellationToken,
}

/// One lease's worth of membership.
struct Term {
    lease: i64,
    /// Claims in etcd, by line, with their revisions.
    held: BTreeMap<String, i64>,
    /// Claims given up whose deletion etcd has not confirmed yet.
    releasing: BTreeMap<String, i64>,
    /// When the lease was granted: the first renewal is due a keep-alive interval after it.
    granted_at: Instant,
}

impl Node {
    fn member_key(&self) -> String {
        format!("{}/members/{}", self.prefix, self.shared.node_id)
    }

    fn owner_key(&self, line: &str) -> String {
        format!("{}/owners/{line}", self.prefix)
    }

    fn etcd_failed(&self, what: &str, error: &EtcdError) {
        self.shared.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = self.shared.node_id, %error, "etcd: {what} failed");
    }

    fn tick(&self) -> Duration {
        self.clock.keepalive_interval().min(Duration::from_millis(250))
    }

    async fn run(mut self) {
        while !self.shutdown.is_cancelled() {
            let Some(mut term) = self.join().await else {
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.tick()) => continue,
                }
            };
            // The lease is renewed on its own schedule, whatever the term's loop is waiting on (a
            // claim of thousands of lines, the link applying them): a renewal behind a long claim
            // would let the lease lapse under a live node. The term ends when either ends.
            let renewals = keep_alive(
                self.etcd.clone(),
                self.shared.clone(),
                self.clock,
                term.lease,
                term.granted_at + self.clock.keepalive_interval(),
            );
            tokio::select! {
                () = self.serve_term(&mut term) => {}
                () = renewals => {}
            }
            if self.shutdown.is_cancelled() {
                // Leave cleanly: stop serving, then revoke (every claim goes with the lease).
                self.shared.serve_nothing().await;
                if let Err(error) = self.etcd.revoke(term.lease).await {
                    self.etcd_failed("revoking the lease on leaving", &error);
                }
                tracing::info!(node = self.shared.node_id, "left the cluster");
                break;
            }
            // The term ended in a fence: nothing is served any more (whatever ended the term, no line
            // is served once its claim may be gone); drop what is left of the old lease, if etcd
            // still has it, so its claims do not block the lines until it expires.
            self.shared.serve_nothing().await;
            if let Err(error) = self.etcd.revoke(term.lease).await {
                self.etcd_failed("revoking a fenced lease", &error);
            }
        }
        self.shared.fence_at.send_replace(None);
    }

    /// Takes a lease and registers under it.
    async fn join(&self) -> Option<Term> {
        let sent = Instant::now();
        let (lease, granted) = match self.etcd.grant(self.clock.ttl_secs()).await {
            Ok(granted) => granted,
            Err(error) => {
                self.etcd_failed("granting a lease", &error);
                return None;
            }
        };
        let value = serde_json::json!({ "advertise": self.advertise }).to_string();
        if let Err(error) = self.etcd.put(&self.member_key(), &value, lease).await {
            self.etcd_failed("registering", &error);
            let _ = self.etcd.revoke(lease).await;
            return None;
        }
        self.shared.stats.leases.fetch_add(1, Ordering::Relaxed);
        self.shared.fenced.store(false, Ordering::SeqCst);
        self.shared.fence_at.send_replace(self.clock.fence_at(sent, granted));
        tracing::info!(node = self.shared.node_id, lease, "joined the cluster");
        Some(Term { lease, held: BTreeMap::new(), releasing: BTreeMap::new(), granted_at: sent })
    }

    /// Reads the members, releases and claims, until the node fences or leaves. It does so
    /// every tick, and at once when the members change (a watch on `members/`): a dead node's
    /// lease lapsing deletes its member key, and its lines are claimed without waiting for a tick.
    async fn serve_term(&mut self, term: &mut Term) {
        let mut ticks = tokio::time::interval(self.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let members_changed = Notify::new();
        let watch =
            watch_members(self.etcd.clone(), format!("{}/members/", self.prefix), &members_changed, self.tick());
        tokio::pin!(watch);
        let mut lines_open = true;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
                () = members_changed.notified() => {}
                () = &mut watch => {}
                // A fixed list of lines (configured devices) is sent once and its sender dropped:
                // the lines stay as last sent, and the term goes on.
                changed = self.lines.changed(), if lines_open => lines_open = changed.is_ok(),
            }
            if self.shared.fenced.load(Ordering::SeqCst) {
                return;
            }
            let members = match self.etcd.range_prefix(&format!("{}/members/", self.prefix)).await {
                Ok((kvs, _)) => Some(self.publish_members(&kvs)),
                Err(error) => {
                    self.etcd_failed("reading the members", &error);
                    None
                }
            };
            self.retry_releases(term).await;
            let fresh = members.is_some();
            let members = members.unwrap_or_else(|| self.shared.members.borrow().keys().cloned().collect());
            let lease_valid = self.shared.fence_at.borrow().is_some_and(|at| Instant::now() < at);
            let lines = self.lines.borrow().clone();
            let held: BTreeSet<String> = term.held.keys().cloned().collect();
            let decision = rendezvous::decide(&self.shared.node_id, &lines, &members, &held, fresh && lease_valid);
            // A node cut off from etcd keeps what it holds: without a fresh view it cannot know
            // that another should have the lines, and its lease still protects them.
            if fresh && !decision.release.is_empty() {
                self.release(term, decision.release).await;
            }
            if !decision.claim.is_empty() {
                self.claim(term, decision.claim).await;
            }
            // The lines to stand by for follow the members; cut off from etcd, they stay.
            if fresh {
                let held: BTreeSet<String> = term.held.keys().cloned().collect();
                let standby: BTreeSet<String> = rendezvous::standby(&self.shared.node_id, &lines, &members)
                    .into_iter()
                    .filter(|line| !held.contains(line))
                    .collect();
                if **self.shared.standby.borrow() != standby {
                    tracing::info!(node = self.shared.node_id, lines = standby.len(), "standing by for lines");
                    self.shared.standby.send_replace(Arc::new(standby));
                    self.shared.serve(term.held.clone()).await;
                }
            }
        }
    }

    fn publish_members(&self, kvs: &[KeyValue]) -> BTreeSet<String> {
        let prefix = format!("{}/members/", self.prefix);
        let members: BTreeMap<String, Member> = kvs
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(&prefix)?.to_owned();
                Some((id, Member { advertise: advertise_of(&kv.value) }))
            })
            .collect();
        let ids = members.keys().cloned().collect();
        if **self.shared.members.borrow() != members {
            tracing::info!(node = self.shared.node_id, members = ?members.keys().collect::<Vec<_>>(), "cluster members changed");
            let (owned, standby) = (self.shared.owned.borrow().len(), self.shared.standby.borrow().len());
            crate::metrics::cluster(members.len() as u64, owned as u64, standby as u64);
            self.shared.members.send_replace(Arc::new(members));
        }
        ids
    }

    /// Hands lines over: stop serving them first, then delete the claims, so the next owner never
    /// finds them still monitored here.
    async fn release(&self, term: &mut Term, lines: Vec<String>) {
        for line in &lines {
            if let Some(token) = term.held.remove(line) {
                term.releasing.insert(line.clone(), token);
            }
        }
        self.shared.serve(term.held.clone()).await;
        self.shared.stats.releases.fetch_add(lines.len() as u64, Ordering::Relaxed);
        crate::metrics::cluster_ownership_change("released", lines.len() as u64);
        tracing::info!(node = self.shared.node_id, lines = lines.len(), "released lines");
        self.retry_releases(term).await;
    }

    async fn retry_releases(&self, term: &mut Term) {
        if term.releasing.is_empty() {
            return;
        }
        // A hundred claims per transaction, as they were taken: a node that hands a third of 10,000
        // lines to a newcomer would otherwise spend thousands of round trips.
        let releasing: Vec<(String, i64)> = std::mem::take(&mut term.releasing).into_iter().collect();
        let chunks: Vec<Vec<(String, i64)>> = releasing.chunks(CLAIMS_PER_TXN).map(<[_]>::to_vec).collect();
        let batched: Vec<ChunkRelease> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let keys: Vec<(String, i64)> =
                    chunk.iter().map(|(line, token)| (self.owner_key(line), *token)).collect();
                let outcome = self.etcd.delete_all_if(&keys).await;
                (chunk, outcome)
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT)
            .collect()
            .await;
        let mut one_by_one = Vec::new();
        for (chunk, outcome) in batched {
            match outcome {
                Ok(true) => {}
                // Some claim is not ours as we took it any more: each line on its own.
                Ok(false) => one_by_one.extend(chunk),
                Err(error) => {
                    self.etcd_failed("releasing lines", &error);
                    term.releasing.extend(chunk);
                }
            }
        }
        let outcomes: Vec<(String, i64, Result<bool, EtcdError>)> = futures::stream::iter(one_by_one)
            .map(|(line, token)| async move {
                let outcome = self.etcd.delete_if(&self.owner_key(&line), token).await;
                (line, token, outcome)
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT)
            .collect()
            .await;
        for (line, token, outcome) in outcomes {
            if let Err(error) = outcome {
                self.etcd_failed("releasing a line", &error);
                term.releasing.insert(line, token);
            }
        }
    }

    /// Claims lines in transactions of [`CLAIMS_PER_TXN`] (at a failover every line of the dead
    /// node is free: thousands are taken in a few dozen transactions, well within a lease
    /// renewal); a transaction that finds a line held is claimed again line by line, each with a
    /// create-if-absent. Serves those won.
    async fn claim(&self, term: &mut Term, lines: Vec<String>) {
        let (lines, adopted) = self.unclaimed(term, lines).await;
        let me = self.shared.node_id.clone();
        let lease = term.lease;
        let chunks: Vec<Vec<String>> = lines.chunks(CLAIMS_PER_TXN).map(<[String]>::to_vec).collect();
        let batched: Vec<ChunkClaim> = futures::stream::iter(chunks)
            .map(|chunk| {
                let me = me.clone();
                async move {
                    let keys: Vec<String> = chunk.iter().map(|line| self.owner_key(line)).collect();
                    let outcome = self.etcd.create_all(&keys, &me, lease).await;
                    (chunk, outcome)
                }
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT)
            .collect()
            .await;
        let mut won = adopted;
        let mut one_by_one = Vec::new();
        for (chunk, outcome) in batched {
            match outcome {
                Ok(Some(revision)) => {
                    won += chunk.len() as u64;
                    term.held.extend(chunk.into_iter().map(|line| (line, revision)));
                }
                // Some line is held, or the answer was lost: each line on its own.
                Ok(None) | Err(_) => one_by_one.extend(chunk),
            }
        }
        won += self.claim_one_by_one(term, one_by_one).await;
        if won == 0 || self.shared.fenced.load(Ordering::SeqCst) {
            return;
        }
        self.shared.stats.claims.fetch_add(won, Ordering::Relaxed);
        crate::metrics::cluster_ownership_change("claimed", won);
        tracing::info!(node = self.shared.node_id, lines = won, "claimed lines");
        self.shared.serve(term.held.clone()).await;
    }

    /// Leaves out of `lines` those another node holds now (one range over `owners/`), and takes
    /// back those held under this term's lease already (a claim whose answer was lost); returns the
    /// free ones and how many it took back. When a node joins, most of its share is still held by
    /// the members handing it over: asking for each line on its own would cost a round trip apiece,
    /// every tick, until they have.
    async fn unclaimed(&self, term: &mut Term, lines: Vec<String>) -> (Vec<String>, u64) {
        let prefix = format!("{}/owners/", self.prefix);
        let claims = match self.etcd.range_prefix(&prefix).await {
            Ok((claims, _)) => claims,
            Err(error) => {
                self.etcd_failed("reading the claims", &error);
                return (lines, 0);
            }
        };
        let holders: HashMap<&str, &KeyValue> =
            claims.iter().filter_map(|claim| Some((claim.key.strip_prefix(&prefix)?, claim))).collect();
        let mut free = Vec::new();
        let mut adopted = 0;
        for line in lines {
            match holders.get(line.as_str()) {
                None => free.push(line),
                Some(claim) if claim.value == self.shared.node_id && claim.lease == term.lease => {
                    term.held.insert(line, claim.mod_revision);
                    adopted += 1;
                }
                Some(claim) => tracing::debug!(line, holder = claim.value, "line still held"),
            }
        }
        (free, adopted)
    }

    /// Claims lines with a create-if-absent each; how many it won.
    async fn claim_one_by_one(&self, term: &mut Term, lines: Vec<String>) -> u64 {
        if lines.is_empty() {
            return 0;
        }
        let me = self.shared.node_id.clone();
        let lease = term.lease;
        let outcomes: Vec<(String, Result<Created, EtcdError>)> = futures::stream::iter(lines)
            .map(|line| {
                let me = me.clone();
                async move {
                    let outcome = self.etcd.create(&self.owner_key(&line), &me, lease).await;
                    (line, outcome)
                }
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT)
            .collect()
            .await;
        let mut won = 0;
        for (line, outcome) in outcomes {
            match outcome {
                Ok(Created::Won { revision }) => {
                    term.held.insert(line, revision);
                    won += 1;
                }
                // Our own claim whose answer was lost: it is ours, with its own revision.
                Ok(Created::Held(kv)) if kv.value == me && kv.lease == lease => {
                    term.held.insert(line, kv.mod_revision);
                    won += 1;
                }
                // Another holds it: it is handing it over, or its lease has yet to lapse.
                Ok(Created::Held(kv)) => tracing::debug!(line, holder = kv.value, "line still held"),
                Err(error) => self.etcd_failed("claiming a line", &error),
            }
        }
        won
    }
}
