//! The loadtest: a seeded contact-center day played on the PBX simulator against the real
//! `switchboard` binary (a child process) and the Salesforce sandbox, measured end to end beside
//! baselines from the same run, then checked: the gateway's lines and calls equal the simulator's,
//! and the sandbox holds exactly one Task per finished call leg.
//!
//! - [`gateway`]: the child process, its API clients, `/metrics` and peak memory.
//! - [`desk`]: agent desktops driving calls over gRPC, and the screen-pop watcher.
//! - [`check`]: the state and call log checks.
//! - [`baseline`]: decode plus channel hop, and the empty gRPC call.
//! - [`report`]: the figures, the JSON, the summary and the plot.
//!
//! `loadtest` must not depend on `gateway` (the gateway embeds the simulator), so it drives the
//! binary as a customer's performance engineer would: through its configuration and its API.

pub mod baseline;
pub mod check;
pub mod desk;
pub mod gateway;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The progress display `run` updates (`ProgressBar::hidden()` for none).
pub use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use self::desk::{Desk, DeskLog, Timed, WatchLog};
use self::gateway::{GatewayProcess, GatewaySpec};
use crate::salesforce::{Sandbox, SandboxConfig};
use crate::sim::{Layout, SimConfig, Simulator, TrafficConfig};

pub use report::{Report, Round};

/// Why a loadtest could not run (a failed check is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file, socket or listener.
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    /// The gateway process or its API.
    #[error("gateway: {0}")]
    Gateway(String),
    /// The Salesforce sandbox.
    #[error("salesforce sandbox: {0}")]
    Sandbox(String),
    /// A baseline measurement.
    #[error("baseline: {0}")]
    Baseline(String),
    /// The report's files.
    #[error("report: {0}")]
    Report(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The `switchboard` binary.
    pub gateway_bin: PathBuf,
    /// Agents the simulator plays (lines 2000 on).
    pub agents: u32,
    /// New calls per second.
    pub calls_per_sec: f64,
    /// How long new calls arrive; then the calls in progress play to their end.
    pub duration: Duration,
    /// Seeds the day (and the simulator), so the naive run replays the same traffic.
    pub seed: u64,
    /// Desktops driving calls over gRPC, one per line after the agents'.
    pub desks: u32,
    /// Hold-and-retrieve rounds per desktop call.
    pub toggles: u32,
    /// Mean talk time of a call segment.
    pub mean_talk: Duration,
    /// Also run the same day against a gateway in `salesforce.mode = naive`, after the main run.
    pub naive_baseline: bool,
    /// How long calls may take to finish after the arrivals stop before the rest are cleared.
    pub drain_limit: Duration,
    /// Extra `SWITCHBOARD_*` settings for the gateway under test (not the naive one's mode).
    pub gateway_env: Vec<(String, String)>,
    /// Where outboxes and gateway logs go; a fresh temporary directory if `None`.
    pub work_dir: Option<PathBuf>,
    /// Empty gRPC calls in the latency baseline.
    pub baseline_grpc_calls: usize,
    /// Calls (of seven events) in the decode baseline's stream.
    pub baseline_decode_calls: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            gateway_bin: PathBuf::from("switchboard"),
            agents: 400,
            calls_per_sec: 40.0,
            duration: Duration::from_secs(20),
            seed: 1,
            desks: 5,
            toggles: 3,
            mean_talk: Duration::from_secs(4),
            naive_baseline: true,
            drain_limit: Duration::from_secs(90),
            gateway_env: Vec::new(),
            work_dir: None,
            baseline_grpc_calls: 2_000,
            baseline_decode_calls: 20_000,
        }
    }
}

impl LoadConfig {
    /// The traffic both runs play.
    pub fn traffic(&self) -> TrafficConfig {
        TrafficConfig {
            seed: self.seed,
            agents: self.agents,
            calls_per_sec: self.calls_per_sec,
            mean_talk: self.mean_talk,
            after_call_work: Duration::from_secs(1),
            ..TrafficConfig::default()
        }
    }

