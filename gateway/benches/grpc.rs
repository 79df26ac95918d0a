//! Call-control round trips through the whole path (gRPC, the model, the PBX link, the simulator and
//! back): hold and retrieve, one after the other, measured per request; beside an empty gRPC call
//! (a health check) in the same run. Then the same under concurrent load: `C` clients at once (over
//! several HTTP/2 connections), each holding and retrieving the answered call on its own line.
//! Prints requests per second and p50 / p99 latency.
//!
//! Run with `cargo bench -p gateway --bench grpc`.

use std::time::{Duration, Instant};

use gateway::app::Gateway;
use gateway::config::{Config, GrpcConfig, PbxConfig, Secret, TokenConfig};
use gateway::grpc::GrpcServer;
use loadtest::sim::{Layout, SimConfig, Simulator};
use proto::api;
use proto::api::call_control_client::CallControlClient;
use tonic::{Request, Status};

// The switchboard binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TOKEN: &str = "benchmark-token-0123456789";
const ROUND_TRIPS: usize = 5_000;
/// Clients at once in the concurrent rounds; the largest is the number of lines with a call.
const CONCURRENCY: [usize; 5] = [4, 16, 32, 64, 128];
/// Requests in each concurrent round.
const CONCURRENT_REQUESTS: usize = 20_000;
/// HTTP/2 connections the concurrent clients share.
const CONNECTIONS: usize = 8;

type Authed = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    fn(Request<()>) -> Result<Request<()>, Status>,
>;

