//! What the gateway really exports, checked by the real tools: the `demo` binary runs with traffic
//! and a few API calls, `promtool check metrics` lints its `/metrics`, and a real Prometheus on
//! loopback scrapes it with the rules loaded; then every dashboard panel and variable query must
//! return data, and every metric the dashboards and rules name must exist in what was scraped.
//! promtool and prometheus are required (scripts/test.sh provides them); a missing one fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::api;
use serde_json::Value;

const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");
/// The longest any condition may take; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// A tool from `SWITCHBOARD_<NAME>` (set by scripts/test.sh), else from PATH.
fn tool(name: &str) -> PathBuf {
    let variable = format!("SWITCHBOARD_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&variable) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: run `bash scripts/test.sh` (it unpacks Debian's prometheus package into \
                 target/prometheus), or set {variable}"
            )
        })
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// GET over plain HTTP/1.1; returns the status code and the body.
fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Ok((status, if chunked { dechunk(body) } else { body.to_owned() }))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `condition` every 200 ms until it returns something, at most [`PATIENCE`].
fn eventually<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "not reached within {PATIENCE:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the demo on port 0; returns it with its gRPC address, token and metrics address.
fn start_demo() -> (Running, String, String, String) {
    let mut child = Command::new(SWITCHBOARD)
        .args(["demo", "--agents", "5", "--calls-per-sec", "5"])
        .args(["--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the switchboard binary starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (mut grpc, mut token, mut metrics) = (None, None, None);
    while grpc.is_none() || token.is_none() || metrics.is_none() {
        let line = lines.recv_timeout(PATIENCE).expect("the demo announces where it listens");
        let value = |prefix: &str| {
            line.trim().strip_prefix(prefix).map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        };
        grpc = grpc.or(value("grpc api:"));
        token = token.or(value("bearer token:"));
        metrics = metrics
            .or(value("metrics:").map(|url| url.trim_start_matches("http://").trim_end_matches("/metrics").to_owned()));
    }
    (running, grpc.unwrap(), token.unwrap(), metrics.unwrap())
}

/// A few API calls, so the gRPC series have real data: reads, a refusal, a not-found, a command
/// that goes to the PBX, and an event stream held open for a while.
async fn api_traffic(grpc: &str, token: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let authed = |token: &str| {
        let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", value.clone());
            Ok(request)
        }
    };
    let mut agents = api::agents_client::AgentsClient::with_interceptor(channel.clone(), authed(token));
    for _ in 0..5 {
        agents.list_lines(api::ListLinesRequest::default()).await.expect("ListLines with the demo's token");
    }
    let missing = agents.get_line(api::GetLineRequest { line: "9999".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Line 2005 is the first of the demo's free lines: the login goes to the PBX.
    let login = api::LogInRequest { line: "2005".into(), agent_id: "4711".into(), ready: true, ..Default::default() };
    agents.log_in(login).await.expect("logging an agent in on a free line");
    let mut stranger =
        api::agents_client::AgentsClient::with_interceptor(channel.clone(), authed("not-a-token-at-all"));
    let refused = stranger.list_lines(api::ListLinesRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut events = api::events_client::EventsClient::with_interceptor(channel, authed(token));
    let mut stream = events.subscribe(api::SubscribeRequest::default()).await.expect("subscribing").into_inner();
    // Hold the stream open across scrapes; the demo's traffic keeps events coming.
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
}

fn scrape(metrics: &str) -> String {
    let (status, body) = http_get(metrics, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Starts Prometheus on a free loopback port, scraping `target` every second as cluster `test`,
/// instance `gw-1`, with the rules loaded. Returns it, its address and its temporary directory.
fn start_prometheus(target: &str) -> (Running, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("switchboard-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dashboards = workspace().join("dashboards");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n  - {alerts}\n\
         scrape_configs:\n  - job_name: switchboard\n    static_configs:\n      - targets: ['{target}']\n        \
         labels:\n          cluster: test\n          instance: gw-1\n",
        rules = dashboards.join("rules.yml").display(),
        alerts = dashboards.join("alerts.yml").display(),
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    // A free port: bind port 0, read it, let it go for Prometheus.
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={address}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus runs");
    (Running(child), address, dir)
}

fn api_get(prometheus: &str, path: &str) -> Value {
    let (status, body) = http_get(prometheus, path).unwrap_or_else(|error| panic!("GET {path}: {error}"));
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|error| panic!("GET {path}: {error}: {body}"));
    assert_eq!((status, value["status"].as_str()), (200, Some("success")), "GET {path}: {body}");
    value["data"].clone()
}

fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let data = api_get(prometheus, &format!("/api/v1/query?query={}", percent_encode(expr)));
    data["result"].as_array().cloned().unwrap_or_default()
}

/// Grafana's variables, as a real dashboard would fill them for this run.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__range", "1m")
        .replace("$cluster", "test")
        .replace("$instance", "gw-1")
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
            word.clear();
        } else if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
        } else {
            if (word.starts_with("switchboard_") || word.starts_with("process_")) && !word.contains(':') {
                names.push(word.clone());
            }
            word.clear();
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_demo_and_every_dashboard_query_returns_data() {
    let (_demo, grpc, token, metrics) = start_demo();
    eventually("the demo's PBX link is up", || {
        scrape(&metrics).lines().any(|line| line == "switchboard_pbx_link_up 1").then_some(())
    });
    api_traffic(&grpc, &token).await;

    // What the gateway exports passes Prometheus' own linter.
    let exported = scrape(&metrics);
    promtool_check_metrics(&exported);

    let (_prometheus, prometheus, dir) = start_prometheus(&metrics);
    let log = dir.join("prometheus.log");
    let ready = Instant::now() + PATIENCE;
    while !matches!(http_get(&prometheus, "/-/ready"), Ok((200, _))) {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(Instant::now() < ready, "prometheus did not become ready:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Enough scrapes for every rate window the dashboards use here (10 s).
    eventually("prometheus has 12 scrapes of the gateway", || {
        let result =
            query(&prometheus, "count_over_time(up{job=\"switchboard\", cluster=\"test\", instance=\"gw-1\"}[1m])");
        let scrapes = result.first().and_then(|sample| sample["value"][1].as_str()?.parse::<f64>().ok());
        scrapes.filter(|scrapes| *scrapes >= 12.0)
    });

    let dashboards = workspace().join("dashboards");
    let mut used = Vec::new();
    let mut empty = Vec::new();
    let mut dashboard_files: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    dashboard_files.sort();
    assert!(!dashboard_files.is_empty());
    for path in &dashboard_files {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            let Some(definition) = variable["query"]["query"].as_str() else { continue };
            // label_values(selector, label): the values Grafana would offer.
            let inner = definition.trim_start_matches("label_values(").trim_end_matches(')');
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let selector = substitute(selector.trim());
            used.extend(metric_names(&selector));
            let path = format!("/api/v1/label/{}/values?match[]={}", label.trim(), percent_encode(&selector));
            let values = api_get(&prometheus, &path);
            if values.as_array().is_none_or(Vec::is_empty) {
                empty.push(format!("variable {}: {definition}", variable["name"]));
            }
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                used.extend(metric_names(expr));
                if query(&prometheus, &substitute(expr)).is_empty() {
                    empty.push(format!("panel {:?}: {expr}", panel["title"].as_str().unwrap_or("")));
                }
            }
        }
    }
    assert!(empty.is_empty(), "queries with no data:\n{}", empty.join("\n"));

    // Every metric the dashboards and the rules name exists in what Prometheus scraped; promtool's
    // rule tests run on made-up series and cannot catch a misspelt name.
    for file in ["rules.yml", "alerts.yml"] {
        let text = std::fs::read_to_string(dashboards.join(file)).unwrap();
        for line in text.lines().filter(|line| !line.trim_start().starts_with('#')) {
            // Annotations are prose; only expressions name metrics.
            if !line.contains("summary:") && !line.contains("description:") {
                used.extend(metric_names(line));
            }
        }
    }
    let scraped = api_get(&prometheus, "/api/v1/label/__name__/values");
    let scraped: Vec<&str> = scraped.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    used.sort();
    used.dedup();
    let missing: Vec<&String> = used.iter().filter(|name| !scraped.contains(&name.as_str())).collect();
    assert!(missing.is_empty(), "named in dashboards or rules but never scraped: {missing:?}");
    assert!(used.len() > 40, "found the metric names in use: {used:?}");

    // Prometheus loaded every rule and evaluates each without error.
    let groups = api_get(&prometheus, "/api/v1/rules");
    let rules: Vec<&Value> =
        groups["groups"].as_array().unwrap().iter().flat_map(|group| group["rules"].as_array().unwrap()).collect();
    assert!(rules.len() >= 18, "prometheus loaded the rules: {groups}");
    let failing: Vec<String> = rules
        .iter()
        .filter(|rule| rule["health"] == "err")
        .map(|rule| format!("{}: {}", rule["name"], rule["lastError"]))
        .collect();
    assert!(failing.is_empty(), "rules failing to evaluate: {failing:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
