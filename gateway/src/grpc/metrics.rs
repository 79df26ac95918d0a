//! The one place gRPC requests are measured: a tower layer around every service that counts each
//! request by service, method and the code in its grpc-status (from the response headers, or from
//! the trailers at the end of the body), times unary requests, counts open streams, and counts
//! auth failures and rate-limited requests from the same code. Metric handles are resolved once, so
//! a request costs a few atomic adds and no lookup.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Bytes, Service};

use crate::metrics::{
    GRPC_ACTIVE_STREAMS, GRPC_AUTH_FAILURES, GRPC_CODES, GRPC_RATE_LIMITED, GRPC_REQUEST_DURATION, GRPC_REQUESTS,
};

/// A method the server offers: its service, its name, and whether it answers with a stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Method {
    pub(crate) service: &'static str,
    pub(crate) name: &'static str,
    pub(crate) streaming: bool,
}

const fn unary(service: &'static str, name: &'static str) -> Method {
    Method { service, name, streaming: false }
}

const fn stream(service: &'static str, name: &'static str) -> Method {
    Method { service, name, streaming: true }
}

const CALLS: &str = "switchboard.v1.CallControl";
const AGENTS: &str = "switchboard.v1.Agents";
const EVENTS: &str = "switchboard.v1.Events";
const ADMIN: &str = "switchboard.v1.Admin";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

/// Every method the server offers; anything else is labelled `unknown` so a scanner's made-up
/// paths cannot grow the number of series.
pub(crate) const METHODS: [Method; 28] = [
    unary(CALLS, "MakeCall"),
    unary(CALLS, "Answer"),
    unary(CALLS, "HangUp"),
    unary(CALLS, "Hold"),
    unary(CALLS, "Retrieve"),
    unary(CALLS, "Park"),
    unary(CALLS, "RetrieveParked"),
    unary(CALLS, "BlindTransfer"),
    unary(CALLS, "StartConsultation"),
    unary(CALLS, "CompleteConsultation"),
    unary(CALLS, "CancelConsultation"),
    unary(CALLS, "Conference"),
    unary(CALLS, "Alternate"),
    unary(CALLS, "SetCallNotes"),
    unary(CALLS, "GetCall"),
    unary(AGENTS, "LogIn"),
    unary(AGENTS, "LogOut"),
    unary(AGENTS, "SetPresence"),
    unary(AGENTS, "GetLine"),
    unary(AGENTS, "ListLines"),
    stream(EVENTS, "Subscribe"),
    unary(ADMIN, "GetSalesforceStatus"),
    unary(ADMIN, "UpdateSalesforceSettings"),
    unary(ADMIN, "ListDeadLetters"),
    unary(ADMIN, "ReplayDeadLetters"),
    unary(HEALTH, "Check"),
    stream(HEALTH, "Watch"),
    stream(REFLECTION, "ServerReflectionInfo"),
];

const UNKNOWN: Method = unary("unknown", "unknown");

/// One method's metric handles.
struct Handles {
    requests: Vec<Counter>,
    duration: Histogram,
    streams: Gauge,
    streaming: bool,
}

impl Handles {
    fn new(method: Method) -> Self {
        let labels = [("service", method.service), ("method", method.name)];
        let requests = GRPC_CODES
            .iter()
            .map(|code| counter!(GRPC_REQUESTS, "service" => method.service, "method" => method.name, "code" => *code))
            .collect();
        Self {
            requests,
            duration: histogram!(GRPC_REQUEST_DURATION, &labels),
            streams: gauge!(GRPC_ACTIVE_STREAMS, &labels),
            streaming: method.streaming,
        }
    }
}

/// Every handle, resolved once.
struct Table {
    methods: Vec<(Method, Handles)>,
    unknown: Handles,
    unauthenticated: Counter,
    permission_denied: Counter,
    rate_limited: Counter,
}

impl Table {
    fn new() -> Self {
        let methods = METHODS.iter().map(|method| (*method, Handles::new(*method))).collect();
        Self {
            methods,
            unknown: Handles::new(UNKNOWN),
            unauthenticated: counter!(GRPC_AUTH_FAILURES, "reason" => "unauthenticated"),
            permission_denied: counter!(GRPC_AUTH_FAILURES, "reason" => "permission_denied"),
            rate_limited: counter!(GRPC_RATE_LIMITED),
        }
    }