fn bearer(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

/// Milliseconds at the given quantile of sorted latencies.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(name: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort();
    #[allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
    {
        println!(
            "{name:<40} {:>8.0} requests/s   p50 {:>6.3} ms   p99 {:>6.3} ms",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            quantile(&latencies, 0.50),
            quantile(&latencies, 0.99)
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let simulator = Simulator::start(SimConfig {
            layout: Layout { stations: 130, ..Layout::default() },
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let config = Config {
            pbx: PbxConfig {
                address: simulator.local_addr().to_string(),
                password: Secret::new(simulator.config().password.clone()),
                ..PbxConfig::default()
            },
            grpc: GrpcConfig {
                tokens: vec![TokenConfig {
                    name: "bench".into(),
                    token: Secret::new(TOKEN),
                    scopes: vec!["admin".into()],
                }],
                rate_limit_per_sec: 1_000_000,
                rate_limit_burst: 1_000_000,
                ..GrpcConfig::default()
            },
            ..Config::default()
        };
        let gateway = Gateway::start(&config).await.unwrap();
        gateway.wait_resynced().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = GrpcServer::start(gateway.model().clone(), listener, &config.grpc, &config.agents).await.unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut calls = CallControlClient::with_interceptor(
            channel.clone(),
            bearer as fn(Request<()>) -> Result<Request<()>, Status>,
        );
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);

        // A connected call on line 2000 to hold and retrieve.
        let call = simulator.with_pbx(|pbx| pbx.inbound_call("+4930123123", "2000")).unwrap();
        let connection =
            |device: &str| proto::pbx::ConnectionId { call_id: call.clone(), device_id: device.to_owned() };
        simulator.with_pbx(|pbx| pbx.answer_call(&connection("2000"))).unwrap();
        while gateway.model().line("2000").is_none_or(|line| line.calls.is_empty()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let mut latencies = Vec::with_capacity(ROUND_TRIPS);
        let started = Instant::now();
        for _ in 0..ROUND_TRIPS {
            let sent = Instant::now();
            health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
            latencies.push(sent.elapsed());
        }
        report("empty rpc (health check)", latencies, started.elapsed());

        let mut latencies = Vec::with_capacity(ROUND_TRIPS);
        let started = Instant::now();
        for index in 0..ROUND_TRIPS {
            let request = api::CallRequest { request_id: String::new(), line: "2000".into(), call_id: call.clone() };
            // Wait until the model shows the last change, so the next command passes its check.
            let want = if index % 2 == 0 { "connected" } else { "held" };
            while gateway
                .model()
                .line("2000")
                .is_none_or(|line| !line.calls.iter().any(|(id, state)| *id == call && state.as_str() == want))
            {
                tokio::task::yield_now().await;
            }
            let sent = Instant::now();
            if index % 2 == 0 {
                calls.hold(request).await.unwrap();
            } else {
                calls.retrieve(request).await.unwrap();
            }
            latencies.push(sent.elapsed());
        }
        report("hold / retrieve through the pbx link", latencies, started.elapsed());

        // Under load: a connected call on each of the lines 2002 on, one client per line.
        let lines: Vec<String> = (0..CONCURRENCY[CONCURRENCY.len() - 1]).map(|n| format!("{}", 2002 + n)).collect();
        let mut answered = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let call = simulator.with_pbx(|pbx| pbx.inbound_call(&format!("+4930{n:06}"), line)).unwrap();
            let connection = proto::pbx::ConnectionId { call_id: call.clone(), device_id: line.clone() };
            simulator.with_pbx(|pbx| pbx.answer_call(&connection)).unwrap();
            answered.push((line.clone(), call));
        }
        for (line, call) in &answered {
            while gateway.model().line(line).is_none_or(|view| !view.calls.iter().any(|(id, _)| id == call)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // One subscriber tells each client its call's state as the model publishes it.
        let mut states = std::collections::HashMap::new();
        let mut watchers = Vec::new();
        for (line, call) in &answered {
            let (tx, rx) = tokio::sync::watch::channel(actors::domain::ConnState::Connected);
            states.insert(line.clone(), (call.clone(), tx));
            watchers.push(rx);
        }
        let model = gateway.model().clone();
        let dispatcher = tokio::spawn(async move {
            loop {
                let mut subscription = model.publisher().subscription();
                // Fresh, or after falling behind: the states as they are now, then every change.
                for (line, (call, tx)) in &states {
                    if let Some((_, state)) =
                        model.line(line).and_then(|view| view.calls.into_iter().find(|(id, _)| id == call))
                    {
                        tx.send_replace(state);
                    }
                }
                while let Ok(event) = subscription.next().await {
                    if let actors::events::ModelEvent::Line(view) = &event.event
                        && let Some((call, tx)) = states.get(&view.device)
                        && let Some((_, state)) = view.calls.iter().find(|(id, _)| id == call)
                    {
                        tx.send_replace(*state);
                    }
                }
            }
        });
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
                .unwrap()
                .connect()
                .await
                .unwrap();
            clients.push(CallControlClient::with_interceptor(
                channel,
                bearer as fn(Request<()>) -> Result<Request<()>, Status>,
            ));
        }
        for concurrency in CONCURRENCY {
            let started = Instant::now();
            let workers: Vec<_> = answered[..concurrency]
                .iter()
                .enumerate()
                .map(|(n, (line, call))| {
                    let client = clients[n % CONNECTIONS].clone();
                    let state = watchers[n].clone();
                    let (line, call) = (line.clone(), call.clone());
                    // An even share: each client ends as it began, with its call connected.
                    let share = CONCURRENT_REQUESTS / concurrency / 2 * 2;
                    tokio::spawn(hold_and_retrieve(client, state, line, call, share))
                })
                .collect();
            let mut latencies = Vec::with_capacity(CONCURRENT_REQUESTS);
            for worker in workers {
                latencies.extend(worker.await.unwrap());
            }
            report(&format!("hold / retrieve, {concurrency} clients at once"), latencies, started.elapsed());
        }
        dispatcher.abort();
        server.shutdown(Duration::from_secs(5)).await;
        gateway.shutdown(Duration::from_secs(5)).await;
    });
}

/// One client's share of a concurrent round: `requests` holds and retrieves on `line`'s call, each
/// sent once the model has published the last one's change (`state`: so it passes its state
/// check); the latencies.
async fn hold_and_retrieve(
    mut client: CallControlClient<Authed>,
    mut state: tokio::sync::watch::Receiver<actors::domain::ConnState>,
    line: String,
    call: String,
    requests: usize,
) -> Vec<Duration> {
    use actors::domain::ConnState;
    let mut latencies = Vec::with_capacity(requests);
    for index in 0..requests {
        let want = if index % 2 == 0 { ConnState::Connected } else { ConnState::Held };
        let waited = tokio::time::timeout(Duration::from_secs(10), state.wait_for(|now| *now == want)).await.is_ok();
        assert!(waited, "{line}: request {index} waits for {want:?}, the call is {:?}", *state.borrow());
        let request = api::CallRequest { request_id: String::new(), line: line.clone(), call_id: call.clone() };
        let sent = Instant::now();
        let answer = if index % 2 == 0 { client.hold(request).await } else { client.retrieve(request).await };
        if let Err(status) = answer {
            panic!("{line}: request {index} refused: {status:?}");
        }
        latencies.push(sent.elapsed());
    }
    latencies
}
