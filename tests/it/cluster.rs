//! Clustering against a real etcd (Debian's `etcd-server`, started here on loopback ports with a
//! temporary data dir) and three gateways sharing one PBX simulator: the lines spread evenly, each
//! with exactly one owner; a killed node's lines move to the survivors, who mirror them as the
//! simulator has them; a joining node takes only its share; a node cut off from etcd stops serving
//! its lines before another takes them; requests for any line, and event streams of every line,
//! work from any node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::runtime::Model;
use gateway::app::Gateway;
use gateway::bridge::LinkPort;
use gateway::cluster::{Created, Etcd, EtcdLedger, rendezvous};
use gateway::config::{ClusterConfig, Config, GrpcConfig};
use gateway::grpc::GrpcServer;
use loadtest::etcd::EtcdServer;
use loadtest::sim::inspect::AgentDump;
use loadtest::sim::{Layout, SimConfig, Simulator, TrafficConfig};
use proto::api::agents_client::AgentsClient;
use proto::api::call_control_client::CallControlClient;
use proto::api::events_client::EventsClient;
use proto::api::{self, event::Event as E};
use proto::pbx::DeviceKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::{Code, Request};

use crate::grpc::{Authed, clients, grpc_config};
use crate::support::{PATIENCE, certificates, link_config, within};

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
            ..ClusterConfig::default()
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
    let lines = simulator.shared_devices();
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
    // Each line also has a standby, the member next in line for it: it watches the line without
    // answering for it (`mirrors` below: a node's model shows its owned lines only).
    within(async {
        while !nodes.iter().all(|(name, gateway)| {
            let standby = gateway.cluster().expect("cluster mode").watch_standby().borrow().clone();
            *standby == rendezvous::standby(name, &lines, &members)
        }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

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

/// How many links of the simulator monitor each device (a device monitored by no link is absent).
fn monitors(simulator: &Simulator) -> BTreeMap<String, usize> {
    let mut monitors = BTreeMap::new();
    for device in simulator.monitored_devices().into_iter().flatten() {
        *monitors.entry(device).or_default() += 1;
    }
    monitors
}

/// Waits until the simulator sees every line monitored by exactly two links (its owner's and its
/// standby's), and nothing else.
async fn monitored_by_owner_and_standby(simulator: &Simulator, lines: &BTreeSet<String>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let monitors = monitors(simulator);
        let keys: BTreeSet<String> = monitors.keys().cloned().collect();
        if keys == *lines && monitors.values().all(|links| *links == 2) {
            return;
        }
        let twice: Vec<_> = monitors.iter().filter(|(_, links)| **links != 2).collect();
        let missing: Vec<_> = lines.difference(&keys).collect();
        assert!(
            Instant::now() < deadline,
            "the simulator never saw each line monitored by two links: {} monitors over {} lines\nmonitored by one or more than two: {twice:?}\nunmonitored: {missing:?}",
            monitors.values().sum::<usize>(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_that_comes_back_leaves_every_line_monitored_by_its_owner_and_its_standby_only() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(60).await;
    let lines = simulator.shared_devices();
    let prefix = "/it-return";
    // The lines configured, not listed from the PBX, as a large site (and switchboard-failover)
    // does: the list is given to the cluster once.
    let config = |name: &str| {
        let mut config = node_config(&simulator, etcd_server.url().to_owned(), name, prefix);
        config.pbx.devices = lines.iter().cloned().collect();
        config
    };
    let first = Gateway::start(&config("node-1")).await.unwrap();
    let second = Gateway::start(&config("node-2")).await.unwrap();
    let mut third = Gateway::start(&config("node-3")).await.unwrap();
    one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second), ("node-3", &third)]).await;
    monitored_by_owner_and_standby(&simulator, &lines).await;
    simulator.start_traffic(traffic(5, 40));

    for _ in 0..2 {
        third.kill().await;
        one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second)]).await;
        monitored_by_owner_and_standby(&simulator, &lines).await;
        // The same node comes back (a restarted process): it takes its share back from the two.
        third = Gateway::start(&config("node-3")).await.unwrap();
        one_owner_each(&etcd, prefix, &lines, &[("node-1", &first), ("node-2", &second), ("node-3", &third)]).await;
        monitored_by_owner_and_standby(&simulator, &lines).await;
    }
    // The survivors kept one lease throughout: a node whose term ended for nothing would revoke its
    // claims while its link kept their monitors.
    for (name, gateway) in [("node-1", &first), ("node-2", &second)] {
        let stats = gateway.cluster().expect("cluster mode").stats();
        assert_eq!(gateway::cluster::ClusterStats::get(&stats.leases), 1, "{name} took a new lease");
    }
    third.shutdown(Duration::from_secs(5)).await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_owns_no_line_still_stands_by_for_one() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(4).await;
    // One line for two nodes: one owns it, the other owns nothing and is its standby.
    let line = simulator.shared_devices().into_iter().next().expect("a station");
    let lines = BTreeSet::from([line.clone()]);
    let prefix = "/it-idle-standby";
    let config = |name: &str| {
        let mut config = node_config(&simulator, etcd_server.url().to_owned(), name, prefix);
        config.pbx.devices = vec![line.clone()];
        config
    };
    let first = Gateway::start(&config("node-1")).await.unwrap();
    let second = Gateway::start(&config("node-2")).await.unwrap();
    let nodes = [("node-1", &first), ("node-2", &second)];
    let owners = one_owner_each(&etcd, prefix, &lines, &nodes).await;
    let (owner, idle) = if owners[&line] == "node-1" { (first, second) } else { (second, first) };
    assert!(idle.cluster().expect("cluster mode").owned().is_empty(), "the idle node owns nothing");
    monitored_by_owner_and_standby(&simulator, &lines).await;
    let standby = idle.cluster().expect("cluster mode").watch_standby().borrow().clone();
    assert_eq!(*standby, lines, "the node owning nothing stands by for the line");

    // Its owner dies: the standby takes the line, and it was watching it all along.
    let idle_name = if owners[&line] == "node-1" { "node-2" } else { "node-1" };
    owner.kill().await;
    one_owner_each(&etcd, prefix, &lines, &[(idle_name, &idle)]).await;
    within(async {
        while monitors(&simulator).get(&line) != Some(&1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    mirrors(&simulator, idle_name, &idle).await;
    idle.shutdown(Duration::from_secs(5)).await;
    // Leaving, it neither serves nor stands by: the simulator sees no monitor left.
    assert_eq!(monitors(&simulator).get(&line), None, "a node that left still monitors its line");
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_only_its_share_and_a_leaving_one_hands_over_at_once() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(24).await;
    let lines = simulator.shared_devices();
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
    let lines = simulator.shared_devices();
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

/// A watch on a prefix hears of a key created under it and of its lease lapsing (a dead member):
/// members learn of a dead node at once instead of at their next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_the_members_hears_a_member_join_and_its_lease_lapse() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Arc::new(Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client"));
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let watcher = {
        let etcd = etcd.clone();
        tokio::spawn(async move {
            etcd.watch_prefix("/it-watch/members/", || {
                let _ = changes_tx.send(());
            })
            .await
        })
    };
    // The first notice says the watch is set up; changes made after it are heard.
    within(changes.recv()).await.expect("the watch is set up");
    let (lease, _) = etcd.grant(2).await.expect("a lease");
    etcd.put("/it-watch/members/node-1", "{}", lease).await.expect("a member joins");
    within(changes.recv()).await.expect("the join is heard");
    assert!(etcd.get("/it-watch/members/node-1").await.expect("a read").is_some());
    // The lease is not renewed: etcd deletes the member key when it lapses, and the watch says so.
    within(async {
        loop {
            changes.recv().await.expect("the watch goes on");
            if etcd.get("/it-watch/members/node-1").await.expect("a read").is_none() {
                return;
            }
        }
    })
    .await;
    watcher.abort();
}

/// Three nodes' ledgers race for blocks of one day's shared Salesforce allowance: together they get
/// exactly the cap, never more, and then hear that the day is spent until the next one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_salesforce_allowance_taken_in_blocks_from_etcd() {
    use actors::crm::budget::BlockGrant;

    let etcd = EtcdServer::start().await.expect("etcd starts");
    let url = etcd.url().to_owned();
    let ledger = || {
        let client = Etcd::new(std::slice::from_ref(&url), Duration::from_secs(2)).expect("an etcd client");
        Arc::new(EtcdLedger::new(client, "/budget-test"))
    };
    const CAP: u64 = 1_000;
    const BLOCK: u64 = 37;
    // 12:00 UTC on day 20,000 since the epoch.
    let noon = 20_000 * 86_400 + 43_200;
    // Every ledger is built before any races, and they start together: building one takes long
    // enough that a ledger started at once could take the whole day before the next exists.
    let ledgers: Vec<_> = (0..3).map(|_| ledger()).collect();
    let start = Arc::new(tokio::sync::Barrier::new(ledgers.len()));
    let nodes: Vec<_> = ledgers
        .into_iter()
        .map(|ledger| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let mut granted = 0;
                loop {
                    match ledger.take_at(BLOCK, CAP, noon).await.expect("etcd answers") {
                        BlockGrant::Granted(requests) => {
                            assert!((1..=BLOCK).contains(&requests), "{requests}");
                            granted += requests;
                        }
                        BlockGrant::Spent { retry_after } => {
                            assert_eq!(retry_after, Duration::from_secs(43_200), "until midnight UTC");
                            return granted;
                        }
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for node in nodes {
        let granted = node.await.expect("a node's ledger");
        assert!(granted > 0, "every node got some of the allowance");
        total += granted;
    }
    assert_eq!(total, CAP, "the nodes together spend exactly the day's share");

    let client = Etcd::new(&[etcd.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let counter = client.get("/budget-test/sf_budget/20000").await.expect("etcd answers").expect("the day's counter");
    assert_eq!(counter.value, "1000");

    // A new day starts from nothing and clears the day before yesterday's counter.
    let two_days_later = noon + 2 * 86_400;
    assert_eq!(ledger().take_at(BLOCK, CAP, two_days_later).await, Ok(BlockGrant::Granted(BLOCK)));
    assert_eq!(client.get("/budget-test/sf_budget/20000").await.expect("etcd answers"), None);

    // A counter that is not a number is reported, not overwritten.
    client.put("/budget-test/sf_budget/20003", "lots", 0).await.expect("etcd answers");
    let error = ledger().take_at(BLOCK, CAP, noon + 3 * 86_400).await.expect_err("a clear error");
    assert!(error.to_string().contains("not a count of requests"), "{error}");

    // With etcd gone, the ledger says so: the node spends what it holds and asks again later.
    drop(etcd);
    let unreachable = ledger();
    let error = unreachable.take_at(BLOCK, CAP, two_days_later).await.expect_err("etcd is gone");
    assert!(error.to_string().contains("unreachable"), "{error}");
}

/// A cluster node with its gRPC API, and clients of that API.
struct ApiNode {
    name: &'static str,
    gateway: Gateway,
    server: GrpcServer,
    calls: CallControlClient<Authed>,
    agents: AgentsClient<Authed>,
    events: EventsClient<Authed>,
}

async fn api_node(simulator: &Simulator, etcd_url: String, name: &'static str, prefix: &str) -> ApiNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("bound");
    let mut config = node_config(simulator, etcd_url, name, prefix);
    config.cluster.advertise = address.to_string();
    config.grpc = grpc_config();
    let gateway = Gateway::start(&config).await.unwrap();
    let placement = gateway.cluster().map(gateway::cluster::Cluster::placement);
    let server =
        GrpcServer::start_routed(gateway.model().clone(), None, placement, listener, &config.grpc, &[]).await.unwrap();
    let channel = Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let (calls, agents, events) = clients(&channel);
    ApiNode { name, gateway, server, calls, agents, events }
}

impl ApiNode {
    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(5)).await;
        self.gateway.shutdown(Duration::from_secs(5)).await;
    }

    /// Waits until the line shows the call in `state`, asking this node.
    async fn until_call_state(&mut self, line: &str, call: &str, state: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let shown = self.agents.get_line(api::GetLineRequest { line: line.into() }).await.unwrap().into_inner();
            if shown.calls.iter().any(|shown| shown.call_id == call && shown.state == state) {
                return;
            }
            assert!(Instant::now() < deadline, "{line} never showed {call} {state} at {}: {shown:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn stations(simulator: &Simulator) -> BTreeSet<String> {
    simulator.with_pbx(|pbx| {
        pbx.devices()
            .into_iter()
            .filter(|device| device.kind == DeviceKind::Station as i32)
            .map(|device| device.device_id)
            .collect()
    })
}

fn call_request(line: &str, call: &str) -> api::CallRequest {
    api::CallRequest {
        request_id: format!("{line}-{call}-{}", next_request()),
        line: line.into(),
        call_id: call.into(),
    }
}

/// A number unique within the run, for request ids.
fn next_request() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Reads `stream` until `wanted` picks something out of an event, failing after [`PATIENCE`].
async fn until_event<T>(
    stream: &mut tonic::Streaming<api::Event>,
    mut wanted: impl FnMut(&api::Event) -> Option<T>,
) -> T {
    within(async {
        loop {
            let event = stream.message().await.expect("the stream goes on").expect("the stream is open");
            if let Some(found) = wanted(&event) {
                return found;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_any_line_and_events_of_every_line_work_from_any_node() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(12).await;
    let lines = simulator.shared_devices();
    let stations = stations(&simulator);
    let prefix = "/it-route";
    let mut nodes = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        nodes.push(api_node(&simulator, etcd_server.url().to_owned(), name, prefix).await);
    }
    let owners = {
        let serving: Vec<(&str, &Gateway)> = nodes.iter().map(|node| (node.name, &node.gateway)).collect();
        let owners = one_owner_each(&etcd, prefix, &lines, &serving).await;
        for (name, gateway) in serving {
            mirrors(&simulator, name, gateway).await;
        }
        owners
    };
    // One station owned by each node, by index: station[k] is node k's.
    let station: Vec<String> = nodes
        .iter()
        .map(|node| stations.iter().find(|line| owners[*line] == node.name).expect("each node owns a station").clone())
        .collect();

    // A stream on node-1 opens with every node's lines, each once and tagged with its owner.
    let mut stream = nodes[0].events.subscribe(api::SubscribeRequest::default()).await.unwrap().into_inner();
    let mut snapshot: Vec<(String, String)> = Vec::new();
    until_event(&mut stream, |event| match &event.event {
        Some(E::Line(line)) => {
            snapshot.push((line.line.clone(), event.node.clone()));
            None
        }
        Some(E::SnapshotComplete(complete)) => {
            assert!(!complete.resume_failed);
            Some(())
        }
        _ => None,
    })
    .await;
    let seen_stations: Vec<&(String, String)> = snapshot.iter().filter(|(line, _)| stations.contains(line)).collect();
    assert_eq!(seen_stations.len(), stations.len(), "each station once in the snapshot: {snapshot:?}");
    for (line, node) in seen_stations {
        assert_eq!(node, &owners[line], "line {line} in the snapshot");
    }

    for k in 0..3 {
        let (line, owner) = (station[k].clone(), nodes[k].name);
        let (entry, other) = ((k + 1) % 3, (k + 2) % 3);
        // Agents: log in and set presence through nodes that do not own the line.
        let agent = format!("agent-{k}");
        let login = api::LogInRequest {
            request_id: format!("login-{k}"),
            line: line.clone(),
            agent_id: agent.clone(),
            ..Default::default()
        };
        let shown = nodes[entry].agents.log_in(login).await.unwrap().into_inner();
        assert_eq!(
            shown.agent.map(|agent| agent.agent_id),
            Some(agent.clone()),
            "login of {line} via {}",
            nodes[entry].name
        );
        let ready = api::SetPresenceRequest {
            request_id: format!("ready-{k}"),
            line: line.clone(),
            presence: api::Presence::Available as i32,
            reason: String::new(),
        };
        let shown = nodes[other].agents.set_presence(ready).await.unwrap().into_inner();
        assert_eq!(shown.presence, api::Presence::Available as i32);
        for node in &mut nodes {
            let shown = node.agents.get_line(api::GetLineRequest { line: line.clone() }).await.unwrap().into_inner();
            assert_eq!(shown.agent.map(|agent| agent.agent_id), Some(agent.clone()), "{line} read via {}", node.name);
        }
        // node-1's stream sees the login, from the line's owner.
        until_event(&mut stream, |event| match &event.event {
            Some(E::Line(shown)) if shown.line == line && shown.agent.is_some() => {
                assert_eq!(event.node, owner);
                Some(())
            }
            _ => None,
        })
        .await;

        // Call control: dial, answer, hold, retrieve, notes and hang up, each through a non-owner.
        let number = format!("+4930555000{k}");
        let dial = api::MakeCallRequest { request_id: format!("dial-{k}"), line: line.clone(), number: number.clone() };
        let call = nodes[entry].calls.make_call(dial).await.unwrap().into_inner().call_id;
        nodes[other].until_call_state(&line, &call, "initiated").await;
        nodes[entry].calls.answer(call_request(&line, &call)).await.unwrap();
        let far_end = proto::pbx::ConnectionId { call_id: call.clone(), device_id: number };
        simulator.with_pbx(|pbx| pbx.answer_call(&far_end)).unwrap();
        nodes[other].until_call_state(&line, &call, "connected").await;
        nodes[other].calls.hold(call_request(&line, &call)).await.unwrap();
        nodes[entry].until_call_state(&line, &call, "held").await;
        nodes[entry].calls.retrieve(call_request(&line, &call)).await.unwrap();
        nodes[other].until_call_state(&line, &call, "connected").await;
        let shown =
            nodes[entry].calls.get_call(api::GetCallRequest { call_id: call.clone() }).await.unwrap().into_inner();
        assert_eq!((shown.call_id.as_str(), shown.calling.as_str()), (call.as_str(), line.as_str()));
        let notes = api::SetCallNotesRequest {
            request_id: String::new(),
            call_id: call.clone(),
            notes: format!("noted via {}", nodes[other].name),
            disposition: "resolved".into(),
        };
        nodes[other].calls.set_call_notes(notes).await.unwrap();
        nodes[entry].calls.hang_up(call_request(&line, &call)).await.unwrap();
        // The owner logs the leg, with the notes taken on another node; node-1's stream has it.
        let record = until_event(&mut stream, |event| match &event.event {
            Some(E::CallLog(record)) if record.call_id == call || record.root_call_id == call => {
                Some((record.clone(), event.node.clone()))
            }
            _ => None,
        })
        .await;
        assert_eq!((record.0.line.as_str(), record.1.as_str()), (line.as_str(), owner));
        assert_eq!(record.0.notes, format!("noted via {}", nodes[other].name));
    }

    // A listing from any node has every node's lines, page by page.
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = api::ListLinesRequest { page_size: 5, page_token: page_token.clone(), ..Default::default() };
        let page = nodes[2].agents.list_lines(request).await.unwrap().into_inner();
        listed.extend(page.lines.into_iter().map(|line| line.line));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let listed_stations: Vec<&String> = listed.iter().filter(|line| stations.contains(*line)).collect();
    assert_eq!(listed_stations, stations.iter().collect::<Vec<_>>());

    // Clear errors: a line no node has, a call no node has, and a request that was forwarded
    // already to a node that does not serve its line (the loop guard).
    let unknown = nodes[1].agents.get_line(api::GetLineRequest { line: "9999".into() }).await.unwrap_err();
    assert_eq!((unknown.code(), unknown.message()), (Code::NotFound, "no line 9999 in the cluster"));
    let dial = api::MakeCallRequest { request_id: String::new(), line: "9999".into(), number: "+4930555".into() };
    assert_eq!(nodes[2].calls.make_call(dial).await.unwrap_err().code(), Code::NotFound);
    let no_call = nodes[0].calls.get_call(api::GetCallRequest { call_id: "C-none".into() }).await.unwrap_err();
    assert_eq!((no_call.code(), no_call.message()), (Code::NotFound, "no call C-none in progress on any cluster node"));
    // A claim whose holder is no member (its lease lapsing, say) is a line on the move: retry.
    let ghost = format!("{prefix}/owners/7777");
    let Ok(Created::Won { revision }) = etcd.create(&ghost, "node-gone", 0).await else { panic!("7777 claimed") };
    let moving = nodes[1].agents.get_line(api::GetLineRequest { line: "7777".into() }).await.unwrap_err();
    assert_eq!(
        (moving.code(), moving.message()),
        (Code::Unavailable, "line 7777 is moving between cluster nodes; retry shortly")
    );
    assert!(etcd.delete_if(&ghost, revision).await.unwrap());
    let mut looped = Request::new(api::GetLineRequest { line: station[1].clone() });
    looped.metadata_mut().insert("x-switchboard-forwarded-by", "node-9".parse().unwrap());
    let moved = nodes[0].agents.get_line(looped).await.unwrap_err();
    assert_eq!(moved.code(), Code::Unavailable);
    assert!(moved.message().contains(&format!("line {} moved", station[1])), "{moved:?}");

    // node-3 leaves: node-1's stream follows, and shows its lines again from their new owners.
    let third = nodes.pop().expect("three nodes");
    third.stop().await;
    let moved_line = station[2].clone();
    let new_owner = until_event(&mut stream, |event| match &event.event {
        Some(E::Line(line)) if line.line == moved_line && event.node != "node-3" => Some(event.node.clone()),
        _ => None,
    })
    .await;
    assert!(new_owner == "node-1" || new_owner == "node-2", "{new_owner}");
    // It comes back and takes its lines again: the stream asks the new member too, and the agent
    // logging out there through another node shows in it, from node-3.
    nodes.push(api_node(&simulator, etcd_server.url().to_owned(), "node-3", prefix).await);
    {
        let serving: Vec<(&str, &Gateway)> = nodes.iter().map(|node| (node.name, &node.gateway)).collect();
        assert_eq!(one_owner_each(&etcd, prefix, &lines, &serving).await, owners);
    }
    let logout = api::LogOutRequest { line: moved_line.clone(), ..Default::default() };
    assert!(nodes[0].agents.log_out(logout).await.unwrap().into_inner().agent.is_none());
    until_event(&mut stream, |event| match &event.event {
        Some(E::Line(line)) if line.line == moved_line && line.agent.is_none() => {
            assert_eq!(event.node, "node-3");
            Some(())
        }
        _ => None,
    })
    .await;
    drop(stream);
    for node in nodes {
        node.stop().await;
    }
    simulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_nodes_forward_requests_and_merge_events_verified_against_the_peer_ca() {
    let dir = std::env::temp_dir().join(format!("switchboard-cluster-tls-{}", std::process::id()));
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (ca, (client_cert, client_key)) = certificates(&dir);
    // A CA no node's certificate chains to.
    certificates(&elsewhere);
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    let etcd = Etcd::new(&[etcd_server.url().to_owned()], Duration::from_secs(2)).expect("an etcd client");
    let simulator = simulator(9).await;
    let lines = simulator.shared_devices();
    let prefix = "/it-tls";
    let tls = GrpcConfig {
        tls_cert: Some(dir.join("server.pem")),
        tls_key: Some(dir.join("server.key")),
        tls_client_ca: Some(dir.join("ca.pem")),
        tls_peer_ca: Some(dir.join("ca.pem")),
        ..grpc_config()
    };
    let mut nodes = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let mut config = node_config(&simulator, etcd_server.url().to_owned(), name, prefix);
        config.cluster.advertise = listener.local_addr().unwrap().to_string();
        config.grpc = tls.clone();
        if name == "node-3" {
            // Misconfigured: it trusts the wrong CA for its peers.
            config.grpc.tls_peer_ca = Some(elsewhere.join("ca.pem"));
        }
        config.validate().expect("a valid cluster node with TLS");
        let gateway = Gateway::start(&config).await.unwrap();
        let placement = gateway.cluster().map(gateway::cluster::Cluster::placement);
        let server = GrpcServer::start_routed(gateway.model().clone(), None, placement, listener, &config.grpc, &[])
            .await
            .unwrap();
        nodes.push((name, gateway, server));
    }
    let serving: Vec<(&str, &Gateway)> = nodes.iter().map(|(name, gateway, _)| (*name, gateway)).collect();
    let owners = one_owner_each(&etcd, prefix, &lines, &serving).await;
    let theirs = stations(&simulator).into_iter().find(|line| owners[line] == "node-2").expect("node-2 owns a station");

    // Desktops talk to node-1 and node-3 over mutual TLS.
    let trusted = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .identity(tonic::transport::Identity::from_pem(&client_cert, &client_key))
        .domain_name("127.0.0.1");
    let connect = |server: &GrpcServer| {
        let endpoint = Endpoint::from_shared(format!("https://{}", server.local_addr())).unwrap();
        endpoint.tls_config(trusted.clone()).unwrap()
    };
    let (_, mut agents, mut events) = clients(&connect(&nodes[0].2).connect().await.unwrap());
    let login = |request_id: &str| api::LogInRequest {
        request_id: request_id.into(),
        line: theirs.clone(),
        agent_id: "tess".into(),
        ..Default::default()
    };
    let shown = agents.log_in(login("tls-login")).await.expect("forwarded to node-2 over TLS").into_inner();
    assert_eq!(shown.agent.map(|agent| agent.agent_id).as_deref(), Some("tess"));
    // node-1's stream has node-2's lines too, read from node-2 over TLS.
    let mut stream = events.subscribe(api::SubscribeRequest::default()).await.unwrap().into_inner();
    let mut tagged = Vec::new();
    until_event(&mut stream, |event| match &event.event {
        Some(E::Line(line)) => {
            tagged.push((line.line.clone(), event.node.clone()));
            None
        }
        Some(E::SnapshotComplete(_)) => Some(()),
        _ => None,
    })
    .await;
    assert!(tagged.contains(&(theirs.clone(), "node-2".to_owned())), "{tagged:?}");

    // node-3 does not trust node-2's certificate: the request fails as unreachable, with the reason.
    let (_, mut misconfigured, _) = clients(&connect(&nodes[2].2).connect().await.unwrap());
    let refused = misconfigured.log_in(login("tls-refused")).await.expect_err("node-2 is not trusted by node-3");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("node-2"), "{refused:?}");
    for (_, gateway, server) in nodes {
        server.shutdown(Duration::from_secs(5)).await;
        gateway.shutdown(Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_nodes_etcd_clients_share_what_they_learn_of_dead_endpoints_and_keep_their_own_deadlines() {
    let etcd_server = EtcdServer::start().await.expect("etcd starts");
    // An endpoint that takes connections and never answers, listed first.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let silent_url = format!("http://{}", silent.local_addr().expect("bound"));
    let held = tokio::spawn(async move {
        let mut accepted = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            accepted.push(stream);
        }
    });
    let base = Etcd::new(&[silent_url.clone(), etcd_server.url().to_owned()], Duration::from_secs(60)).unwrap();
    let quick = base.with_timeout(Duration::from_millis(300));
    assert_eq!(quick.preferred_endpoint(), Some(silent_url.as_str()));
    // The quick client gives up on the silent endpoint after its own deadline, not the base's, and
    // goes on to the live one.
    within(quick.put("/it-shared/a", "1", 0)).await.expect("the live endpoint took the write");
    assert_eq!(quick.preferred_endpoint(), Some(etcd_server.url()));
    // The base client learnt it too: it goes to the live endpoint first, so its long deadline is
    // never spent on the silent one.
    assert_eq!(base.preferred_endpoint(), Some(etcd_server.url()));
    let read = within(base.get("/it-shared/a")).await.expect("a read");
    assert_eq!(read.map(|kv| kv.value), Some("1".to_owned()));
    held.abort();
}
