//! `switchboard`: the CTI gateway binary. `run` serves a real PBX; `demo` brings its own simulated
//! phone system so a newcomer can watch it work with nothing else installed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use actors::runtime::Model;
use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::app::{Gateway, Progress};
use gateway::bridge::LinkPort;
use gateway::config::{Config, SalesforceConfig, Secret, TokenConfig};
use gateway::grpc::GrpcServer;
use gateway::pbx::LinkStatus;
use loadtest::salesforce::{Sandbox, SandboxConfig};
use loadtest::sim::{Layout, SimConfig, Simulator, TrafficConfig};
use tokio::sync::watch;

/// jemalloc, not glibc's malloc: messages allocated by the router and freed by actors on other
/// threads make glibc's arenas contend; jemalloc more than doubles events per second (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Switchboard: a CTI gateway between phone systems and Salesforce.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway against a real PBX link. Settings come from the file, then SWITCHBOARD_*
    /// environment variables, then these flags.
    Run {
        /// A TOML configuration file (see README.md).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The PBX link address, host:port.
        #[arg(long)]
        pbx_address: Option<String>,
        /// Where the gRPC API listens, ip:port.
        #[arg(long)]
        grpc_listen: Option<String>,
        /// Where GET /metrics is served, ip:port.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Run everything bundled in one process: the gateway and a simulated PBX with a steady
    /// stream of calls. Stops cleanly on Ctrl-C or SIGTERM.
    Demo {
        /// Agents on the simulated PBX.
        #[arg(long, default_value_t = 20)]
        agents: u32,
        /// New calls per second.
        #[arg(long, default_value_t = 2.0)]
        calls_per_sec: f64,
        /// Seeds the simulated day, so a run replays.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop by itself after this many seconds (runs until Ctrl-C without it).
        #[arg(long)]
        duration_secs: Option<u64>,
        /// Where the gRPC API listens.
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_listen: String,
        /// Where GET /metrics is served.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Args::parse().command {
        Command::Run { config, pbx_address, grpc_listen, metrics_listen } => {
            let environment: HashMap<String, String> = std::env::vars().collect();
            let mut config = Config::load(config.as_deref(), &environment).context("loading configuration")?;
            if let Some(address) = pbx_address {
                config.pbx.address = address;
            }
            if let Some(listen) = grpc_listen {
                config.grpc.listen = listen;
            }
            if let Some(listen) = metrics_listen {
                config.metrics.listen = listen;
            }
            config.validate().context("checking configuration")?;
            run(config, shutdown_signal(), None).await
        }
        Command::Demo { agents, calls_per_sec, seed, duration_secs, grpc_listen, metrics_listen } => {
            demo(agents, calls_per_sec, seed, duration_secs, grpc_listen, metrics_listen).await
        }
    }
}

/// Told where the API and the metrics listen once they do.
type Ready = Box<dyn FnOnce(std::net::SocketAddr, std::net::SocketAddr) + Send>;

