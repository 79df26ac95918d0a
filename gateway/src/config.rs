//! The gateway's typed configuration: defaults, then a TOML file, then environment variables, then
//! command-line flags. Loading takes the environment as an argument, so tests need no process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variables that override the file, one per setting.
pub mod env {
    /// `pbx.address`.
    pub const PBX_ADDRESS: &str = "SWITCHBOARD_PBX_ADDRESS";
    /// `pbx.user`.
    pub const PBX_USER: &str = "SWITCHBOARD_PBX_USER";
    /// `pbx.password`.
    pub const PBX_PASSWORD: &str = "SWITCHBOARD_PBX_PASSWORD";
    /// `pbx.devices`, comma-separated.
    pub const PBX_DEVICES: &str = "SWITCHBOARD_PBX_DEVICES";
    /// `pbx.heartbeat_interval_ms`.
    pub const PBX_HEARTBEAT_INTERVAL_MS: &str = "SWITCHBOARD_PBX_HEARTBEAT_INTERVAL_MS";
    /// `pbx.request_timeout_ms`.
    pub const PBX_REQUEST_TIMEOUT_MS: &str = "SWITCHBOARD_PBX_REQUEST_TIMEOUT_MS";
    /// `pbx.max_frame_length`.
    pub const PBX_MAX_FRAME_LENGTH: &str = "SWITCHBOARD_PBX_MAX_FRAME_LENGTH";
    /// `pbx.outbound_queue`.
    pub const PBX_OUTBOUND_QUEUE: &str = "SWITCHBOARD_PBX_OUTBOUND_QUEUE";
    /// `grpc.listen`.
    pub const GRPC_LISTEN: &str = "SWITCHBOARD_GRPC_LISTEN";
    /// `metrics.listen`.
    pub const METRICS_LISTEN: &str = "SWITCHBOARD_METRICS_LISTEN";
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this structure.
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: Box<toml::de::Error>,
    },
    /// An environment variable names no setting, or has a value of the wrong kind.
    #[error("environment variable {name}={value:?}: {reason}")]
    Env {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A setting is out of its range.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The setting, as `section.key`.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A secret (password, token): its `Debug` never shows it, so it cannot leak into logs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The PBX link.
    pub pbx: PbxConfig,
    /// The model of lines and calls.
    pub calls: CallsConfig,
    /// The gRPC API.
    pub grpc: GrpcConfig,
    /// The agent directory: who is who, so agents can log in by email.
    pub agents: Vec<AgentConfig>,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Screen pops and call logs in Salesforce.
    pub salesforce: SalesforceConfig,
    /// Several nodes sharing the lines, coordinated through etcd.
    pub cluster: ClusterConfig,
}

/// Clustering: off, one node serves every line; on, the nodes registered in etcd share them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Off: a single node, no etcd.
    pub enabled: bool,
    /// etcd's client URLs, `http://host:port`; requests go to the one that last answered.
    pub etcd_endpoints: Vec<String>,
    /// This node's id, unique in the cluster; empty: the host name and the gRPC port.
    pub node_id: String,
    /// Where the other nodes reach this node's gRPC API; empty: `grpc.listen`.
    pub advertise: String,
    /// Every key the cluster writes is under this prefix, so several clusters can share an etcd.
    pub key_prefix: String,
    /// The node's lease: a node that cannot renew it stops serving its lines within this, and the
    /// others take them once it has lapsed.
    pub lease_ttl_secs: u64,
    /// Salesforce requests a node takes at once from the cluster's shared daily allowance (a
    /// counter in etcd): bigger blocks mean fewer etcd writes, smaller ones a fairer spread, and
    /// what a dead node held is lost for the day.
    pub salesforce_budget_block: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            node_id: String::new(),
            advertise: String::new(),
            key_prefix: "/switchboard".to_owned(),
            lease_ttl_secs: 3,
            salesforce_budget_block: 50,
        }
    }
}

impl ClusterConfig {
    /// This node's id: the configured one, or the host name and the gRPC port of `grpc_listen`.
    pub fn node_id(&self, grpc_listen: &str) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = if host.trim().is_empty() { "switchboard" } else { host.trim() };
        let port = grpc_listen.rsplit_once(':').map_or("", |(_, port)| port);
        format!("{host}-{port}")
    }

    /// How long a node keeps what the model said about the lines it stands by for: long enough to
    /// cover the owner's last journal writes, its lease running out and the takeover (four lease
    /// TTLs, and 30 s at least).
    pub fn standby_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.lease_ttl_secs * 4).max(30))
    }

    /// Where the other nodes reach this one: the configured address, or `grpc_listen`.
    pub fn advertise(&self, grpc_listen: &str) -> String {
        if self.advertise.is_empty() { grpc_listen.to_owned() } else { self.advertise.clone() }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| Err(ConfigError::Invalid { setting, reason: reason.to_owned() });
        if !self.enabled {
            return Ok(());
        }
        if self.etcd_endpoints.is_empty() {
            return invalid("cluster.etcd_endpoints", "a cluster needs at least one etcd endpoint");
        }
        if let Some(endpoint) = self.etcd_endpoints.iter().find(|endpoint| !endpoint.starts_with("http://")) {
            return Err(ConfigError::Invalid {
                setting: "cluster.etcd_endpoints",
                reason: format!("{endpoint:?} is not an http:// URL"),
            });
        }
        if !(2..=60).contains(&self.lease_ttl_secs) {
            return invalid("cluster.lease_ttl_secs", "must be between 2 and 60 seconds");
        }
        if !(1..=10_000).contains(&self.salesforce_budget_block) {
            return invalid("cluster.salesforce_budget_block", "must be 1 to 10000 requests");
        }
        if !self.key_prefix.starts_with('/') {
            return invalid("cluster.key_prefix", "must start with /");
        }
        if self.node_id.contains('/') {
            return invalid("cluster.node_id", "must not contain /");
        }
        Ok(())
    }
}

