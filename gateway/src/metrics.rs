//! Every metric the gateway exports, named in one place (`switchboard_` prefix, base units), with
//! help text, histogram buckets, zero registration of every known label value, the `/metrics`
//! endpoint (which adds the process's figures, read at scrape time), the collector that publishes
//! the link's, the model's and the runtime's figures, and the typed helpers the Salesforce and outbox code records through. No label ever
//! carries an agent, a number, a call id or error text.

use std::time::Duration;

use actors::domain::{AgentState, Direction, Presence};
use actors::runtime::{CallOutcome, Model, ModelStats};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use proto::wire::FrameError;
use tokio::task::JoinHandle;

use crate::bridge::LinkPort;
use crate::pbx::{LinkHandle, LinkStats, LinkStatus, ReconnectReason};

// ---- Build and process --------------------------------------------------------------------------

/// Build information, value 1; labels `version`, `git_commit`.
pub const BUILD_INFO: &str = "switchboard_build_info";
/// CPU time used by the process (standard `process_` name, so stock process dashboards work).
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Resident memory.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Virtual memory.
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// Open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// OS threads.
pub const PROCESS_THREADS: &str = "process_threads";
/// When the process started, in seconds since the Unix epoch.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// Tokio worker threads.
pub const TOKIO_WORKERS: &str = "switchboard_tokio_workers";
/// Tasks alive on the tokio runtime.
pub const TOKIO_ALIVE_TASKS: &str = "switchboard_tokio_alive_tasks";
/// Tasks waiting in the runtime's global queue.
pub const TOKIO_GLOBAL_QUEUE_DEPTH: &str = "switchboard_tokio_global_queue_depth";

// ---- PBX link -----------------------------------------------------------------------------------

/// 1 while the PBX link is registered.
pub const PBX_LINK_UP: &str = "switchboard_pbx_link_up";
/// Frames received from the PBX.
pub const PBX_FRAMES_RECEIVED: &str = "switchboard_pbx_frames_received_total";
/// Frames sent to the PBX.
pub const PBX_FRAMES_SENT: &str = "switchboard_pbx_frames_sent_total";
/// Links closed because a frame from the PBX could not be decoded; label `kind`.
pub const PBX_DECODE_ERRORS: &str = "switchboard_pbx_decode_errors_total";
/// Reconnects; label `reason` ([`ReconnectReason`]).
pub const PBX_RECONNECTS: &str = "switchboard_pbx_reconnects_total";
/// Link sessions that ended (each is followed by a reconnect).
pub const PBX_SESSIONS_LOST: &str = "switchboard_pbx_sessions_lost_total";
/// Links declared dead after missed heartbeats.
pub const PBX_HEARTBEAT_TIMEOUTS: &str = "switchboard_pbx_heartbeat_timeouts_total";
/// Seconds since the last frame from the PBX.
pub const PBX_LAST_FRAME_AGE: &str = "switchboard_pbx_last_frame_age_seconds";
/// Time from sending a request to the PBX to its outcome.
pub const PBX_REQUEST_DURATION: &str = "switchboard_pbx_request_duration_seconds";
/// Events delivered in order.
pub const PBX_EVENTS: &str = "switchboard_pbx_events_total";
/// Duplicate events dropped.
pub const PBX_DUPLICATE_EVENTS: &str = "switchboard_pbx_duplicate_events_total";
/// Lost events detected (each triggers a resync).
pub const PBX_SEQUENCE_GAPS: &str = "switchboard_pbx_sequence_gaps_total";
/// Resyncs from snapshots completed.
pub const PBX_RESYNCS: &str = "switchboard_pbx_resyncs_total";

// ---- Calls, agents, actors ----------------------------------------------------------------------

/// Calls in progress; label `direction` (inbound, outbound, internal, unknown).
pub const CALLS_ACTIVE: &str = "switchboard_calls_active";
/// Calls ended; label `outcome` ([`CallOutcome`]).
pub const CALLS_ENDED: &str = "switchboard_calls_ended_total";
/// Call log records written.
pub const CALL_LOG_RECORDS: &str = "switchboard_call_log_records_total";
/// Agent lines; labels `state` (the PBX's agent state) and `presence` (what desktops show).
pub const AGENT_LINES: &str = "switchboard_agent_lines";
/// Live actors; label `kind` (line, call).
pub const ACTORS: &str = "switchboard_actors";
/// Messages waiting in actors' mailboxes, summed; label `kind` (line, call).
pub const ACTOR_MAILBOX_MESSAGES: &str = "switchboard_actor_mailbox_messages";
/// Messages waiting in the fullest mailbox of a kind of actor; label `kind` (line, call).
pub const ACTOR_MAILBOX_MESSAGES_MAX: &str = "switchboard_actor_mailbox_messages_max";
/// Line and call actors restarted after a crash.
pub const ACTOR_RESTARTS: &str = "switchboard_actor_restarts_total";
/// Calls closed because the PBX no longer had them (sweep or resync).
pub const ORPHAN_CALLS_CLOSED: &str = "switchboard_orphan_calls_closed_total";
/// Calls ended here because they went on among outside parties only (out of the gateway's view).
pub const CALLS_LEFT_VIEW: &str = "switchboard_calls_left_view_total";

// ---- gRPC API -----------------------------------------------------------------------------------

/// gRPC requests finished; labels `service`, `method`, `code` (from the response's grpc-status).
pub const GRPC_REQUESTS: &str = "switchboard_grpc_requests_total";
/// Unary gRPC request latency; labels `service`, `method`.
pub const GRPC_REQUEST_DURATION: &str = "switchboard_grpc_request_duration_seconds";
/// Server streams open; labels `service`, `method`.
pub const GRPC_ACTIVE_STREAMS: &str = "switchboard_grpc_active_streams";
/// Requests refused for their credentials; label `reason` (unauthenticated, permission_denied).
pub const GRPC_AUTH_FAILURES: &str = "switchboard_grpc_auth_failures_total";
/// Requests refused because their client was over its rate limit.
pub const GRPC_RATE_LIMITED: &str = "switchboard_grpc_rate_limited_total";
/// Requests this node passed to another cluster node (the owner of their line, or every member for
/// a call id or a listing; each stream an Events subscriber opens on another member counts once);
/// labels `service`, `method` ([`FORWARDED_METHODS`]) and `outcome` ([`ForwardOutcome`]).
pub const GRPC_FORWARDED: &str = "switchboard_grpc_forwarded_requests_total";

