//! The org, pure: records, Tasks, sessions, the API allocation and the faults, and the answer to
//! every request as data. The HTTP layer (`server`) only moves bytes in and out; time comes in as
//! milliseconds since the epoch, so every rule here is tested without sockets or clocks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use thiserror::Error;

use super::auth::{self, Expected};
use super::faults::FaultSettings;
use super::ids;
use super::phone::{self, NumberPlan};
use super::schema::{self, ObjectKind};
use super::seed::{self, Record, SeedConfig, Seeded};
use super::sosl;

/// Most records one upsert may carry (Salesforce's sObject Collections limit).
pub const MAX_UPSERT_RECORDS: usize = 200;
/// Most rows one search returns (Salesforce's SOSL limit).
pub const MAX_SEARCH_ROWS: usize = 2_000;

/// What the sandbox simulates: the connected app, the org's limits and its seeded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The connected app's consumer key (`client_id`, and a JWT's `iss`).
    pub consumer_key: String,
    /// The connected app's consumer secret (`client_secret`).
    pub consumer_secret: String,
    /// The integration user (a JWT's `sub`).
    pub username: String,
    /// A JWT's expected `aud`.
    pub audience: String,
    /// The PEM public key JWT assertions are verified with; without it the JWT flow is refused.
    pub jwt_public_key_pem: Option<String>,
    /// The Task field upserts key on.
    pub external_id_field: String,
    /// The daily API request allocation.
    pub allocation: u64,
    /// How long an access token stays valid.
    pub session_timeout: Duration,
    /// The seed and sizes of the seeded data.
    pub seed: u64,
    /// Contacts to seed.
    pub contacts: usize,
    /// Leads to seed.
    pub leads: usize,
    /// Accounts to seed.
    pub accounts: usize,
    /// Where seeded phone numbers come from.
    pub number_plan: NumberPlan,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let seed = SeedConfig::default();
        Self {
            consumer_key: "switchboard-sandbox-key".into(),
            consumer_secret: "switchboard-sandbox-secret".into(),
            username: "integration@switchboard.sandbox".into(),
            audience: "https://login.salesforce.com".into(),
            jwt_public_key_pem: None,
            external_id_field: "Gw_Call_Id__c".into(),
            allocation: 100_000,
            session_timeout: Duration::from_secs(2 * 60 * 60),
            seed: seed.seed,
            contacts: seed.contacts,
            leads: seed.leads,
            accounts: seed.accounts,
            number_plan: seed.number_plan,
        }
    }
}

/// Why the sandbox could not start.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The JWT public key is not an RSA public key in PEM.
    #[error("the jwt public key is not an rsa pem key: {0}")]
    PublicKey(#[source] jsonwebtoken::errors::Error),
    /// The listener's address could not be read.
    #[error("reading the listener's address: {0}")]
    Listener(#[source] std::io::Error),
}

/// An answer: status, JSON body, and for `/services/data` the allocation to report in
/// `Sforce-Limit-Info` as (used, max).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
    /// `Some((used, max))` when the answer carries `Sforce-Limit-Info`.
    pub limit_info: Option<(u64, u64)>,
}

impl Reply {
    fn new(status: u16, body: Value) -> Self {
        Self { status, body, limit_info: None }
    }

    /// A Salesforce-shaped error: `[{"message", "errorCode", "fields"}]`.
    fn error(status: u16, code: &str, message: impl Into<String>, fields: &[&str]) -> Self {
        Self::new(status, json!([{"message": message.into(), "errorCode": code, "fields": fields}]))
    }

    fn oauth_error(error: &str, description: impl Into<String>) -> Self {
        Self::new(400, json!({"error": error, "error_description": description.into()}))
    }
}

/// One request under `/services/data/`.
#[derive(Debug, Clone, Copy)]
pub struct DataRequest<'a> {
    /// The HTTP method, upper case.
    pub method: &'a str,
    /// The path after `/services/data/`, e.g. `v62.0/limits`.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
}

