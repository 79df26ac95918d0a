//! Clustering against a real etcd (Debian's `etcd-server`, started here on loopback ports with a
//! temporary data dir) and three gateways sharing one PBX simulator: the lines spread evenly, each
//! with exactly one owner; a killed node's lines move to the survivors, who mirror them as the
//! simulator has them; a joining node takes only its share; a node cut off from etcd stops serving
//! its lines before another takes them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::runtime::Model;
use gateway::app::Gateway;
use gateway::bridge::LinkPort;
use gateway::cluster::{Etcd, rendezvous};
use gateway::config::{ClusterConfig, Config};
use loadtest::etcd::EtcdServer;
use loadtest::sim::inspect::AgentDump;
use loadtest::sim::{Layout, SimConfig, Simulator, TrafficConfig};
use proto::pbx::DeviceKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{PATIENCE, link_config, within};

/// A TCP relay to etcd for one node, which the test can cut: the node is then partitioned from
/// etcd while etcd and the other nodes carry on.
struct Relay {
    addr: SocketAddr,
    cut: CancellationToken,
}

impl Relay {
    async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(accepted) => accepted, Err(_) => return },
                };
                let target = target.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

const TTL_SECS: u64 = 2;

fn node_config(simulator: &Simulator, etcd_url: String, node: &str, prefix: &str) -> Config {
    Config {
        pbx: link_config(simulator),
        cluster: ClusterConfig {
            enabled: true,
            etcd_endpoints: vec![etcd_url],
            node_id: node.to_owned(),
            advertise: "127.0.0.1:1".to_owned(),
            key_prefix: prefix.to_owned(),
            lease_ttl_secs: TTL_SECS,
        },
        ..Config::default()
    }
}

