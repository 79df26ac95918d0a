//! Every metric the gateway exports, named in one place (`switchboard_` prefix, base units), and the
//! collector that publishes the link's and the model's counters. No label ever carries an agent, a
//! number or a call id.

use std::time::Duration;

use actors::runtime::{Model, ModelStats};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::task::JoinHandle;

use crate::bridge::LinkPort;
use crate::pbx::{LinkHandle, LinkStats, LinkStatus};

/// 1 while the PBX link is registered.
pub const PBX_LINK_UP: &str = "switchboard_pbx_link_up";
/// Frames received from the PBX.
pub const PBX_FRAMES_RECEIVED: &str = "switchboard_pbx_frames_received_total";
/// Frames sent to the PBX.
pub const PBX_FRAMES_SENT: &str = "switchboard_pbx_frames_sent_total";
/// Links closed because a frame from the PBX could not be decoded.
pub const PBX_DECODE_ERRORS: &str = "switchboard_pbx_decode_errors_total";
/// Link sessions that ended (each is followed by a reconnect).
pub const PBX_SESSIONS_LOST: &str = "switchboard_pbx_sessions_lost_total";
/// Links declared dead after missed heartbeats.
pub const PBX_HEARTBEAT_TIMEOUTS: &str = "switchboard_pbx_heartbeat_timeouts_total";
/// Events delivered in order.
pub const PBX_EVENTS: &str = "switchboard_pbx_events_total";
/// Duplicate events dropped.
pub const PBX_DUPLICATE_EVENTS: &str = "switchboard_pbx_duplicate_events_total";
/// Lost events detected (each triggers a resync).
pub const PBX_SEQUENCE_GAPS: &str = "switchboard_pbx_sequence_gaps_total";
/// Resyncs from snapshots completed.
pub const PBX_RESYNCS: &str = "switchboard_pbx_resyncs_total";
/// Agent lines the model mirrors.
pub const LINES: &str = "switchboard_lines";
/// Calls in progress.
pub const CALLS_ACTIVE: &str = "switchboard_calls_active";
/// Calls ended.
pub const CALLS_ENDED: &str = "switchboard_calls_ended_total";
/// Call log records written.
pub const CALL_LOG_RECORDS: &str = "switchboard_call_log_records_total";
/// Line and call actors restarted after a crash.
pub const ACTOR_RESTARTS: &str = "switchboard_actor_restarts_total";
/// Calls closed because the PBX no longer had them (sweep or resync).
pub const ORPHAN_CALLS_CLOSED: &str = "switchboard_orphan_calls_closed_total";
/// Build information, value 1.
pub const BUILD_INFO: &str = "switchboard_build_info";

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("installing the metrics recorder: {0}")]
pub struct ExporterError(#[from] metrics_exporter_prometheus::BuildError);

/// Installs the process-wide recorder (once per process) and serves `GET /metrics` on `listener`
/// until `shutdown`. Returns the server's task.
pub fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<JoinHandle<()>, ExporterError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe();
    let upkeep = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
            }
        }),
    );
    Ok(tokio::spawn(async move {
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
    }))
}

fn describe() {
    describe_gauge!(PBX_LINK_UP, "1 while the PBX link is registered, else 0.");
    describe_counter!(PBX_FRAMES_RECEIVED, "Frames received from the PBX.");
    describe_counter!(PBX_FRAMES_SENT, "Frames sent to the PBX.");
    describe_counter!(PBX_DECODE_ERRORS, "PBX links closed because a frame could not be decoded.");
    describe_counter!(PBX_SESSIONS_LOST, "PBX link sessions that ended; each is followed by a reconnect.");
    describe_counter!(PBX_HEARTBEAT_TIMEOUTS, "PBX links declared dead after missed heartbeats.");
    describe_counter!(PBX_EVENTS, "PBX events delivered to the model in order.");
    describe_counter!(PBX_DUPLICATE_EVENTS, "Duplicate PBX events dropped.");
    describe_counter!(PBX_SEQUENCE_GAPS, "Lost PBX events detected; each triggers a resync.");
    describe_counter!(PBX_RESYNCS, "Resyncs from PBX snapshots completed.");
    describe_gauge!(LINES, "Agent lines the model mirrors.");
    describe_gauge!(CALLS_ACTIVE, "Calls in progress.");
    describe_counter!(CALLS_ENDED, "Calls ended.");
    describe_counter!(CALL_LOG_RECORDS, "Call log records written, one per agent leg.");
    describe_counter!(ACTOR_RESTARTS, "Line and call actors restarted after a crash.");
    describe_counter!(ORPHAN_CALLS_CLOSED, "Calls closed because the PBX no longer had them.");
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Publishes the link's and the model's counters every `interval`, until aborted.
pub fn collect(link: LinkHandle, model: Model<LinkPort>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            publish(&link, &model);
        }
    })
}

