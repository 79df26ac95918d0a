//! `switchboard-loadtest`: a seeded contact-center day against the real `switchboard` binary, the
//! PBX simulator and the Salesforce sandbox; measured beside same-run baselines, then checked.
//! Exits non-zero when a check fails (state mismatches, lost or duplicated call logs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadtest::load::{self, LoadConfig};

/// Plays a contact-center day against switchboard and reports what it cost and whether it held.
#[derive(Debug, Parser)]
#[command(name = "switchboard-loadtest", version)]
struct Args {
    /// Agents the simulated PBX plays; a call occupies one for ring, talk and after-call work
    /// (about 8 s with the defaults), so keep it near 10 times the call rate.
    #[arg(long, default_value_t = 400)]
    agents: u32,
    /// New calls per second.
    #[arg(long, default_value_t = 40.0)]
    calls_per_sec: f64,
    /// Seconds new calls arrive; then the calls in progress play to their end.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seeds the day, so runs (and the naive baseline) replay the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Desktops that drive calls over gRPC, on the lines after the agents'.
    #[arg(long, default_value_t = 5)]
    desks: u32,
    /// Hold-and-retrieve rounds per desktop call.
    #[arg(long, default_value_t = 3)]
    toggles: u32,
    /// Mean talk time of a call segment, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    mean_talk_ms: u64,
    /// Also run the same day against a gateway in salesforce.mode = naive (after the main run).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    naive_baseline: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the plot here (SVG).
    #[arg(long)]
    report: Option<PathBuf>,
    /// The switchboard binary; by default the one beside this program.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// A setting for the gateway under test, as SWITCHBOARD_<SECTION>_<KEY>=VALUE (repeatable),
    /// e.g. SWITCHBOARD_SALESFORCE_LOG_BATCH_AGE_MS=5000.
    #[arg(long = "gateway-env", value_name = "NAME=VALUE")]
    gateway_env: Vec<String>,
    /// Keep outboxes and gateway logs here instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let gateway_env = args
        .gateway_env
        .iter()
        .map(|setting| {
            let (name, value) = setting.split_once('=').context("--gateway-env takes NAME=VALUE")?;
            anyhow::ensure!(name.starts_with("SWITCHBOARD_"), "--gateway-env {name}: not a SWITCHBOARD_ setting");
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(report) = &args.report {
        anyhow::ensure!(
            report.extension().and_then(|extension| extension.to_str()) == Some("svg"),
            "--report {}: the plot is drawn as SVG; name it .svg",
            report.display()
        );
    }
    let config = LoadConfig {
        gateway_bin: load::gateway::binary(args.gateway_bin)?,
        agents: args.agents,
        calls_per_sec: args.calls_per_sec,
        duration: Duration::from_secs(args.duration),
        seed: args.seed,
        desks: args.desks,
        toggles: args.toggles,
        mean_talk: Duration::from_millis(args.mean_talk_ms),
        naive_baseline: args.naive_baseline,
        gateway_env,
        work_dir: args.work_dir,
        ..LoadConfig::default()
    };
    let progress = indicatif::ProgressBar::new(config.duration.as_secs());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s  {msg}")
            .context("the progress bar's template")?,
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let report = load::run(&config, &progress).await;
    progress.finish_and_clear();
    let report = report.context("running the loadtest")?;
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json()?).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.report {
        report.plot(path)?;
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.summary().as_bytes())?;
    stdout.flush()?;
    Ok(if report.passed() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
