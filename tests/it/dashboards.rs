//! The dashboards and rules in `dashboards/`: every Grafana dashboard keeps the conventions that
//! make it provision as is and work across clusters, and promtool checks the rules and runs their
//! unit tests. promtool is required: CI always has it (scripts/test.sh), so a missing one fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").join("dashboards")
}

fn files(extension: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    found.sort();
    found
}

/// promtool from `SWITCHBOARD_PROMTOOL` (set by scripts/test.sh), else from PATH.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_PROMTOOL") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("promtool")).find(|path| path.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "promtool not found: run `bash scripts/test.sh` (it unpacks Debian's prometheus package into \
                 target/prometheus), or set SWITCHBOARD_PROMTOOL to a promtool binary"
            )
        })
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let dir = dashboards_dir();
    let rules: Vec<PathBuf> = files("yml", &dir);
    assert!(rules.iter().any(|path| path.ends_with("alerts.yml")), "dashboards/alerts.yml exists");
    assert!(rules.iter().any(|path| path.ends_with("rules.yml")), "dashboards/rules.yml exists");
    run(Command::new(promtool()).args(["check", "rules", "--lint=all", "--lint-fatal"]).args(&rules));
    let tests = files("yml", &dir.join("tests"));
    assert!(!tests.is_empty(), "dashboards/tests/ has promtool unit tests");
    run(Command::new(promtool()).args(["test", "rules"]).args(&tests));
}

/// Every alert in alerts.yml is covered by a unit test, and says how bad it is and what to do.
#[test]
fn every_alert_has_severity_runbook_annotations_and_a_unit_test() {
    let dir = dashboards_dir();
    let alerts = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests: String =
        files("yml", &dir.join("tests")).iter().map(|path| std::fs::read_to_string(path).unwrap()).collect();
    let names: Vec<&str> =
        alerts.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).map(str::trim).collect();
    assert!(names.len() >= 12, "{names:?}");
    for block in alerts.split("- alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim();
        for needed in ["severity: ", "summary: ", "description: "] {
            assert!(block.contains(needed), "{name} has no {needed}");
        }
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no promtool unit test");
    }
}

/// The metric selectors in a PromQL expression: (name, labels between the braces or None).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            // Skip string literals (label values).
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let is_metric =
                word.starts_with("switchboard_") || word.starts_with("process_") || word == "up" || word == "ALERTS";
            if is_metric {
                let labels =
                    expr[i..].strip_prefix('{').and_then(|rest| rest.split_once('}')).map(|(inside, _)| inside);
                found.push((word.to_owned(), labels.map(str::to_owned)));
            }
            continue;
        }
        i += 1;
    }
    found
}

fn check_expr(context: &str, expr: &str, problems: &mut Vec<String>) {
    let found = selectors(expr);
    if found.is_empty() {
        problems.push(format!("{context}: no metric in {expr}"));
    }
    for (name, labels) in found {
        let filtered = labels.as_deref().is_some_and(|labels| {
            labels.contains("cluster=~\"$cluster\"") && labels.contains("instance=~\"$instance\"")
        });
        if !filtered {
            problems.push(format!("{context}: {name} is not filtered by cluster and instance in {expr}"));
        }
    }
    for function in ["rate(", "increase("] {
        for (at, _) in expr.match_indices(function) {
            let window =
                expr[at..].split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(window, _)| window);
            if !matches!(window, Some("$__rate_interval" | "$__range")) {
                problems.push(format!("{context}: {function}..) over {window:?}, not $__rate_interval, in {expr}"));
            }
        }
    }
    for (at, _) in expr.match_indices("histogram_quantile(") {
        let rest = &expr[at + "histogram_quantile(".len()..];
        let after_q = rest.split_once(',').map(|(_, rest)| rest.trim_start()).unwrap_or("");
        if !after_q.starts_with("sum by (le") {
            problems.push(format!("{context}: histogram_quantile not over sum by (le ...) in {expr}"));
        }
    }
}