/// Counters for tests and the loadtest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// `POST /services/oauth2/token` requests.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Search requests, answered or not.
    pub search_requests: u64,
    /// Task upsert requests.
    pub upsert_requests: u64,
    /// Contact and Lead create requests.
    pub create_requests: u64,
    /// `limits` requests.
    pub limits_requests: u64,
    /// Other `/services/data` requests (unknown resources).
    pub other_requests: u64,
    /// Data requests refused 401 for a missing, unknown or expired token (not counted).
    pub unauthorized: u64,
    /// Data requests refused 403 because the allocation was spent (not counted).
    pub allocation_refusals: u64,
    /// Failures injected: requests, token requests and locked records.
    pub failures_injected: u64,
    /// Data requests counted against the allocation since start.
    pub api_requests: u64,
    /// The allocation's used count now.
    pub allocation_used: u64,
    /// The allocation's maximum now.
    pub allocation_max: u64,
    /// Task records written successfully.
    pub records_upserted: u64,
    /// Task records refused.
    pub records_failed: u64,
}

/// A Task as the sandbox holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The 18-character id (`00T...`).
    pub id: String,
    /// The external id it was upserted by.
    pub external_id: String,
    /// Its fields by canonical name, the external id excepted.
    pub fields: BTreeMap<String, Value>,
    /// How many successful writes it has had (1 after its creation).
    pub writes: u32,
}

/// The org: every piece of the sandbox's state.
#[derive(Debug)]
pub struct Org {
    config: SandboxConfig,
    base_url: String,
    org_id: String,
    user_id: String,
    jwt_key: Option<DecodingKey>,
    seeded: Seeded,
    records: Vec<Record>,
    by_id: HashMap<String, usize>,
    by_phone: HashMap<String, Vec<usize>>,
    tasks: Vec<TaskRecord>,
    tasks_by_external_id: HashMap<String, usize>,
    tokens: HashMap<String, u64>,
    allocation_max: u64,
    allocation_used: u64,
    faults: FaultSettings,
    stats: SandboxStats,
    next_serial: u64,
    rng: SmallRng,
}

#[derive(Clone, Copy)]
enum Kind {
    Search,
    Upsert,
    Create,
    Limits,
    Other,
}

