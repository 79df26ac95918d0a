//! Routing across a cluster: a request for a line this node does not serve is carried out by the
//! line's owner, reached over gRPC with the caller's metadata (token, request id) and what is left
//! of its deadline; requests by call id and listings ask every member. A forwarded request is
//! marked, and a marked request is answered from this node's own state, never forwarded again.
//! On a single node (no cluster) every request runs here, as it always did.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, KeyAndValueRef, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::status::route_status;
use crate::cluster::{EtcdError, Owner, Placement};
use crate::metrics::ForwardOutcome;

/// Metadata naming the node that forwarded a request here. A request that carries it is answered
/// from this node's own state: a line that moved on meanwhile gets a clear error instead of a
/// second hop, so a request can never go round in circles while ownership changes.
pub(crate) const FORWARDED_BY: &str = "x-switchboard-forwarded-by";

/// The deadline of a forwarded request whose caller set none: no request waits forever.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long connecting to another member may take before the request fails over to an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request could not be routed to the node that serves its line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    /// No node of the cluster shares such a line.
    #[error("no line {0} in the cluster")]
    UnknownLine(String),
    /// The line has no serving owner at the moment.
    #[error("line {0} is moving between cluster nodes; retry shortly")]
    Moving(String),
    /// A request forwarded here for a line this node no longer serves (the loop guard).
    #[error("line {line} moved: {by} forwarded the request here, but this node no longer serves it; retry")]
    Moved {
        /// The line.
        line: String,
        /// The node that forwarded it.
        by: String,
    },
    /// etcd could not say who owns the line.
    #[error("cannot look up the owner of line {line}: {source}; retry")]
    Lookup {
        /// The line.
        line: String,
        /// Why.
        source: EtcdError,
    },
    /// The owner did not answer before the deadline.
    #[error("cluster node {node} did not answer before the deadline")]
    Timeout {
        /// The node.
        node: String,
    },
    /// The owner did not answer.
    #[error("cluster node {node} did not answer: {detail}; retry")]
    Unreachable {
        /// The node.
        node: String,
        /// What went wrong.
        detail: String,
    },
    /// The owner advertises an address no channel can be made to.
    #[error("cluster node {node} advertises an unusable address {advertise:?}: {detail}")]
    BadAddress {
        /// The node.
        node: String,
        /// Its address.
        advertise: String,
        /// Why it is unusable.
        detail: String,
    },
    /// No member has the call.
    #[error("no call {0} in progress on any cluster node")]
    NoCall(String),
}

/// An RPC, as the forwarded-requests metric labels it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rpc {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
}

/// A CallControl method.
pub(crate) const fn call_control(method: &'static str) -> Rpc {
    Rpc { service: "switchboard.v1.CallControl", method }
}

/// An Agents method.
pub(crate) const fn agents(method: &'static str) -> Rpc {
    Rpc { service: "switchboard.v1.Agents", method }
}

/// The Events stream.
pub(crate) const SUBSCRIBE: Rpc = Rpc { service: "switchboard.v1.Events", method: "Subscribe" };

/// Another member, ready to take a request.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) node: String,
    channel: Channel,
}

/// Where a request runs: here, or it ran at the line's owner and this is the owner's answer.
pub(crate) enum Routed<Req, Resp> {
    Here(Request<Req>),
    There(Response<Resp>),
}

/// This node's view of the other members, with one lazily connected channel per member.
#[derive(Debug)]
pub(crate) struct Peers {
    placement: Placement,
    marker: AsciiMetadataValue,
    /// Channels by node id, with the address each was made for.
    channels: Mutex<HashMap<String, (String, Channel)>>,
    /// TLS to the other members, when the API speaks TLS.
    tls: Option<ClientTlsConfig>,
}

/// Routing for a service: `None` on a single node, where every request runs here.
pub(crate) type Routing = Option<std::sync::Arc<Peers>>;

impl Peers {
    pub(crate) fn new(placement: Placement, tls: Option<ClientTlsConfig>) -> Self {
        // A node id that is not a valid header value still marks the request; only the error
        // messages that quote it lose its name.
        let marker = AsciiMetadataValue::try_from(placement.node_id())
            .unwrap_or_else(|_| AsciiMetadataValue::from_static("another-node"));
        Self { placement, marker, channels: Mutex::new(HashMap::new()), tls }
    }