/// Every (service, method) a cluster node forwards.
pub const FORWARDED_METHODS: [(&str, &str); 21] = [
    ("switchboard.v1.CallControl", "MakeCall"),
    ("switchboard.v1.CallControl", "Answer"),
    ("switchboard.v1.CallControl", "HangUp"),
    ("switchboard.v1.CallControl", "Hold"),
    ("switchboard.v1.CallControl", "Retrieve"),
    ("switchboard.v1.CallControl", "Park"),
    ("switchboard.v1.CallControl", "RetrieveParked"),
    ("switchboard.v1.CallControl", "BlindTransfer"),
    ("switchboard.v1.CallControl", "StartConsultation"),
    ("switchboard.v1.CallControl", "CompleteConsultation"),
    ("switchboard.v1.CallControl", "CancelConsultation"),
    ("switchboard.v1.CallControl", "Conference"),
    ("switchboard.v1.CallControl", "Alternate"),
    ("switchboard.v1.CallControl", "SetCallNotes"),
    ("switchboard.v1.CallControl", "GetCall"),
    ("switchboard.v1.Agents", "LogIn"),
    ("switchboard.v1.Agents", "LogOut"),
    ("switchboard.v1.Agents", "SetPresence"),
    ("switchboard.v1.Agents", "GetLine"),
    ("switchboard.v1.Agents", "ListLines"),
    ("switchboard.v1.Events", "Subscribe"),
];

// ---- Salesforce, outbox, cluster ----------------------------------------------------------------

/// Salesforce API requests; labels `operation` ([`SalesforceOperation`]), `outcome`
/// ([`SalesforceOutcome`]).
pub const SALESFORCE_REQUESTS: &str = "switchboard_salesforce_requests_total";
/// Salesforce API request latency; label `operation`.
pub const SALESFORCE_REQUEST_DURATION: &str = "switchboard_salesforce_request_duration_seconds";
/// Numbers per search, records per upsert; label `operation`.
pub const SALESFORCE_BATCH_SIZE: &str = "switchboard_salesforce_batch_size";
/// Caller lookups by cache result; label `result` (hit, miss).
pub const SALESFORCE_CACHE_LOOKUPS: &str = "switchboard_salesforce_cache_lookups_total";
/// Lookups that shared another lookup's request.
pub const SALESFORCE_COALESCED_LOOKUPS: &str = "switchboard_salesforce_coalesced_lookups_total";
/// API requests used in the org's 24-hour allowance (`Sforce-Limit-Info: api-usage=used/max`).
pub const SALESFORCE_API_USAGE: &str = "switchboard_salesforce_api_usage_requests";
/// The org's 24-hour API request allowance.
pub const SALESFORCE_API_LIMIT: &str = "switchboard_salesforce_api_limit_requests";
/// 1 on the API budget's current state; label `state` ([`BudgetState`]).
pub const SALESFORCE_BUDGET_STATE: &str = "switchboard_salesforce_budget_state";
/// Requests for a block of a cluster's shared Salesforce allowance; label `result` (granted: a
/// block came; spent: the cluster's share for the day is gone; unreachable: etcd did not answer).
pub const SALESFORCE_BUDGET_BLOCKS: &str = "switchboard_salesforce_budget_blocks_total";
/// Salesforce requests this node holds from blocks of the cluster's shared allowance.
pub const SALESFORCE_BUDGET_HELD: &str = "switchboard_salesforce_budget_held_requests";
/// Results of a request for a budget block.
pub const BUDGET_BLOCK_RESULTS: [&str; 3] = ["granted", "spent", "unreachable"];
/// Time from a line ringing to the screen pop; SLO 0.25 s.
pub const SALESFORCE_SCREEN_POP_DURATION: &str = "switchboard_salesforce_screen_pop_seconds";
/// Screen pops; label `result` ([`ScreenPopResult`]).
pub const SALESFORCE_SCREEN_POPS: &str = "switchboard_salesforce_screen_pops_total";
/// Records the gateway created; label `object` ([`RecordObject`]).
pub const SALESFORCE_RECORDS_CREATED: &str = "switchboard_salesforce_records_created_total";
/// Records waiting in the outbox.
pub const OUTBOX_DEPTH: &str = "switchboard_outbox_depth";
/// Age of the oldest record waiting in the outbox.
pub const OUTBOX_OLDEST_AGE: &str = "switchboard_outbox_oldest_age_seconds";
/// Records in the dead-letter store now.
pub const OUTBOX_DEAD_LETTERS: &str = "switchboard_outbox_dead_letters";
/// Records delivered.
pub const OUTBOX_DELIVERED: &str = "switchboard_outbox_delivered_total";
/// Delivery attempts retried.
pub const OUTBOX_RETRIES: &str = "switchboard_outbox_retries_total";
/// Records given up on and moved to the dead letters.
pub const OUTBOX_DEAD_LETTERED: &str = "switchboard_outbox_dead_lettered_total";
/// Members of this gateway's cluster that this node sees.
pub const CLUSTER_MEMBERS: &str = "switchboard_cluster_members";
/// Agent lines this node owns in its cluster.
pub const CLUSTER_OWNED_LINES: &str = "switchboard_cluster_owned_lines";
/// Agent lines this node stands by for: it monitors them, ready to take them if their owner dies.
pub const CLUSTER_STANDBY_LINES: &str = "switchboard_cluster_standby_lines";
/// Lines this node claimed or released; label `change` (`claimed`, `released`).
pub const CLUSTER_OWNERSHIP_CHANGES: &str = "switchboard_cluster_ownership_changes_total";
/// Times this node stopped serving every line because its lease could not be known valid.
pub const CLUSTER_SELF_FENCES: &str = "switchboard_cluster_self_fences_total";
/// Writes to the shared open-leg journal, one per line written; label `outcome` (`applied`,
/// `fenced`: refused for a stale token, `failed`: no answer).
pub const CLUSTER_JOURNAL_WRITES: &str = "switchboard_cluster_journal_writes_total";

