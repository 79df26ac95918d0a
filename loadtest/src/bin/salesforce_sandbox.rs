//! `salesforce-sandbox`: runs the Salesforce sandbox on its own, for the demo, manual testing and the
//! loadtest; its control API is under `/sandbox/` (see docs/salesforce-sandbox.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadtest::salesforce::{FaultSettings, NumberPlan, Sandbox, SandboxConfig};

/// A stand-in for the Salesforce REST API: OAuth, SOSL phone search, Task upserts, limits and faults.
#[derive(Debug, Parser)]
#[command(name = "salesforce-sandbox", version)]
struct Args {
    /// Where to serve HTTP.
    #[arg(long, default_value = "127.0.0.1:8090", env = "SALESFORCE_SANDBOX_LISTEN")]
    listen: SocketAddr,
    /// Seeds the org's records and its tokens, so a run replays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Contacts to seed.
    #[arg(long, default_value_t = 1_000)]
    contacts: usize,
    /// Leads to seed.
    #[arg(long, default_value_t = 300)]
    leads: usize,
    /// Accounts to seed.
    #[arg(long, default_value_t = 200)]
    accounts: usize,
    /// Seeded numbers are +<country><area> and a zero-padded index from this range (`first..end`).
    #[arg(long, default_value = "0..100000", value_parser = parse_range)]
    number_range: (u64, u64),
    /// The daily API request allocation.
    #[arg(long, default_value_t = 100_000)]
    allocation: u64,
    /// How long an access token stays valid, in seconds.
    #[arg(long, default_value_t = 7_200)]
    session_timeout_secs: u64,
    /// The connected app's consumer key (client_id; a JWT's iss).
    #[arg(long, default_value = "switchboard-sandbox-key", env = "SALESFORCE_SANDBOX_CLIENT_ID")]
    client_id: String,
    /// The connected app's consumer secret.
    #[arg(long, default_value = "switchboard-sandbox-secret", env = "SALESFORCE_SANDBOX_CLIENT_SECRET")]
    client_secret: String,
    /// The integration user (a JWT's sub).
    #[arg(long, default_value = "integration@switchboard.sandbox")]
    username: String,
    /// A JWT's expected aud.
    #[arg(long, default_value = "https://login.salesforce.com")]
    audience: String,
    /// PEM file with the RSA public key JWT assertions are checked against; without it the JWT flow
    /// is refused.
    #[arg(long)]
    jwt_public_key: Option<PathBuf>,
    /// The Task external-id field upserts key on.
    #[arg(long, default_value = "Gw_Call_Id__c")]
    external_id_field: String,
    /// Fault: every request waits this many milliseconds before it is answered.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (first, end) = text.split_once("..").ok_or("expected FIRST..END")?;
    let first: u64 = first.trim().parse().map_err(|error| format!("{first}: {error}"))?;
    let end: u64 = end.trim().parse().map_err(|error| format!("{end}: {error}"))?;
    if end <= first {
        return Err("END must be greater than FIRST".into());
    }
    Ok((first, end))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // Installed before binding, so a signal that arrives while we start up still stops us cleanly.
    let stop = shutdown_signal()?;
    let jwt_public_key_pem = match &args.jwt_public_key {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let config = SandboxConfig {
        consumer_key: args.client_id,
        consumer_secret: args.client_secret,
        username: args.username,
        audience: args.audience,
        jwt_public_key_pem,
        external_id_field: args.external_id_field,
        allocation: args.allocation,
        session_timeout: Duration::from_secs(args.session_timeout_secs),
        seed: args.seed,
        contacts: args.contacts,
        leads: args.leads,
        accounts: args.accounts,
        number_plan: NumberPlan {
            first_index: args.number_range.0,
            end_index: args.number_range.1,
            ..NumberPlan::default()
        },
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let sandbox = Sandbox::start(config, listener).context("starting the salesforce sandbox")?;
    sandbox.set_faults(FaultSettings { latency_ms: args.latency_ms, ..FaultSettings::default() });
    let seeded = sandbox.seeded();
    tracing::info!(
        url = sandbox.base_url(),
        accounts = seeded.accounts.len(),
        contacts = seeded.contacts.len(),
        leads = seeded.leads.len(),
        jwt = args.jwt_public_key.is_some(),
        "salesforce-sandbox ready"
    );
    // The URL on stdout alone, so a script can read it.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", sandbox.base_url());
    }
    stop.await;
    tracing::info!("shutting down");
    sandbox.shutdown().await;
    Ok(())
}

/// Installs the Ctrl-C and SIGTERM handlers now (on unix, registering a signal stream installs its
/// handler at once; `tokio::signal::ctrl_c` would only do so when first polled); the future resolves
/// when either arrives.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