    pub(crate) fn node_id(&self) -> &str {
        self.placement.node_id()
    }

    pub(crate) fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The node that forwarded this request here, if another did.
    pub(crate) fn forwarded_by(metadata: &MetadataMap) -> Option<String> {
        metadata.get(FORWARDED_BY).map(|by| by.to_str().unwrap_or("another node").to_owned())
    }

    /// The channel to `node` at `advertise`: made once, connected on first use, remade when the
    /// member's address changes.
    pub(crate) fn peer(&self, node: &str, advertise: &str) -> Result<Peer, RouteError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((address, channel)) = channels.get(node)
            && address == advertise
        {
            return Ok(Peer { node: node.to_owned(), channel: channel.clone() });
        }
        let bad =
            |detail: String| RouteError::BadAddress { node: node.to_owned(), advertise: advertise.to_owned(), detail };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{advertise}")).map_err(|error| bad(error.to_string()))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|error| bad(error.to_string()))?;
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(node.to_owned(), (advertise.to_owned(), channel.clone()));
        Ok(Peer { node: node.to_owned(), channel })
    }

    /// The member `node`, if it is one now and its address is usable.
    pub(crate) fn member(&self, node: &str) -> Option<Peer> {
        let advertise = self.placement.members().get(node)?.advertise.clone();
        self.peer(node, &advertise).ok()
    }

    /// Every other live member, each with its channel (members with unusable addresses are left
    /// out and logged).
    pub(crate) fn others(&self) -> Vec<Peer> {
        let members = self.placement.members();
        let mut peers = Vec::new();
        for (node, member) in members.iter().filter(|(node, _)| node.as_str() != self.node_id()) {
            match self.peer(node, &member.advertise) {
                Ok(peer) => peers.push(peer),
                Err(error) => tracing::warn!(%error, "leaving a member out"),
            }
        }
        // Members that left take their channels with them.
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        channels.retain(|node, _| members.contains_key(node));
        peers
    }

    /// Where a request for `line` runs: `None` here, or the owner. A request another node
    /// forwarded here runs here or fails (never a second hop).
    async fn owner(&self, metadata: &MetadataMap, line: &str) -> Result<Option<Peer>, RouteError> {
        if self.placement.serves(line) {
            return Ok(None);
        }
        if let Some(by) = Self::forwarded_by(metadata) {
            return Err(RouteError::Moved { line: line.to_owned(), by });
        }
        match self.placement.owner(line).await {
            Ok(Owner::Here) => Ok(None),
            Ok(Owner::Node { id, advertise }) => self.peer(&id, &advertise).map(Some),
            Ok(Owner::Moving) => Err(RouteError::Moving(line.to_owned())),
            Ok(Owner::Unknown) => Err(RouteError::UnknownLine(line.to_owned())),
            Err(source) => Err(RouteError::Lookup { line: line.to_owned(), source }),
        }
    }

    /// Sends `message` to `peer` with the caller's `metadata` and what is left of its deadline
    /// (`received` is when the request reached this node), marked as forwarded; counts the outcome.
    pub(crate) async fn send<Req, Resp, Fut>(
        &self,
        rpc: Rpc,
        peer: &Peer,
        metadata: &MetadataMap,
        received: Instant,
        message: Req,
        call: impl FnOnce(Channel, Request<Req>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = caller_deadline(metadata).unwrap_or(DEFAULT_DEADLINE);
        let left = deadline.saturating_sub(received.elapsed());
        if left.is_zero() {
            return Err(Status::deadline_exceeded("the deadline passed before the request reached its line's owner"));
        }
        let mut request = Request::from_parts(passed_on(metadata, &self.marker), Default::default(), message);
        request.set_timeout(left);
        let outcome = call(peer.channel.clone(), request).await;
        let counted = match &outcome {
            Ok(_) => ForwardOutcome::Ok,
            // A status with a source was made on this side: the owner never answered.
            Err(status) if std::error::Error::source(status).is_some() => ForwardOutcome::Unreachable,
            Err(_) => ForwardOutcome::Error,
        };
        crate::metrics::grpc_forwarded(rpc.service, rpc.method, counted);
        match outcome {
            Ok(response) => Ok(Response::new(response.into_inner())),
            Err(status) if counted == ForwardOutcome::Unreachable => {
                let node = peer.node.clone();
                Err(route_status(match status.code() {
                    // This side's deadline ran out while the owner was silent.
                    Code::Cancelled | Code::DeadlineExceeded => RouteError::Timeout { node },
                    _ => RouteError::Unreachable { node, detail: status.message().to_owned() },
                }))
            }
            // The owner's answer, whatever it is, is the answer.
            Err(status) => Err(status),
        }
    }
}