/// Salesforce: where, as whom, and how much of the org's API allocation to spend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceConfig {
    /// Off: no screen pops and no call logs in Salesforce.
    pub enabled: bool,
    /// Where tokens are minted: the org's My Domain, `https://<domain>.my.salesforce.com`.
    pub login_url: String,
    /// The REST API version, `62.0`.
    pub api_version: String,
    /// `client_credentials` or `jwt_bearer`.
    pub auth_flow: String,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret (client credentials flow).
    pub client_secret: Secret,
    /// The integration user (JWT bearer flow).
    pub username: String,
    /// The RSA private key (PEM) that signs JWT assertions.
    pub private_key_file: String,
    /// The JWT assertion's audience: `https://login.salesforce.com` or `https://test.salesforce.com`.
    pub audience: String,
    /// A session is re-minted after this many seconds even if Salesforce still takes it.
    pub session_max_age_secs: u64,
    /// The Task field (External ID) holding our call log key.
    pub external_id_field: String,
    /// Phone fields searched and shown, as `Object.Field`; the objects named are searched.
    pub phone_fields: Vec<String>,
    /// A request's deadline (Salesforce counts requests over 20 s against a small concurrency cap).
    pub request_timeout_ms: u64,
    /// The durable call log outbox (SQLite).
    pub outbox_path: String,
    /// The org's daily API allocation, until Salesforce reports it.
    pub daily_allocation: u64,
    /// The share of the allocation this gateway may spend, in percent.
    pub budget_share_percent: u32,
    /// From this share of the allocation used, the pace halves.
    pub throttle_at_percent: u32,
    /// From this share used, only screen-pop searches go out; call logs wait.
    pub reads_only_at_percent: u32,
    /// Requests that may go out at once after a quiet spell.
    pub burst: u32,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// A ringing call's search goes out within this many milliseconds.
    pub urgent_window_ms: u64,
    /// A lookup made ahead of the ring waits at most this long for company.
    pub lookup_window_ms: u64,
    /// Numbers in one search at most.
    pub search_batch_max: usize,
    /// Call logs in one write at most (200 is Salesforce's maximum).
    pub log_batch_max: usize,
    /// A call log waits at most this long for company.
    pub log_batch_age_ms: u64,
    /// How long a found number is cached.
    pub cache_found_ttl_secs: u64,
    /// How long a number no record carries is cached.
    pub cache_not_found_ttl_secs: u64,
    /// Numbers cached at most.
    pub cache_capacity: usize,
    /// How often to ask whether an exhausted allocation has room again.
    pub probe_interval_secs: u64,
    /// When screens pop: `ringing`, `answered` or `ended`.
    pub pop_trigger: String,
    /// The call log Task's subject (variables in braces: `{status}`, `{from}`, ...).
    pub subject_template: String,
    /// The call log Task's description.
    pub description_template: String,
    /// Create a `contact` or `lead` for an unknown caller; empty for none.
    pub auto_create_inbound: String,
    /// Create a `contact` or `lead` for an unknown number an agent calls; empty for none.
    pub auto_create_outbound: String,
    /// Numbers of at most this many digits are extensions, never searched.
    pub internal_max_digits: usize,
    /// `budget` (batched, coalesced, cached) or `naive`: one request per lookup and per call log,
    /// no cache, as vendors' connectors do; kept only to measure against.
    pub mode: String,
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            login_url: "https://login.salesforce.com".to_owned(),
            api_version: "62.0".to_owned(),
            auth_flow: "client_credentials".to_owned(),
            client_id: String::new(),
            client_secret: Secret::default(),
            username: String::new(),
            private_key_file: String::new(),
            audience: "https://login.salesforce.com".to_owned(),
            session_max_age_secs: 3_600,
            external_id_field: "Gw_Call_Id__c".to_owned(),
            phone_fields: ["Contact.Phone", "Contact.MobilePhone", "Lead.Phone", "Lead.MobilePhone", "Account.Phone"]
                .map(str::to_owned)
                .to_vec(),
            request_timeout_ms: 15_000,
            outbox_path: "switchboard-outbox.sqlite3".to_owned(),
            daily_allocation: 100_000,
            budget_share_percent: 25,
            throttle_at_percent: 80,
            reads_only_at_percent: 95,
            burst: 20,
            max_in_flight: 4,
            urgent_window_ms: 230,
            lookup_window_ms: 1_000,
            search_batch_max: 100,
            log_batch_max: 200,
            log_batch_age_ms: 5_000,
            cache_found_ttl_secs: 600,
            cache_not_found_ttl_secs: 120,
            cache_capacity: 100_000,
            probe_interval_secs: 60,
            pop_trigger: "ringing".to_owned(),
            subject_template: actors::crm::task::DEFAULT_SUBJECT.to_owned(),
            description_template: actors::crm::task::DEFAULT_DESCRIPTION.to_owned(),
            auto_create_inbound: String::new(),
            auto_create_outbound: String::new(),
            internal_max_digits: 6,
            mode: "budget".to_owned(),
        }
    }
}

