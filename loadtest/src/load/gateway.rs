//! The gateway under test: the real `switchboard` binary as a child process, configured through
//! `SWITCHBOARD_*` variables, reached over gRPC with a bearer token, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto::api::admin_client::AdminClient;
use proto::api::agents_client::AgentsClient;
use proto::api::call_control_client::CallControlClient;
use proto::api::events_client::EventsClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

use super::LoadError;

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel with the token on every request.
pub type Authed = InterceptedService<Channel, Bearer>;

/// One client connection (one HTTP/2 connection) to the gateway's API, with every service on it.
#[derive(Clone)]
pub struct Api {
    /// Call control.
    pub calls: CallControlClient<Authed>,
    /// Lines and agents.
    pub agents: AgentsClient<Authed>,
    /// The event stream.
    pub events: EventsClient<Authed>,
    /// The Salesforce integration's status.
    pub admin: AdminClient<Authed>,
    /// Health checks: the empty gRPC call of the latency baseline (no token needed).
    pub health: HealthClient<Channel>,
}

/// How to start the gateway.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The `switchboard` binary.
    pub binary: PathBuf,
    /// The simulator's link address and password.
    pub pbx_address: SocketAddr,
    /// The simulator's link password.
    pub pbx_password: String,
    /// The sandbox's base URL, consumer key and secret.
    pub salesforce_url: String,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret.
    pub client_secret: String,
    /// `budget` or `naive`.
    pub salesforce_mode: &'static str,
    /// Extra `SWITCHBOARD_*` settings (they win over the loadtest's own).
    pub extra_env: Vec<(String, String)>,
    /// Where the outbox and the gateway's log go.
    pub dir: PathBuf,
}

/// The running gateway process.
pub struct GatewayProcess {
    child: Child,
    /// Where its API listens.
    pub grpc: SocketAddr,
    /// Where `GET /metrics` is served.
    pub metrics: SocketAddr,
    /// The admin token.
    token: String,
    /// Its stderr.
    pub log: PathBuf,
}

impl std::fmt::Debug for GatewayProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayProcess").field("pid", &self.child.id()).field("grpc", &self.grpc).finish()
    }
}

/// The `switchboard` binary: `given`, else the one beside the running program.
pub fn binary(given: Option<PathBuf>) -> Result<PathBuf, LoadError> {
    if let Some(path) = given {
        return Ok(path);
    }
    let here = std::env::current_exe().map_err(LoadError::Io)?;
    let beside = here.with_file_name(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
    if !beside.exists() {
        return Err(LoadError::Gateway(format!(
            "no switchboard binary beside {} (build it with `cargo build --release --bin switchboard`, or pass --gateway-bin)",
            here.display()
        )));
    }
    Ok(beside)
}

/// A port that was free a moment ago. `run` needs concrete ports; another process could take it
/// in between, which `start` answers by trying again.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A fresh token for this run: 32 characters the gateway accepts. One for every gateway this
/// process starts: the nodes of a cluster forward requests to each other with the caller's token,
/// which each checks again.
fn fresh_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            use rand::RngExt;
            let mut rng = rand::rng();
            (0..32).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])).collect()
        })
        .clone()
}

impl GatewayProcess {
    /// Starts the gateway and waits (bounded) until its API answers and its link has seen every
    /// line of the simulator (`lines`). Retries with other ports if a port was taken meanwhile.
    pub async fn start(spec: &GatewaySpec, lines: usize) -> Result<(Self, Api), LoadError> {
        let mut last = None;
        for attempt in 0..3 {
            match Self::start_once(spec, lines, attempt).await {
                Ok(started) => return Ok(started),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| LoadError::Gateway("never started".to_owned())))
    }