    /// Where in the table a request path (`/package.Service/Method`) is.
    fn position(&self, path: &str) -> Option<usize> {
        let (service, name) = path.strip_prefix('/')?.split_once('/')?;
        self.methods.iter().position(|(method, _)| method.service == service && method.name == name)
    }
}

/// Registers every gRPC series at zero (with the recorder installed).
pub(crate) fn register() {
    let _ = Table::new();
}

/// The layer; build it after the recorder is installed, or it records nowhere.
#[derive(Clone)]
pub(crate) struct MetricsLayer {
    table: Arc<Table>,
}

impl MetricsLayer {
    pub(crate) fn new() -> Self {
        Self { table: Arc::new(Table::new()) }
    }
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered { inner, table: self.table.clone() }
    }
}

/// A service with its requests measured.
#[derive(Clone)]
pub(crate) struct Metered<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S> Service<Request<Body>> for Metered<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let table = self.table.clone();
        let index = table.position(request.uri().path());
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let mut finish = Finish { table, index, started, done: false, streaming: false };
            if let Some(code) = grpc_code(response.headers()) {
                // Trailers-only: the status came with the headers (a refusal, an error).
                finish.record(code);
                return Ok(response);
            }
            if finish.handles().streaming {
                finish.streaming = true;
                finish.handles().streams.increment(1.0);
            }
            Ok(response.map(|body| Body::new(MeteredBody { inner: body, finish })))
        })
    }
}

/// The code in a grpc-status header or trailer, as an index into [`GRPC_CODES`].
fn grpc_code(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<usize>().ok()?;
    // A code beyond the known ones is, as gRPC says, Unknown.
    Some(if value < GRPC_CODES.len() { value } else { 2 })
}

/// What is still to record of one request, once its status is known (or it is dropped).
struct Finish {
    table: Arc<Table>,
    index: Option<usize>,
    started: Instant,
    done: bool,
    streaming: bool,
}

impl Finish {
    fn handles(&self) -> &Handles {
        self.index.map_or(&self.table.unknown, |index| &self.table.methods[index].1)
    }

    fn record(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let handles = self.handles();
        handles.requests[code].increment(1);
        if self.streaming {
            handles.streams.decrement(1.0);
        } else if !handles.streaming {
            handles.duration.record(self.started.elapsed().as_secs_f64());
        }
        match GRPC_CODES[code] {
            "Unauthenticated" => self.table.unauthenticated.increment(1),
            "PermissionDenied" => self.table.permission_denied.increment(1),
            "ResourceExhausted" => self.table.rate_limited.increment(1),
            _ => {}
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // The body went away before its trailers: the client cancelled, or the connection died.
        self.record(1);
    }
}

/// A response body that reads the grpc-status from its trailers as they pass.
struct MeteredBody {
    inner: Body,
    finish: Finish,
}

impl tonic::codegen::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    self.finish.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish.record(2),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of methods is the API: every rpc in the proto, plus health and reflection.
    #[test]
    fn every_rpc_of_the_api_is_a_known_method() {
        let proto = include_str!("../../../proto/switchboard/v1/switchboard.proto");
        let mut service = "";
        let mut declared = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                let streaming = line.contains("returns (stream");
                declared.push((format!("switchboard.v1.{service}"), name.to_owned(), streaming));
            }
        }
        let known: Vec<_> = METHODS
            .iter()
            .filter(|method| method.service.starts_with("switchboard."))
            .map(|method| (method.service.to_owned(), method.name.to_owned(), method.streaming))
            .collect();
        assert_eq!(known, declared);
    }

    #[test]
    fn every_forwarded_method_is_a_known_method_outside_admin() {
        for (service, name) in crate::metrics::FORWARDED_METHODS {
            assert!(METHODS.iter().any(|method| method.service == service && method.name == name), "{service}/{name}");
        }
        let forwarded: Vec<_> = METHODS
            .iter()
            .filter(|method| method.service.starts_with("switchboard.") && !method.service.ends_with(".Admin"))
            .map(|method| (method.service, method.name))
            .collect();
        assert_eq!(forwarded, crate::metrics::FORWARDED_METHODS);
    }

    #[test]
    fn the_code_comes_from_grpc_status() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_code(&headers), None);
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(GRPC_CODES[grpc_code(&headers).unwrap()], "Unauthenticated");
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(GRPC_CODES[grpc_code(&headers).unwrap()], "Unknown");
    }
}