/// The caller's metadata to pass on: everything but what gRPC and HTTP/2 set per hop (content type,
/// encodings, deadline, user agent), plus the forwarding mark.
fn passed_on(metadata: &MetadataMap, marker: &AsciiMetadataValue) -> MetadataMap {
    let mut passed = MetadataMap::new();
    for entry in metadata.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if passes_on(key.as_str()) => {
                passed.append(key.clone(), value.clone());
            }
            KeyAndValueRef::Binary(key, value) if passes_on(key.as_str()) => {
                passed.append_bin(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    passed.insert(FORWARDED_BY, marker.clone());
    passed
}

/// Whether a caller's metadata entry goes on with a forwarded request.
fn passes_on(key: &str) -> bool {
    !key.starts_with("grpc-")
        && key != FORWARDED_BY
        && !matches!(
            key,
            "te" | "content-type" | "content-length" | "user-agent" | "host" | "accept-encoding" | "connection"
        )
}

/// The caller's deadline from `grpc-timeout` (gRPC over HTTP/2: up to 8 digits and a unit).
fn caller_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match &value[digits.len()..] {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// In a handler: the request's message to carry out here, or returns the answer of the node that
/// serves the request's line. `$rpc` names the method, `$client` is the generated client type and
/// `$client_method` its method.
macro_rules! here_or_owner {
    ($self:ident, $request:ident, $rpc:expr, $client:ident, $client_method:ident) => {
        match $crate::grpc::forward::route(
            &$self.routing,
            $rpc,
            $request,
            |request| &request.line,
            |channel, request| async move { $client::new(channel).$client_method(request).await },
        )
        .await?
        {
            $crate::grpc::forward::Routed::Here(request) => request.into_inner(),
            $crate::grpc::forward::Routed::There(reply) => return Ok(reply),
        }
    };
}
pub(crate) use here_or_owner;

/// Carries `request` out at the owner of its line when another node serves it. `line` picks the
/// line from the request; an empty one runs here, where the handler's own checks refuse it.
pub(crate) async fn route<Req, Resp, Fut>(
    routing: &Routing,
    rpc: Rpc,
    request: Request<Req>,
    line: impl FnOnce(&Req) -> &str,
    call: impl FnOnce(Channel, Request<Req>) -> Fut,
) -> Result<Routed<Req, Resp>, Status>
where
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let Some(peers) = routing else { return Ok(Routed::Here(request)) };
    let received = Instant::now();
    let line = line(request.get_ref()).trim().to_owned();
    if line.is_empty() {
        return Ok(Routed::Here(request));
    }
    let peer = match peers.owner(request.metadata(), &line).await {
        Ok(None) => return Ok(Routed::Here(request)),
        Ok(Some(peer)) => peer,
        Err(error) => {
            crate::metrics::grpc_forwarded(rpc.service, rpc.method, ForwardOutcome::Refused);
            return Err(route_status(error));
        }
    };
    let (metadata, _, message) = request.into_parts();
    tracing::debug!(line, owner = peer.node, method = rpc.method, "forwarding a request to the line's owner");
    peers.send(rpc, &peer, &metadata, received, message, call).await.map(Routed::There)
}

/// Asks every other member with `message` (requests another node forwarded here ask nobody), and
/// gives each member's answer, by node, in no particular order.
pub(crate) async fn ask_all<Req, Resp, Fut>(
    routing: &Routing,
    rpc: Rpc,
    metadata: &MetadataMap,
    message: &Req,
    call: impl Fn(Channel, Request<Req>) -> Fut,
) -> Vec<(String, Result<Resp, Status>)>
where
    Req: Clone,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let Some(peers) = routing else { return Vec::new() };
    if Peers::forwarded_by(metadata).is_some() {
        return Vec::new();
    }
    let received = Instant::now();
    let asks = peers.others().into_iter().map(|peer| {
        let call = &call;
        async move {
            let answer = peers.send(rpc, &peer, metadata, received, message.clone(), call).await;
            (peer.node, answer.map(Response::into_inner))
        }
    });
    futures::future::join_all(asks).await
}

/// A request by call id: this node's answer on a single node; in a cluster, the first answer of
/// this node or any member (asked all at once) that found the call.
pub(crate) async fn here_or_anywhere<Req, Resp, Fut>(
    routing: &Routing,
    rpc: Rpc,
    call_id: &str,
    here: Result<Resp, Status>,
    metadata: &MetadataMap,
    message: &Req,
    call: impl Fn(Channel, Request<Req>) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Req: Clone,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    if routing.is_none() {
        return here.map(Response::new);
    }
    let there = ask_all(routing, rpc, metadata, message, call).await;
    found_anywhere(call_id, std::iter::once(here).chain(there.into_iter().map(|(_, answer)| answer))).map(Response::new)
}

/// The first answer that found the call; else the first failure other than "not found"; else
/// NOT_FOUND for the whole cluster.
pub(crate) fn found_anywhere<T>(call: &str, answers: impl IntoIterator<Item = Result<T, Status>>) -> Result<T, Status> {
    let mut failure = None;
    for answer in answers {
        match answer {
            Ok(found) => return Ok(found),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                failure.get_or_insert(status);
            }
        }
    }
    Err(failure.unwrap_or_else(|| route_status(RouteError::NoCall(call.to_owned()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &'static str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", AsciiMetadataValue::from_static(value));
        metadata
    }

    #[test]
    fn a_call_is_found_if_any_member_has_it_and_a_silent_member_is_not_taken_for_a_missing_call() {
        let missing = || Err::<u8, _>(Status::not_found("no call C1 in progress"));
        assert_eq!(found_anywhere("C1", [missing(), Ok(7), Err(Status::unavailable("down"))]).unwrap(), 7);
        let unknown = found_anywhere("C1", [missing(), missing()]).unwrap_err();
        assert_eq!((unknown.code(), unknown.message()), (Code::NotFound, "no call C1 in progress on any cluster node"));
        let silent = found_anywhere("C1", [missing(), Err(Status::unavailable("node-3 did not answer"))]).unwrap_err();
        assert_eq!(silent.code(), Code::Unavailable);
    }

    #[test]
    fn the_callers_deadline_is_read_in_each_unit_grpc_defines() {
        let cases = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
        ];
        for (value, deadline) in cases {
            assert_eq!(caller_deadline(&with_timeout(value)), Some(deadline), "{value}");
        }
        for bad in ["", "S", "123456789S", "5s", "x5S", "-1S"] {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(caller_deadline(&metadata), None, "{bad:?}");
        }
        assert_eq!(caller_deadline(&MetadataMap::new()), None);
    }

    #[test]
    fn the_callers_credentials_and_ids_pass_on_but_per_hop_headers_do_not() {
        for key in ["authorization", "x-request-id", "traceparent", "idempotency-key"] {
            assert!(passes_on(key), "{key}");
        }
        for key in
            ["grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "te", "content-type", "user-agent", FORWARDED_BY]
        {
            assert!(!passes_on(key), "{key}");
        }
    }

    #[test]
    fn a_forwarded_request_keeps_the_callers_token_and_is_marked_once() {
        let mut metadata = with_timeout("5S");
        metadata.insert("authorization", AsciiMetadataValue::from_static("Bearer secret"));
        metadata.insert("content-type", AsciiMetadataValue::from_static("application/grpc"));
        metadata.insert(FORWARDED_BY, AsciiMetadataValue::from_static("spoofed"));
        metadata.insert_bin("trace-bin", tonic::metadata::BinaryMetadataValue::from_bytes(b"\x01\x02"));
        let passed = passed_on(&metadata, &AsciiMetadataValue::from_static("node-1"));
        assert_eq!(passed.get("authorization").unwrap(), "Bearer secret");
        assert_eq!(passed.get_bin("trace-bin").unwrap().to_bytes().unwrap().as_ref(), b"\x01\x02");
        assert_eq!(passed.get_all(FORWARDED_BY).iter().collect::<Vec<_>>(), ["node-1"]);
        assert!(passed.get("grpc-timeout").is_none() && passed.get("content-type").is_none());
    }
}
