//! The `pbx-sim` binary as a user runs it: help, and its state served as JSON while traffic runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const PBX_SIM: &str = env!("CARGO_BIN_EXE_pbx-sim");

#[test]
fn help_describes_the_simulator() {
    let output = Command::new(PBX_SIM).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--traffic") && help.contains("--inspect"), "{help}");
}

fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_state_is_served_as_json() {
    let mut child = Command::new(PBX_SIM)
        .args(["--listen", "127.0.0.1:0", "--inspect", "127.0.0.1:0", "--traffic", "--stations", "5", "--agents", "5"])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut inspect = None;
    for line in stderr.lines().map_while(Result::ok) {
        if let Some(rest) = line.split("inspect=").nth(1) {
            inspect = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let inspect = inspect.expect("pbx-sim logs where it serves its state");
    let response = http_get(&inspect, "/state");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let state: serde_json::Value = serde_json::from_str(body).unwrap();
    let agents = state["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 5);
    assert!(agents.iter().all(|agent| agent["state"] == "ready"
        || agent["state"] == "working_after_call"
        || agent["state"] == "not_ready"));
}
