//! `switchboard-failover`: measures how long a cluster takes to serve a killed node's lines again.
//! Starts etcd, the PBX simulator with `--lines` stations, the Salesforce sandbox and `--nodes`
//! `switchboard` processes in a cluster; once every line is owned and monitored by its owner and
//! its standby, kills one node (`kill -9`) and times until every line has an owner again in etcd
//! (the killed node's lines go to their standbys, which monitor them already). Repeats `--runs`
//! times, bringing the killed node back in between, and at the end reports each node's self-fences.

use std::collections::HashMap;
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

/// What the simulator's links monitor, counted in one look at its state.
struct Census {
    /// Monitors over every link.
    total: usize,
    /// Devices monitored by one link or more.
    distinct: usize,
    /// Links that monitor something.
    serving: usize,
    /// Monitors on each registered link.
    per_link: Vec<usize>,
    /// Devices monitored by more or fewer links than the others should.
    odd: Vec<String>,
    /// Links monitoring each device.
    links_of: HashMap<String, usize>,
}

impl Census {
    fn take(simulator: &Simulator) -> Self {
        let links = simulator.monitored_devices();
        let mut links_of: HashMap<&str, usize> = HashMap::new();
        for device in links.iter().flatten() {
            *links_of.entry(device.as_str()).or_default() += 1;
        }
        Self {
            total: links.iter().map(Vec::len).sum(),
            distinct: links_of.len(),
            serving: links.iter().filter(|link| !link.is_empty()).count(),
            per_link: links.iter().map(Vec::len).collect(),
            odd: Vec::new(),
            links_of: links_of.into_iter().map(|(device, links)| (device.to_owned(), links)).collect(),
        }
    }

    /// Every one of `devices` monitored by its owner and, with two nodes or more, its standby,
    /// over `nodes` links.
    fn served(&mut self, devices: usize, nodes: usize) -> bool {
        let each = nodes.min(2);
        self.odd =
            self.links_of.iter().filter(|(_, links)| **links != each).map(|(device, _)| device.clone()).collect();
        self.odd.sort();
        self.total == devices * each && self.distinct == devices && self.serving == nodes && self.odd.is_empty()
    }

    fn describe(&self, devices: usize) -> String {
        format!(
            "{} of {devices} devices monitored, {} monitors (per link: {:?}); {} devices on too many or too few links (first: {:?})",
            self.distinct,
            self.total,
            self.per_link,
            self.odd.len(),
            self.odd.iter().take(10).collect::<Vec<_>>()
        )
    }
}

/// How often the simulator's monitors are counted while waiting.
const POLL: Duration = Duration::from_millis(10);