fn publish(link: &LinkHandle, model: &Model<LinkPort>) {
    let up = matches!(link.status(), LinkStatus::Up { .. });
    gauge!(PBX_LINK_UP).set(if up { 1.0 } else { 0.0 });
    let stats = link.stats();
    for (name, value) in [
        (PBX_FRAMES_RECEIVED, &stats.frames_in),
        (PBX_FRAMES_SENT, &stats.frames_out),
        (PBX_DECODE_ERRORS, &stats.decode_errors),
        (PBX_SESSIONS_LOST, &stats.sessions_lost),
        (PBX_HEARTBEAT_TIMEOUTS, &stats.heartbeat_timeouts),
        (PBX_EVENTS, &stats.events),
        (PBX_DUPLICATE_EVENTS, &stats.duplicate_events),
        (PBX_SEQUENCE_GAPS, &stats.sequence_gaps),
        (PBX_RESYNCS, &stats.resyncs),
    ] {
        counter!(name).absolute(LinkStats::get(value));
    }
    let (lines, calls) = model.actor_counts();
    gauge!(LINES).set(lines as f64);
    gauge!(CALLS_ACTIVE).set(calls as f64);
    let stats = model.stats();
    for (name, value) in [
        (CALLS_ENDED, &stats.calls_ended),
        (CALL_LOG_RECORDS, &stats.records),
        (ACTOR_RESTARTS, &stats.restarts),
        (ORPHAN_CALLS_CLOSED, &stats.orphans_closed),
    ] {
        counter!(name).absolute(ModelStats::get(value));
    }
}

/// Salesforce requests, by operation and outcome.
pub const SALESFORCE_REQUESTS: &str = "switchboard_salesforce_requests_total";
/// Salesforce request latency, by operation.
pub const SALESFORCE_REQUEST_DURATION: &str = "switchboard_salesforce_request_duration_seconds";
/// Numbers per search and records per write, by operation.
pub const SALESFORCE_BATCH_SIZE: &str = "switchboard_salesforce_batch_size";
/// Number lookups answered from the cache (`hit`) or sent to Salesforce (`miss`).
pub const SALESFORCE_CACHE_LOOKUPS: &str = "switchboard_salesforce_cache_lookups_total";
/// Lookups that shared another's pending or running search.
pub const SALESFORCE_COALESCED_LOOKUPS: &str = "switchboard_salesforce_coalesced_lookups_total";
/// Requests counted in the org's rolling 24 hours, as last reported.
pub const SALESFORCE_API_USAGE: &str = "switchboard_salesforce_api_usage_requests";
/// The org's daily allocation, as last reported.
pub const SALESFORCE_API_LIMIT: &str = "switchboard_salesforce_api_limit_requests";
/// 1 on the budget's current state.
pub const SALESFORCE_BUDGET_STATE: &str = "switchboard_salesforce_budget_state";
/// Ring (or the configured trigger) to screen pop.
pub const SALESFORCE_SCREEN_POP_SECONDS: &str = "switchboard_salesforce_screen_pop_seconds";
/// Screen pops, by result.
pub const SALESFORCE_SCREEN_POPS: &str = "switchboard_salesforce_screen_pops_total";
/// Records created for unknown numbers, by object.
pub const SALESFORCE_RECORDS_CREATED: &str = "switchboard_salesforce_records_created_total";
/// Call logs held until Salesforce accepts them.
pub const OUTBOX_DEPTH: &str = "switchboard_outbox_depth";
/// Age of the oldest call log held.
pub const OUTBOX_OLDEST_AGE: &str = "switchboard_outbox_oldest_age_seconds";
/// Call logs refused for good and kept aside.
pub const OUTBOX_DEAD_LETTERS: &str = "switchboard_outbox_dead_letters";
/// Call logs Salesforce accepted.
pub const OUTBOX_DELIVERED: &str = "switchboard_outbox_delivered_total";
/// Call log deliveries tried again.
pub const OUTBOX_RETRIES: &str = "switchboard_outbox_retries_total";
/// Call logs dead-lettered.
pub const OUTBOX_DEAD_LETTERED: &str = "switchboard_outbox_dead_lettered_total";