// ---- Buckets: each histogram's own, one bucket on each SLO threshold ----------------------------

/// PBX requests: a CSTA request answers in milliseconds; 0.5 s is the threshold a desktop notices,
/// 5 s the default request timeout.
pub const PBX_REQUEST_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Unary gRPC requests: SLO threshold 0.25 s.
pub const GRPC_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Salesforce requests: REST calls take 0.1 to 1 s; 1 s is the threshold, 30 s the client timeout.
pub const SALESFORCE_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
/// Batch sizes: numbers per search, records per upsert (200 is the composite API's maximum).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];
/// Screen pops: SLO threshold 0.25 s from ring to pop.
pub const SCREEN_POP_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Every histogram and its buckets; a histogram missing here would render as a summary.
pub const HISTOGRAMS: [(&str, &[f64]); 5] = [
    (PBX_REQUEST_DURATION, PBX_REQUEST_BUCKETS),
    (GRPC_REQUEST_DURATION, GRPC_BUCKETS),
    (SALESFORCE_REQUEST_DURATION, SALESFORCE_BUCKETS),
    (SALESFORCE_BATCH_SIZE, BATCH_BUCKETS),
    (SALESFORCE_SCREEN_POP_DURATION, SCREEN_POP_BUCKETS),
];

// ---- Label values -------------------------------------------------------------------------------

/// Call directions as labelled; `unknown` until the model knows.
pub const DIRECTIONS: [&str; 4] = ["inbound", "outbound", "internal", "unknown"];
/// Agent states as labelled.
pub const AGENT_STATES: [&str; 5] = ["logged_off", "ready", "not_ready", "working_after_call", "do_not_disturb"];
/// gRPC status codes as labelled: tonic's names, as go-grpc-prometheus writes them.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn agent_state(state: Option<AgentState>) -> &'static str {
    match state {
        None | Some(AgentState::LoggedOff) => "logged_off",
        Some(AgentState::Ready) => "ready",
        Some(AgentState::NotReady) => "not_ready",
        Some(AgentState::WorkingAfterCall) => "working_after_call",
        Some(AgentState::DoNotDisturb) => "do_not_disturb",
    }
}

fn direction(direction: Option<Direction>) -> &'static str {
    direction.map_or("unknown", Direction::as_str)
}

// ---- Typed helpers for the Salesforce and outbox code -------------------------------------------

/// Declares a label enum: its variants, their label values, and `ALL` for zero registration.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, to register labels at zero.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value),+
                }
            }
        }
    };
}

label_enum!(
    /// A Salesforce API operation.
    SalesforceOperation {
        /// Caller lookup by phone number (SOSL/SOQL).
        Search => "search",
        /// Call log Tasks upserted through the composite API.
        UpsertTasks => "upsert_tasks",
        /// A Contact or Lead created.
        CreateRecord => "create_record",
        /// An OAuth token fetched or refreshed.
        Token => "token",
        /// The `/limits` resource read.
        Limits => "limits",
    }
);

label_enum!(
    /// How a Salesforce request ended.
    SalesforceOutcome {
        /// 2xx.
        Ok => "ok",
        /// 4xx other than auth and limits: our request was wrong.
        ClientError => "client_error",
        /// 401 or an OAuth failure.
        AuthError => "auth_error",
        /// 403 REQUEST_LIMIT_EXCEEDED, or a budget refusal.
        LimitExceeded => "limit_exceeded",
        /// 5xx.
        ServerError => "server_error",
        /// No HTTP answer: connect, TLS, timeout.
        TransportError => "transport_error",
    }
);

label_enum!(
    /// How a request forwarded to another cluster node went.
    ForwardOutcome {
        /// The other node answered OK (or, for a stream, opened it).
        Ok => "ok",
        /// The other node answered with an error status (passed on to the caller as it was).
        Error => "error",
        /// The other node did not answer: refused connection, cut, or silent until the deadline.
        Unreachable => "unreachable",
        /// Not sent: the line had no serving owner (mid-handover), etcd could not say who owns it,
        /// or the request had been forwarded here already and the line moved on (the loop guard).
        Refused => "refused",
    }
);

label_enum!(
    /// A caller lookup's cache result.
    CacheResult {
        /// Answered from the cache.
        Hit => "hit",
        /// Needed a request.
        Miss => "miss",
    }
);

label_enum!(
    /// The Salesforce API budget's state.
    BudgetState {
        /// Every operation allowed.
        Normal => "normal",
        /// Writes batched harder and slower.
        Throttled => "throttled",
        /// Only screen-pop reads; writes wait in the outbox.
        ReadsOnly => "reads_only",
        /// Nothing is sent.
        Stopped => "stopped",
    }
);

label_enum!(
    /// What a screen pop found.
    ScreenPopResult {
        /// One matching record.
        Single => "single",
        /// Several: the agent chooses.
        Multiple => "multiple",
        /// None: a new-record page.
        None => "none",
        /// The lookup failed.
        Failed => "failed",
    }
);

label_enum!(
    /// A Salesforce object the gateway creates.
    RecordObject {
        /// A Contact.
        Contact => "contact",
        /// A Lead.
        Lead => "lead",
    }
);

/// Records one Salesforce API request: its outcome and how long it took.
pub fn salesforce_request(operation: SalesforceOperation, outcome: SalesforceOutcome, seconds: f64) {
    counter!(SALESFORCE_REQUESTS, "operation" => operation.as_str(), "outcome" => outcome.as_str()).increment(1);
    histogram!(SALESFORCE_REQUEST_DURATION, "operation" => operation.as_str()).record(seconds);
}