    /// The phone system: the agents' lines, the desks' after them, and timers short enough that a
    /// parked or unanswered call does not hold the end of the run for a minute.
    pub fn layout(&self) -> Layout {
        let stations = self.agents + self.desks;
        let first_station = Layout::default().first_station;
        // The queue's number must be no station's: past the last station once they reach 6000.
        let queue = 6_000.max((first_station + stations).div_ceil(1_000) * 1_000);
        Layout {
            first_station,
            stations,
            queues: vec![queue.to_string()],
            park_orbits: 500,
            park_timeout_ms: 10_000,
            ring_no_answer_ms: 5_000,
            ..Layout::default()
        }
    }
}

/// The salesforce mode of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// What Switchboard ships: batched, cached, paced.
    Budget,
    /// One request per operation, as vendors' connectors do (the baseline).
    Naive,
}

impl Mode {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Naive => "naive",
        }
    }
}

/// A temporary directory, removed when dropped unless asked to keep it.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs the loadtest: the baselines, the main run and (if asked) the naive run, and checks.
pub async fn run(config: &LoadConfig, progress: &ProgressBar) -> Result<Report, LoadError> {
    let (path, remove) = match &config.work_dir {
        Some(path) => (path.clone(), false),
        None => (std::env::temp_dir().join(format!("switchboard-loadtest-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&path).map_err(LoadError::Io)?;
    let mut dir = WorkDir { path, remove };
    progress.set_message("baseline: decode + channel hop");
    let decode_hop = baseline::decode_hop_events_per_sec(config.baseline_decode_calls).await?;
    // An error keeps the directory: the gateways' logs say why.
    dir.remove = false;
    let main = run_round(config, Mode::Budget, &dir.path, progress).await?;
    let naive =
        if config.naive_baseline { Some(run_round(config, Mode::Naive, &dir.path, progress).await?) } else { None };
    dir.remove = remove;
    let report = Report::new(config, decode_hop, main, naive);
    // Keep the gateways' logs when a check failed: they are where the reason is.
    if !report.failures.is_empty() {
        dir.remove = false;
    }
    Ok(report)
}

/// Per-second counters sampled while the load runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick {
    /// Seconds since the run began.
    pub at: f64,
    /// Events the simulator had sent.
    pub pbx_events: u64,
    /// Calls the PBX had cleared.
    pub calls_finished: u64,
    /// Salesforce data requests the sandbox had counted.
    pub sf_requests: u64,
    /// Call-control requests answered.
    pub grpc_requests: u64,
}

async fn run_round(
    config: &LoadConfig,
    mode: Mode,
    dir: &std::path::Path,
    progress: &ProgressBar,
) -> Result<Round, LoadError> {
    let password = format!("loadtest-{}", config.seed);
    let simulator = Simulator::start(SimConfig {
        password: password.clone(),
        seed: config.seed,
        layout: config.layout(),
        ..SimConfig::default()
    })
    .await
    .map_err(LoadError::Io)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(LoadError::Io)?;
    let sandbox_config = SandboxConfig { allocation: 1_000_000_000, ..SandboxConfig::default() };
    let spec = GatewaySpec {
        binary: config.gateway_bin.clone(),
        pbx_address: simulator.local_addr(),
        pbx_password: password,
        salesforce_url: String::new(),
        client_id: sandbox_config.consumer_key.clone(),
        client_secret: sandbox_config.consumer_secret.clone(),
        salesforce_mode: mode.as_str(),
        extra_env: if mode == Mode::Budget { config.gateway_env.clone() } else { Vec::new() },
        dir: dir.to_owned(),
    };
    let sandbox = Sandbox::start(sandbox_config, listener).map_err(|error| LoadError::Sandbox(error.to_string()))?;
    let spec = GatewaySpec { salesforce_url: sandbox.base_url().to_owned(), ..spec };
    let outcome = drive(config, mode, &spec, &simulator, &sandbox, progress).await;
    sandbox.shutdown().await;
    simulator.shutdown().await;
    outcome
}

async fn drive(
    config: &LoadConfig,
    mode: Mode,
    spec: &GatewaySpec,
    simulator: &Simulator,
    sandbox: &Sandbox,
    progress: &ProgressBar,
) -> Result<Round, LoadError> {
    let stations = config.layout().stations as usize;
    progress.set_message(format!("{}: starting the gateway", mode.as_str()));
    let (mut gateway, mut api) = GatewayProcess::start(spec, stations).await?;
    progress.set_message(format!("{}: baseline: empty gRPC calls", mode.as_str()));
    let empty_grpc = baseline::empty_grpc(&mut api, config.baseline_grpc_calls).await?;

    let origin = Instant::now();
    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(desk::watch_pops(gateway.client().await?, origin, stop_watch.clone()));
    let placing = Arc::new(AtomicBool::new(true));
    let counter = Arc::new(AtomicU64::new(0));
    let mut desks = Vec::new();
    let first_free = config.layout().first_station + config.agents;
    let (logged_in, mut logins) = tokio::sync::mpsc::channel(config.desks.max(1) as usize);
    let (day_started, started) = tokio::sync::watch::channel(false);
    for index in 0..config.desks {
        let desk = Desk {
            line: (first_free + index).to_string(),
            toggles: config.toggles,
            origin,
            placing: placing.clone(),
            counter: counter.clone(),
            logged_in: logged_in.clone(),
            day_started: started.clone(),
        };
        desks.push(tokio::spawn(desk.run(gateway.client().await?)));
    }
    // The desks log in before the day starts: the day logs every simulated agent on at once, a
    // burst of thousands of line changes that is the day's start, not a desk's login.
    for _ in 0..config.desks {
        let login = tokio::time::timeout(Duration::from_secs(30), logins.recv()).await;
        if !matches!(login, Ok(Some(()))) {
            return Err(LoadError::Gateway("the desks did not log in within 30 s".to_owned()));
        }
    }
    simulator.start_traffic(config.traffic());
    day_started.send_replace(true);
    let events_at_start = simulator.stats().events_sent;
    let sample = |at: f64| Tick {
        at,
        pbx_events: simulator.stats().events_sent - events_at_start,
        calls_finished: simulator.traffic_calls_finished(),
        sf_requests: sandbox.stats().api_requests,
        grpc_requests: counter.load(Ordering::Relaxed),
    };
    let mut ticks = Vec::new();
    let seconds = config.duration.as_secs().max(1);
    progress.set_length(seconds);
    progress.set_position(0);
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    clock.tick().await;
    for second in 1..=seconds {
        clock.tick().await;
        gateway.check_alive()?;
        let tick = sample(origin.elapsed().as_secs_f64());
        progress.set_position(second);
        progress.set_message(format!(
            "{}: {} calls done, {} events, {} sf requests",
            mode.as_str(),
            tick.calls_finished,
            tick.pbx_events,
            tick.sf_requests
        ));
        ticks.push(tick);
    }
    // Closing time: no new calls; the ones in progress play to their end.
    simulator.stop_new_calls();
    placing.store(false, Ordering::Relaxed);
    let window_secs = origin.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    let mut forced_clears = 0;
    loop {
        clock.tick().await;
        gateway.check_alive()?;
        ticks.push(sample(origin.elapsed().as_secs_f64()));
        let calls_left = simulator.with_pbx(|pbx| pbx.call_ids().count());
        let desks_done = desks.iter().all(tokio::task::JoinHandle::is_finished);
        progress.set_message(format!("{}: closing time: {calls_left} calls still going", mode.as_str()));
        if calls_left == 0 && desks_done {
            break;
        }
        if drain_started.elapsed() > config.drain_limit {
            // Bounded: whatever still goes on is hung up, and counted.
            forced_clears = simulator.with_pbx(|pbx| {
                let calls: Vec<String> = pbx.call_ids().map(str::to_owned).collect();
                calls.into_iter().filter(|call| pbx.clear_call(call).is_ok()).count() as u64
            });
            if desks_done {
                break;
            }
        }
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let mut desk_logs = Vec::new();
    for desk in desks {
        desk_logs.push(desk.await.map_err(|error| LoadError::Gateway(format!("a desk failed: {error}")))?);
    }

    progress.set_message(format!("{}: checking the gateway's state against the simulator's", mode.as_str()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mismatches = loop {
        let want = check::sorted(simulator.dump());
        let have = check::mirrored(&mut api, &want).await?;
        let found = check::compare(&want, &have);
        if found.count == 0 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let calls_completed = simulator.traffic_calls_finished();
    let legs = simulator.with_pbx(crate::sim::Pbx::take_finished_legs);

    progress.set_message(format!("{}: waiting for every call log to reach Salesforce", mode.as_str()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let logs = loop {
        let found = check::check_logs(&legs, &sandbox.tasks());
        let status = api.admin.get_salesforce_status(proto::api::GetSalesforceStatusRequest {}).await;
        let settled = status.is_ok_and(|status| {
            let status = status.into_inner();
            status.logs_held == 0 && status.requests_in_flight == 0
        });
        if (found.lost() == 0 && settled) || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop_watch.cancel();
    let watch: WatchLog = watcher.await.map_err(|error| LoadError::Gateway(format!("the watcher failed: {error}")))?;
    let metrics = gateway::scrape(gateway.metrics).await?;
    let pop_seconds = |quantile| {
        gateway::histogram_quantile(&metrics, "switchboard_salesforce_screen_pop_seconds", quantile)
            .map(|seconds| seconds * 1000.0)
    };
    let stats = sandbox.stats();
    let sim_stats = simulator.stats();
    let mut requests: BTreeMap<&'static str, Vec<Timed>> = BTreeMap::new();
    let mut desk_errors = 0;
    let mut error_samples = Vec::new();
    let mut desk_calls = 0;
    for log in desk_logs {
        let DeskLog { requests: timed, errors, error_samples: samples, calls } = log;
        for (method, timed) in timed {
            requests.entry(method).or_default().extend(timed);
        }
        desk_errors += errors;
        error_samples.extend(samples);
        desk_calls += calls;
    }
    error_samples.truncate(5);
    let round = Round {
        mode,
        window_secs,
        drain_secs,
        forced_clears,
        calls_completed,
        pbx_events: sim_stats.events_sent - events_at_start,
        link_cuts: sim_stats.slow_links_cut,
        resyncs: gateway::metric_sum(&metrics, "switchboard_pbx_resyncs_total") as u64,
        requests,
        desk_errors,
        desk_error_samples: error_samples,
        desk_calls,
        empty_grpc,
        watch,
        gateway_pop_p50_ms: pop_seconds(0.5),
        gateway_pop_p99_ms: pop_seconds(0.99),
        sf_requests: stats.api_requests,
        sf_searches: stats.search_requests,
        sf_upserts: stats.upsert_requests,
        logs,
        mismatches,
        peak_rss_bytes: gateway.peak_rss_bytes().unwrap_or(0),
        ticks,
        gateway_log: gateway.log_path().to_owned(),
    };
    drop(gateway);
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_numbered_clear_of_every_station() {
        for (agents, queue) in [(400, "6000"), (1_000, "6000"), (3_995, "6000"), (4_000, "7000"), (10_000, "13000")] {
            let layout = LoadConfig { agents, ..LoadConfig::default() }.layout();
            assert_eq!(layout.queues, vec![queue.to_owned()], "{agents} agents");
            let last_station = layout.first_station + layout.stations - 1;
            assert!(queue.parse::<u32>().unwrap() > last_station);
        }
    }
}