async fn simulator(stations: u32) -> Simulator {
    Simulator::start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        layout: Layout { stations, park_orbits: 2, park_timeout_ms: 120_000, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .expect("the simulator binds a loopback port")
}

/// Every device a cluster shares: what the PBX lists, outside numbers aside.
fn devices(simulator: &Simulator) -> BTreeSet<String> {
    simulator.with_pbx(|pbx| {
        pbx.devices()
            .into_iter()
            .filter(|device| device.kind != DeviceKind::External as i32)
            .map(|device| device.device_id)
            .collect()
    })
}

fn traffic(seed: u64, agents: u32) -> TrafficConfig {
    TrafficConfig {
        seed,
        agents,
        calls_per_sec: 8.0,
        outbound_share: 0.2,
        max_calls: None,
        mean_talk: Duration::from_millis(400),
        mean_ring: Duration::from_millis(150),
        caller_patience: Duration::from_secs(3),
        after_call_work: Duration::from_millis(100),
        no_answer_probability: 0.0,
        hold_probability: 0.15,
        park_probability: 0.0,
        blind_transfer_probability: 0.05,
        consult_transfer_probability: 0.05,
        conference_probability: 0.05,
        alternate_probability: 0.05,
    }
}

/// Who serves each line, by the nodes' own account; a line served twice appears twice.
fn served(nodes: &[(&str, &Gateway)]) -> Vec<(String, String)> {
    let mut served = Vec::new();
    for (name, gateway) in nodes {
        let cluster = gateway.cluster().expect("cluster mode");
        served.extend(cluster.owned().keys().map(|line| (line.clone(), (*name).to_owned())));
    }
    served.sort();
    served
}

/// Waits until every line is served by exactly one of `nodes`, the one rendezvous hashing over
/// them picks, and etcd's claims agree; returns the owner of each line.
async fn one_owner_each(
    etcd: &Etcd,
    prefix: &str,
    lines: &BTreeSet<String>,
    nodes: &[(&str, &Gateway)],
) -> BTreeMap<String, String> {
    let members: BTreeSet<String> = nodes.iter().map(|(name, _)| (*name).to_owned()).collect();
    let assigned: BTreeMap<String, String> = rendezvous::assign(lines, &members)
        .into_iter()
        .map(|(line, owner)| (line.to_owned(), owner.to_owned()))
        .collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let served = served(nodes);
        let owners: BTreeMap<String, String> = served.iter().cloned().collect();
        let claims: BTreeMap<String, String> = match etcd.range_prefix(&format!("{prefix}/owners/")).await {
            Ok((kvs, _)) => kvs
                .into_iter()
                .map(|kv| (kv.key.trim_start_matches(&format!("{prefix}/owners/")).to_owned(), kv.value))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        let keys: BTreeSet<String> = owners.keys().cloned().collect();
        if served.len() == lines.len() && keys == *lines && claims == owners && owners == assigned {
            return owners;
        }
        assert!(
            Instant::now() < deadline,
            "lines never had one owner each: {} served for {} lines\nserved: {served:?}\nclaims: {claims:?}",
            served.len(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent_state_name(state: Option<actors::domain::AgentState>) -> &'static str {
    use actors::domain::AgentState;
    match state {
        None | Some(AgentState::LoggedOff) => "logged_off",
        Some(AgentState::Ready) => "ready",
        Some(AgentState::NotReady) => "not_ready",
        Some(AgentState::WorkingAfterCall) => "working_after_call",
        Some(AgentState::DoNotDisturb) => "do_not_disturb",
    }
}

/// What a node serves, line by line: each line's agent, and the calls the line is in with its
/// connection state in each. (A call's other parties are mirrored only as far as this node's lines
/// saw them: a node that did not monitor a queue did not see a call's queued leg.)
type Lines = BTreeMap<String, (AgentDump, BTreeMap<String, String>)>;

fn expected(simulator: &Simulator, lines: &BTreeSet<String>) -> Lines {
    let dump = simulator.dump();
    let mut expected: Lines = dump
        .agents
        .into_iter()
        .filter(|agent| lines.contains(&agent.device))
        .map(|agent| (agent.device.clone(), (agent, BTreeMap::new())))
        .collect();
    for call in dump.calls {
        for party in call.parties {
            if let Some((_, calls)) = expected.get_mut(&party.device) {
                calls.insert(call.call_id.clone(), party.state);
            }
        }
    }
    expected
}

fn mirrored(model: &Model<LinkPort>) -> Lines {
    model
        .lines()
        .into_iter()
        .map(|line| {
            let agent = AgentDump {
                device: line.device.clone(),
                state: agent_state_name(line.agent.as_ref().map(|agent| agent.state)).to_owned(),
                agent_id: line.agent.as_ref().map(|agent| agent.login_id.clone()).unwrap_or_default(),
                roles: line.agent.map(|agent| agent.roles).unwrap_or_default(),
            };
            let calls = line.calls.into_iter().map(|(call, state)| (call, state.as_str().to_owned())).collect();
            (line.device, (agent, calls))
        })
        .collect()
}

/// Waits until `gateway` mirrors exactly the lines it serves, as the simulator has them.
async fn mirrors(simulator: &Simulator, name: &str, gateway: &Gateway) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines: BTreeSet<String> = gateway.cluster().expect("cluster mode").owned().keys().cloned().collect();
        let want = expected(simulator, &lines);
        let have = mirrored(gateway.model());
        if want == have {
            return;
        }
        assert!(Instant::now() < deadline, "{name} does not mirror its lines\nwant: {want:#?}\nhave: {have:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_lines_evenly_and_a_killed_nodes_lines_move_to_the_survivors() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(30).await;
    let lines = devices(&simulator);
    let prefix = "/it-kill";
    let mut gateways = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        gateways
            .push(Gateway::start(&node_config(&simulator, etcd_server.url().to_owned(), name, prefix)).await.unwrap());
    }
    let nodes: Vec<(&str, &Gateway)> =
        vec![("node-1", &gateways[0]), ("node-2", &gateways[1]), ("node-3", &gateways[2])];
    let owners = one_owner_each(&etcd, prefix, &lines, &nodes).await;
    // The spread is rendezvous hashing's over the three members: deterministic, and even.
    let members: BTreeSet<String> = ["node-1", "node-2", "node-3"].map(str::to_owned).into();
    for (line, owner) in &owners {
        assert_eq!(rendezvous::owner(line, &members), Some(owner.as_str()), "line {line}");
    }
    for (name, _) in &nodes {
        let count = owners.values().filter(|owner| owner == name).count();
        assert!(count >= lines.len() / 6, "{name} owns {count} of {} lines", lines.len());
    }

    simulator.start_traffic(traffic(7, 24));
    within(async {
        while simulator.traffic_calls_started() < 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // node-3 dies under traffic: no release, no revoke; its lease lapses in etcd.
    let killed: BTreeSet<String> =
        owners.iter().filter(|(_, owner)| *owner == "node-3").map(|(line, _)| line.clone()).collect();
    let third = gateways.pop().expect("three gateways");
    third.kill().await;
    let survivors: Vec<(&str, &Gateway)> = vec![("node-1", &gateways[0]), ("node-2", &gateways[1])];
    let after = one_owner_each(&etcd, prefix, &lines, &survivors).await;
    for (line, owner) in &owners {
        if !killed.contains(line) {
            assert_eq!(&after[line], owner, "line {line} moved though its owner lived");
        }
    }
    // Calls went on meanwhile; with traffic held still, each survivor mirrors what it serves now,
    // the moved lines included, as the simulator has it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    simulator.pause_traffic(true);
    for (name, gateway) in &survivors {
        mirrors(&simulator, name, gateway).await;
    }
    for gateway in gateways {
        gateway.shutdown(Duration::from_secs(5)).await;
    }
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_only_its_share_and_a_leaving_one_hands_over_at_once() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(24).await;
    let lines = devices(&simulator);
    let prefix = "/it-join";
    let first = Gateway::start(&node_config(&simulator, etcd_server.url().to_owned(), "node-1", prefix)).await.unwrap();
    let second =
        Gateway::start(&node_config(&simulator, etcd_server.url().to_owned(), "node-2", prefix)).await.unwrap();
    let before = one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second)]).await;
    simulator.start_traffic(traffic(11, 20));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let third = Gateway::start(&node_config(&simulator, etcd_server.url().to_owned(), "node-3", prefix)).await.unwrap();
    let nodes = [("node-1", &first), ("node-2", &second), ("node-3", &third)];
    let after = one_owner_each(&etcd, prefix, &lines, &nodes).await;
    let mut moved = 0;
    for (line, owner) in &after {
        if owner != &before[line] {
            assert_eq!(owner, "node-3", "line {line} moved between the old members");
            moved += 1;
        }
    }
    assert!(moved > 0 && moved < lines.len(), "the new node took {moved} of {} lines", lines.len());
    simulator.pause_traffic(true);
    for (name, gateway) in nodes {
        mirrors(&simulator, name, gateway).await;
    }

    // A clean leave revokes the lease: its lines move without waiting out a TTL, to the two left.
    simulator.pause_traffic(false);
    third.shutdown(Duration::from_secs(5)).await;
    let last = one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second)]).await;
    assert_eq!(last, before, "after the leave, the assignment is the two nodes' again");
    simulator.pause_traffic(true);
    mirrors(&simulator, "node-1", &first).await;
    mirrors(&simulator, "node-2", &second).await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_stops_serving_before_another_takes_its_lines() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(18).await;
    let lines = devices(&simulator);
    let prefix = "/it-cut";
    let relay = Relay::start(etcd_server.url()).await;
    let first = Gateway::start(&node_config(&simulator, etcd_server.url().to_owned(), "node-1", prefix)).await.unwrap();
    let second =
        Gateway::start(&node_config(&simulator, etcd_server.url().to_owned(), "node-2", prefix)).await.unwrap();
    let cut_off = Gateway::start(&node_config(&simulator, relay.url(), "node-3", prefix)).await.unwrap();
    let owners =
        one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second), ("node-3", &cut_off)]).await;
    let theirs: BTreeSet<String> =
        owners.iter().filter(|(_, owner)| *owner == "node-3").map(|(line, _)| line.clone()).collect();
    assert!(!theirs.is_empty(), "node-3 owns lines");

    // Record, as they happen, when node-3 stops serving and when another first serves one of its lines.
    let timeline: Arc<Mutex<Vec<(Instant, &'static str)>>> = Arc::default();
    let mut watchers = Vec::new();
    {
        let mut owned = cut_off.cluster().expect("cluster mode").watch_owned();
        let timeline = timeline.clone();
        watchers.push(tokio::spawn(async move {
            while owned.changed().await.is_ok() {
                if owned.borrow_and_update().is_empty() {
                    timeline.lock().await.push((Instant::now(), "node-3 stopped serving"));
                    return;
                }
            }
        }));
    }
    for (name, gateway) in [("node-1", &first), ("node-2", &second)] {
        let mut owned = gateway.cluster().expect("cluster mode").watch_owned();
        let timeline = timeline.clone();
        let theirs = theirs.clone();
        watchers.push(tokio::spawn(async move {
            while owned.changed().await.is_ok() {
                if owned.borrow_and_update().keys().any(|line| theirs.contains(line)) {
                    timeline
                        .lock()
                        .await
                        .push((Instant::now(), if name == "node-1" { "node-1 took over" } else { "node-2 took over" }));
                    return;
                }
            }
        }));
    }
    relay.cut.cancel();
    let after = one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second)]).await;
    assert_eq!(after.len(), lines.len());
    for watcher in watchers {
        within(watcher).await.expect("watcher");
    }
    let mut timeline = timeline.lock().await.clone();
    timeline.sort();
    assert_eq!(timeline.first().map(|(_, what)| *what), Some("node-3 stopped serving"), "{timeline:?}");
    assert!(cut_off.model().lines().is_empty(), "node-3's model forgot its lines");
    assert!(
        cut_off.cluster().is_some_and(|cluster| gateway::cluster::ClusterStats::get(&cluster.stats().self_fences) >= 1)
    );
    cut_off.shutdown(Duration::from_secs(5)).await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
    simulator.shutdown().await;
}