    async fn start_once(spec: &GatewaySpec, lines: usize, attempt: u32) -> Result<(Self, Api), LoadError> {
        let grpc = free_port().map_err(LoadError::Io)?;
        let metrics = free_port().map_err(LoadError::Io)?;
        let token = fresh_token();
        let log = spec.dir.join(format!("switchboard-{}-{attempt}.log", spec.salesforce_mode));
        // Appended to: a node started again on the same directory keeps its earlier life's log.
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(LoadError::Io)?;
        let outbox = spec.dir.join(format!("outbox-{}-{attempt}.sqlite3", spec.salesforce_mode));
        let mut command = Command::new(&spec.binary);
        command.arg("run").stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        // Only our settings: a SWITCHBOARD_* variable of the caller's shell must not change the run.
        for (name, _) in std::env::vars() {
            if name.starts_with("SWITCHBOARD_") {
                command.env_remove(name);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let settings = [
            ("SWITCHBOARD_PBX_ADDRESS", spec.pbx_address.to_string()),
            ("SWITCHBOARD_PBX_PASSWORD", spec.pbx_password.clone()),
            ("SWITCHBOARD_GRPC_LISTEN", grpc.to_string()),
            ("SWITCHBOARD_METRICS_LISTEN", metrics.to_string()),
            ("SWITCHBOARD_GRPC_TOKENS", format!("loadtest:{token}:admin")),
            // The loadtest measures the gateway, not the per-client limiter in front of it.
            ("SWITCHBOARD_GRPC_RATE_LIMIT_PER_SEC", "1000000".to_owned()),
            ("SWITCHBOARD_GRPC_RATE_LIMIT_BURST", "100000".to_owned()),
            ("SWITCHBOARD_SALESFORCE_ENABLED", "true".to_owned()),
            ("SWITCHBOARD_SALESFORCE_LOGIN_URL", spec.salesforce_url.clone()),
            ("SWITCHBOARD_SALESFORCE_CLIENT_ID", spec.client_id.clone()),
            ("SWITCHBOARD_SALESFORCE_CLIENT_SECRET", spec.client_secret.clone()),
            ("SWITCHBOARD_SALESFORCE_OUTBOX_PATH", outbox.display().to_string()),
            // Far above what a run spends, so the pace the budget allows is never what limits it.
            ("SWITCHBOARD_SALESFORCE_DAILY_ALLOCATION", "1000000000".to_owned()),
            ("SWITCHBOARD_SALESFORCE_MODE", spec.salesforce_mode.to_owned()),
        ];
        command.envs(settings);
        command.envs(spec.extra_env.iter().cloned());
        let child = command
            .spawn()
            .map_err(|error| LoadError::Gateway(format!("starting {}: {error}", spec.binary.display())))?;
        let mut process = Self { child, grpc, metrics, token, log };
        let api = process.connect(lines).await?;
        Ok((process, api))
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the gateway exited ({status}); its log: {}", self.log.display())),
            Ok(None) => None,
            Err(error) => Some(format!("the gateway's status: {error}")),
        }
    }

    /// Connects a client with the token (a new HTTP/2 connection each time).
    pub async fn client(&self) -> Result<Api, LoadError> {
        let channel = Endpoint::from_shared(format!("http://{}", self.grpc))
            .map_err(|error| LoadError::Gateway(error.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|error| LoadError::Gateway(format!("connecting to {}: {error}", self.grpc)))?;
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| LoadError::Gateway("the token is not a header value".to_owned()))?;
        let bearer = Bearer(value);
        Ok(Api {
            calls: CallControlClient::with_interceptor(channel.clone(), bearer.clone()),
            agents: AgentsClient::with_interceptor(channel.clone(), bearer.clone()),
            events: EventsClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminClient::with_interceptor(channel.clone(), bearer),
            health: HealthClient::new(channel),
        })
    }

    async fn connect(&mut self, lines: usize) -> Result<Api, LoadError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last;
        loop {
            if let Some(why) = self.exited() {
                return Err(LoadError::Gateway(why));
            }
            match self.client().await {
                Ok(mut api) => match count_lines(&mut api).await {
                    Ok(count) if count >= lines => return Ok(api),
                    Ok(count) => last = format!("{count} lines"),
                    Err(status) => last = status.to_string(),
                },
                Err(error) => last = error.to_string(),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LoadError::Gateway(format!(
                    "the gateway did not show the simulator's {lines} lines within 60 s (last: {last}); its log: {}",
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The most resident memory the process has had (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        peak_rss(self.child.id())
    }

    /// Whether it is still running; why not, if it is not.
    pub fn check_alive(&mut self) -> Result<(), LoadError> {
        match self.exited() {
            Some(why) => Err(LoadError::Gateway(why)),
            None => Ok(()),
        }
    }

    /// Where its log is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // Everything worth keeping was read before: the checks, the metrics, the peak memory.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every line the gateway lists, page by page.
async fn count_lines(api: &mut Api) -> Result<usize, tonic::Status> {
    let mut count = 0;
    let mut page_token = String::new();
    // Bounded: a listing of more than a thousand pages is not one this loadtest makes.
    for _ in 0..1_000 {
        let request = proto::api::ListLinesRequest { page_size: 500, page_token, ..Default::default() };
        let page = api.agents.list_lines(request).await?.into_inner();
        count += page.lines.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(count)
}

/// `VmHWM` of a process, from /proc (Linux).
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The text of `GET /metrics` (plain HTTP/1.1 on loopback; the loadtest needs no HTTP client).
pub async fn scrape(address: SocketAddr) -> Result<String, LoadError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| LoadError::Gateway("GET /metrics timed out".to_owned()))?
        .map_err(LoadError::Io)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

/// Undoes HTTP/1.1 chunked transfer encoding.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// A quantile (0..1) of a Prometheus histogram in the scraped text, summed over its label sets,
/// interpolated within the bucket as `histogram_quantile` does; in the metric's unit.
pub fn histogram_quantile(text: &str, name: &str, quantile: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|line| line.starts_with(&prefix)) {
        let (labels, value) = line.rsplit_once(' ')?;
        let le = labels.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let count: f64 = value.parse().ok()?;
        match buckets.iter_mut().find(|(existing, _)| *existing == bound) {
            Some((_, total)) => *total += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = quantile * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in &buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let share = if count > lower.1 { (rank - lower.1) / (count - lower.1) } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    None
}

/// The sum of a counter or gauge over its label sets in the scraped text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_within_buckets_over_label_sets() {
        let text = "# HELP x_seconds what\n\
                    x_seconds_bucket{le=\"0.1\",kind=\"a\"} 10\n\
                    x_seconds_bucket{le=\"0.2\",kind=\"a\"} 20\n\
                    x_seconds_bucket{le=\"+Inf\",kind=\"a\"} 20\n\
                    x_seconds_bucket{kind=\"b\",le=\"0.1\"} 0\n\
                    x_seconds_bucket{kind=\"b\",le=\"0.2\"} 20\n\
                    x_seconds_bucket{kind=\"b\",le=\"+Inf\"} 20\n\
                    x_seconds_sum 1\nx_seconds_count 40\n";
        // 40 observations: 10 up to 0.1 s, 30 between 0.1 and 0.2 s; the 20th is a third of the way in.
        let median = histogram_quantile(text, "x_seconds", 0.5).unwrap();
        assert!((median - (0.1 + 0.1 / 3.0)).abs() < 1e-9, "{median}");
        assert_eq!(histogram_quantile(text, "y_seconds", 0.5), None);
        assert!((metric_sum(text, "x_seconds_count") - 40.0).abs() < 1e-9);
    }

    #[test]
    fn chunked_bodies_are_put_back_together() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