impl SalesforceConfig {
    /// The phone fields to search, by object.
    pub fn phone_fields_by_object(&self) -> std::collections::BTreeMap<actors::crm::port::RecordKind, Vec<String>> {
        let mut by_object = std::collections::BTreeMap::<_, Vec<String>>::new();
        for entry in &self.phone_fields {
            if let Some((object, field)) = entry.split_once('.')
                && let Some(kind) = record_kind(object)
            {
                by_object.entry(kind).or_default().push(field.to_owned());
            }
        }
        by_object
    }

    /// The settings an administrator may change at run time, from this configuration.
    pub fn settings(&self) -> Result<actors::crm::engine::CrmSettings, ConfigError> {
        use actors::crm::engine::{AutoCreate, CrmSettings, PopTrigger};
        use actors::crm::task::{TaskTemplates, Template};
        let invalid = |setting, reason: String| ConfigError::Invalid { setting, reason };
        let pop_trigger = match self.pop_trigger.as_str() {
            "ringing" => PopTrigger::Ringing,
            "answered" => PopTrigger::Answered,
            "ended" => PopTrigger::Ended,
            other => {
                return Err(invalid("salesforce.pop_trigger", format!("{other:?} is not ringing, answered or ended")));
            }
        };
        let auto = |setting, value: &str| match value {
            "" => Ok(None),
            "contact" => Ok(Some(actors::crm::port::RecordKind::Contact)),
            "lead" => Ok(Some(actors::crm::port::RecordKind::Lead)),
            other => Err(invalid(setting, format!("{other:?} is not contact, lead or empty"))),
        };
        Ok(CrmSettings {
            enabled: self.enabled,
            pop_trigger,
            templates: TaskTemplates {
                subject: Template::parse(&self.subject_template)
                    .map_err(|error| invalid("salesforce.subject_template", error.to_string()))?,
                description: Template::parse(&self.description_template)
                    .map_err(|error| invalid("salesforce.description_template", error.to_string()))?,
            },
            auto_create: AutoCreate {
                inbound: auto("salesforce.auto_create_inbound", &self.auto_create_inbound)?,
                outbound: auto("salesforce.auto_create_outbound", &self.auto_create_outbound)?,
            },
        })
    }

    /// The budget actor's settings.
    pub fn crm(&self) -> Result<actors::crm::engine::CrmConfig, ConfigError> {
        use actors::crm::budget::BudgetConfig;
        use actors::crm::lookup::CacheConfig;
        Ok(actors::crm::engine::CrmConfig {
            settings: self.settings()?,
            budget: BudgetConfig {
                daily_allocation: self.daily_allocation,
                share: f64::from(self.budget_share_percent) / 100.0,
                throttle_at: f64::from(self.throttle_at_percent) / 100.0,
                reads_only_at: f64::from(self.reads_only_at_percent) / 100.0,
                burst: self.burst,
                probe_interval: Duration::from_secs(self.probe_interval_secs),
                // Set by the gateway when it runs in a cluster (`cluster.salesforce_budget_block`).
                shared_block: None,
            },
            cache: CacheConfig {
                found_ttl: Duration::from_secs(self.cache_found_ttl_secs),
                not_found_ttl: Duration::from_secs(self.cache_not_found_ttl_secs),
                capacity: self.cache_capacity,
            },
            urgent_window: Duration::from_millis(self.urgent_window_ms),
            lookup_window: Duration::from_millis(self.lookup_window_ms),
            search_batch_max: self.search_batch_max,
            log_batch_max: self.log_batch_max,
            log_batch_age: Duration::from_millis(self.log_batch_age_ms),
            max_in_flight: self.max_in_flight,
            internal_max_digits: self.internal_max_digits,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
        .with_mode(self.mode == "naive"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| Err(ConfigError::Invalid { setting, reason: reason.to_owned() });
        self.settings()?;
        if !(self.login_url.starts_with("https://") || self.login_url.starts_with("http://")) {
            return invalid("salesforce.login_url", "must be an http(s) URL");
        }
        if !matches!(self.auth_flow.as_str(), "client_credentials" | "jwt_bearer") {
            return invalid("salesforce.auth_flow", "must be client_credentials or jwt_bearer");
        }
        if self.enabled && self.client_id.is_empty() {
            return invalid("salesforce.client_id", "the connected app's consumer key is needed");
        }
        if self.enabled
            && self.auth_flow == "jwt_bearer"
            && (self.private_key_file.is_empty() || self.username.is_empty())
        {
            return invalid("salesforce.private_key_file", "the jwt bearer flow needs private_key_file and username");
        }
        if self.enabled && self.auth_flow == "client_credentials" && self.client_secret.expose().is_empty() {
            return invalid("salesforce.client_secret", "the client credentials flow needs the consumer secret");
        }
        if self.external_id_field.is_empty() || self.external_id_field.contains('/') {
            return invalid("salesforce.external_id_field", "must name a Task field");
        }
        if self.phone_fields_by_object().is_empty()
            || self
                .phone_fields
                .iter()
                .any(|entry| entry.split_once('.').and_then(|(object, _)| record_kind(object)).is_none())
        {
            return invalid("salesforce.phone_fields", "entries are Contact.<Field>, Lead.<Field> or Account.<Field>");
        }
        if self.budget_share_percent == 0 || self.budget_share_percent > 100 {
            return invalid("salesforce.budget_share_percent", "must be 1 to 100");
        }
        if self.throttle_at_percent > self.reads_only_at_percent || self.reads_only_at_percent > 100 {
            return invalid(
                "salesforce.throttle_at_percent",
                "must be at most reads_only_at_percent, which is at most 100",
            );
        }
        if self.daily_allocation == 0 || self.burst == 0 || self.max_in_flight == 0 {
            return invalid("salesforce.daily_allocation", "allocation, burst and max_in_flight must be above zero");
        }
        // A SOSL query over 4,000 characters loses its ORs: about 150 numbers fit.
        if self.search_batch_max == 0 || self.search_batch_max > 150 {
            return invalid("salesforce.search_batch_max", "must be 1 to 150");
        }
        if self.log_batch_max == 0 || self.log_batch_max > 200 {
            return invalid("salesforce.log_batch_max", "must be 1 to 200 (sObject Collections take 200)");
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 20_000 {
            return invalid(
                "salesforce.request_timeout_ms",
                "must be 1 to 20000: longer requests count against a cap of 25",
            );
        }
        if self.outbox_path.is_empty() {
            return invalid("salesforce.outbox_path", "the outbox needs a file");
        }
        if !matches!(self.mode.as_str(), "budget" | "naive") {
            return invalid("salesforce.mode", "must be budget or naive");
        }
        Ok(())
    }
}

fn record_kind(object: &str) -> Option<actors::crm::port::RecordKind> {
    use actors::crm::port::RecordKind;
    [RecordKind::Contact, RecordKind::Lead, RecordKind::Account].into_iter().find(|kind| kind.as_str() == object)
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served, `ip:port`.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".to_owned() }
    }
}

/// One agent in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's login id on the PBX.
    pub id: String,
    /// The agent's email (as in Salesforce).
    pub email: String,
    /// Roles granted when the agent logs in without naming any.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The gRPC API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Where the API listens, `host:port`.
    pub listen: String,
    /// The clients: each a bearer token with its scopes.
    pub tokens: Vec<TokenConfig>,
    /// Requests per second each client may make, on average.
    pub rate_limit_per_sec: u32,
    /// Requests a client may make in a burst above the average.
    pub rate_limit_burst: u32,
    /// The server's certificate chain (PEM); with `tls_key`, the API speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to: mutual TLS.
    pub tls_client_ca: Option<PathBuf>,
    /// In a cluster with TLS on: CA certificates (PEM) that the other nodes' server certificates
    /// chain to. A node forwards requests and reads events from the others over TLS, verified
    /// against these, and with `tls_client_ca` set presents its own certificate as a client.
    pub tls_peer_ca: Option<PathBuf>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_owned(),
            tokens: Vec::new(),
            rate_limit_per_sec: 1_000,
            rate_limit_burst: 200,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_peer_ca: None,
        }
    }
}

