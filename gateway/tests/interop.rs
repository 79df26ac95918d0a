//! Interoperability: a Python client generated with grpcio-tools from the same `.proto` drives the
//! demo's API (tests/python/interop.py). `scripts/test.sh` provides the Python with grpcio-tools
//! and names it in `SWITCHBOARD_PYTHON`; otherwise `python3` must have it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");

#[test]
fn a_python_grpc_client_logs_in_calls_holds_retrieves_hangs_up_and_reads_events() {
    // The virtualenv scripts/test.sh makes, when it exists; else the system's python3.
    let virtualenv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/bin/python");
    let python = std::env::var("SWITCHBOARD_PYTHON")
        .unwrap_or_else(|_| if virtualenv.exists() { virtualenv.display().to_string() } else { "python3".to_owned() });
    let has_tools =
        Command::new(&python).args(["-c", "import grpc_tools"]).status().is_ok_and(|status| status.success());
    assert!(
        has_tools,
        "{python} lacks grpcio-tools: run scripts/test.sh, or pip install -r tests/python/requirements.txt"
    );

    let mut demo = Command::new(SWITCHBOARD)
        .args([
            "demo",
            "--agents",
            "3",
            "--calls-per-sec",
            "1",
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut address = None;
    let mut token = None;
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("grpc"), Some("api:"), Some(value)) => address = Some(value.to_owned()),
            (Some("bearer"), Some("token:"), Some(value)) => token = Some(value.to_owned()),
            _ => {}
        }
        if address.is_some() && token.is_some() {
            break;
        }
    }
    // Keep reading what the demo prints, so it never writes into a closed pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let (address, token) = (address.expect("the demo prints its address"), token.expect("the demo prints a token"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The demo leaves five lines free for people trying the API: with three agents, 2003 is one.
    let outcome = Command::new(&python)
        .arg(root.join("tests/python/interop.py"))
        .args([root.join("proto").to_str().unwrap(), &address, &token, "2003"])
        .output()
        .unwrap();
    let _ = Command::new("kill").args(["-TERM", &demo.id().to_string()]).status();
    let stopped = demo.wait().unwrap();
    drain.join().unwrap();
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    assert!(outcome.status.success(), "the python client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("interop ok"), "{stdout}");
    assert!(stopped.success(), "the demo did not stop cleanly: {stopped}");
}
