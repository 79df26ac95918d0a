//! `switchboard-failover`: measures how long a cluster takes to serve a killed node's lines again.
//! Starts etcd, the PBX simulator with `--lines` stations, the Salesforce sandbox and `--nodes`
//! `switchboard` processes in a cluster; once every line is monitored exactly once, kills one
//! node (`kill -9`) and times until the simulator sees every line monitored again by the
//! survivors (each monitor is followed at once by the device's snapshot). Repeats `--runs` times,
//! bringing the killed node back in between.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadtest::etcd::EtcdServer;
use loadtest::load::gateway::{self, GatewayProcess, GatewaySpec};
use loadtest::salesforce::{Sandbox, SandboxConfig};
use loadtest::sim::{Layout, SimConfig, Simulator};
use tokio::time::Instant;

/// Times a cluster's failover: node killed -> its lines served again.
#[derive(Debug, Parser)]
#[command(name = "switchboard-failover", version)]
struct Args {
    /// Agent lines (stations) the simulated PBX has; its queues and park orbits come on top.
    #[arg(long, default_value_t = 10_000)]
    lines: u32,
    /// Cluster nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The nodes' etcd lease TTL (`cluster.lease_ttl_secs`).
    #[arg(long, default_value_t = 5)]
    lease_ttl_secs: u64,
    /// Kills measured.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The switchboard binary; by default the one beside this program.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
}

/// How many devices are monitored, and how many distinct ones.
fn monitored(simulator: &Simulator) -> (usize, usize) {
    let links = simulator.monitored_devices();
    let total = links.iter().map(Vec::len).sum();
    let distinct: BTreeSet<&String> = links.iter().flatten().collect();
    (total, distinct.len())
}

/// Waits (at most `limit`) until every one of `devices` is monitored exactly once, over `links`
/// links.
async fn until_served_once(
    simulator: &Simulator,
    devices: usize,
    links: usize,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (total, distinct) = monitored(simulator);
        let serving = simulator.monitored_devices().iter().filter(|link| !link.is_empty()).count();
        if total == devices && distinct == devices && serving == links {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "lines not served once each within {limit:?}: {distinct} of {devices} monitored, {total} monitors"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 2, "--nodes {}: a failover needs two nodes or more", args.nodes);
    let binary = gateway::binary(args.gateway_bin)?;
    let etcd = EtcdServer::start().await?;
    let simulator = Simulator::start(SimConfig {
        layout: Layout { stations: args.lines, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .context("starting the simulator")?;
    let listed: Vec<String> = simulator.with_pbx(|pbx| {
        pbx.devices()
            .into_iter()
            .filter(|device| device.kind != proto::pbx::DeviceKind::External as i32)
            .map(|device| device.device_id)
            .collect()
    });
    let devices = listed.len();
    // The devices are configured, not listed: the simulator's list of 10,000 devices is larger than
    // one link frame (`pbx.max_frame_length`).
    let configured = listed.join(",");
    let sandbox = Sandbox::start(SandboxConfig::default(), tokio::net::TcpListener::bind("127.0.0.1:0").await?)
        .context("starting the sandbox")?;
    let work = std::env::temp_dir().join(format!("switchboard-failover-{}", std::process::id()));
    let defaults = SandboxConfig::default();
    let specs: Vec<GatewaySpec> = (1..=args.nodes)
        .map(|node| {
            let settings = [
                ("SWITCHBOARD_CLUSTER_ENABLED", "true".to_owned()),
                ("SWITCHBOARD_CLUSTER_ETCD_ENDPOINTS", etcd.url().to_owned()),
                ("SWITCHBOARD_CLUSTER_NODE_ID", format!("node-{node}")),
                ("SWITCHBOARD_CLUSTER_LEASE_TTL_SECS", args.lease_ttl_secs.to_string()),
                ("SWITCHBOARD_PBX_DEVICES", configured.clone()),
            ];
            let dir = work.join(format!("node-{node}"));
            std::fs::create_dir_all(&dir)?;
            Ok(GatewaySpec {
                binary: binary.clone(),
                pbx_address: simulator.local_addr(),
                pbx_password: simulator.config().password.clone(),
                salesforce_url: sandbox.base_url().to_owned(),
                client_id: defaults.consumer_key.clone(),
                client_secret: defaults.consumer_secret.clone(),
                salesforce_mode: "budget",
                extra_env: settings.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
                dir,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for spec in &specs {
        nodes.push(GatewayProcess::start(spec, 0).await?.0);
    }
    let spread = until_served_once(&simulator, devices, args.nodes, Duration::from_secs(120)).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} nodes serve {devices} devices ({} lines) after {spread:?}", args.nodes, args.lines)?;
    let mut times = Vec::new();
    for run in 1..=args.runs {
        // The last node dies, and comes back after the measurement.
        let killed = nodes.pop().context("a node to kill")?;
        let (before, _) = monitored(&simulator);
        let kill = Instant::now();
        drop(killed);
        // The simulator notices the link gone, then the survivors take its lines.
        while monitored(&simulator).0 >= before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let lost = monitored(&simulator).1;
        until_served_once(&simulator, devices, args.nodes - 1, Duration::from_secs(60)).await?;
        let took = kill.elapsed();
        writeln!(
            out,
            "run {run}: {} devices unserved after the kill; all served again after {took:?}",
            devices - lost
        )?;
        times.push(took);
        nodes.push(GatewayProcess::start(&specs[args.nodes - 1], 0).await?.0);
        until_served_once(&simulator, devices, args.nodes, Duration::from_secs(120)).await?;
        // Let the spread settle back (the returning node takes its share) before the next kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
        until_served_once(&simulator, devices, args.nodes, Duration::from_secs(60)).await?;
    }
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    writeln!(
        out,
        "failover of a node of {} with {} lines, lease TTL {} s: median {median:?}, worst {worst:?}",
        args.nodes, args.lines, args.lease_ttl_secs
    )?;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);
    sandbox.shutdown().await;
    simulator.shutdown().await;
    Ok(())
}