/// One API client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The client's name, for logs and rate limits (never the token).
    pub name: String,
    /// The bearer token it sends.
    pub token: Secret,
    /// What it may do: `calls:read`, `calls:control`, `admin`.
    pub scopes: Vec<String>,
}

/// Every scope a token may carry.
pub const SCOPES: [&str; 3] = ["calls:read", "calls:control", "admin"];

/// The model of lines and calls.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// Leave out call log records of queue agents who were offered a call and did not answer it.
    pub skip_missed_queue_records: bool,
    /// How often to look for calls whose end was never reported, in seconds.
    pub sweep_interval_secs: u64,
    /// A call with no news for this many seconds is checked against the PBX by the sweep.
    pub sweep_idle_secs: u64,
    /// A line actor with nothing to do for this many milliseconds (up to twice it) stops; the
    /// line's state stays, and its next news starts an actor again. 0: line actors never rest.
    pub line_idle_ms: u64,
    /// A call whose last monitored party left (a transfer to an outside number, or to another
    /// cluster node's line) is checked against the PBX this many milliseconds after; if it goes on
    /// among outside parties only, its part here ends and its logs are written. 0: the sweep does.
    pub out_of_view_check_ms: u64,
    /// Events a subscriber may fall behind before it is cut off.
    pub event_buffer: usize,
    /// Recent events kept for subscribers that reconnect.
    pub event_history: usize,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            skip_missed_queue_records: false,
            sweep_interval_secs: 60,
            sweep_idle_secs: 300,
            line_idle_ms: 60_000,
            out_of_view_check_ms: 2_000,
            event_buffer: 65_536,
            event_history: 65_536,
        }
    }
}

impl CallsConfig {
    /// The model's settings.
    pub fn model(&self) -> actors::runtime::ModelConfig {
        actors::runtime::ModelConfig {
            event_buffer: self.event_buffer,
            event_history: self.event_history,
            skip_missed_queue_records: self.skip_missed_queue_records,
            journal_legs: false,
            sweep_interval: Duration::from_secs(self.sweep_interval_secs),
            sweep_idle: Duration::from_secs(self.sweep_idle_secs),
            line_idle: Duration::from_millis(self.line_idle_ms),
            out_of_view_check: Duration::from_millis(self.out_of_view_check_ms),
        }
    }
}

/// The PBX link (see docs/pbx-link.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PbxConfig {
    /// The PBX's link address, `host:port`.
    pub address: String,
    /// The user name the gateway registers with.
    pub user: String,
    /// The password the gateway registers with.
    pub password: Secret,
    /// How the gateway names itself to the PBX.
    pub client_name: String,
    /// Devices (agent lines, queues) to monitor; empty monitors every station and queue the PBX lists.
    pub devices: Vec<String>,
    /// How often the gateway sends heartbeats; the link is dead after three silent intervals.
    pub heartbeat_interval_ms: u64,
    /// How long a request may wait for the PBX's answer unless the caller says otherwise.
    pub request_timeout_ms: u64,
    /// How long a TCP connect and registration may take.
    pub connect_timeout_ms: u64,
    /// The first reconnect delay; it doubles (with jitter) up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    /// The longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// The largest frame read or written, header included.
    pub max_frame_length: usize,
    /// Requests queued for the link; past this, callers are told the PBX is unavailable.
    pub outbound_queue: usize,
    /// Requests awaiting the PBX's answer at once; past this, callers are told it is unavailable.
    pub max_in_flight: usize,
    /// How long a gap in event sequence numbers may stay open before the link resyncs.
    pub gap_timeout_ms: u64,
}

