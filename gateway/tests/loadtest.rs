//! A short smoke run of the loadtest against this package's `switchboard` binary: a few seconds of
//! a small seeded day in both Salesforce modes. It asserts the checks (the gateway mirrors the
//! simulator, one Task per finished call leg, none twice), never the timings.

use std::time::Duration;

use loadtest::load::{self, LoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_loadtest_loses_nothing_and_mirrors_the_simulator() {
    let config = LoadConfig {
        gateway_bin: env!("CARGO_BIN_EXE_switchboard").into(),
        agents: 20,
        calls_per_sec: 4.0,
        duration: Duration::from_secs(3),
        seed: 7,
        desks: 2,
        toggles: 1,
        mean_talk: Duration::from_millis(500),
        naive_baseline: true,
        baseline_grpc_calls: 50,
        baseline_decode_calls: 500,
        ..LoadConfig::default()
    };
    let report = load::run(&config, &load::ProgressBar::hidden()).await.expect("the loadtest ran");
    let summary = report.summary();
    assert_eq!(report.state_mismatches, 0, "{summary}");
    assert_eq!(report.naive_state_mismatches, Some(0), "{summary}");
    assert!(report.logs_expected > 5, "the day had calls: {summary}");
    assert_eq!(
        (report.logs_delivered, report.logs_lost, report.logs_duplicated),
        (report.logs_expected, 0, 0),
        "{summary}"
    );
    assert_eq!((report.naive_logs_lost, report.naive_logs_duplicated), (Some(0), Some(0)), "{summary}");
    assert!(
        report.grpc_requests > 0 && report.screen_pops > 0,
        "the desks and the watcher saw the gateway work: {summary}"
    );
    let per_method: u64 = report.grpc_methods.values().map(|method| method.requests).sum();
    assert_eq!(per_method, report.grpc_requests, "every request is counted under its method: {summary}");
    assert!(
        ["LogIn", "MakeCall", "Answer"].iter().all(|method| report.grpc_methods.contains_key(*method)),
        "{summary}"
    );
    assert!(report.passed(), "{summary}");
}
