//! The Salesforce REST client: OAuth 2.0 server-to-server sessions (client credentials or JWT
//! bearer, one refresh at a time, re-minted on `INVALID_SESSION_ID`), SOSL phone search, Task
//! upserts through sObject Collections by external id, record creation, and the org's usage from
//! every answer's `Sforce-Limit-Info`. Implements [`CrmPort`] for the budget actor.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actors::crm::port::{
    ApiUsage, CrmError, CrmPort, CrmRecord, Failure, NewRecord, RecordKind, RecordResult, Reply, TaskRecord,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::errors::{classify, parse_limit_info, record_error_is_retryable};
use super::observe::{self, Operation, Outcome};
use crate::config::{SalesforceConfig, Secret};

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `grant_type=client_credentials` with the connected app's key and secret.
    ClientCredentials {
        /// The consumer key.
        client_id: String,
        /// The consumer secret.
        client_secret: Secret,
    },
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, an RS256 assertion.
    JwtBearer {
        /// The consumer key (`iss`).
        client_id: String,
        /// The integration user (`sub`).
        username: String,
        /// The login URL the assertion is for (`aud`).
        audience: String,
        /// The key that signs assertions.
        key: Box<jsonwebtoken::EncodingKey>,
    },
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The JWT signing key could not be read.
    #[error("reading the salesforce jwt key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the salesforce http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A session: the bearer token and where to use it.
#[derive(Clone)]
struct Session {
    token: Secret,
    instance_url: String,
    minted: Instant,
    generation: u64,
}

/// The client.
pub struct SalesforceClient {
    http: reqwest::Client,
    login_url: String,
    api_version: String,
    credentials: Credentials,
    external_id_field: String,
    /// Phone fields to search and return, by object.
    phone_fields: BTreeMap<RecordKind, Vec<String>>,
    session_max_age: Duration,
    /// The session; the lock is held while one is minted, so one refresh runs at a time.
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for SalesforceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceClient").field("login_url", &self.login_url).finish_non_exhaustive()
    }
}

/// A failed request before classification: the body and status, or the transport's error.
enum Attempt {
    Answer { status: u16, body: bytes::Bytes, usage: Option<ApiUsage> },
    Transport(String),
}