impl Default for PbxConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:4600".to_owned(),
            user: "switchboard".to_owned(),
            password: Secret::new("switchboard"),
            client_name: "switchboard".to_owned(),
            devices: Vec::new(),
            heartbeat_interval_ms: 5_000,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            reconnect_initial_ms: 250,
            reconnect_max_ms: 30_000,
            max_frame_length: proto::wire::DEFAULT_MAX_FRAME_LENGTH,
            outbound_queue: 4_096,
            max_in_flight: 8_192,
            gap_timeout_ms: 500,
        }
    }
}

impl PbxConfig {
    /// The heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The default request deadline as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The connect and registration deadline as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The gap timeout as a duration.
    pub fn gap_timeout(&self) -> Duration {
        Duration::from_millis(self.gap_timeout_ms)
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the variables in `environment`, and checks the result.
    pub fn load(file: Option<&Path>, environment: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(environment)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file; settings it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Overrides settings with `SWITCHBOARD_<SECTION>_<KEY>` variables: every setting has one
    /// (`SWITCHBOARD_PBX_RECONNECT_MAX_MS` is `pbx.reconnect_max_ms`). Lists are comma-separated;
    /// `SWITCHBOARD_GRPC_TOKENS` is `name:token:scope+scope,...` and `SWITCHBOARD_AGENTS` is
    /// `id:email:role+role,...`. Variables of other prefixes (`SWITCHBOARD_PYTHON`) are not settings
    /// and are left alone; a variable naming no setting of a known section is an error.
    pub fn apply_env(&mut self, environment: &HashMap<String, String>) -> Result<(), ConfigError> {
        let mut root = toml::Table::try_from(&*self).map_err(|error| ConfigError::Env {
            name: "SWITCHBOARD_*".to_owned(),
            value: String::new(),
            reason: format!("configuration not representable: {error}"),
        })?;
        let mut names: Vec<&String> = environment.keys().filter(|name| name.starts_with("SWITCHBOARD_")).collect();
        names.sort();
        for name in names {
            let value = &environment[name];
            let setting = name["SWITCHBOARD_".len()..].to_lowercase();
            let env_error = |reason: String| ConfigError::Env { name: name.clone(), value: value.clone(), reason };
            if setting == "agents" {
                root.insert("agents".to_owned(), toml::Value::Array(parse_agents(value).map_err(env_error)?));
                continue;
            }
            let Some((section, key)) = setting.split_once('_') else { continue };
            let Some(toml::Value::Table(table)) = root.get_mut(section) else { continue };
            let parsed = match (section, key, table.get(key)) {
                ("grpc", "tokens", _) => toml::Value::Array(parse_tokens(value).map_err(env_error)?),
                ("grpc", "tls_cert" | "tls_key" | "tls_client_ca" | "tls_peer_ca", _)
                | (_, _, Some(toml::Value::String(_))) => toml::Value::String(value.clone()),
                (_, _, Some(toml::Value::Integer(_))) => toml::Value::Integer(
                    value.trim().parse().map_err(|_| env_error("expected a whole number".to_owned()))?,
                ),
                (_, _, Some(toml::Value::Boolean(_))) => toml::Value::Boolean(
                    value.trim().parse().map_err(|_| env_error("expected true or false".to_owned()))?,
                ),
                (_, _, Some(toml::Value::Array(_))) => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(|item| toml::Value::String(item.to_owned()))
                        .collect(),
                ),
                _ => return Err(env_error(format!("no setting {section}.{key}"))),
            };
            table.insert(key.to_owned(), parsed);
        }
        *self = toml::Value::Table(root).try_into().map_err(|error: toml::de::Error| ConfigError::Env {
            name: "SWITCHBOARD_*".to_owned(),
            value: String::new(),
            reason: error.message().to_owned(),
        })?;
        Ok(())
    }

    /// Checks every setting is usable, so a bad one fails at start, not mid-call.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let pbx = &self.pbx;
        let invalid = |setting, reason: &str| Err(ConfigError::Invalid { setting, reason: reason.to_owned() });
        if pbx.address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(ConfigError::Invalid {
                setting: "pbx.address",
                reason: format!("{:?} is not host:port", pbx.address),
            });
        }
        if pbx.heartbeat_interval_ms < 100 {
            return invalid("pbx.heartbeat_interval_ms", "must be at least 100");
        }
        if pbx.request_timeout_ms == 0 || pbx.connect_timeout_ms == 0 {
            return invalid("pbx.request_timeout_ms", "timeouts must be above zero");
        }
        if pbx.reconnect_initial_ms == 0 || pbx.reconnect_max_ms < pbx.reconnect_initial_ms {
            return invalid("pbx.reconnect_initial_ms", "must be above zero and at most pbx.reconnect_max_ms");
        }
        if pbx.max_frame_length < proto::wire::MIN_MAX_FRAME_LENGTH || pbx.max_frame_length > 16 * 1024 * 1024 {
            return invalid("pbx.max_frame_length", "must be between 4 KiB and 16 MiB");
        }
        if pbx.outbound_queue == 0 || pbx.max_in_flight == 0 {
            return invalid("pbx.outbound_queue", "queues must hold at least one request");
        }
        let calls = &self.calls;
        if calls.sweep_interval_secs == 0 || calls.sweep_idle_secs == 0 {
            return invalid("calls.sweep_interval_secs", "sweep settings must be above zero");
        }
        if calls.event_buffer == 0 {
            return invalid("calls.event_buffer", "must hold at least one event");
        }
        let grpc = &self.grpc;
        if grpc.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                setting: "grpc.listen",
                reason: format!("{:?} is not ip:port", grpc.listen),
            });
        }
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                setting: "metrics.listen",
                reason: format!("{:?} is not ip:port", self.metrics.listen),
            });
        }
        if grpc.tls_cert.is_some() != grpc.tls_key.is_some() {
            return invalid("grpc.tls_cert", "tls_cert and tls_key go together");
        }
        if grpc.tls_client_ca.is_some() && grpc.tls_cert.is_none() {
            return invalid("grpc.tls_client_ca", "client certificates need TLS: set tls_cert and tls_key");
        }
        if grpc.tls_peer_ca.is_some() && grpc.tls_cert.is_none() {
            return invalid("grpc.tls_peer_ca", "verifying other nodes needs TLS: set tls_cert and tls_key");
        }
        if self.cluster.enabled && grpc.tls_cert.is_some() && grpc.tls_peer_ca.is_none() {
            return invalid(
                "grpc.tls_peer_ca",
                "cluster nodes forward requests to each other over TLS: set the CA their certificates chain to",
            );
        }
        if self.cluster.enabled && self.cluster.advertise.is_empty() {
            let unspecified =
                grpc.listen.parse::<std::net::SocketAddr>().is_ok_and(|listen| listen.ip().is_unspecified());
            if unspecified {
                return Err(ConfigError::Invalid {
                    setting: "cluster.advertise",
                    reason: format!(
                        "grpc.listen is {}, an address the other nodes cannot reach this node at: set the one they can",
                        grpc.listen
                    ),
                });
            }
        }
        if grpc.rate_limit_per_sec == 0 || grpc.rate_limit_burst == 0 {
            return invalid("grpc.rate_limit_per_sec", "rate limits must be above zero");
        }
        let mut emails = std::collections::HashSet::new();
        for agent in &self.agents {
            if agent.id.trim().is_empty() || !agent.email.contains('@') {
                return Err(ConfigError::Invalid {
                    setting: "agents",
                    reason: format!("agent {:?} needs an id and an email address", agent.id),
                });
            }
            if !emails.insert(agent.email.to_lowercase()) {
                return Err(ConfigError::Invalid {
                    setting: "agents",
                    reason: format!("email {:?} is listed twice", agent.email),
                });
            }
        }
        self.salesforce.validate()?;
        self.cluster.validate()?;
        let mut names = std::collections::HashSet::new();
        for token in &grpc.tokens {
            if token.name.trim().is_empty() || !names.insert(token.name.as_str()) {
                return invalid("grpc.tokens", "every token needs a name of its own");
            }
            if token.token.expose().len() < 16 {
                return Err(ConfigError::Invalid {
                    setting: "grpc.tokens",
                    reason: format!("the token of {:?} is shorter than 16 characters", token.name),
                });
            }
            if let Some(scope) = token.scopes.iter().find(|scope| !SCOPES.contains(&scope.as_str())) {
                return Err(ConfigError::Invalid {
                    setting: "grpc.tokens",
                    reason: format!("unknown scope {scope:?} for {:?}; scopes are {}", token.name, SCOPES.join(", ")),
                });
            }
        }
        Ok(())
    }
}