async fn run(config: Config, stop: impl std::future::Future<Output = ()>, ready: Option<Ready>) -> anyhow::Result<()> {
    tracing::info!(pbx = config.pbx.address, "switchboard starting");
    let listener = tokio::net::TcpListener::bind(&config.grpc.listen)
        .await
        .with_context(|| format!("binding the grpc api to {}", config.grpc.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(&config.metrics.listen)
        .await
        .with_context(|| format!("binding the metrics endpoint to {}", config.metrics.listen))?;
    let metrics_addr = metrics_listener.local_addr().context("reading the metrics address")?;
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics_task = gateway::metrics::serve(metrics_listener, stop_metrics.clone()).context("starting metrics")?;
    tracing::info!(%metrics_addr, "serving GET /metrics");
    if config.grpc.tokens.is_empty() {
        tracing::warn!("no grpc.tokens configured: every api request will be refused as unauthenticated");
    }
    let gateway = Gateway::start(&config).await.context("starting the gateway")?;
    let api = GrpcServer::start_routed(
        gateway.model().clone(),
        gateway.salesforce().cloned(),
        gateway.cluster().map(gateway::cluster::Cluster::placement),
        listener,
        &config.grpc,
        &config.agents,
    )
    .await
    .context("starting the grpc api")?;
    if let Some(ready) = ready {
        ready(api.local_addr(), metrics_addr);
    }
    let collector = gateway::metrics::collect(gateway.link().clone(), gateway.model().clone(), Duration::from_secs(1));
    let model = gateway.model().clone();
    let reporter = tokio::spawn(report(gateway.link().watch_status(), gateway.watch_progress(), model));
    stop.await;
    tracing::info!("shutting down");
    reporter.abort();
    // The API first (no new commands, streams told why they end), then the link and the model.
    api.shutdown(Duration::from_secs(10)).await;
    gateway.shutdown(Duration::from_secs(10)).await;
    collector.abort();
    stop_metrics.cancel();
    let _ = metrics_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Logs a status line every few seconds: link state and what has been seen.
async fn report(status: watch::Receiver<LinkStatus>, progress: watch::Receiver<Progress>, model: Model<LinkPort>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let seen = *progress.borrow();
        let (lines, calls) = model.actor_counts();
        match &*status.borrow() {
            LinkStatus::Up { pbx_name, monitored, resynced, .. } => tracing::info!(
                pbx_name,
                monitored,
                resynced,
                lines,
                calls,
                events = seen.events,
                call_logs = seen.call_logs,
                sessions = seen.sessions,
                "pbx link up"
            ),
            LinkStatus::Connecting { attempt, last_error } => {
                tracing::warn!(attempt, last_error = last_error.as_deref().unwrap_or(""), "pbx link connecting")
            }
            LinkStatus::Stopped => return,
        }
    }
}

async fn demo(
    agents: u32,
    calls_per_sec: f64,
    seed: u64,
    duration_secs: Option<u64>,
    grpc_listen: String,
    metrics_listen: String,
) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let password = format!("demo-{seed}");
    let simulator = Simulator::start(SimConfig {
        password: password.clone(),
        seed,
        // Five lines more than the simulated agents play, free for trying the API.
        layout: Layout { stations: agents + 5, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .context("starting the bundled pbx simulator")?;
    simulator.start_traffic(TrafficConfig { seed, agents, calls_per_sec, ..TrafficConfig::default() });
    let mut config = Config::default();
    config.pbx.address = simulator.local_addr().to_string();
    config.pbx.password = Secret::new(password);
    config.grpc.listen = grpc_listen;
    config.metrics.listen = metrics_listen;
    // A fresh token with every scope, for trying the API; it lives as long as this demo.
    let token: String = {
        use rand::RngExt;
        let mut rng = rand::rng();
        (0..32).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])).collect()
    };
    config.grpc.tokens = vec![TokenConfig {
        name: "demo".to_owned(),
        token: Secret::new(token.clone()),
        scopes: vec!["admin".to_owned()],
    }];
    // The bundled Salesforce sandbox, seeded with Contacts, Leads and Accounts, stands in for an org.
    let sandbox_listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the salesforce sandbox")?;
    let sandbox_config = SandboxConfig { allocation: 5_000_000, ..SandboxConfig::default() };
    config.salesforce = SalesforceConfig {
        enabled: true,
        client_id: sandbox_config.consumer_key.clone(),
        client_secret: Secret::new(sandbox_config.consumer_secret.clone()),
        daily_allocation: sandbox_config.allocation,
        outbox_path: std::env::temp_dir()
            .join(format!("switchboard-demo-outbox-{}.sqlite3", std::process::id()))
            .display()
            .to_string(),
        ..SalesforceConfig::default()
    };
    let sandbox = Sandbox::start(sandbox_config, sandbox_listener).context("starting the salesforce sandbox")?;
    config.salesforce.login_url = sandbox.base_url().to_owned();
    let outbox = config.salesforce.outbox_path.clone();
    config.validate().context("checking the demo's configuration")?;
    tracing::info!(pbx = %simulator.local_addr(), salesforce = sandbox.base_url(), agents, calls_per_sec, "demo: simulated pbx and salesforce sandbox running");
    let ready: Ready = Box::new(move |grpc, metrics| announce(grpc, metrics, &token));
    let stop = async move {
        match duration_secs {
            Some(seconds) => {
                tokio::select! {
                    () = signal => {}
                    () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                }
            }
            None => signal.await,
        }
    };
    let outcome = run(config, stop, Some(ready)).await;
    let stats = sandbox.stats();
    tracing::info!(
        tasks = sandbox.tasks().len(),
        api_requests = stats.api_requests,
        searches = stats.search_requests,
        upserts = stats.upsert_requests,
        "demo stopped; what the salesforce sandbox saw"
    );
    sandbox.shutdown().await;
    simulator.shutdown().await;
    // The demo's outbox lives as long as the demo.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{outbox}{suffix}"));
    }
    outcome
}

/// Tells the person at the terminal how to reach the demo. A closed stdout is no reason to stop.
fn announce(grpc: std::net::SocketAddr, metrics: std::net::SocketAddr, token: &str) {
    use std::io::Write;
    let text = format!(
        "switchboard demo\n  grpc api:     {grpc} (health checking and reflection on; services switchboard.v1.CallControl, Agents, Events)\n  bearer token: {token}  (every scope; send \"authorization: Bearer <token>\")\n  metrics:      http://{metrics}/metrics\n  salesforce:   the bundled sandbox (screen pops in the Events stream; call logs as Tasks)\n  stop:         Ctrl-C\n"
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed at once, when this is called, not
/// when the future is first polled: a signal that comes during start-up still stops cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                // Without handlers the default actions still end the process, only less gracefully.
                _ => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