impl Org {
    /// A freshly seeded org answering as `base_url` (e.g. `http://127.0.0.1:8090`).
    pub fn new(config: SandboxConfig, base_url: impl Into<String>) -> Result<Self, SandboxError> {
        let jwt_key = match &config.jwt_public_key_pem {
            Some(pem) => Some(DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(SandboxError::PublicKey)?),
            None => None,
        };
        let (seeded, next_serial) = seed::seed(&SeedConfig {
            seed: config.seed,
            contacts: config.contacts,
            leads: config.leads,
            accounts: config.accounts,
            number_plan: config.number_plan.clone(),
        });
        let mut org = Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            org_id: ids::record_id(ids::ORG_PREFIX, 1),
            user_id: ids::record_id(ids::USER_PREFIX, 1),
            jwt_key,
            records: Vec::new(),
            by_id: HashMap::new(),
            by_phone: HashMap::new(),
            tasks: Vec::new(),
            tasks_by_external_id: HashMap::new(),
            tokens: HashMap::new(),
            allocation_max: config.allocation,
            allocation_used: 0,
            faults: FaultSettings::default(),
            stats: SandboxStats::default(),
            next_serial,
            // Tokens come from this: a replayable run gets the same tokens.
            rng: SmallRng::seed_from_u64(config.seed ^ 0x5a5a_5a5a),
            seeded,
            config,
        };
        for record in org.seeded.records().cloned().collect::<Vec<_>>() {
            org.insert_record(record);
        }
        Ok(org)
    }

    fn insert_record(&mut self, record: Record) {
        let index = self.records.len();
        for field in record.object.phone_fields() {
            if let Some(key) = record.get(field).and_then(phone::match_key) {
                let entry = self.by_phone.entry(key).or_default();
                if entry.last() != Some(&index) {
                    entry.push(index);
                }
            }
        }
        self.by_id.insert(record.id.clone(), index);
        self.records.push(record);
    }

    fn next_id(&mut self, prefix: &str) -> String {
        let id = ids::record_id(prefix, self.next_serial);
        self.next_serial += 1;
        id
    }

    /// The base URL tokens name as `instance_url`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The records and numbers seeded at start.
    pub fn seeded(&self) -> &Seeded {
        &self.seeded
    }

    /// A record (seeded or created) by id.
    pub fn record(&self, id: &str) -> Option<&Record> {
        self.by_id.get(&full_id(id)?).map(|&index| &self.records[index])
    }

    /// Every Task, in creation order.
    pub fn tasks(&self) -> &[TaskRecord] {
        &self.tasks
    }

    /// The Task upserted with `external_id`.
    pub fn task_by_external_id(&self, external_id: &str) -> Option<&TaskRecord> {
        self.tasks_by_external_id.get(external_id).map(|&index| &self.tasks[index])
    }

    /// The counters now.
    pub fn stats(&self) -> SandboxStats {
        SandboxStats { allocation_used: self.allocation_used, allocation_max: self.allocation_max, ..self.stats }
    }

    /// The faults in force (counts as used up so far).
    pub fn faults(&self) -> &FaultSettings {
        &self.faults
    }

    /// Replaces the faults in force.
    pub fn set_faults(&mut self, faults: FaultSettings) {
        self.faults = faults;
    }

    /// Ends every session: each token now answers 401.
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Sets the allocation's maximum and how much of it is used.
    pub fn set_allocation(&mut self, max: u64, used: u64) {
        self.allocation_max = max;
        self.allocation_used = used;
    }

    /// Answers `POST /services/oauth2/token` with form body `body` at `now_ms`.
    pub fn token(&mut self, body: &[u8], now_ms: u64) -> Reply {
        self.stats.token_requests += 1;
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        if self.faults.fail_token_requests > 0 {
            self.faults.fail_token_requests -= 1;
            self.stats.failures_injected += 1;
            return Reply::oauth_error("invalid_grant", "authentication failure");
        }
        let field = |name: &str| form.get(name).map(String::as_str);
        match field("grant_type") {
            Some("client_credentials") => {
                if field("client_id") != Some(&self.config.consumer_key)
                    || field("client_secret") != Some(&self.config.consumer_secret)
                {
                    return Reply::oauth_error("invalid_client", "invalid client credentials");
                }
            }
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                let Some(key) = &self.jwt_key else {
                    return Reply::oauth_error(
                        "unsupported_grant_type",
                        "the jwt bearer flow is disabled: the sandbox has no public key",
                    );
                };
                let Some(assertion) = field("assertion") else {
                    return Reply::oauth_error("invalid_grant", "invalid assertion: none given");
                };
                let expected = Expected {
                    consumer_key: &self.config.consumer_key,
                    username: &self.config.username,
                    audience: &self.config.audience,
                };
                if let Err(error) = auth::verify_assertion(assertion, key, expected, now_ms / 1000) {
                    return Reply::oauth_error(error.oauth_error(), error.to_string());
                }
            }
            _ => return Reply::oauth_error("unsupported_grant_type", "grant type not supported"),
        }
        let timeout = self.session_timeout_ms();
        self.tokens.retain(|_, issued| issued.saturating_add(timeout) > now_ms);
        let secret: String =
            (0..96).map(|_| char::from(TOKEN_CHARS[self.rng.random_range(0..TOKEN_CHARS.len())])).collect();
        let token = format!("{}!{secret}", &self.org_id[..15]);
        self.tokens.insert(token.clone(), now_ms);
        self.stats.tokens_issued += 1;
        let signature: String =
            (0..43).map(|_| char::from(TOKEN_CHARS[self.rng.random_range(0..TOKEN_CHARS.len())])).collect();
        Reply::new(
            200,
            json!({
                "access_token": token,
                "instance_url": self.base_url,
                "id": format!("{}/id/{}/{}", self.base_url, self.org_id, self.user_id),
                "token_type": "Bearer",
                "issued_at": now_ms.to_string(),
                "signature": format!("{signature}="),
                "scope": "api",
            }),
        )
    }

    fn session_timeout_ms(&self) -> u64 {
        u64::try_from(self.config.session_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    fn authorized(&self, authorization: Option<&str>, now_ms: u64) -> bool {
        let Some(token) = authorization
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("OAuth ")).map(str::trim))
        else {
            return false;
        };
        self.tokens.get(token).is_some_and(|issued| issued.saturating_add(self.session_timeout_ms()) > now_ms)
    }

    fn limited(&self, mut reply: Reply) -> Reply {
        reply.limit_info = Some((self.allocation_used, self.allocation_max));
        reply
    }

    /// Answers a request under `/services/data/` at `now_ms`: authentication, the allocation,
    /// injected failures, then the resource.
    pub fn data(&mut self, request: DataRequest<'_>, now_ms: u64) -> Reply {
        let path = request.path.trim_start_matches('/');
        let (version, rest) = path.split_once('/').unwrap_or((path, ""));
        let segments: Vec<&str> = rest.split('/').collect();
        let kind = match segments.as_slice() {
            ["search"] | ["search", ""] => Kind::Search,
            ["composite", "sobjects", _, _] => Kind::Upsert,
            ["sobjects", _] | ["sobjects", _, ""] => Kind::Create,
            ["limits"] | ["limits", ""] => Kind::Limits,
            _ => Kind::Other,
        };
        let counter = match kind {
            Kind::Search => &mut self.stats.search_requests,
            Kind::Upsert => &mut self.stats.upsert_requests,
            Kind::Create => &mut self.stats.create_requests,
            Kind::Limits => &mut self.stats.limits_requests,
            Kind::Other => &mut self.stats.other_requests,
        };
        *counter += 1;
        if !self.authorized(request.authorization, now_ms) {
            self.stats.unauthorized += 1;
            return self.limited(Reply::error(401, "INVALID_SESSION_ID", "Session expired or invalid", &[]));
        }
        if self.allocation_used >= self.allocation_max {
            self.stats.allocation_refusals += 1;
            return self.limited(Reply::error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", &[]));
        }
        self.allocation_used += 1;
        self.stats.api_requests += 1;
        if self.faults.fail_requests > 0 {
            self.faults.fail_requests -= 1;
            self.stats.failures_injected += 1;
            let (status, code, message) = self.faults.fail_with.answer();
            return self.limited(Reply::error(status, code, message, &[]));
        }
        let reply = if !valid_version(version) {
            not_found()
        } else {
            match (kind, request.method, segments.as_slice()) {
                (Kind::Search, "GET", _) => self.search(version, request.query),
                (Kind::Upsert, "PATCH", ["composite", "sobjects", object, field]) => {
                    self.upsert(object, field, request.body)
                }
                (Kind::Create, "POST", ["sobjects", object, ..]) => self.create(object, request.body),
                (Kind::Limits, "GET", _) => self.limits(),
                (Kind::Other, ..) => not_found(),
                (_, method, _) => Reply::error(
                    405,
                    "METHOD_NOT_ALLOWED",
                    format!("HTTP Method '{method}' not allowed. Allowed are {}", allowed(&kind)),
                    &[],
                ),
            }
        };
        self.limited(reply)
    }

    fn limits(&self) -> Reply {
        Reply::new(
            200,
            json!({"DailyApiRequests": {"Max": self.allocation_max, "Remaining": self.allocation_max.saturating_sub(self.allocation_used)}}),
        )
    }

    fn search(&self, version: &str, query: Option<&str>) -> Reply {
        let q = query.and_then(|query| form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "q"));
        let Some((_, q)) = q else {
            return Reply::error(400, "MALFORMED_QUERY", "the search needs a q parameter", &[]);
        };
        let parsed = match sosl::parse(&q) {
            Ok(parsed) => parsed,
            Err(error) => return Reply::error(400, error.error_code(), error.to_string(), &[]),
        };
        let keys: Vec<String> = parsed.terms.iter().filter_map(|term| phone::match_key(term)).collect();
        let mut rows = Vec::new();
        'objects: for returning in &parsed.returning {
            let mut found: Vec<usize> = keys
                .iter()
                .flat_map(|key| self.by_phone.get(key).into_iter().flatten().copied())
                .filter(|&index| self.records[index].object == returning.object)
                .collect();
            found.sort_unstable();
            found.dedup();
            for index in found {
                if rows.len() == MAX_SEARCH_ROWS {
                    break 'objects;
                }
                let record = &self.records[index];
                let mut row = Map::new();
                let url = format!("/services/data/{version}/sobjects/{}/{}", record.object.name(), record.id);
                row.insert("attributes".into(), json!({"type": record.object.name(), "url": url}));
                for field in &returning.fields {
                    row.insert((*field).into(), record.get(field).map_or(Value::Null, |value| value.into()));
                }
                rows.push(Value::Object(row));
            }
        }
        Reply::new(200, json!({ "searchRecords": rows }))
    }

    fn create(&mut self, object: &str, body: &[u8]) -> Reply {
        let kind = match ObjectKind::from_name(object) {
            Some(kind @ (ObjectKind::Contact | ObjectKind::Lead)) => kind,
            _ => {
                return Reply::error(
                    404,
                    "NOT_FOUND",
                    format!("the sandbox creates only Contact and Lead, not {object}"),
                    &[],
                );
            }
        };
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return Reply::error(400, "JSON_PARSER_ERROR", "the body must be a JSON object", &[]);
        };
        let mut fields = BTreeMap::new();
        for (name, value) in &body {
            if name == "attributes" {
                continue;
            }
            let Some(field) = kind.creatable_fields().iter().find(|field| field.eq_ignore_ascii_case(name)) else {
                let message = format!("No such column '{name}' on sobject of type {}", kind.name());
                return Reply::error(400, "INVALID_FIELD", message, &[name]);
            };
            match text(value) {
                Ok(Some(text)) => {
                    fields.insert((*field).to_owned(), text);
                }
                Ok(None) => {}
                Err(()) => return Reply::error(400, "JSON_PARSER_ERROR", format!("{field} must be text"), &[field]),
            }
        }
        let required: &[&str] = match kind {
            ObjectKind::Lead => &["LastName", "Company"],
            _ => &["LastName"],
        };
        let missing: Vec<&str> =
            required.iter().copied().filter(|field| fields.get(*field).is_none_or(|v| v.trim().is_empty())).collect();
        if !missing.is_empty() {
            let message = format!("Required fields are missing: [{}]", missing.join(", "));
            return Reply::error(400, "REQUIRED_FIELD_MISSING", message, &missing);
        }
        let name = [fields.get("FirstName"), fields.get("LastName")]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        fields.insert("Name".into(), name);
        let id = self.next_id(kind.prefix());
        self.insert_record(Record { id: id.clone(), object: kind, fields });
        Reply::new(201, json!({"id": id, "success": true, "errors": []}))
    }

    fn upsert(&mut self, object: &str, field: &str, body: &[u8]) -> Reply {
        if object != "Task" {
            return Reply::error(400, "INVALID_TYPE", format!("the sandbox upserts only Task, not {object}"), &[]);
        }
        let external_field = self.config.external_id_field.clone();
        if !field.eq_ignore_ascii_case(&external_field) {
            let message = format!("Field name provided, {field} is not an External ID or indexed field for Task");
            return Reply::error(400, "INVALID_FIELD", message, &[field]);
        }
        let parsed = match parse_upsert(body, &external_field) {
            Ok(parsed) => parsed,
            Err(reply) => return reply,
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for record in &parsed.records {
            if let Some(id) = &record.external_id {
                *seen.entry(id).or_default() += 1;
            }
        }
        let mut outcomes: Vec<Result<(), Vec<Value>>> = parsed
            .records
            .iter()
            .map(|record| {
                let mut errors = Vec::new();
                if record.object.as_deref() != Some("Task") {
                    errors.push(record_error("INVALID_TYPE", "the record's attributes must say type Task", &[]));
                }
                match &record.external_id {
                    None => errors.push(record_error(
                        "MISSING_ARGUMENT",
                        &format!("{external_field} not specified in an upsert call"),
                        &[&external_field],
                    )),
                    Some(id) if seen.get(id.as_str()).copied().unwrap_or(0) > 1 => errors.push(record_error(
                        "DUPLICATE_EXTERNAL_ID",
                        &format!("Duplicate external id specified: {id}"),
                        &[&external_field],
                    )),
                    Some(id) if id.chars().count() > 255 => errors.push(record_error(
                        "STRING_TOO_LONG",
                        &format!("{external_field}: data value too large (max length=255)"),
                        &[&external_field],
                    )),
                    Some(_) => {}
                }
                errors.extend(self.validate_task(&record.fields));
                if errors.is_empty() { Ok(()) } else { Err(errors) }
            })
            .collect();
        for (record, outcome) in parsed.records.iter().zip(outcomes.iter_mut()) {
            let Some(id) = record.external_id.as_deref().filter(|_| outcome.is_ok()) else { continue };
            let listed = self.faults.lock_external_ids.iter().position(|locked| locked == id);
            let locked = if let Some(position) = listed {
                self.faults.lock_external_ids.remove(position);
                true
            } else if self.faults.lock_records > 0 {
                self.faults.lock_records -= 1;
                true
            } else {
                false
            };
            if locked {
                self.stats.failures_injected += 1;
                let task_id = self.tasks_by_external_id.get(id).map_or("", |&index| self.tasks[index].id.as_str());
                let message = format!("unable to obtain exclusive access to this record or 1 records: {task_id}");
                *outcome = Err(vec![record_error("UNABLE_TO_LOCK_ROW", &message, &[])]);
            }
        }
        let any_failed = outcomes.iter().any(Result::is_err);
        let mut results = Vec::with_capacity(outcomes.len());
        for (record, outcome) in parsed.records.into_iter().zip(outcomes) {
            match outcome {
                Err(errors) => {
                    self.stats.records_failed += 1;
                    results.push(json!({"success": false, "errors": errors}));
                }
                Ok(()) if parsed.all_or_none && any_failed => {
                    self.stats.records_failed += 1;
                    let error = record_error(
                        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "Record rolled back because not all records were valid and the request was using AllOrNone header",
                        &[],
                    );
                    results.push(json!({"success": false, "errors": [error]}));
                }
                Ok(()) => {
                    self.stats.records_upserted += 1;
                    let external_id = record.external_id.unwrap_or_default();
                    let (id, created) = self.write_task(external_id, record.fields);
                    results.push(json!({"id": id, "success": true, "created": created, "errors": []}));
                }
            }
        }
        Reply::new(200, Value::Array(results))
    }

    /// Per-record checks of a Task's fields, as Salesforce reports them.
    fn validate_task(&self, fields: &BTreeMap<&'static str, Value>) -> Vec<Value> {
        let mut errors = Vec::new();
        for &(field, max) in schema::TASK_MAX_LENGTHS {
            if let Some(Value::String(text)) = fields.get(field)
                && text.chars().count() > max
            {
                let message = format!("{field}: data value too large: (max length={max})");
                errors.push(record_error("STRING_TOO_LONG", &message, &[field]));
            }
        }
        for (field, allowed) in [("TaskSubtype", schema::TASK_SUBTYPES), ("CallType", schema::CALL_TYPES)] {
            if let Some(Value::String(value)) = fields.get(field)
                && !allowed.contains(&value.as_str())
            {
                let message = format!("bad value for restricted picklist field: {value}");
                errors.push(record_error("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", &message, &[field]));
            }
        }
        let references: [(&str, &[ObjectKind]); 2] =
            [("WhoId", &[ObjectKind::Contact, ObjectKind::Lead]), ("WhatId", &[ObjectKind::Account])];
        for (field, kinds) in references {
            if let Some(Value::String(id)) = fields.get(field)
                && !self.record(id).is_some_and(|record| kinds.contains(&record.object))
            {
                let message = format!("{field}: id value of incorrect type: {id}");
                errors.push(record_error("INVALID_CROSS_REFERENCE_KEY", &message, &[field]));
            }
        }
        if let Some(Value::String(owner)) = fields.get("OwnerId")
            && !full_id(owner).is_some_and(|id| ids::is_valid_id(ids::USER_PREFIX, &id))
        {
            let message = format!("OwnerId: id value of incorrect type: {owner}");
            errors.push(record_error("INVALID_CROSS_REFERENCE_KEY", &message, &["OwnerId"]));
        }
        errors
    }

    fn write_task(&mut self, external_id: String, fields: BTreeMap<&'static str, Value>) -> (String, bool) {
        if let Some(&index) = self.tasks_by_external_id.get(&external_id) {
            let task = &mut self.tasks[index];
            for (field, value) in fields {
                if value.is_null() {
                    task.fields.remove(field);
                } else {
                    task.fields.insert(field.to_owned(), value);
                }
            }
            task.writes += 1;
            return (task.id.clone(), false);
        }
        let id = self.next_id(ids::TASK_PREFIX);
        // Salesforce fills these defaults on insert.
        let mut stored: BTreeMap<String, Value> =
            BTreeMap::from([("Status".into(), "Not Started".into()), ("Priority".into(), "Normal".into())]);
        stored.insert("OwnerId".into(), self.user_id.clone().into());
        for (field, value) in fields {
            if value.is_null() {
                stored.remove(field);
            } else {
                stored.insert(field.to_owned(), value);
            }
        }
        self.tasks_by_external_id.insert(external_id.clone(), self.tasks.len());
        self.tasks.push(TaskRecord { id: id.clone(), external_id, fields: stored, writes: 1 });
        (id, true)
    }
}