/// A comma-separated list of `a:b:c+d` items into tables: `fields` names the parts in order, the
/// last part (split at `+`) is a list and may be missing when `last_optional`.
fn parse_items(value: &str, fields: [&str; 3], last_optional: bool, form: &str) -> Result<Vec<toml::Value>, String> {
    let string = |text: &str| toml::Value::String(text.to_owned());
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let mut parts = item.splitn(3, ':');
            let (Some(first), Some(second)) = (parts.next(), parts.next()) else {
                return Err(format!("expected {form}, comma-separated"));
            };
            let list = match (parts.next(), last_optional) {
                (Some(list), _) => list.split('+').map(string).collect(),
                (None, true) => Vec::new(),
                (None, false) => return Err(format!("expected {form}, comma-separated")),
            };
            let mut table = toml::Table::new();
            table.insert(fields[0].to_owned(), string(first));
            table.insert(fields[1].to_owned(), string(second));
            table.insert(fields[2].to_owned(), toml::Value::Array(list));
            Ok(toml::Value::Table(table))
        })
        .collect()
}

/// `name:token:scope+scope,...` into `[[grpc.tokens]]` tables.
fn parse_tokens(value: &str) -> Result<Vec<toml::Value>, String> {
    parse_items(value, ["name", "token", "scopes"], false, "name:token:scope+scope")
}

