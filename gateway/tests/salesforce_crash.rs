//! The crash test of the Salesforce side: `kill -9` the gateway during a stream of ending calls,
//! end more calls while it is down, start it again on the same outbox; Salesforce (the sandbox)
//! then holds exactly one Task per ended call leg, none missing, none doubled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use loadtest::salesforce::{FaultSettings, Sandbox, SandboxConfig};
use loadtest::sim::{Layout, SimConfig, Simulator};

const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");
const CALLS: usize = 10;
/// Calls that end before the kill, in a stream; the rest end while the gateway is down.
const BEFORE_KILL: usize = 5;
const PATIENCE: Duration = Duration::from_secs(30);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway process, killed if the test ends before it does (a failed assertion must not leave
/// it running).
struct Gateway(Child);

impl Gateway {
    /// `kill -9`, and wait for it to be gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn gateway(simulator: &Simulator, sandbox: &Sandbox, outbox: &Path) -> Gateway {
    let defaults = SandboxConfig::default();
    Command::new(SWITCHBOARD)
        .arg("run")
        .env("SWITCHBOARD_PBX_ADDRESS", simulator.local_addr().to_string())
        .env("SWITCHBOARD_PBX_USER", &simulator.config().user)
        .env("SWITCHBOARD_PBX_PASSWORD", &simulator.config().password)
        .env("SWITCHBOARD_PBX_HEARTBEAT_INTERVAL_MS", "200")
        .env("SWITCHBOARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_METRICS_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_SALESFORCE_ENABLED", "true")
        .env("SWITCHBOARD_SALESFORCE_LOGIN_URL", sandbox.base_url())
        .env("SWITCHBOARD_SALESFORCE_CLIENT_ID", &defaults.consumer_key)
        .env("SWITCHBOARD_SALESFORCE_CLIENT_SECRET", &defaults.consumer_secret)
        .env("SWITCHBOARD_SALESFORCE_OUTBOX_PATH", outbox.display().to_string())
        .env("SWITCHBOARD_SALESFORCE_DAILY_ALLOCATION", "10000000")
        .env("SWITCHBOARD_SALESFORCE_LOG_BATCH_AGE_MS", "300")
        .env("SWITCHBOARD_SALESFORCE_LOOKUP_WINDOW_MS", "100")
        // SWITCHBOARD_TEST_LOG=debug shows what the gateway did, when this test needs explaining.
        .env("RUST_LOG", std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Gateway)
        .expect("the switchboard binary starts")
}

/// Legs the gateway has journaled as open, read from its outbox (SQLite allows a reader beside
/// the gateway's writer).
fn open_legs(outbox: &Path) -> usize {
    let Ok(connection) = rusqlite::Connection::open_with_flags(outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    connection.query_row("SELECT COUNT(*) FROM open_legs WHERE closed = 0", [], |row| row.get::<_, i64>(0)).unwrap_or(0)
        as usize
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_of_ending_calls_loses_no_call_log_and_doubles_none() {
    let dir = TempDir(std::env::temp_dir().join(format!("switchboard-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let outbox = dir.0.join("outbox.sqlite3");
    let simulator = Simulator::start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        layout: Layout { stations: CALLS as u32, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(SandboxConfig::default(), listener).unwrap();
    // A slow org: call logs wait in the outbox while calls end.
    sandbox.set_faults(FaultSettings { latency_ms: 150, ..FaultSettings::default() });

    let mut first = gateway(&simulator, &sandbox, &outbox);
    until("the gateway's link", || simulator.link_count() == 1).await;
    let numbers = sandbox.seeded().unmatched_numbers(CALLS);
    let calls: Vec<(String, String)> = (0..CALLS)
        .map(|n| {
            let station = format!("{}", 2000 + n);
            let call = simulator.with_pbx(|pbx| pbx.inbound_call(&numbers[n], &station)).unwrap();
            (call, station)
        })
        .collect();
    for (call, station) in &calls {
        let connection = proto::pbx::ConnectionId { call_id: call.clone(), device_id: station.clone() };
        simulator.with_pbx(|pbx| pbx.answer_call(&connection)).unwrap();
    }
    let mut journaled = 0;
    until("every leg journaled", || {
        journaled = open_legs(&outbox);
        journaled == CALLS
    })
    .await;

    // A stream of ending calls, and the kill in the middle of it: no pause after the last end.
    for (call, _) in &calls[..BEFORE_KILL] {
        simulator.with_pbx(|pbx| pbx.clear_call(call)).unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    first.kill();
    // More calls end while the gateway is down.
    for (call, _) in &calls[BEFORE_KILL..] {
        simulator.with_pbx(|pbx| pbx.clear_call(call)).unwrap();
    }
    until("the simulator to see the link gone", || simulator.link_count() == 0).await;
    let delivered_before_restart = sandbox.tasks().len();

    let mut second = gateway(&simulator, &sandbox, &outbox);
    until("a task per ended call leg", || sandbox.tasks().len() >= CALLS).await;
    // Let anything still queued land, so a double would show.
    until("an empty outbox", || {
        rusqlite::Connection::open_with_flags(&outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get::<_, i64>(0)))
            .is_ok_and(|count| count == 0)
    })
    .await;
    second.kill();

    let tasks = sandbox.tasks();
    let mut keys: Vec<&str> = tasks.iter().map(|task| task.external_id.as_str()).collect();
    keys.sort_unstable();
    let mut expected: Vec<String> = calls.iter().map(|(call, station)| format!("{call}:{station}")).collect();
    expected.sort_unstable();
    assert_eq!(
        keys, expected,
        "exactly one task per ended call leg ({delivered_before_restart} landed before the kill)"
    );
    let approximate = tasks
        .iter()
        .filter(|task| {
            task.fields
                .get("Description")
                .and_then(|text| text.as_str())
                .is_some_and(|text| text.contains("ended while the gateway was down"))
        })
        .count();
    assert!(
        approximate >= CALLS - BEFORE_KILL,
        "the calls that ended while the gateway was down say so ({approximate})"
    );
    sandbox.shutdown().await;
    simulator.shutdown().await;
}