const TOKEN_CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._";

/// An 18-character id for an 18- or 15-character one.
fn full_id(id: &str) -> Option<String> {
    match id.len() {
        18 => Some(id.to_owned()),
        15 if id.is_ascii() => Some(format!("{id}{}", ids::case_suffix(id))),
        _ => None,
    }
}

/// `vNN.N`, the API version segment.
fn valid_version(version: &str) -> bool {
    let Some(number) = version.strip_prefix('v') else { return false };
    let Some((major, minor)) = number.split_once('.') else { return false };
    !major.is_empty() && !minor.is_empty() && major.chars().chain(minor.chars()).all(|c| c.is_ascii_digit())
}

fn not_found() -> Reply {
    Reply::error(404, "NOT_FOUND", "The requested resource does not exist", &[])
}

fn allowed(kind: &Kind) -> &'static str {
    match kind {
        Kind::Search | Kind::Limits | Kind::Other => "GET",
        Kind::Upsert => "PATCH",
        Kind::Create => "POST",
    }
}

fn record_error(code: &str, message: &str, fields: &[&str]) -> Value {
    json!({"statusCode": code, "message": message, "fields": fields})
}

/// A JSON value as field text: strings as they are, numbers and booleans written out, null as none.
fn text(value: &Value) -> Result<Option<String>, ()> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) => Ok(Some(number.to_string())),
        Value::Bool(flag) => Ok(Some(flag.to_string())),
        Value::Array(_) | Value::Object(_) => Err(()),
    }
}