/// `id:email:role+role,...` into `[[agents]]` tables (roles optional).
fn parse_agents(value: &str) -> Result<Vec<toml::Value>, String> {
    parse_items(value, ["id", "email", "roles"], true, "id:email:role+role")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let config = Config::from_toml(
            r#"
            [pbx]
            address = "10.1.2.3:4600"
            devices = ["2001", "2002"]
            heartbeat_interval_ms = 2000
            "#,
        )
        .unwrap();
        assert_eq!(config.pbx.address, "10.1.2.3:4600");
        assert_eq!(config.pbx.devices, vec!["2001", "2002"]);
        assert_eq!(config.pbx.request_timeout_ms, PbxConfig::default().request_timeout_ms);

        let mut config = config;
        config
            .apply_env(&environment(&[
                (env::PBX_ADDRESS, "pbx.example:7000"),
                (env::PBX_PASSWORD, "s3cret"),
                (env::PBX_DEVICES, "3001, 3002,"),
                (env::PBX_REQUEST_TIMEOUT_MS, "750"),
            ]))
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.pbx.address, "pbx.example:7000");
        assert_eq!(config.pbx.password.expose(), "s3cret");
        assert_eq!(config.pbx.devices, vec!["3001", "3002"]);
        assert_eq!(config.pbx.request_timeout(), Duration::from_millis(750));
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let mut config = Config::default();
        config.pbx.password = Secret::new("hunter2");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("***"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = Config::from_toml("[pbx]\nadress = \"x:1\"\n").unwrap_err();
        assert!(error.to_string().contains("adress"), "{error}");
    }

    #[test]
    fn a_bad_environment_number_names_the_variable() {
        let error = Config::load(None, &environment(&[(env::PBX_OUTBOUND_QUEUE, "lots")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable SWITCHBOARD_PBX_OUTBOUND_QUEUE=\"lots\": expected a whole number"
        );
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut config = Config::default();
        config.pbx.address = "no-port".to_owned();
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { setting: "pbx.address", .. })));
        let mut config = Config::default();
        config.pbx.max_frame_length = 10;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { setting: "pbx.max_frame_length", .. })));
        let mut config = Config::default();
        config.pbx.reconnect_max_ms = 1;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.cluster.enabled = true;
        config.cluster.salesforce_budget_block = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid { setting: "cluster.salesforce_budget_block", .. })
        ));
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let config = Config::from_toml(
            r#"
            [[grpc.tokens]]
            name = "desktop"
            token = "0123456789abcdef-secret"
            scopes = ["calls:read", "calls:control"]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains("0123456789abcdef-secret"));
        let mut short = config.clone();
        short.grpc.tokens[0].token = Secret::new("short");
        assert!(short.validate().unwrap_err().to_string().contains("shorter than 16"));
        let mut unknown = config.clone();
        unknown.grpc.tokens[0].scopes.push("calls:everything".to_owned());
        assert!(unknown.validate().unwrap_err().to_string().contains("unknown scope \"calls:everything\""));
        let mut twice = config;
        twice.grpc.tokens.push(twice.grpc.tokens[0].clone());
        assert!(twice.validate().is_err());
    }

    #[test]
    fn the_agent_directory_needs_ids_and_unique_emails() {
        let config = Config::from_toml(
            "[[agents]]\nid = \"4711\"\nemail = \"anna@example.com\"\n[[agents]]\nid = \"4712\"\nemail = \"ANNA@example.com\"\n",
        )
        .unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("listed twice"));
        let config = Config::from_toml("[[agents]]\nid = \"\"\nemail = \"x@example.com\"\n").unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn every_setting_comes_from_the_environment_too() {
        let config = Config::load(
            None,
            &environment(&[
                ("SWITCHBOARD_PBX_RECONNECT_MAX_MS", "9000"),
                ("SWITCHBOARD_PBX_CLIENT_NAME", "gw-7"),
                ("SWITCHBOARD_CALLS_SKIP_MISSED_QUEUE_RECORDS", "true"),
                ("SWITCHBOARD_GRPC_RATE_LIMIT_BURST", "50"),
                ("SWITCHBOARD_GRPC_TLS_CERT", "/etc/switchboard/server.pem"),
                ("SWITCHBOARD_GRPC_TLS_KEY", "/etc/switchboard/server.key"),
                ("SWITCHBOARD_GRPC_TOKENS", "desktop:0123456789abcdef0123:calls:control"),
                ("SWITCHBOARD_AGENTS", "4711:anna@example.com:agent+operator, 4712:bo@example.com"),
                ("SWITCHBOARD_METRICS_LISTEN", "0.0.0.0:9000"),
                // Not a setting: other tools' variables share the prefix.
                ("SWITCHBOARD_PYTHON", "/usr/bin/python3"),
            ]),
        )
        .unwrap();
        assert_eq!(config.pbx.reconnect_max_ms, 9000);
        assert_eq!(config.pbx.client_name, "gw-7");
        assert!(config.calls.skip_missed_queue_records);
        assert_eq!(config.grpc.rate_limit_burst, 50);
        assert_eq!(config.grpc.tls_cert, Some(PathBuf::from("/etc/switchboard/server.pem")));
        assert_eq!(config.grpc.tokens.len(), 1);
        assert_eq!(config.grpc.tokens[0].scopes, vec!["calls:control"]);
        assert_eq!(config.agents.len(), 2);
        assert_eq!(config.agents[0].roles, vec!["agent", "operator"]);
        assert!(config.agents[1].roles.is_empty());
        assert_eq!(config.metrics.listen, "0.0.0.0:9000");
    }

    #[test]
    fn salesforce_settings_come_from_the_environment_and_are_checked() {
        let config = Config::load(
            None,
            &environment(&[
                ("SWITCHBOARD_SALESFORCE_ENABLED", "true"),
                ("SWITCHBOARD_SALESFORCE_CLIENT_ID", "3MVG9-key"),
                ("SWITCHBOARD_SALESFORCE_CLIENT_SECRET", "s3cret-value"),
                ("SWITCHBOARD_SALESFORCE_PHONE_FIELDS", "Contact.Phone, Contact.HomePhone,Account.Phone"),
                ("SWITCHBOARD_SALESFORCE_POP_TRIGGER", "answered"),
                ("SWITCHBOARD_SALESFORCE_AUTO_CREATE_INBOUND", "lead"),
            ]),
        )
        .unwrap();
        let salesforce = &config.salesforce;
        assert!(salesforce.enabled);
        assert!(!format!("{salesforce:?}").contains("s3cret-value"), "the secret never prints");
        let fields = salesforce.phone_fields_by_object();
        assert_eq!(fields[&actors::crm::port::RecordKind::Contact], ["Phone", "HomePhone"]);
        assert!(!fields.contains_key(&actors::crm::port::RecordKind::Lead), "leads are not searched");
        let crm = salesforce.crm().unwrap();
        assert_eq!(crm.settings.pop_trigger, actors::crm::engine::PopTrigger::Answered);
        assert_eq!(crm.settings.auto_create.inbound, Some(actors::crm::port::RecordKind::Lead));
        assert!((crm.budget.share - 0.25).abs() < 1e-9);

        let refused = |pairs: &[(&str, &str)], setting: &str| {
            let error = Config::load(None, &environment(pairs)).unwrap_err().to_string();
            assert!(error.contains(setting), "{pairs:?}: {error}");
        };
        refused(&[("SWITCHBOARD_SALESFORCE_SUBJECT_TEMPLATE", "{nope}")], "salesforce.subject_template");
        refused(&[("SWITCHBOARD_SALESFORCE_POP_TRIGGER", "later")], "salesforce.pop_trigger");
        refused(&[("SWITCHBOARD_SALESFORCE_PHONE_FIELDS", "Case.Phone")], "salesforce.phone_fields");
        refused(&[("SWITCHBOARD_SALESFORCE_ENABLED", "true")], "salesforce.client_id");
        refused(
            &[
                ("SWITCHBOARD_SALESFORCE_ENABLED", "true"),
                ("SWITCHBOARD_SALESFORCE_CLIENT_ID", "k"),
                ("SWITCHBOARD_SALESFORCE_AUTH_FLOW", "jwt_bearer"),
            ],
            "salesforce.private_key_file",
        );
        refused(&[("SWITCHBOARD_SALESFORCE_SEARCH_BATCH_MAX", "500")], "salesforce.search_batch_max");
        refused(&[("SWITCHBOARD_SALESFORCE_REQUEST_TIMEOUT_MS", "30000")], "salesforce.request_timeout_ms");
    }

    #[test]
    fn an_environment_variable_naming_no_setting_is_refused() {
        let error = Config::load(None, &environment(&[("SWITCHBOARD_PBX_ADRESS", "x:1")])).unwrap_err();
        assert_eq!(error.to_string(), "environment variable SWITCHBOARD_PBX_ADRESS=\"x:1\": no setting pbx.adress");
        let error =
            Config::load(None, &environment(&[("SWITCHBOARD_CALLS_SKIP_MISSED_QUEUE_RECORDS", "yes")])).unwrap_err();
        assert!(error.to_string().ends_with("expected true or false"), "{error}");
        let error = Config::load(None, &environment(&[("SWITCHBOARD_GRPC_TOKENS", "desktop")])).unwrap_err();
        assert!(error.to_string().ends_with("expected name:token:scope+scope, comma-separated"), "{error}");
    }

    #[test]
    fn a_cluster_node_must_say_where_the_others_reach_it_and_whom_to_trust_over_tls() {
        let mut config = Config::default();
        config.cluster.enabled = true;
        config.grpc.listen = "0.0.0.0:50051".to_owned();
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { setting: "cluster.advertise", .. })));
        config.cluster.advertise = "10.0.0.7:50051".to_owned();
        assert!(config.validate().is_ok());
        config.grpc.tls_cert = Some(PathBuf::from("/etc/switchboard/server.pem"));
        config.grpc.tls_key = Some(PathBuf::from("/etc/switchboard/server.key"));
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { setting: "grpc.tls_peer_ca", .. })));
        config.grpc.tls_peer_ca = Some(PathBuf::from("/etc/switchboard/ca.pem"));
        assert!(config.validate().is_ok());
        // A single node has no peers to verify, but a stray peer CA without TLS is a mistake.
        let mut single = Config::default();
        single.grpc.tls_peer_ca = Some(PathBuf::from("/etc/switchboard/ca.pem"));
        assert!(matches!(single.validate(), Err(ConfigError::Invalid { setting: "grpc.tls_peer_ca", .. })));
    }

    #[test]
    fn tls_settings_go_together() {
        let mut config = Config::default();
        config.grpc.tls_cert = Some(PathBuf::from("/etc/switchboard/server.pem"));
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { setting: "grpc.tls_cert", .. })));
        config.grpc.tls_key = Some(PathBuf::from("/etc/switchboard/server.key"));
        config.validate().unwrap();
        let mut config = Config::default();
        config.grpc.tls_client_ca = Some(PathBuf::from("/etc/switchboard/ca.pem"));
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { setting: "grpc.tls_client_ca", .. })));
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let error = Config::load(Some(Path::new("/nonexistent/switchboard.toml")), &HashMap::new()).unwrap_err();
        assert!(error.to_string().starts_with("reading config file /nonexistent/switchboard.toml"), "{error}");
    }
}
