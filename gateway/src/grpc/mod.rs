//! Switchboard's gRPC API over the model: CallControl, Agents and Events (proto/switchboard/v1).
//! Status codes come from one place ([`status`]); request ids make retries safe ([`idempotency`]).

mod agents;
mod calls;
mod convert;
mod events;
mod idempotency;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actors::runtime::Model;
use proto::api::agents_server::AgentsServer;
use proto::api::call_control_server::CallControlServer;
use proto::api::events_server::EventsServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::bridge::LinkPort;

/// A running gRPC server.
#[derive(Debug)]
pub struct GrpcServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Serves the API over `model` on `listener` until [`GrpcServer::shutdown`].
    pub fn start(model: Model<LinkPort>, listener: TcpListener) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let request_ids = Arc::new(idempotency::RequestIds::new(Duration::from_secs(600), 100_000));
        let calls = calls::CallControlService { model: model.clone(), request_ids: request_ids.clone() };
        let agents = agents::AgentsService { model: model.clone(), request_ids };
        let events = events::EventsService { model, shutdown: shutdown.child_token() };
        let stop = shutdown.clone();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(CallControlServer::new(calls))
                .add_service(AgentsServer::new(agents))
                .add_service(EventsServer::new(events))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned()),
        );
        tracing::info!(%local_addr, "grpc api listening");
        Ok(Self { local_addr, shutdown, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, ends event streams with a reason, and waits for requests in flight.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "grpc server ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "grpc server task failed"),
            Err(_) => tracing::warn!("grpc server did not stop in time"),
        }
    }
}