struct UpsertBody {
    all_or_none: bool,
    records: Vec<UpsertRecord>,
}

struct UpsertRecord {
    object: Option<String>,
    external_id: Option<String>,
    fields: BTreeMap<&'static str, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUpsert {
    #[serde(default)]
    all_or_none: bool,
    records: Vec<Value>,
}

/// The whole-request checks of an upsert: JSON shape, the record limit, unknown fields and values
/// Salesforce could not deserialise. Any failure fails the request.
fn parse_upsert(body: &[u8], external_field: &str) -> Result<UpsertBody, Reply> {
    let raw: RawUpsert = serde_json::from_slice(body).map_err(|error| {
        Reply::error(400, "JSON_PARSER_ERROR", format!("the body is not an upsert request: {error}"), &[])
    })?;
    if raw.records.len() > MAX_UPSERT_RECORDS {
        let message =
            format!("record limit reached. cannot submit more than {MAX_UPSERT_RECORDS} records into this call");
        return Err(Reply::error(400, "EXCEEDED_ID_LIMIT", message, &[]));
    }
    let mut records = Vec::with_capacity(raw.records.len());
    for value in raw.records {
        let Value::Object(map) = value else {
            return Err(Reply::error(400, "JSON_PARSER_ERROR", "every record must be a JSON object", &[]));
        };
        let mut record = UpsertRecord { object: None, external_id: None, fields: BTreeMap::new() };
        for (name, value) in map {
            if name == "attributes" {
                record.object = value.get("type").and_then(Value::as_str).map(str::to_owned);
                continue;
            }
            if name.eq_ignore_ascii_case(external_field) {
                record.external_id = text(&value)
                    .map_err(|()| {
                        Reply::error(400, "JSON_PARSER_ERROR", format!("{external_field} must be text"), &[])
                    })?
                    .filter(|id| !id.is_empty());
                continue;
            }
            let Some(field) = schema::TASK_FIELDS.iter().copied().find(|field| field.eq_ignore_ascii_case(&name))
            else {
                return Err(Reply::error(
                    400,
                    "INVALID_FIELD",
                    format!("No such column '{name}' on sobject of type Task"),
                    &[&name],
                ));
            };
            let value = task_value(field, value)
                .map_err(|message| Reply::error(400, "JSON_PARSER_ERROR", message, &[field]))?;
            record.fields.insert(field, value);
        }
        records.push(record);
    }
    Ok(UpsertBody { all_or_none: raw.all_or_none, records })
}

