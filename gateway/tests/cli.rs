//! The `switchboard` binary as a user runs it: help, the demo, a bad config, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SWITCHBOARD: &str = env!("CARGO_BIN_EXE_switchboard");

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
        .args(["demo", "--agents", "5", "--calls-per-sec", "5", "--grpc-listen", "127.0.0.1:0"])
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
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains("bearer token:"), "{stdout}");
    assert!(stdout.contains("grpc api:     127.0.0.1:") && !stdout.contains("127.0.0.1:0 "), "the real port: {stdout}");
    seen.extend(lines.try_iter());
    assert!(status.success(), "exit status {status}; log:\n{}", seen.join("\n"));
    assert!(seen.iter().any(|line| line.contains("shutting down")), "{}", seen.join("\n"));
    assert!(seen.last().is_some_and(|line| line.contains("stopped")), "{}", seen.join("\n"));
}