/// Waits (at most `limit`) until every one of `devices` has an owner in etcd and is monitored by
/// its owner and its standby, over `nodes` links.
async fn until_served(
    simulator: &Simulator,
    etcd_url: &str,
    devices: usize,
    nodes: usize,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut census = Census::take(simulator);
        let owned = owned_lines(etcd_url).await;
        if census.served(devices, nodes) && owned == devices as u64 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "lines not served over {nodes} nodes within {limit:?}: {owned} owned; {}",
            census.describe(devices)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Lines with an owner in etcd now (0 while etcd does not answer).
async fn owned_lines(etcd_url: &str) -> u64 {
    match loadtest::etcd::keys_under(etcd_url, OWNERS).await {
        Ok(count) => count,
        Err(error) => {
            tracing::warn!(%error, "asking etcd for the owners");
            0
        }
    }
}

/// Where the cluster's claims are (the default `cluster.key_prefix`).
const OWNERS: &str = "/switchboard/owners/";

/// When etcd no longer has `key` (the killed node's member key, which goes with its lease), polled.
async fn until_gone(etcd_url: String, key: String, limit: Duration) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        match loadtest::etcd::key_exists(&etcd_url, &key).await {
            Ok(false) => return Ok(Instant::now()),
            Ok(true) => {}
            Err(error) => tracing::warn!(%error, "asking etcd for {key}"),
        }
        anyhow::ensure!(started.elapsed() < limit, "{key} still in etcd after {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// One kill, measured from the moment of the `kill -9`.
struct Failover {
    /// Devices the killed node owned.
    unserved: u64,
    /// Until etcd dropped the killed node's lease (its member key and claims went with it).
    lease_gone: Duration,
    /// Until the first of its devices was owned again.
    first_back: Duration,
    /// Until every device was owned again.
    all_back: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 2, "--nodes {}: a failover needs two nodes or more", args.nodes);
    anyhow::ensure!(args.runs >= 1, "--runs 0: nothing to measure");
    let binary = gateway::binary(args.gateway_bin)?;
    let etcd = EtcdServer::start().await?;
    let simulator = Simulator::start(SimConfig {
        // Stations from 10000 on: from the default 2000, 10,000 stations would take 6000, the
        // queue's id, and the PBX would list one device id twice.
        layout: Layout { first_station: 10_000, stations: args.lines, ..Layout::default() },
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
    let distinct: std::collections::BTreeSet<&String> = listed.iter().collect();
    anyhow::ensure!(distinct.len() == devices, "the simulated PBX lists a device id twice: its layout overlaps");
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
    let spread = until_served(&simulator, etcd.url(), devices, args.nodes, Duration::from_secs(120)).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} nodes serve {devices} devices ({} lines) after {spread:?}", args.nodes, args.lines)?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        // The last node dies, and comes back after the measurement.
        let killed = nodes.pop().context("a node to kill")?;
        let member_key = format!("/switchboard/members/node-{}", args.nodes);
        let lease = tokio::spawn(until_gone(etcd.url().to_owned(), member_key, Duration::from_secs(60)));
        let kill = Instant::now();
        drop(killed);
        // The killed node's claims go with its lease; then the survivors (each line's standby)
        // claim its lines.
        let lost = loop {
            let owned = owned_lines(etcd.url()).await;
            if owned < devices as u64 && owned > 0 {
                break owned;
            }
            anyhow::ensure!(kill.elapsed() < Duration::from_secs(60), "the killed node's claims outlived 60 s");
            tokio::time::sleep(POLL).await;
        };
        let first_back = loop {
            if owned_lines(etcd.url()).await > lost {
                break kill.elapsed();
            }
            anyhow::ensure!(kill.elapsed() < Duration::from_secs(60), "no line of the killed node served within 60 s");
            tokio::time::sleep(POLL).await;
        };
        let all_back = loop {
            if owned_lines(etcd.url()).await == devices as u64 {
                break kill.elapsed();
            }
            anyhow::ensure!(
                kill.elapsed() < Duration::from_secs(60),
                "the killed node's lines not all owned within 60 s"
            );
            tokio::time::sleep(POLL).await;
        };
        let lease_gone = lease.await.context("the etcd watcher")?? - kill;
        let failover = Failover { unserved: devices as u64 - lost, lease_gone, first_back, all_back };
        writeln!(
            out,
            "run {run}: {} devices unserved after the kill; lease gone after {:.2} s, first line served again after {:.2} s, all after {:.2} s (takeover {:.2} s after the lease)",
            failover.unserved,
            failover.lease_gone.as_secs_f64(),
            failover.first_back.as_secs_f64(),
            failover.all_back.as_secs_f64(),
            failover.all_back.saturating_sub(failover.lease_gone).as_secs_f64(),
        )?;
        runs.push(failover);
        nodes.push(GatewayProcess::start(&specs[args.nodes - 1], 0).await?.0);
        let back = until_served(&simulator, etcd.url(), devices, args.nodes, Duration::from_secs(120)).await?;
        writeln!(out, "run {run}: node-{} back, every device served again after {back:?}", args.nodes)?;
        // Let the spread settle back (the returning node takes its share) before the next kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
        until_served(&simulator, etcd.url(), devices, args.nodes, Duration::from_secs(60)).await?;
    }
    let median = |field: fn(&Failover) -> Duration| {
        let mut times: Vec<Duration> = runs.iter().map(field).collect();
        times.sort();
        times[times.len() / 2]
    };
    let worst = runs.iter().map(|run| run.all_back).max().unwrap_or_default();
    writeln!(
        out,
        "failover of a node of {} with {} lines, lease TTL {} s: median {:.2} s (lease gone {:.2} s, takeover {:.2} s), worst {:.2} s",
        args.nodes,
        args.lines,
        args.lease_ttl_secs,
        median(|run| run.all_back).as_secs_f64(),
        median(|run| run.lease_gone).as_secs_f64(),
        median(|run| run.all_back.saturating_sub(run.lease_gone)).as_secs_f64(),
        worst.as_secs_f64(),
    )?;
    // A node that fenced itself stopped serving every line for a while: none should have.
    let mut fences = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let text = gateway::scrape(node.metrics).await?;
        fences.push(format!("node-{}: {}", n + 1, gateway::metric_sum(&text, "switchboard_cluster_self_fences_total")));
    }
    writeln!(
        out,
        "self-fences of the nodes running at the end (the killed node's died with it): {}",
        fences.join(", ")
    )?;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);
    sandbox.shutdown().await;
    simulator.shutdown().await;
    Ok(())
}
