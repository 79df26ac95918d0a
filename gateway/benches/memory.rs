//! Memory per idle agent line and per active call: starts 100,000 line actors and 50,000 call
//! actors through the model's router and reads the process's resident memory before and after each,
//! with the lines' actors running and after they have rested (`ModelConfig::line_idle`).
//!
//! Run with `cargo bench -p gateway --bench memory`; it prints its figures (it times nothing).

use std::sync::Arc;

use actors::call::CallInput;
use actors::domain::{AgentState, Cause, ConnState, DeviceKind, Direction};
use actors::line::{Agent, LineInput};
use actors::port::{PbxCommand, PbxOutcome, PbxPort, PortError};
use actors::runtime::{self, ModelConfig, ModelInput};

// The switchboard binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const LINES: usize = 100_000;
const CALLS: usize = 50_000;

struct NoPbx;

impl PbxPort for NoPbx {
    async fn execute(&self, _command: PbxCommand) -> Result<PbxOutcome, PortError> {
        Err(PortError::Unavailable("no pbx in the benchmark".to_owned()))
    }
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// How long a line actor may idle before it rests, here; in production a minute.
const LINE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

async fn settle(model: &runtime::Model<NoPbx>, lines: usize, calls: usize) {
    while model.actor_counts() != (lines, calls) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Let the actors drain their first messages.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
}

/// Waits until every line actor has rested, then a little more for the allocator to hand the
/// freed pages back (jemalloc purges what has been free for some seconds as allocation goes on).
async fn rest(model: &runtime::Model<NoPbx>, calls: usize) {
    while model.actor_counts() != (0, calls) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..40 {
        // A little allocation activity drives jemalloc's decay, as a running gateway's would.
        drop(std::hint::black_box(vec![0u8; 64 * 1024]));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (logs_tx, _logs) = tokio::sync::mpsc::channel(1024);
        // Events go nowhere in this measurement: keep no history.
        let config = ModelConfig { event_history: 0, event_buffer: 16, line_idle: LINE_IDLE, ..ModelConfig::default() };
        let (model, mut router) = runtime::start(config, Arc::new(NoPbx), logs_tx).await.unwrap();
        let before = resident_bytes();
        for index in 0..LINES {
            let agent = Agent {
                login_id: format!("agent{index}"),
                state: AgentState::Ready,
                roles: vec!["agent".to_owned()],
                reason: String::new(),
            };
            router
                .route(ModelInput::Line {
                    device: format!("{}", 100_000 + index),
                    input: LineInput::Agent(Some(Box::new(agent))),
                })
                .await;
        }
        settle(&model, LINES, 0).await;
        let with_line_actors = resident_bytes();
        rest(&model, 0).await;
        let with_lines = resident_bytes();
        for index in 0..CALLS {
            let call = format!("C{index}");
            let line = format!("{}", 100_000 + index);
            let caller = format!("+4930{index:07}");
            let inputs = vec![
                CallInput::Info { calling: caller.clone(), called: "6000".to_owned(), direction: Direction::Inbound },
                CallInput::Queue { queue: "6000".to_owned() },
                CallInput::PartyState {
                    device: caller,
                    kind: DeviceKind::External,
                    state: ConnState::Connected,
                    cause: Cause::Normal,
                    at: 0,
                },
                CallInput::PartyState {
                    device: line.clone(),
                    kind: DeviceKind::Line,
                    state: ConnState::Alerting,
                    cause: Cause::Distribution,
                    at: 1_000,
                },
                CallInput::PartyState {
                    device: line.clone(),
                    kind: DeviceKind::Line,
                    state: ConnState::Connected,
                    cause: Cause::Normal,
                    at: 3_000,
                },
            ];
            router.route(ModelInput::Call { call: call.clone(), inputs }).await;
            router
                .route(ModelInput::Line { device: line, input: LineInput::Call { call, state: ConnState::Connected } })
                .await;
        }
        // The calls' lines woke for the news of their call and rest again.
        while model.actor_counts().1 != CALLS {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let peak = resident_bytes();
        rest(&model, CALLS).await;
        let with_calls = resident_bytes();
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let per = |from: u64, to: u64, items: usize| to.saturating_sub(from) as f64 / items as f64;
        println!("resident before:                             {:>8.1} MiB", mib(before));
        println!("{LINES} lines, their actors running:        {:>8.1} MiB", mib(with_line_actors));
        println!("{LINES} lines, idle (actors resting):       {:>8.1} MiB", mib(with_lines));
        println!("and {CALLS} calls, as the last started:     {:>8.1} MiB", mib(peak));
        println!("and {CALLS} calls, their lines resting:      {:>8.1} MiB", mib(with_calls));
        println!("per line with its actor running:             {:>8.0} bytes", per(before, with_line_actors, LINES));
        println!("per idle line:                               {:>8.0} bytes", per(before, with_lines, LINES));
        println!("per active call, its line resting:           {:>8.0} bytes", per(with_lines, with_calls, CALLS));
        model.shutdown().await;
    });
}
