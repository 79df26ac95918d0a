//! Shared test fixtures: a simulator on port 0, a link client pointed at it, and waiting on
//! conditions with a generous upper bound instead of sleeping.

use std::future::Future;
use std::time::Duration;

use gateway::config::{PbxConfig, Secret};
use gateway::pbx::{self, LinkEvent, LinkHandle};
use loadtest::sim::{Layout, SimConfig, Simulator};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any condition may take before a test fails; never a timing assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A simulator with a small layout and fast heartbeats.
pub(crate) async fn simulator(stations: u32) -> Simulator {
    Simulator::start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        layout: Layout { stations, park_orbits: 3, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .expect("the simulator binds a loopback port")
}

/// Link settings for `simulator`, with fast heartbeats and reconnects.
pub(crate) fn link_config(simulator: &Simulator) -> PbxConfig {
    PbxConfig {
        address: simulator.local_addr().to_string(),
        user: simulator.config().user.clone(),
        password: Secret::new(simulator.config().password.clone()),
        heartbeat_interval_ms: 200,
        request_timeout_ms: 5_000,
        connect_timeout_ms: 2_000,
        reconnect_initial_ms: 20,
        reconnect_max_ms: 200,
        gap_timeout_ms: 100,
        ..PbxConfig::default()
    }
}

/// A running link client and the receiving end of its event stream.
pub(crate) struct Client {
    pub(crate) link: LinkHandle,
    pub(crate) events: mpsc::Receiver<LinkEvent>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Client {
    pub(crate) fn start(config: PbxConfig) -> Self {
        let shutdown = CancellationToken::new();
        let (events_tx, events) = mpsc::channel(100_000);
        let (link, task) = pbx::start(config, events_tx, shutdown.clone());
        Self { link, events, shutdown, task }
    }

    /// Reads link events until `stop` says so; returns them all.
    pub(crate) async fn read_until(&mut self, mut stop: impl FnMut(&LinkEvent) -> bool) -> Vec<LinkEvent> {
        let mut seen = Vec::new();
        within(async {
            while let Some(event) = self.events.recv().await {
                let done = stop(&event);
                seen.push(event);
                if done {
                    break;
                }
            }
        })
        .await;
        seen
    }

    /// Takes what has arrived so far without waiting.
    pub(crate) fn drain(&mut self) -> Vec<LinkEvent> {
        let mut seen = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            seen.push(event);
        }
        seen
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.expect("the link task ends cleanly");
    }
}

/// Awaits `future`, failing the test if it takes longer than [`PATIENCE`].
pub(crate) async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future).await.expect("condition not reached in time")
}

/// Polls `condition` until it holds.
pub(crate) async fn eventually(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
pub(crate) fn certificates(dir: &std::path::Path) -> (String, (String, String)) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["desktop".to_owned()]).unwrap().signed_by(&client_key, &ca).unwrap();
    for (name, pem) in [("ca.pem", ca.pem()), ("server.pem", server.pem()), ("server.key", server_key.serialize_pem())]
    {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    (ca.pem(), (client.pem(), client_key.serialize_pem()))
}