impl SalesforceClient {
    /// A client for `config` (which [`crate::config::Config::validate`] has checked).
    pub fn new(config: &SalesforceConfig) -> Result<Self, ClientError> {
        // reqwest is built without a crypto provider of its own; use ring, as the gRPC server does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = match config.auth_flow.as_str() {
            "jwt_bearer" => {
                let pem = std::fs::read(&config.private_key_file).map_err(|error| ClientError::Key {
                    path: config.private_key_file.clone(),
                    reason: error.to_string(),
                })?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|error| ClientError::Key {
                    path: config.private_key_file.clone(),
                    reason: error.to_string(),
                })?;
                Credentials::JwtBearer {
                    client_id: config.client_id.clone(),
                    username: config.username.clone(),
                    audience: config.audience.clone(),
                    key: Box::new(key),
                }
            }
            _ => Credentials::ClientCredentials {
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
            },
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(16)
            .build()?;
        Ok(Self {
            http,
            login_url: config.login_url.trim_end_matches('/').to_owned(),
            api_version: config.api_version.clone(),
            credentials,
            external_id_field: config.external_id_field.clone(),
            phone_fields: config.phone_fields_by_object(),
            session_max_age: Duration::from_secs(config.session_max_age_secs),
            session: Mutex::new(None),
        })
    }

    /// The session to use: the current one, or a new one minted now (only one mint at a time).
    async fn session(&self) -> Result<Session, Failure> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref()
            && session.minted.elapsed() < self.session_max_age
        {
            return Ok(session.clone());
        }
        let generation = current.as_ref().map_or(1, |session| session.generation + 1);
        let session = self.mint(generation).await?;
        *current = Some(session.clone());
        Ok(session)
    }

    /// Forgets `generation`'s session after Salesforce refused it; a newer one is kept.
    async fn invalidate(&self, generation: u64) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|session| session.generation == generation) {
            *current = None;
        }
    }

    async fn mint(&self, generation: u64) -> Result<Session, Failure> {
        let url = format!("{}/services/oauth2/token", self.login_url);
        let form: Vec<(&str, String)> = match &self.credentials {
            Credentials::ClientCredentials { client_id, client_secret } => vec![
                ("grant_type", "client_credentials".to_owned()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.expose().to_owned()),
            ],
            Credentials::JwtBearer { client_id, username, audience, key } => {
                let expires =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |now| now.as_secs())
                        + 180;
                let claims = json!({"iss": client_id, "sub": username, "aud": audience, "exp": expires});
                let assertion =
                    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, key)
                        .map_err(|error| {
                            Failure::from(CrmError::Auth(format!("signing the jwt assertion: {error}")))
                        })?;
                vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned()), ("assertion", assertion)]
            }
        };
        let started = Instant::now();
        let answer = self.http.post(&url).form(&form).send().await;
        let result = match answer {
            Err(error) => Err(Failure::from(CrmError::Transient(format!("token request: {error}")))),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(error) => Err(Failure::from(CrmError::Transient(format!("token answer: {error}")))),
                    Ok(body) if status == 200 => {
                        #[derive(Deserialize)]
                        struct Token {
                            access_token: String,
                            instance_url: String,
                        }
                        serde_json::from_slice::<Token>(&body)
                            .map(|token| Session {
                                token: Secret::new(token.access_token),
                                instance_url: token.instance_url.trim_end_matches('/').to_owned(),
                                minted: Instant::now(),
                                generation,
                            })
                            .map_err(|error| Failure::from(CrmError::Transient(format!("token answer: {error}"))))
                    }
                    Ok(body) => Err(Failure::from(match classify(status, &body) {
                        // A refused grant is a configuration problem, not bad data.
                        CrmError::Rejected { code, message } => CrmError::Auth(format!("{code}: {message}")),
                        other => other,
                    })),
                }
            }
        };
        let outcome = result.as_ref().map_or_else(|failure| outcome_of(&failure.error), |_| Outcome::Ok);
        observe::request(Operation::Token, outcome, started.elapsed(), None);
        match &result {
            Ok(_) => tracing::info!(generation, "salesforce session minted"),
            Err(failure) => tracing::warn!(error = %failure.error, "salesforce session could not be minted"),
        }
        result
    }

    /// Sends one data request, re-minting the session and retrying once on 401.
    async fn data(
        &self,
        operation: Operation,
        build: impl Fn(&reqwest::Client, &Session) -> reqwest::RequestBuilder,
        batch: Option<usize>,
    ) -> Result<Reply<bytes::Bytes>, Failure> {
        let started = Instant::now();
        let mut refreshed = false;
        let mut outcome = Outcome::Ok;
        let result = loop {
            let session = match self.session().await {
                Ok(session) => session,
                Err(failure) => {
                    outcome = outcome_of(&failure.error);
                    break Err(failure);
                }
            };
            let attempt = match build(&self.http, &session).bearer_auth(session.token.expose()).send().await {
                Err(error) => Attempt::Transport(error.to_string()),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let usage = response
                        .headers()
                        .get("sforce-limit-info")
                        .and_then(|value| value.to_str().ok())
                        .and_then(parse_limit_info);
                    match response.bytes().await {
                        Ok(body) => Attempt::Answer { status, body, usage },
                        Err(error) => Attempt::Transport(error.to_string()),
                    }
                }
            };
            match attempt {
                Attempt::Answer { status: 200..=299, body, usage } => break Ok(Reply { value: body, usage }),
                Attempt::Answer { status: 401, .. } if !refreshed => {
                    // INVALID_SESSION_ID: the session expired or was revoked. Mint one, once.
                    refreshed = true;
                    self.invalidate(session.generation).await;
                }
                Attempt::Answer { status, body, usage } => {
                    let error = classify(status, &body);
                    outcome = if status >= 500 { Outcome::ServerError } else { outcome_of(&error) };
                    break Err(Failure { error, usage });
                }
                Attempt::Transport(error) => {
                    outcome = Outcome::TransportError;
                    break Err(Failure::from(CrmError::Transient(error)));
                }
            }
        };
        observe::request(operation, outcome, started.elapsed(), batch);
        if let Some(usage) = result.as_ref().ok().and_then(|reply| reply.usage) {
            observe::usage(usage);
        }
        result
    }

    fn url(&self, session: &Session, path: &str) -> String {
        format!("{}/services/data/v{}/{path}", session.instance_url, self.api_version)
    }

    /// The SOSL for a phone search of `numbers` (digits only, so nothing needs escaping).
    pub fn sosl(&self, numbers: &[String]) -> String {
        let terms: Vec<String> = numbers.iter().map(|number| format!("\"{number}\"")).collect();
        let returning: Vec<String> = self
            .phone_fields
            .iter()
            .map(|(kind, fields)| format!("{}(Id,Name,{})", kind.as_str(), fields.join(",")))
            .collect();
        format!("FIND {{{}}} IN PHONE FIELDS RETURNING {}", terms.join(" OR "), returning.join(","))
    }

    /// The JSON body of one Task.
    fn task_json(&self, task: &TaskRecord) -> Value {
        let mut record = json!({
            "attributes": {"type": "Task"},
            "Subject": task.subject,
            "Description": task.description,
            "Status": "Completed",
            "TaskSubtype": "Call",
            "CallType": task.call_type,
            "CallDurationInSeconds": task.duration_seconds,
            "CallObject": task.call_object,
            "CallDisposition": task.disposition,
            "ActivityDate": task.activity_date,
        });
        let object = record.as_object_mut().expect("an object");
        object.insert(self.external_id_field.clone(), json!(task.key));
        if let Some(who) = &task.who_id {
            object.insert("WhoId".to_owned(), json!(who));
        }
        if let Some(what) = &task.what_id {
            object.insert("WhatId".to_owned(), json!(what));
        }
        record
    }
}

