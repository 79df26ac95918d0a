//! The `salesforce-sandbox` binary as a user runs it: help, its URL on stdout, a token and the
//! control API over HTTP, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const SANDBOX: &str = env!("CARGO_BIN_EXE_salesforce-sandbox");

#[test]
fn help_lists_the_flags() {
    let output = Command::new(SANDBOX).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in
        ["--listen", "--seed", "--allocation", "--client-id", "--client-secret", "--jwt-public-key", "--latency-ms"]
    {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

fn http(address: &str, request_line: &str, content_type: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{request_line} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn it_serves_tokens_and_stats_and_stops_on_sigterm() {
    let mut child = Command::new(SANDBOX)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--contacts",
            "20",
            "--leads",
            "5",
            "--accounts",
            "5",
            "--client-secret",
            "s3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().strip_prefix("http://").expect("the URL on stdout").to_owned();
    let form = "grant_type=client_credentials&client_id=switchboard-sandbox-key&client_secret=s3";
    let token = http(&address, "POST /services/oauth2/token", "application/x-www-form-urlencoded", form);
    assert!(token.starts_with("HTTP/1.1 200"), "{token}");
    assert!(token.contains("\"access_token\""), "{token}");
    let stats = http(&address, "GET /sandbox/stats", "application/json", "");
    assert!(stats.contains("\"token_requests\":1"), "{stats}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}");
}
