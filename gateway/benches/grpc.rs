//! Call-control round trips through the whole path (gRPC, the model, the PBX link, the simulator and
//! back): hold and retrieve, one after the other, measured per request; beside an empty gRPC call
//! (a health check) in the same run. Prints requests per second and p50 / p99 latency.
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
        let simulator =
            Simulator::start(SimConfig { layout: Layout { stations: 2, ..Layout::default() }, ..SimConfig::default() })
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
        server.shutdown(Duration::from_secs(5)).await;
        gateway.shutdown(Duration::from_secs(5)).await;
    });
}
