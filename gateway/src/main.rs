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
use gateway::config::{Config, Secret};
use gateway::pbx::LinkStatus;
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
        Command::Run { config, pbx_address } => {
            let environment: HashMap<String, String> = std::env::vars().collect();
            let mut config = Config::load(config.as_deref(), &environment).context("loading configuration")?;
            if let Some(address) = pbx_address {
                config.pbx.address = address;
                config.validate().context("checking configuration")?;
            }
            run(config, shutdown_signal()).await
        }
        Command::Demo { agents, calls_per_sec, seed, duration_secs } => {
            demo(agents, calls_per_sec, seed, duration_secs).await
        }
    }
}

async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    tracing::info!(pbx = config.pbx.address, "switchboard starting");
    let gateway = Gateway::start(&config).await.context("starting the gateway")?;
    let model = gateway.model().clone();
    let reporter = tokio::spawn(report(gateway.link().watch_status(), gateway.watch_progress(), model));
    stop.await;
    tracing::info!("shutting down");
    reporter.abort();
    gateway.shutdown(Duration::from_secs(10)).await;
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

async fn demo(agents: u32, calls_per_sec: f64, seed: u64, duration_secs: Option<u64>) -> anyhow::Result<()> {
    let password = format!("demo-{seed}");
    let simulator = Simulator::start(SimConfig {
        password: password.clone(),
        seed,
        layout: Layout { stations: agents.max(1), ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .context("starting the bundled pbx simulator")?;
    simulator.start_traffic(TrafficConfig { seed, agents, calls_per_sec, ..TrafficConfig::default() });
    let mut config = Config::default();
    config.pbx.address = simulator.local_addr().to_string();
    config.pbx.password = Secret::new(password);
    tracing::info!(pbx = %simulator.local_addr(), agents, calls_per_sec, "demo: simulated pbx running");
    let stop = async move {
        match duration_secs {
            Some(seconds) => {
                tokio::select! {
                    () = shutdown_signal() => {}
                    () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                }
            }
            None => shutdown_signal().await,
        }
    };
    let outcome = run(config, stop).await;
    simulator.shutdown().await;
    outcome
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a handler, Ctrl-C still ends the process, only less gracefully.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