/// Records how many numbers a search carried, or how many records an upsert carried.
pub fn salesforce_batch(operation: SalesforceOperation, size: usize) {
    histogram!(SALESFORCE_BATCH_SIZE, "operation" => operation.as_str()).record(size as f64);
}

/// Records one caller lookup against the cache.
pub fn salesforce_cache_lookup(result: CacheResult) {
    counter!(SALESFORCE_CACHE_LOOKUPS, "result" => result.as_str()).increment(1);
}

/// Records a lookup that shared another lookup's request instead of making its own.
pub fn salesforce_coalesced_lookup() {
    counter!(SALESFORCE_COALESCED_LOOKUPS).increment(1);
}

/// Publishes the org's API usage from a `Sforce-Limit-Info: api-usage=used/max` header.
pub fn salesforce_api_usage(used: u64, max: u64) {
    gauge!(SALESFORCE_API_USAGE).set(used as f64);
    gauge!(SALESFORCE_API_LIMIT).set(max as f64);
}

/// Publishes the budget's state: 1 on `current`, 0 on every other state.
pub fn salesforce_budget_state(current: BudgetState) {
    for state in BudgetState::ALL {
        gauge!(SALESFORCE_BUDGET_STATE, "state" => state.as_str()).set(if *state == current { 1.0 } else { 0.0 });
    }
}

/// Records the answer to a request for a block of the shared allowance (one of
/// [`BUDGET_BLOCK_RESULTS`]) and the requests held after it.
pub fn salesforce_budget_block(result: &'static str, held: u64) {
    counter!(SALESFORCE_BUDGET_BLOCKS, "result" => result).increment(1);
    gauge!(SALESFORCE_BUDGET_HELD).set(held as f64);
}

/// Records a screen pop: what it found and, when it popped, the seconds from ring to pop.
pub fn salesforce_screen_pop(result: ScreenPopResult, ring_to_pop_seconds: Option<f64>) {
    counter!(SALESFORCE_SCREEN_POPS, "result" => result.as_str()).increment(1);
    if let Some(seconds) = ring_to_pop_seconds {
        histogram!(SALESFORCE_SCREEN_POP_DURATION).record(seconds);
    }
}

/// Records a record the gateway created.
pub fn salesforce_record_created(object: RecordObject) {
    counter!(SALESFORCE_RECORDS_CREATED, "object" => object.as_str()).increment(1);
}

/// Publishes the outbox's state: records waiting, the oldest one's age, dead letters held.
pub fn outbox_state(depth: u64, oldest_age_seconds: f64, dead_letters: u64) {
    gauge!(OUTBOX_DEPTH).set(depth as f64);
    gauge!(OUTBOX_OLDEST_AGE).set(oldest_age_seconds);
    gauge!(OUTBOX_DEAD_LETTERS).set(dead_letters as f64);
}

/// Records records delivered from the outbox.
pub fn outbox_delivered(records: u64) {
    counter!(OUTBOX_DELIVERED).increment(records);
}

/// Records a delivery attempt that will be retried.
pub fn outbox_retried() {
    counter!(OUTBOX_RETRIES).increment(1);
}

/// Records a record given up on and moved to the dead letters.
pub fn outbox_dead_lettered() {
    counter!(OUTBOX_DEAD_LETTERED).increment(1);
}

/// Counts a request forwarded to another cluster node (or not sent, [`ForwardOutcome::Refused`]).
pub fn grpc_forwarded(service: &'static str, method: &'static str, outcome: ForwardOutcome) {
    counter!(GRPC_FORWARDED, "service" => service, "method" => method, "outcome" => outcome.as_str()).increment(1);
}

/// Publishes what this node sees of its cluster.
pub fn cluster(members: u64, owned_lines: u64, standby_lines: u64) {
    gauge!(CLUSTER_MEMBERS).set(members as f64);
    gauge!(CLUSTER_OWNED_LINES).set(owned_lines as f64);
    gauge!(CLUSTER_STANDBY_LINES).set(standby_lines as f64);
}

/// Records lines claimed or released (`change` is `claimed` or `released`).
pub fn cluster_ownership_change(change: &'static str, lines: u64) {
    counter!(CLUSTER_OWNERSHIP_CHANGES, "change" => change).increment(lines);
}

/// Records a self-fence.
pub fn cluster_self_fence() {
    counter!(CLUSTER_SELF_FENCES).increment(1);
}

/// The outcomes of a line's journal write.
pub const JOURNAL_WRITE_OUTCOMES: [&str; 3] = ["applied", "fenced", "failed"];

/// Records one line's journal write (`outcome` is one of [`JOURNAL_WRITE_OUTCOMES`]).
pub fn cluster_journal_write(outcome: &'static str) {
    counter!(CLUSTER_JOURNAL_WRITES, "outcome" => outcome).increment(1);
}

// ---- The exporter -------------------------------------------------------------------------------

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("installing the metrics recorder: {0}")]
pub struct ExporterError(#[from] metrics_exporter_prometheus::BuildError);

/// The exporter's builder: every histogram with its own buckets (never a summary).
pub fn builder() -> Result<PrometheusBuilder, ExporterError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in HISTOGRAMS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
    }
    Ok(builder)
}

/// Installs the process-wide recorder (once per process), describes and registers every metric,
/// and serves `GET /metrics` on `listener` until `shutdown`. Returns the server's task.
pub fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<JoinHandle<()>, ExporterError> {
    let handle = builder()?.install_recorder()?;
    register();
    Ok(tokio::spawn(serve_handle(listener, handle, shutdown)))
}

