//! The `switchboard` binary as a user runs it: help, the demo, a bad config, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");

fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn help_lists_the_commands() {
    let output = Command::new(SWITCHBOARD).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for command in ["run", "demo"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let output = Command::new(SWITCHBOARD).args(["run", "--config", "/nonexistent/switchboard.toml"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("reading config file /nonexistent/switchboard.toml"), "{stderr}");
}

#[test]
fn a_bad_environment_variable_is_a_clear_error() {
    let output = Command::new(SWITCHBOARD).arg("run").env("SWITCHBOARD_PBX_OUTBOUND_QUEUE", "many").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("SWITCHBOARD_PBX_OUTBOUND_QUEUE=\"many\": expected a whole number"), "{stderr}");
}

/// Runs the demo until it has resynced, then sends SIGTERM: it must stop cleanly, by itself.
#[test]
fn the_demo_runs_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(SWITCHBOARD)
        .args([
            "demo",
            "--agents",
            "5",
            "--calls-per-sec",
            "5",
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("the demo logs its resync");
        let resynced = line.contains("resync complete");
        seen.push(line);
        if resynced {
            break;
        }
    }
    // The demo prints where its metrics are; read them while it runs.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("metrics:") {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the demo stopped printing: {printed}");
        printed.push_str(&line);
    }
    let metrics = printed.split("metrics:").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let exported = http_get(metrics.trim_start_matches("http://").trim_end_matches("/metrics"), "/metrics");
    assert!(exported.contains("switchboard_build_info"), "{exported}");
    assert!(exported.contains("# HELP switchboard_build_info"), "{exported}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
    assert!(printed.contains("bearer token:"), "{printed}");
    assert!(
        printed.contains("grpc api:     127.0.0.1:") && !printed.contains("127.0.0.1:0 "),
        "the real port: {printed}"
    );
    seen.extend(lines.try_iter());
    assert!(status.success(), "exit status {status}; log:\n{}", seen.join("\n"));
    assert!(seen.iter().any(|line| line.contains("shutting down")), "{}", seen.join("\n"));
    assert!(seen.last().is_some_and(|line| line.contains("stopped")), "{}", seen.join("\n"));
}