/// The metric outcome of a failure (server errors are told apart where the status is known).
fn outcome_of(error: &CrmError) -> Outcome {
    match error {
        CrmError::Auth(_) => Outcome::AuthError,
        CrmError::LimitExceeded(_) | CrmError::Concurrency(_) => Outcome::LimitExceeded,
        CrmError::Transient(_) => Outcome::TransportError,
        CrmError::Rejected { .. } => Outcome::ClientError,
    }
}

fn malformed(what: &str, error: impl std::fmt::Display) -> Failure {
    // An answer we cannot read will not read better next time.
    Failure::from(CrmError::Rejected { code: "UNREADABLE_ANSWER".to_owned(), message: format!("{what}: {error}") })
}

impl CrmPort for SalesforceClient {
    async fn search(&self, numbers: &[String]) -> Result<Reply<Vec<CrmRecord>>, Failure> {
        let sosl = self.sosl(numbers);
        let reply = self
            .data(
                Operation::Search,
                |http, session| http.get(self.url(session, "search/")).query(&[("q", &sosl)]),
                Some(numbers.len()),
            )
            .await?;
        #[derive(Deserialize)]
        struct Found {
            #[serde(rename = "searchRecords", default)]
            search_records: Vec<serde_json::Map<String, Value>>,
        }
        let found: Found = serde_json::from_slice(&reply.value).map_err(|error| malformed("search answer", error))?;
        let records = found
            .search_records
            .into_iter()
            .filter_map(|row| {
                let object = row.get("attributes")?.get("type")?.as_str()?;
                let kind = [RecordKind::Contact, RecordKind::Lead, RecordKind::Account]
                    .into_iter()
                    .find(|kind| kind.as_str() == object)?;
                let text = |field: &str| row.get(field).and_then(Value::as_str).map(str::to_owned);
                let phones = self.phone_fields.get(&kind)?.iter().filter_map(|field| text(field)).collect();
                Some(CrmRecord { kind, id: text("Id")?, name: text("Name").unwrap_or_default(), phones })
            })
            .collect();
        Ok(Reply { value: records, usage: reply.usage })
    }

    async fn upsert_tasks(&self, tasks: &[TaskRecord]) -> Result<Reply<Vec<RecordResult>>, Failure> {
        let body = json!({
            "allOrNone": false,
            "records": tasks.iter().map(|task| self.task_json(task)).collect::<Vec<_>>(),
        });
        let path = format!("composite/sobjects/Task/{}", self.external_id_field);
        let reply = self
            .data(
                Operation::UpsertTasks,
                |http, session| http.patch(self.url(session, &path)).json(&body),
                Some(tasks.len()),
            )
            .await?;
        #[derive(Deserialize)]
        struct Saved {
            #[serde(default)]
            id: Option<String>,
            success: bool,
            #[serde(default)]
            errors: Vec<SaveError>,
        }
        #[derive(Deserialize)]
        struct SaveError {
            #[serde(rename = "statusCode", default)]
            status_code: String,
            #[serde(default)]
            message: String,
        }
        let saved: Vec<Saved> =
            serde_json::from_slice(&reply.value).map_err(|error| malformed("upsert answer", error))?;
        let results = saved
            .into_iter()
            .map(|saved| match (saved.success, saved.id) {
                (true, Some(id)) => RecordResult::Stored { id },
                _ => {
                    let first = saved.errors.into_iter().next();
                    let (code, message) = first.map_or_else(
                        || ("UNKNOWN".to_owned(), String::new()),
                        |error| (error.status_code, error.message),
                    );
                    RecordResult::Refused { retryable: record_error_is_retryable(&code), code, message }
                }
            })
            .collect();
        Ok(Reply { value: results, usage: reply.usage })
    }

    async fn create(&self, record: &NewRecord) -> Result<Reply<String>, Failure> {
        let mut body = json!({"LastName": record.last_name, "Phone": record.phone});
        if record.kind == RecordKind::Lead {
            // Salesforce requires a company on every Lead.
            body["Company"] = json!("Unknown");
        }
        let path = format!("sobjects/{}", record.kind.as_str());
        let reply = self
            .data(Operation::CreateRecord, |http, session| http.post(self.url(session, &path)).json(&body), Some(1))
            .await?;
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let created: Created =
            serde_json::from_slice(&reply.value).map_err(|error| malformed("create answer", error))?;
        Ok(Reply { value: created.id, usage: reply.usage })
    }

    async fn usage(&self) -> Result<Reply<()>, Failure> {
        let reply = self.data(Operation::Limits, |http, session| http.get(self.url(session, "limits")), None).await?;
        let mut usage = reply.usage;
        if usage.is_none() {
            // No header: read the body instead.
            let body: Value =
                serde_json::from_slice(&reply.value).map_err(|error| malformed("limits answer", error))?;
            let daily = &body["DailyApiRequests"];
            if let (Some(max), Some(remaining)) = (daily["Max"].as_u64(), daily["Remaining"].as_u64()) {
                usage = Some(ApiUsage { used: max.saturating_sub(remaining), max });
            }
        }
        Ok(Reply { value: (), usage })
    }
}