async fn serve_handle(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let upkeep = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                let mut text = handle.render();
                // The process's figures are read at scrape time and written here, not through the
                // recorder: `metrics` counters are integers, and CPU seconds need their fraction.
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&process::render());
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
            }
        }),
    );
    let mut upkeep_ticks = tokio::time::interval(Duration::from_secs(5));
    let serve = std::future::IntoFuture::into_future(
        axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()),
    );
    tokio::pin!(serve);
    loop {
        tokio::select! {
            outcome = &mut serve => {
                if let Err(error) = outcome {
                    tracing::error!(%error, "metrics endpoint failed");
                }
                return;
            }
            _ = upkeep_ticks.tick() => upkeep.run_upkeep(),
        }
    }
}

/// Describes every metric and registers every known label value at zero, so every series exists
/// from the first scrape (a counter born at its first increment hides that increment from
/// `rate()`). Call it with the recorder installed.
pub fn register() {
    describe();
    let git_commit = option_env!("SWITCHBOARD_GIT_COMMIT").unwrap_or("unknown");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_commit" => git_commit).set(1.0);
    for name in [PBX_LINK_UP, PBX_LAST_FRAME_AGE] {
        gauge!(name).set(0.0);
    }
    for name in [
        PBX_FRAMES_RECEIVED,
        PBX_FRAMES_SENT,
        PBX_SESSIONS_LOST,
        PBX_HEARTBEAT_TIMEOUTS,
        PBX_EVENTS,
        PBX_DUPLICATE_EVENTS,
        PBX_SEQUENCE_GAPS,
        PBX_RESYNCS,
        CALL_LOG_RECORDS,
        ACTOR_RESTARTS,
        ORPHAN_CALLS_CLOSED,
        CALLS_LEFT_VIEW,
        GRPC_RATE_LIMITED,
        SALESFORCE_COALESCED_LOOKUPS,
        OUTBOX_DELIVERED,
        OUTBOX_RETRIES,
        OUTBOX_DEAD_LETTERED,
        CLUSTER_SELF_FENCES,
    ] {
        counter!(name).absolute(0);
    }
    for outcome in JOURNAL_WRITE_OUTCOMES {
        counter!(CLUSTER_JOURNAL_WRITES, "outcome" => outcome).absolute(0);
    }
    for change in ["claimed", "released"] {
        counter!(CLUSTER_OWNERSHIP_CHANGES, "change" => change).absolute(0);
    }
    for kind in FrameError::KINDS {
        counter!(PBX_DECODE_ERRORS, "kind" => kind).absolute(0);
    }
    for reason in ReconnectReason::ALL {
        counter!(PBX_RECONNECTS, "reason" => reason.as_str()).absolute(0);
    }
    let _ = histogram!(PBX_REQUEST_DURATION);
    for direction in DIRECTIONS {
        gauge!(CALLS_ACTIVE, "direction" => direction).set(0.0);
    }
    for outcome in CallOutcome::ALL {
        counter!(CALLS_ENDED, "outcome" => outcome.as_str()).absolute(0);
    }
    for state in AGENT_STATES {
        for presence in Presence::ALL {
            gauge!(AGENT_LINES, "state" => state, "presence" => presence.as_str()).set(0.0);
        }
    }
    for kind in ["line", "call"] {
        gauge!(ACTORS, "kind" => kind).set(0.0);
        gauge!(ACTOR_MAILBOX_MESSAGES, "kind" => kind).set(0.0);
        gauge!(ACTOR_MAILBOX_MESSAGES_MAX, "kind" => kind).set(0.0);
    }
    crate::grpc::register_metrics();
    for reason in ["unauthenticated", "permission_denied"] {
        counter!(GRPC_AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    for (service, method) in FORWARDED_METHODS {
        for outcome in ForwardOutcome::ALL {
            counter!(GRPC_FORWARDED, "service" => service, "method" => method, "outcome" => outcome.as_str())
                .absolute(0);
        }
    }
    for operation in SalesforceOperation::ALL {
        for outcome in SalesforceOutcome::ALL {
            counter!(SALESFORCE_REQUESTS, "operation" => operation.as_str(), "outcome" => outcome.as_str()).absolute(0);
        }
        let _ = histogram!(SALESFORCE_REQUEST_DURATION, "operation" => operation.as_str());
    }
    for operation in [SalesforceOperation::Search, SalesforceOperation::UpsertTasks] {
        let _ = histogram!(SALESFORCE_BATCH_SIZE, "operation" => operation.as_str());
    }
    for result in CacheResult::ALL {
        counter!(SALESFORCE_CACHE_LOOKUPS, "result" => result.as_str()).absolute(0);
    }
    for result in ScreenPopResult::ALL {
        counter!(SALESFORCE_SCREEN_POPS, "result" => result.as_str()).absolute(0);
    }
    for object in RecordObject::ALL {
        counter!(SALESFORCE_RECORDS_CREATED, "object" => object.as_str()).absolute(0);
    }
    let _ = histogram!(SALESFORCE_SCREEN_POP_DURATION);
    // Until the Salesforce client reports, the budget is what it is at start: normal, unused.
    salesforce_budget_state(BudgetState::Normal);
    salesforce_api_usage(0, 0);
    for result in BUDGET_BLOCK_RESULTS {
        counter!(SALESFORCE_BUDGET_BLOCKS, "result" => result).absolute(0);
    }
    gauge!(SALESFORCE_BUDGET_HELD).set(0.0);
    outbox_state(0, 0.0, 0);
    // A single node is a cluster of one that owns nothing it could hand over; a cluster node sets
    // these as it joins.
    cluster(1, 0, 0);
    publish_runtime();
}

fn describe() {
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    describe_gauge!(TOKIO_WORKERS, "Worker threads of the tokio runtime.");
    describe_gauge!(TOKIO_ALIVE_TASKS, "Tasks alive on the tokio runtime.");
    describe_gauge!(TOKIO_GLOBAL_QUEUE_DEPTH, "Tasks waiting in the tokio runtime's global queue.");
    describe_gauge!(PBX_LINK_UP, "1 while the PBX link is registered, else 0.");
    describe_counter!(PBX_FRAMES_RECEIVED, "Frames received from the PBX.");
    describe_counter!(PBX_FRAMES_SENT, "Frames sent to the PBX.");
    describe_counter!(PBX_DECODE_ERRORS, "PBX links closed because a frame could not be decoded, by kind of error.");
    describe_counter!(PBX_RECONNECTS, "Reconnects to the PBX, by why the link was lost or not established.");
    describe_counter!(PBX_SESSIONS_LOST, "PBX link sessions that ended; each is followed by a reconnect.");
    describe_counter!(PBX_HEARTBEAT_TIMEOUTS, "PBX links declared dead after missed heartbeats.");
    describe_gauge!(PBX_LAST_FRAME_AGE, "Seconds since the last frame from the PBX (since start if none yet).");
    describe_histogram!(PBX_REQUEST_DURATION, "Seconds from sending a request to the PBX to its outcome.");
    describe_counter!(PBX_EVENTS, "PBX events delivered to the model in order.");
    describe_counter!(PBX_DUPLICATE_EVENTS, "Duplicate PBX events dropped.");
    describe_counter!(PBX_SEQUENCE_GAPS, "Lost PBX events detected; each triggers a resync.");
    describe_counter!(PBX_RESYNCS, "Resyncs from PBX snapshots completed.");
    describe_gauge!(CALLS_ACTIVE, "Calls in progress, by direction.");
    describe_counter!(CALLS_ENDED, "Calls ended, by outcome.");
    describe_counter!(CALL_LOG_RECORDS, "Call log records written, one per agent leg.");
    describe_gauge!(AGENT_LINES, "Agent lines, by the PBX's agent state and the presence desktops show.");
    describe_gauge!(ACTORS, "Live actors of the model, by kind.");
    describe_gauge!(
        ACTOR_MAILBOX_MESSAGES,
        "Messages waiting in the model's actors' mailboxes, summed over the actors of a kind."
    );
    describe_gauge!(
        ACTOR_MAILBOX_MESSAGES_MAX,
        "Messages waiting in the fullest mailbox among the model's actors of a kind."
    );
    describe_counter!(ACTOR_RESTARTS, "Line and call actors restarted after a crash.");
    describe_counter!(ORPHAN_CALLS_CLOSED, "Calls closed because the PBX no longer had them.");
    describe_counter!(
        CALLS_LEFT_VIEW,
        "Calls ended here because the PBX went on with them among outside parties only (no monitored device left)."
    );
    describe_counter!(GRPC_REQUESTS, "gRPC requests finished, by service, method and status code.");
    describe_histogram!(GRPC_REQUEST_DURATION, "Seconds to answer a unary gRPC request, by service and method.");
    describe_gauge!(GRPC_ACTIVE_STREAMS, "gRPC server streams open, by service and method.");
    describe_counter!(GRPC_AUTH_FAILURES, "gRPC requests refused for their credentials, by reason.");
    describe_counter!(GRPC_RATE_LIMITED, "gRPC requests refused because their client was over its rate limit.");
    describe_counter!(
        GRPC_FORWARDED,
        "gRPC requests passed to another cluster node, by service, method and outcome (refused: not sent)."
    );
    describe_counter!(SALESFORCE_REQUESTS, "Salesforce API requests, by operation and outcome.");
    describe_histogram!(SALESFORCE_REQUEST_DURATION, "Seconds per Salesforce API request, by operation.");
    describe_histogram!(SALESFORCE_BATCH_SIZE, "Numbers per search or records per upsert, by operation.");
    describe_counter!(SALESFORCE_CACHE_LOOKUPS, "Caller lookups, by cache result.");
    describe_counter!(SALESFORCE_COALESCED_LOOKUPS, "Caller lookups that shared another lookup's request.");
    describe_gauge!(SALESFORCE_API_USAGE, "API requests used in the org's 24-hour allowance (Sforce-Limit-Info).");
    describe_gauge!(SALESFORCE_API_LIMIT, "The org's 24-hour API request allowance (Sforce-Limit-Info).");
    describe_counter!(
        SALESFORCE_BUDGET_BLOCKS,
        "Requests for a block of the cluster's shared Salesforce allowance, by result."
    );
    describe_gauge!(SALESFORCE_BUDGET_HELD, "Salesforce requests this node holds from the cluster's shared allowance.");
    describe_gauge!(SALESFORCE_BUDGET_STATE, "1 on the Salesforce API budget's current state, 0 on the others.");
    describe_histogram!(SALESFORCE_SCREEN_POP_DURATION, "Seconds from a line ringing to its screen pop.");
    describe_counter!(SALESFORCE_SCREEN_POPS, "Screen pops, by what the lookup found.");
    describe_counter!(SALESFORCE_RECORDS_CREATED, "Salesforce records the gateway created, by object.");
    describe_gauge!(OUTBOX_DEPTH, "Records waiting in the outbox.");
    describe_gauge!(OUTBOX_OLDEST_AGE, "Age in seconds of the oldest record waiting in the outbox.");
    describe_gauge!(OUTBOX_DEAD_LETTERS, "Records held in the dead-letter store.");
    describe_counter!(OUTBOX_DELIVERED, "Records delivered from the outbox.");
    describe_counter!(OUTBOX_RETRIES, "Outbox delivery attempts that will be retried.");
    describe_counter!(OUTBOX_DEAD_LETTERED, "Records given up on and moved to the dead letters.");
    describe_gauge!(CLUSTER_MEMBERS, "Members of this gateway's cluster that this node sees.");
    describe_gauge!(CLUSTER_OWNED_LINES, "Agent lines this node owns in its cluster.");
    describe_gauge!(CLUSTER_STANDBY_LINES, "Agent lines this node monitors as their standby, ready to take them.");
    describe_counter!(CLUSTER_OWNERSHIP_CHANGES, "Lines this node claimed or released, by change.");
    describe_counter!(CLUSTER_SELF_FENCES, "Times this node stopped serving every line for want of a valid lease.");
    describe_counter!(
        CLUSTER_JOURNAL_WRITES,
        "Lines written to the shared open-leg journal, by outcome (fenced: refused for a stale token)."
    );
}

// ---- The collector ------------------------------------------------------------------------------

/// Publishes the link's, the model's and the runtime's figures every `interval`, until aborted. The hot paths only bump atomics; this turns them into metrics.
pub fn collect(link: LinkHandle, model: Model<LinkPort>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::SystemTime::now();
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            publish(&link, &model, started);
            publish_runtime();
        }
    })
}

fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH).map(|since| since.as_secs_f64()).unwrap_or_default()
}

fn publish(link: &LinkHandle, model: &Model<LinkPort>, started: std::time::SystemTime) {
    let up = matches!(link.status(), LinkStatus::Up { .. });
    gauge!(PBX_LINK_UP).set(if up { 1.0 } else { 0.0 });
    let stats = link.stats();
    for (name, value) in [
        (PBX_FRAMES_RECEIVED, &stats.frames_in),
        (PBX_FRAMES_SENT, &stats.frames_out),
        (PBX_SESSIONS_LOST, &stats.sessions_lost),
        (PBX_HEARTBEAT_TIMEOUTS, &stats.heartbeat_timeouts),
        (PBX_EVENTS, &stats.events),
        (PBX_DUPLICATE_EVENTS, &stats.duplicate_events),
        (PBX_SEQUENCE_GAPS, &stats.sequence_gaps),
        (PBX_RESYNCS, &stats.resyncs),
    ] {
        counter!(name).absolute(LinkStats::get(value));
    }
    for (kind, value) in FrameError::KINDS.iter().zip(&stats.decode_errors_by_kind) {
        counter!(PBX_DECODE_ERRORS, "kind" => *kind).absolute(LinkStats::get(value));
    }
    for (reason, value) in ReconnectReason::ALL.iter().zip(&stats.reconnects) {
        counter!(PBX_RECONNECTS, "reason" => reason.as_str()).absolute(LinkStats::get(value));
    }
    let last_frame_ms = LinkStats::get(&stats.last_frame_unix_ms);
    let last_frame = if last_frame_ms == 0 { unix_seconds(started) } else { last_frame_ms as f64 / 1000.0 };
    gauge!(PBX_LAST_FRAME_AGE).set((unix_seconds(std::time::SystemTime::now()) - last_frame).max(0.0));

    let (lines, calls) = model.actor_counts();
    gauge!(ACTORS, "kind" => "line").set(lines as f64);
    gauge!(ACTORS, "kind" => "call").set(calls as f64);
    let (lines, calls) = model.mailbox_depths();
    for (kind, depth) in [("line", lines), ("call", calls)] {
        gauge!(ACTOR_MAILBOX_MESSAGES, "kind" => kind).set(depth.total as f64);
        gauge!(ACTOR_MAILBOX_MESSAGES_MAX, "kind" => kind).set(f64::from(depth.deepest));
    }
    let mut by_direction = [0u64; DIRECTIONS.len()];
    for call in model.calls() {
        let label = direction(call.direction);
        if let Some(slot) = DIRECTIONS.iter().position(|known| *known == label) {
            by_direction[slot] += 1;
        }
    }
    for (label, count) in DIRECTIONS.iter().zip(by_direction) {
        gauge!(CALLS_ACTIVE, "direction" => *label).set(count as f64);
    }
    let mut by_state = [[0u64; Presence::ALL.len()]; AGENT_STATES.len()];
    for line in model.lines() {
        let state = agent_state(line.agent.as_ref().map(|agent| agent.state));
        let state = AGENT_STATES.iter().position(|known| *known == state).unwrap_or(0);
        let presence = Presence::ALL.iter().position(|known| *known == line.presence).unwrap_or(0);
        by_state[state][presence] += 1;
    }
    for (state, counts) in AGENT_STATES.iter().zip(by_state) {
        for (presence, count) in Presence::ALL.iter().zip(counts) {
            gauge!(AGENT_LINES, "state" => *state, "presence" => presence.as_str()).set(count as f64);
        }
    }
    let stats = model.stats();
    for (name, value) in [
        (CALL_LOG_RECORDS, &stats.records),
        (ACTOR_RESTARTS, &stats.restarts),
        (ORPHAN_CALLS_CLOSED, &stats.orphans_closed),
        (CALLS_LEFT_VIEW, &stats.out_of_view_closed),
    ] {
        counter!(name).absolute(ModelStats::get(value));
    }
    for (outcome, value) in CallOutcome::ALL.iter().zip(&stats.calls_ended_by_outcome) {
        counter!(CALLS_ENDED, "outcome" => outcome.as_str()).absolute(ModelStats::get(value));
    }
}