/// A Task field's value as stored: an integer for `CallDurationInSeconds`, a `YYYY-MM-DD` date for
/// `ActivityDate`, text for the rest; null clears.
fn task_value(field: &str, value: Value) -> Result<Value, String> {
    match (field, &value) {
        (_, Value::Null) => Ok(Value::Null),
        ("CallDurationInSeconds", Value::Number(number)) if number.is_i64() => Ok(value),
        ("CallDurationInSeconds", Value::String(text)) if text.parse::<i64>().is_ok() => {
            Ok(text.parse::<i64>().map(Value::from).unwrap_or(Value::Null))
        }
        ("CallDurationInSeconds", _) => Err(format!("Cannot deserialize instance of int from {value}")),
        ("ActivityDate", Value::String(date)) if is_date(date) => Ok(value),
        ("ActivityDate", _) => Err(format!("Cannot deserialize instance of date from {value}: expected YYYY-MM-DD")),
        (_, other) => {
            text(other).map(|text| text.map_or(Value::Null, Value::from)).map_err(|()| format!("{field} must be text"))
        }
    }
}

fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes
            .iter()
            .enumerate()
            .all(|(i, byte)| if i == 4 || i == 7 { *byte == b'-' } else { byte.is_ascii_digit() })
}

#[cfg(test)]
mod tests;
