//! `pbx-sim`: runs the PBX simulator on its own, with optional seeded traffic, faults and an HTTP
//! endpoint that serves the phone system's state as JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadtest::sim::{FaultSettings, Layout, SimConfig, Simulator, TrafficConfig};

/// A simulated phone system with a PBX link (see docs/pbx-link.md), for Switchboard's tests and demo.
#[derive(Debug, Parser)]
#[command(name = "pbx-sim", version)]
struct Args {
    /// Where PBX links connect.
    #[arg(long, default_value = "127.0.0.1:4600", env = "PBX_SIM_LISTEN")]
    listen: SocketAddr,
    /// The user name links register with.
    #[arg(long, default_value = "switchboard", env = "PBX_SIM_USER")]
    user: String,
    /// The password links register with.
    #[arg(long, default_value = "switchboard", env = "PBX_SIM_PASSWORD")]
    password: String,
    /// Agent extensions (stations), numbered from --first-station.
    #[arg(long, default_value_t = 50)]
    stations: u32,
    /// The first station's extension number.
    #[arg(long, default_value_t = 2000)]
    first_station: u32,
    /// ACD queue numbers (comma-separated).
    #[arg(long, default_value = "6000", value_delimiter = ',')]
    queues: Vec<String>,
    /// Seconds a parked call waits before it rings the parker again.
    #[arg(long, default_value_t = 60)]
    park_timeout_secs: u64,
    /// Heartbeat interval on each link, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Largest frame accepted or sent, header included, in bytes.
    #[arg(long, default_value_t = proto::wire::DEFAULT_MAX_FRAME_LENGTH)]
    max_frame_length: usize,
    /// Seeds the traffic and the faults, so a run replays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Play a contact-center day: callers, agents and far ends.
    #[arg(long)]
    traffic: bool,
    /// Agents the traffic generator logs on and plays (the first stations).
    #[arg(long, default_value_t = 20)]
    agents: u32,
    /// New calls per second the traffic generator places.
    #[arg(long, default_value_t = 2.0)]
    calls_per_sec: f64,
    /// Stop placing calls after this many.
    #[arg(long)]
    max_calls: Option<u64>,
    /// Serve `GET /state` (the phone system as JSON) and `GET /stats` here.
    #[arg(long)]
    inspect: Option<SocketAddr>,
    /// Fault: delay every event this many milliseconds.
    #[arg(long, default_value_t = 0)]
    event_delay_ms: u64,
    /// Fault: per mille of events sent twice.
    #[arg(long, default_value_t = 0)]
    duplicate_events_per_mille: u32,
    /// Fault: per mille of events swapped with the next.
    #[arg(long, default_value_t = 0)]
    reorder_events_per_mille: u32,
    /// Fault: per mille of events lost (their sequence numbers are skipped).
    #[arg(long, default_value_t = 0)]
    drop_events_per_mille: u32,
    /// Fault: per mille of call-control requests refused with a congestion error.
    #[arg(long, default_value_t = 0)]
    congestion_per_mille: u32,
    /// Fault: drop every link this often, in seconds.
    #[arg(long)]
    drop_links_every_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = SimConfig {
        listen: args.listen,
        user: args.user,
        password: args.password,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(100)),
        max_frame_length: args.max_frame_length,
        seed: args.seed,
        layout: Layout {
            first_station: args.first_station,
            stations: args.stations,
            queues: args.queues,
            park_timeout_ms: args.park_timeout_secs * 1000,
            ..Layout::default()
        },
        ..SimConfig::default()
    };
    let simulator = Arc::new(Simulator::start(config).await.context("starting the pbx simulator")?);
    simulator.set_faults(FaultSettings {
        event_delay: Duration::from_millis(args.event_delay_ms),
        duplicate_events_per_mille: args.duplicate_events_per_mille,
        reorder_events_per_mille: args.reorder_events_per_mille,
        drop_events_per_mille: args.drop_events_per_mille,
        congestion_per_mille: args.congestion_per_mille,
    });
    if args.traffic {
        simulator.start_traffic(TrafficConfig {
            seed: args.seed,
            agents: args.agents,
            calls_per_sec: args.calls_per_sec,
            max_calls: args.max_calls,
            ..TrafficConfig::default()
        });
    }
    tracing::info!(link = %simulator.local_addr(), "pbx-sim ready");
    if let Some(address) = args.inspect {
        let listener = tokio::net::TcpListener::bind(address).await.context("binding the inspect address")?;
        let address = listener.local_addr().context("reading the inspect address")?;
        tracing::info!(inspect = %address, "serving GET /state and GET /stats");
        tokio::spawn(inspect::serve(listener, simulator.clone()));
    }
    if let Some(every) = args.drop_links_every_secs {
        let simulator = simulator.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(every.max(1)));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                tracing::warn!("fault: dropping every link");
                simulator.drop_links();
            }
        });
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, Ctrl-C still kills the process the default way.
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

mod inspect {
    //! The inspection endpoint: the simulator's state and counters as JSON.

    use std::sync::Arc;

    use axum::extract::State;
    use axum::routing::get;
    use axum::{Json, Router};
    use loadtest::sim::{Simulator, StateDump};

    pub(super) async fn serve(listener: tokio::net::TcpListener, simulator: Arc<Simulator>) {
        let app = Router::new().route("/state", get(state)).route("/stats", get(stats)).with_state(simulator);
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "inspect endpoint failed");
        }
    }

    async fn state(State(simulator): State<Arc<Simulator>>) -> Json<StateDump> {
        Json(simulator.dump())
    }

    async fn stats(State(simulator): State<Arc<Simulator>>) -> Json<serde_json::Value> {
        let stats = simulator.stats();
        Json(serde_json::json!({
            "links_open": simulator.link_count(),
            "links_accepted": stats.links_accepted,
            "links_registered": stats.links_registered,
            "registrations_refused": stats.registrations_refused,
            "decode_errors": stats.decode_errors,
            "links_timed_out": stats.links_timed_out,
            "slow_links_cut": stats.slow_links_cut,
            "requests": stats.requests,
            "events_sent": stats.events_sent,
            "calls_finished": simulator.traffic_calls_finished(),
        }))
    }
}
