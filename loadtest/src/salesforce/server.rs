//! The sandbox's HTTP edge: an axum server over one locked [`Org`]. Handlers read the request,
//! wait out any injected latency, take the lock once to get the org's answer, and write it back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::faults::FaultSettings;
use super::org::{DataRequest, Org, Reply, SandboxConfig, SandboxError, SandboxStats, TaskRecord};
use super::seed::{Record, Seeded};

/// Upsert bodies may carry 200 Tasks with long descriptions; axum's 2 MB default is too small.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

type Shared = Arc<Mutex<Org>>;

/// A running Salesforce sandbox.
#[derive(Debug)]
pub struct Sandbox {
    org: Shared,
    seeded: Arc<Seeded>,
    base_url: String,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Sandbox {
    /// Seeds an org and serves it on `listener` (bind port 0 for tests). Must be called inside a
    /// tokio runtime; the server runs until [`Sandbox::shutdown`].
    pub fn start(config: SandboxConfig, listener: TcpListener) -> Result<Self, SandboxError> {
        let local_addr = listener.local_addr().map_err(SandboxError::Listener)?;
        let base_url = format!("http://{local_addr}");
        let org = Org::new(config, base_url.clone())?;
        let seeded = Arc::new(org.seeded().clone());
        let org: Shared = Arc::new(Mutex::new(org));
        let shutdown = CancellationToken::new();
        let app = router(org.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                tracing::error!(%error, "salesforce sandbox server failed");
            }
        });
        Ok(Self { org, seeded, base_url, local_addr, shutdown, task })
    }

    fn org(&self) -> MutexGuard<'_, Org> {
        lock(&self.org)
    }

    /// `http://<address>`, the sandbox's instance URL and login URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The address the sandbox listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters now.
    pub fn stats(&self) -> SandboxStats {
        self.org().stats()
    }

    /// Every Task, in creation order.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.org().tasks().to_vec()
    }

    /// The Task upserted with `external_id`.
    pub fn task_by_external_id(&self, external_id: &str) -> Option<TaskRecord> {
        self.org().task_by_external_id(external_id).cloned()
    }

    /// A Contact, Lead or Account (seeded or created) by 15- or 18-character id.
    pub fn record(&self, id: &str) -> Option<Record> {
        self.org().record(id).cloned()
    }

    /// The records and numbers seeded at start.
    pub fn seeded(&self) -> &Seeded {
        &self.seeded
    }

    /// The faults in force, with their counts as used up so far.
    pub fn faults(&self) -> FaultSettings {
        self.org().faults().clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: FaultSettings) {
        self.org().set_faults(faults);
    }

    /// Ends every session now: requests with any token issued so far answer 401.
    pub fn expire_tokens(&self) {
        self.org().expire_tokens();
    }

    /// Sets the daily allocation's maximum and used count.
    pub fn set_allocation(&self, max: u64, used: u64) {
        self.org().set_allocation(max, used);
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "salesforce sandbox server task failed");
        }
    }
}

/// A poisoned lock means a handler panicked mid-change; the org is still the best state we have.
fn lock(org: &Shared) -> MutexGuard<'_, Org> {
    org.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn router(org: Shared) -> Router {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/data/{*path}", any(data))
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/tasks", get(tasks))
        .route("/sandbox/seeded", get(seeded))
        .route("/sandbox/faults", get(faults).post(set_faults))
        .route("/sandbox/allocation", post(set_allocation))
        .route("/sandbox/tokens/expire", post(expire_tokens))
        .fallback(|| async { reply(not_found()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(org)
}

fn not_found() -> Reply {
    Reply {
        status: 404,
        body: serde_json::json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND", "fields": []}]),
        limit_info: None,
    }
}

fn reply(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(reply.body)).into_response();
    if let Some((used, max)) = reply.limit_info
        && let Ok(value) = HeaderValue::from_str(&format!("api-usage={used}/{max}"))
    {
        response.headers_mut().insert("Sforce-Limit-Info", value);
    }
    response
}

/// Waits out the injected latency, outside the lock.
async fn latency(org: &Shared) {
    let delay = lock(org).faults().latency_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

async fn token(State(org): State<Shared>, body: Bytes) -> Response {
    latency(&org).await;
    let answer = lock(&org).token(&body, now_ms());
    reply(answer)
}

async fn data(
    State(org): State<Shared>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    latency(&org).await;
    let authorization = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let request =
        DataRequest { method: method.as_str(), path: &path, query: query.as_deref(), authorization, body: &body };
    let answer = lock(&org).data(request, now_ms());
    reply(answer)
}

async fn stats(State(org): State<Shared>) -> axum::Json<SandboxStats> {
    axum::Json(lock(&org).stats())
}

async fn tasks(State(org): State<Shared>) -> axum::Json<Vec<TaskRecord>> {
    axum::Json(lock(&org).tasks().to_vec())
}

async fn seeded(State(org): State<Shared>) -> axum::Json<Seeded> {
    axum::Json(lock(&org).seeded().clone())
}

async fn faults(State(org): State<Shared>) -> axum::Json<FaultSettings> {
    axum::Json(lock(&org).faults().clone())
}

async fn set_faults(
    State(org): State<Shared>,
    axum::Json(faults): axum::Json<FaultSettings>,
) -> axum::Json<FaultSettings> {
    let mut org = lock(&org);
    org.set_faults(faults);
    axum::Json(org.faults().clone())
}

/// `POST /sandbox/allocation`: either field may be left out to keep its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationUpdate {
    max: Option<u64>,
    used: Option<u64>,
}

async fn set_allocation(
    State(org): State<Shared>,
    axum::Json(update): axum::Json<AllocationUpdate>,
) -> axum::Json<SandboxStats> {
    let mut org = lock(&org);
    let stats = org.stats();
    org.set_allocation(update.max.unwrap_or(stats.allocation_max), update.used.unwrap_or(stats.allocation_used));
    axum::Json(org.stats())
}

async fn expire_tokens(State(org): State<Shared>) -> StatusCode {
    lock(&org).expire_tokens();
    StatusCode::NO_CONTENT
}
