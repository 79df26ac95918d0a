//! Switchboard's gRPC API over the model: CallControl, Agents and Events (proto/switchboard/v1),
//! with standard health checking and server reflection. Status codes come from one place
//! ([`status`]); request ids make retries safe ([`idempotency`]); bearer tokens, scopes and rate
//! limits guard every call ([`guard`]). In a cluster, requests for lines other nodes serve are
//! forwarded to them and event streams merge every member's events ([`forward`], [`cluster_events`]).

mod admin;
mod agents;
mod calls;
mod cluster_events;
mod convert;
mod events;
mod forward;
mod guard;
mod idempotency;
mod metrics;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::runtime::Model;
use proto::api::admin_server::AdminServer;
use proto::api::agents_server::AgentsServer;
use proto::api::call_control_server::CallControlServer;
use proto::api::events_server::EventsServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bridge::LinkPort;
use crate::cluster::Placement;
use crate::config::{AgentConfig, GrpcConfig};

/// Registers every gRPC series at zero; [`crate::metrics::register`] calls it.
pub(crate) fn register_metrics() {
    metrics::register();
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's address could not be read.
    #[error("grpc listener: {0}")]
    Listen(std::io::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("grpc reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS settings were refused.
    #[error("grpc tls: {0}")]
    Tls(tonic::transport::Error),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|source| StartError::TlsFile { path: path.to_owned(), source })
}

/// TLS, and mutual TLS when a client CA is given, as configured; `None` for plaintext.
fn tls(config: &GrpcConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, StartError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// How this node reaches the other members: TLS verified against `tls_peer_ca` when the API
/// speaks TLS (presenting this node's own certificate when the others ask for one), else plaintext.
fn peer_tls(config: &GrpcConfig) -> Result<Option<tonic::transport::ClientTlsConfig>, StartError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = &config.tls_peer_ca {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    if config.tls_client_ca.is_some() {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// A running gRPC server.
pub struct GrpcServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    health: tonic_health::server::HealthReporter,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Serves the API over `model` on `listener` until [`GrpcServer::shutdown`].
    pub async fn start(
        model: Model<LinkPort>,
        listener: TcpListener,
        config: &GrpcConfig,
        agents: &[AgentConfig],
    ) -> Result<Self, StartError> {
        Self::start_with(model, None, listener, config, agents).await
    }

    /// Starts the API with the Admin service over `salesforce` (which answers FAILED_PRECONDITION
    /// when Salesforce is off).
    pub async fn start_with(
        model: Model<LinkPort>,
        salesforce: Option<Arc<crate::salesforce::Salesforce>>,
        listener: TcpListener,
        config: &GrpcConfig,
        agents: &[AgentConfig],
    ) -> Result<Self, StartError> {
        Self::start_routed(model, salesforce, None, listener, config, agents).await
    }

    /// Starts the API of a cluster node (`placement` given) or of a single node (`None`). A
    /// cluster node forwards requests for lines it does not serve to their owners, asks every
    /// member for a call by id and for listings, and merges every member's events into each
    /// stream. Every node must accept the same tokens: a forwarded request carries its caller's.
    pub async fn start_routed(
        model: Model<LinkPort>,
        salesforce: Option<Arc<crate::salesforce::Salesforce>>,
        placement: Option<Placement>,
        listener: TcpListener,
        config: &GrpcConfig,
        agents: &[AgentConfig],
    ) -> Result<Self, StartError> {
        let peer_tls = peer_tls(config)?;
        let routing: forward::Routing = placement.map(|placement| Arc::new(forward::Peers::new(placement, peer_tls)));
        let local_addr = listener.local_addr().map_err(StartError::Listen)?;
        let shutdown = CancellationToken::new();
        let guard = Arc::new(guard::Guard::new(config));
        let request_ids = Arc::new(idempotency::RequestIds::new(Duration::from_secs(600), 100_000));
        let calls = calls::CallControlService {
            model: model.clone(),
            request_ids: request_ids.clone(),
            guard: guard.clone(),
            routing: routing.clone(),
        };
        let directory = agents.iter().map(|agent| (agent.email.to_lowercase(), agent.clone())).collect();
        let agents = agents::AgentsService {
            model: model.clone(),
            request_ids,
            guard: guard.clone(),
            directory,
            routing: routing.clone(),
        };
        let admin = admin::AdminService { salesforce, guard: guard.clone() };
        let events = events::EventsService { model, shutdown: shutdown.child_token(), guard, routing };
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<CallControlServer<calls::CallControlService>>().await;
        health.set_serving::<AgentsServer<agents::AgentsService>>().await;
        health.set_serving::<EventsServer<events::EventsService>>().await;
        health.set_serving::<AdminServer<admin::AdminService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(StartError::Reflection)?;
        let stop = shutdown.clone();
        // Nagle off on every accepted connection: the builder's `tcp_nodelay` does not reach
        // connections from an incoming stream, and with Nagle a small answer can wait for the
        // client's delayed ACK (some 40 ms on Linux): that was the loadtest's gRPC p99.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls(config)? {
            builder = builder.tls_config(tls).map_err(StartError::Tls)?;
        }
        let task = tokio::spawn(
            builder
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .layer(metrics::MetricsLayer::new())
                .add_service(health_service)
                .add_service(reflection)
                .add_service(CallControlServer::new(calls))
                .add_service(AgentsServer::new(agents))
                .add_service(EventsServer::new(events))
                .add_service(AdminServer::new(admin))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned()),
        );
        let tls = match (&config.tls_cert, &config.tls_client_ca) {
            (Some(_), Some(_)) => "mutual",
            (Some(_), None) => "on",
            (None, _) => "off",
        };
        tracing::info!(%local_addr, clients = config.tokens.len(), tls, "grpc api listening");
        Ok(Self { local_addr, shutdown, health, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Says it is no longer serving (load balancers move away), stops accepting, ends event
    /// streams with a reason, and waits for requests in flight.
    pub async fn shutdown(self, grace: Duration) {
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.shutdown.cancel();
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "grpc server ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "grpc server task failed"),
            Err(_) => tracing::warn!("grpc server did not stop in time"),
        }
    }
}
