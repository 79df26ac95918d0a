//! Shared test fixtures: a simulator on port 0, a link client pointed at it, a scripted PBX for
//! protocol faults the simulator never commits, and waiting on conditions with a generous upper
//! bound instead of sleeping.

use std::future::Future;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gateway::config::{PbxConfig, Secret};
use gateway::pbx::{self, LinkEvent, LinkHandle};
use loadtest::sim::{Layout, SimConfig, Simulator};
use proto::pbx::{request, response};
use proto::wire::{DEFAULT_MAX_FRAME_LENGTH, LinkCodec, LinkMessage};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
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
    pub(crate) events: pbx::LinkEvents,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Client {
    pub(crate) fn start(config: PbxConfig) -> Self {
        Self::start_with_room(config, 100_000)
    }

    /// A client whose event stream holds at most `room` bursts of events (see [`pbx::LinkEvents`])
    /// before the link feels back-pressure.
    pub(crate) fn start_with_room(config: PbxConfig, room: usize) -> Self {
        let shutdown = CancellationToken::new();
        let (events_tx, events) = pbx::event_channel(room);
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
        while let Some(event) = self.events.try_recv() {
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

/// How a scripted PBX answers one request (other than register, heartbeat and monitor_start): the
/// frames to write, in order.
pub(crate) type Script = dyn Fn(u32, request::Service) -> Vec<LinkMessage> + Send + Sync;

/// A PBX played by the test, for protocol faults the simulator never commits: it registers every
/// link (heartbeats every 200 ms, first event sequence 1), answers heartbeats and monitor starts
/// (monitor 1), and answers everything else by `script`. Reading and writing run apart, so a
/// request is seen the moment it arrives, however much is still to write. Returns its address.
pub(crate) async fn scripted_pbx(script: std::sync::Arc<Script>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("bound").to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (mut sink, mut stream) = Framed::new(stream, LinkCodec::default()).split();
            let (frames, mut to_write) = mpsc::unbounded_channel::<LinkMessage>();
            tokio::spawn(async move {
                while let Some(frame) = to_write.recv().await {
                    if sink.send(frame).await.is_err() {
                        return;
                    }
                }
            });
            let script = script.clone();
            tokio::spawn(async move {
                while let Some(Ok(LinkMessage::Request { invoke_id, body })) = stream.next().await {
                    let result =
                        |result| LinkMessage::Result { invoke_id, body: proto::pbx::Response { result: Some(result) } };
                    let answer = match body.service {
                        Some(request::Service::Register(_)) => {
                            vec![result(response::Result::Register(proto::pbx::RegisterResult {
                                pbx_name: "scripted".into(),
                                protocol_version: 1,
                                heartbeat_interval_ms: 200,
                                max_frame_length: DEFAULT_MAX_FRAME_LENGTH as u32,
                                next_event_sequence: 1,
                                ..Default::default()
                            }))]
                        }
                        Some(request::Service::Heartbeat(_)) => {
                            vec![result(response::Result::Heartbeat(proto::pbx::HeartbeatResult::default()))]
                        }
                        Some(request::Service::MonitorStart(_)) => {
                            vec![result(response::Result::MonitorStart(proto::pbx::MonitorStartResult {
                                monitor_id: 1,
                            }))]
                        }
                        Some(service) => script(invoke_id, service),
                        None => continue,
                    };
                    for frame in answer {
                        if frames.send(frame).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    address
}

/// Link settings for a scripted PBX at `address` that monitor station 2000 only.
pub(crate) fn scripted_config(address: String) -> PbxConfig {
    PbxConfig {
        address,
        user: "switchboard".into(),
        password: Secret::new("secret"),
        devices: vec!["2000".into()],
        heartbeat_interval_ms: 200,
        request_timeout_ms: 5_000,
        connect_timeout_ms: 2_000,
        reconnect_initial_ms: 20,
        reconnect_max_ms: 200,
        ..PbxConfig::default()
    }
}