#[test]
fn every_dashboard_keeps_the_conventions() {
    let dashboards = files("json", &dashboards_dir());
    assert!(!dashboards.is_empty(), "dashboards/ has Grafana dashboards");
    let mut uids = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for path in &dashboards {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|error| panic!("{name} is not JSON: {error}"));
        let uid = dashboard["uid"].as_str().unwrap_or("");
        if uid.is_empty() || uid.len() > 40 || !uids.insert(uid.to_owned()) {
            problems.push(format!("{name}: a stable, unique uid of at most 40 characters, not {uid:?}"));
        }
        if dashboard.get("__inputs").is_some() {
            problems.push(format!("{name}: __inputs breaks file provisioning"));
        }
        if !dashboard["schemaVersion"].is_u64() {
            problems.push(format!("{name}: schemaVersion must be a number"));
        }
        let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
        let variable = |wanted: &str| variables.iter().find(|variable| variable["name"] == wanted).cloned();
        match variable("datasource") {
            Some(datasource) if datasource["type"] == "datasource" && datasource["query"] == "prometheus" => {}
            _ => problems.push(format!("{name}: no datasource variable of type datasource for prometheus")),
        }
        for wanted in ["cluster", "instance"] {
            match variable(wanted) {
                Some(variable) if variable["type"] == "query" && variable["datasource"]["uid"] == "${datasource}" => {
                    let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap_or("");
                    if !query.starts_with("label_values(") {
                        problems.push(format!("{name}: variable {wanted} is not a label_values query"));
                    }
                }
                _ => problems.push(format!("{name}: no {wanted} query variable on ${{datasource}}")),
            }
        }
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        let rows: Vec<&str> =
            panels.iter().filter(|panel| panel["type"] == "row").filter_map(|panel| panel["title"].as_str()).collect();
        for wanted in [
            "Overview",
            "PBX link",
            "Calls and agents",
            "gRPC API",
            "Salesforce and outbox",
            "Runtime and actors",
            "Cluster",
        ] {
            if !rows.contains(&wanted) {
                problems.push(format!("{name}: no row {wanted:?}"));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for panel in &panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            let context = format!("{name}: panel {title:?}");
            if !panel["id"].as_u64().is_some_and(|id| ids.insert(id)) {
                problems.push(format!("{context}: no unique id"));
            }
            if !["x", "y", "w", "h"].iter().all(|key| panel["gridPos"][key].is_u64()) {
                problems.push(format!("{context}: no gridPos"));
            }
            if panel["type"] == "row" {
                continue;
            }
            if panel["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{context}: no description"));
            }
            if panel["fieldConfig"]["defaults"]["unit"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{context}: no unit"));
            }
            if panel["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{context}: datasource is not ${{datasource}}"));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{context}: no query"));
            }
            for target in &targets {
                if target["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("{context}: a target's datasource is not ${{datasource}}"));
                }
                check_expr(&context, target["expr"].as_str().unwrap_or(""), &mut problems);
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_convention_check_catches_what_it_should() {
    let mut problems = Vec::new();
    check_expr("bare", "sum(rate(switchboard_pbx_events_total[5m]))", &mut problems);
    check_expr(
        "quantile",
        "histogram_quantile(0.9, rate(switchboard_x_bucket{cluster=~\"$cluster\", instance=~\"$instance\"}[$__rate_interval]))",
        &mut problems,
    );
    check_expr(
        "ok",
        "sum by (kind) (rate(switchboard_pbx_decode_errors_total{cluster=~\"$cluster\", instance=~\"$instance\"}[$__rate_interval]))",
        &mut problems,
    );
    let joined = problems.join("\n");
    assert!(joined.contains("bare: switchboard_pbx_events_total is not filtered"), "{joined}");
    assert!(joined.contains("bare: rate(..) over Some(\"5m\")"), "{joined}");
    assert!(joined.contains("quantile: histogram_quantile not over sum by (le"), "{joined}");
    assert!(!joined.contains("ok:"), "{joined}");
}