/// Tokio's stable runtime figures, when called on a runtime.
fn publish_runtime() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let figures = runtime.metrics();
    gauge!(TOKIO_WORKERS).set(figures.num_workers() as f64);
    gauge!(TOKIO_ALIVE_TASKS).set(figures.num_alive_tasks() as f64);
    gauge!(TOKIO_GLOBAL_QUEUE_DEPTH).set(figures.global_queue_depth() as f64);
}

/// Reading the process's own figures from /proc: a few small files once a second, no dependency.
mod process {
    /// What /proc says of this process.
    pub(super) struct Figures {
        pub(super) cpu_seconds: f64,
        pub(super) resident_bytes: u64,
        pub(super) virtual_bytes: u64,
        pub(super) threads: u64,
        pub(super) open_fds: u64,
        pub(super) max_fds: Option<u64>,
        pub(super) start_time_seconds: Option<f64>,
    }

    /// USER_HZ, the unit of /proc's clock ticks: 100 on every Linux ABI userspace sees.
    const TICKS_PER_SECOND: f64 = 100.0;

    /// The figures in the Prometheus text format, with help and type; empty where /proc is not.
    pub(super) fn render() -> String {
        use super::{
            PROCESS_CPU_SECONDS, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY, PROCESS_START_TIME,
            PROCESS_THREADS, PROCESS_VIRTUAL_MEMORY,
        };
        let Some(figures) = read() else { return String::new() };
        let mut text = String::new();
        let mut write = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(value) = value {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
            }
        };
        write(
            PROCESS_CPU_SECONDS,
            "counter",
            "Total user and system CPU time spent in seconds.",
            Some(figures.cpu_seconds),
        );
        write(PROCESS_RESIDENT_MEMORY, "gauge", "Resident memory size in bytes.", Some(figures.resident_bytes as f64));
        write(PROCESS_VIRTUAL_MEMORY, "gauge", "Virtual memory size in bytes.", Some(figures.virtual_bytes as f64));
        write(PROCESS_OPEN_FDS, "gauge", "Number of open file descriptors.", Some(figures.open_fds as f64));
        write(
            PROCESS_MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors.",
            figures.max_fds.map(|max| max as f64),
        );
        write(PROCESS_THREADS, "gauge", "Number of OS threads in the process.", Some(figures.threads as f64));
        let help = "Start time of the process since unix epoch in seconds.";
        write(PROCESS_START_TIME, "gauge", help, figures.start_time_seconds);
        text
    }

    pub(super) fn read() -> Option<Figures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses; fields are counted after its last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // After the name, field 1 is the state (field 3 of proc(5)); utime and stime are 14 and 15.
        let field = |number: usize| fields.get(number - 3).and_then(|value| value.parse::<u64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kilobytes = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
        };
        let resident_bytes = kilobytes("VmRSS:").unwrap_or(0) * 1024;
        let virtual_bytes = kilobytes("VmSize:").unwrap_or(0) * 1024;
        let threads = kilobytes("Threads:").unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|entries| entries.count() as u64).unwrap_or(0);
        let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
            limits
                .lines()
                .find_map(|line| line.strip_prefix("Max open files"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
        });
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
            stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|value| value.trim().parse::<u64>().ok())
        });
        let start_time_seconds =
            boot_time.zip(field(22)).map(|(boot, ticks)| boot as f64 + ticks as f64 / TICKS_PER_SECOND);
        Some(Figures { cpu_seconds, resident_bytes, virtual_bytes, threads, open_fds, max_fds, start_time_seconds })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        #[cfg(target_os = "linux")]
        fn this_process_has_memory_threads_and_open_files() {
            let figures = super::read().expect("/proc/self is readable on Linux");
            assert!(figures.resident_bytes > 0);
            assert!(figures.virtual_bytes >= figures.resident_bytes);
            assert!(figures.threads >= 1);
            assert!(figures.open_fds >= 1);
            assert!(figures.max_fds.is_some_and(|max| max >= figures.open_fds));
            let now = super::super::unix_seconds(std::time::SystemTime::now());
            assert!(figures.start_time_seconds.is_some_and(|start| start > 1.0e9 && start <= now + 1.0));
        }

        #[test]
        #[cfg(target_os = "linux")]
        fn the_process_figures_render_with_help_and_type() {
            let text = super::render();
            for name in [
                super::super::PROCESS_CPU_SECONDS,
                super::super::PROCESS_RESIDENT_MEMORY,
                super::super::PROCESS_START_TIME,
            ] {
                assert!(text.contains(&format!("# HELP {name} ")), "{text}");
                assert!(text.contains(&format!("# TYPE {name} ")), "{text}");
                let value = text.lines().find_map(|line| line.strip_prefix(&format!("{name} "))).unwrap();
                assert!(value.parse::<f64>().is_ok_and(|value| value >= 0.0), "{text}");
            }
            assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders what [`register`] exports, with one sample in each histogram.
    fn rendered() -> String {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            register();
            salesforce_request(SalesforceOperation::Search, SalesforceOutcome::Ok, 0.2);
            salesforce_batch(SalesforceOperation::UpsertTasks, 17);
            salesforce_screen_pop(ScreenPopResult::Single, Some(0.1));
            salesforce_budget_state(BudgetState::Throttled);
        });
        handle.render()
    }

    #[test]
    fn every_histogram_has_buckets_on_its_slo_threshold_and_none_is_a_summary() {
        let text = rendered();
        assert!(!text.contains("quantile="), "a histogram rendered as a summary:\n{text}");
        for (name, _) in HISTOGRAMS {
            assert!(text.contains(&format!("# TYPE {name} histogram")), "{name} is not a histogram");
        }
        assert!(text.contains("switchboard_salesforce_screen_pop_seconds_bucket{le=\"0.25\"} 1"), "{text}");
        assert!(text.contains("switchboard_grpc_request_duration_seconds_bucket{service=\"switchboard.v1.Agents\",method=\"ListLines\",le=\"0.25\"} 0"), "{text}");
    }

    #[test]
    fn every_series_has_help_and_follows_the_naming_rules() {
        let text = rendered();
        let mut names = std::collections::BTreeSet::new();
        for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            let family = if text.contains(&format!("# TYPE {family} ")) { family } else { name };
            names.insert(family.to_owned());
        }
        for name in &names {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help text");
            assert!(name.starts_with("switchboard_") || name.starts_with("process_"), "{name} has no prefix");
            let counter = text.contains(&format!("# TYPE {name} counter"));
            assert_eq!(counter, name.ends_with("_total"), "{name}: counters and only counters end in _total");
        }
        for needed in [SALESFORCE_REQUESTS, OUTBOX_OLDEST_AGE, CLUSTER_OWNED_LINES, GRPC_REQUESTS, PBX_RECONNECTS] {
            assert!(names.contains(needed), "{needed} is not registered at start");
        }
    }

    #[test]
    fn the_budget_state_is_one_on_the_current_state_only() {
        let text = rendered();
        assert!(text.contains("switchboard_salesforce_budget_state{state=\"throttled\"} 1"), "{text}");
        assert!(text.contains("switchboard_salesforce_budget_state{state=\"normal\"} 0"), "{text}");
    }
}
