//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/...`, keys and values in base64,
//! 64-bit numbers as strings): leases, puts, gets, prefix ranges, a watch on a prefix, and the
//! transactions ownership and the shared budget need (create-if-absent, delete-if-unchanged,
//! put-if-unchanged). Workspace Cargo.toml says why not gRPC.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// Why an etcd request did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timed out, cut).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd refused the request ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// etcd's words.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from etcd: {0}")]
    BadAnswer(String),
}

/// One key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The revision that last changed it.
    pub mod_revision: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: i64,
}

/// How a create-if-absent went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key is ours, written at this revision (the fencing token).
    Won {
        /// The revision of the write.
        revision: i64,
    },
    /// Someone holds it already.
    Held(KeyValue),
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `key` = `value` on lease `lease` (0: none).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The lease, 0 for none.
        lease: i64,
    },
    /// Deletes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    fn to_json(&self) -> Value {
        match self {
            Self::Put { key, value, lease } => {
                json!({ "request_put": { "key": encode(key), "value": encode(value), "lease": lease.to_string() } })
            }
            Self::Delete { key } => json!({ "request_delete_range": { "key": encode(key) } }),
        }
    }
}

/// A client for one etcd cluster: requests go to the endpoint that last answered, then the others.
/// A node's parts (membership, the leg journal, the Salesforce ledger) each hold one, made with
/// [`Etcd::with_timeout`] from the first: one connection pool, and one endpoint preference, per
/// node, each part with its own deadline.
#[derive(Debug)]
pub struct Etcd {
    http: reqwest::Client,
    /// For watches, which stay open: no overall timeout.
    watcher: reqwest::Client,
    endpoints: Arc<[String]>,
    preferred: Arc<AtomicUsize>,
    /// How long each request may take.
    timeout: Duration,
}

fn encode(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

fn decode(value: &Value) -> Result<String, EtcdError> {
    let text = value.as_str().unwrap_or_default();
    let bytes = STANDARD.decode(text).map_err(|error| EtcdError::BadAnswer(format!("base64: {error}")))?;
    String::from_utf8(bytes).map_err(|error| EtcdError::BadAnswer(format!("utf-8: {error}")))
}

/// A 64-bit number, which the gateway sends as a string and leaves out when it is 0.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().unwrap_or_default(),
        Value::Number(number) => number.as_i64().unwrap_or_default(),
        _ => 0,
    }
}

/// The end of the range of every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_value(kv: &Value) -> Result<KeyValue, EtcdError> {
    Ok(KeyValue {
        key: decode(&kv["key"])?,
        value: decode(&kv["value"])?,
        mod_revision: int(&kv["mod_revision"]),
        lease: int(&kv["lease"]),
    })
}

impl Etcd {
    /// A client for `endpoints` (`http://host:port`); each request gives up after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, EtcdError> {
        // reqwest is built without a default TLS provider; etcd is plain HTTP here, but the client
        // still wants one installed (the Salesforce client installs the same one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|error| EtcdError::Unreachable(format!("building the http client: {error}")))?;
        let watcher = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|error| EtcdError::Unreachable(format!("building the http client: {error}")))?;
        let endpoints = endpoints.iter().map(|endpoint| endpoint.trim_end_matches('/').to_owned()).collect();
        Ok(Self { http, watcher, endpoints, preferred: Arc::default(), timeout })
    }

    /// The endpoint the next request goes to first: the one that answered last (none configured:
    /// `None`).
    pub fn preferred_endpoint(&self) -> Option<&str> {
        let preferred = self.preferred.load(Ordering::Relaxed);
        self.endpoints.get(preferred % self.endpoints.len().max(1)).map(String::as_str)
    }

    /// This client's connections and endpoint preference, with requests that give up after
    /// `timeout` instead.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            http: self.http.clone(),
            watcher: self.watcher.clone(),
            endpoints: self.endpoints.clone(),
            preferred: self.preferred.clone(),
            timeout,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut last = EtcdError::Unreachable("no endpoint configured".to_owned());
        let first = self.preferred.load(Ordering::Relaxed);
        for offset in 0..self.endpoints.len() {
            let index = (first + offset) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[index]);
            let response = match self.http.post(&url).timeout(self.timeout).json(&body).send().await {
                Ok(response) => response,
                Err(error) => {
                    last = EtcdError::Unreachable(format!("{url}: {error}"));
                    continue;
                }
            };
            let status = response.status();
            let answer: Value = match response.json().await {
                Ok(answer) => answer,
                Err(error) => {
                    last = EtcdError::Unreachable(format!("{url}: reading the answer: {error}"));
                    continue;
                }
            };
            self.preferred.store(index, Ordering::Relaxed);
            if !status.is_success() {
                let message = answer["message"].as_str().or(answer["error"].as_str()).unwrap_or_default();
                return Err(EtcdError::Refused { status: status.as_u16(), message: message.to_owned() });
            }
            return Ok(answer);
        }
        Err(last)
    }

    /// Grants a lease of `ttl_secs`; returns its id and the TTL granted.
    pub async fn grant(&self, ttl_secs: i64) -> Result<(i64, i64), EtcdError> {
        let answer = self.post("/v3/lease/grant", json!({ "TTL": ttl_secs.to_string() })).await?;
        let id = int(&answer["ID"]);
        if id == 0 {
            return Err(EtcdError::BadAnswer(format!("lease grant without an id: {answer}")));
        }
        Ok((id, int(&answer["TTL"])))
    }

    /// Renews lease `id` once; returns the TTL granted, 0 or less when the lease is gone.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let answer = self.post("/v3/lease/keepalive", json!({ "ID": id.to_string() })).await?;
        let result = &answer["result"];
        if result.is_null() {
            return Err(EtcdError::BadAnswer(format!("keepalive without a result: {answer}")));
        }
        Ok(int(&result["TTL"]))
    }

    /// Revokes lease `id`, deleting every key attached to it.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.post("/v3/lease/revoke", json!({ "ID": id.to_string() })).await.map(drop)
    }

    /// Writes `key` = `value` attached to lease `lease` (0: none); returns the revision.
    pub async fn put(&self, key: &str, value: &str, lease: i64) -> Result<i64, EtcdError> {
        let answer = self
            .post("/v3/kv/put", json!({ "key": encode(key), "value": encode(value), "lease": lease.to_string() }))
            .await?;
        Ok(int(&answer["header"]["revision"]))
    }

    /// Every key under `prefix`, and the store's revision when read.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = STANDARD.encode(prefix_end(prefix));
        let answer = self.post("/v3/kv/range", json!({ "key": encode(prefix), "range_end": end })).await?;
        let kvs = answer["kvs"].as_array().map(Vec::as_slice).unwrap_or_default();
        let kvs = kvs.iter().map(key_value).collect::<Result<_, _>>()?;
        Ok((kvs, int(&answer["header"]["revision"])))
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let answer = self.post("/v3/kv/range", json!({ "key": encode(key) })).await?;
        answer["kvs"].get(0).map(key_value).transpose()
    }

    /// Writes `key` = `value` on lease `lease` only if the key does not exist (its create revision
    /// is 0): the compare-and-set of a claim. Otherwise returns who holds it.
    pub async fn create(&self, key: &str, value: &str, lease: i64) -> Result<Created, EtcdError> {
        let key = encode(key);
        let body = json!({
            "compare": [{ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
            "success": [{ "request_put": { "key": key, "value": encode(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": key } }],
        });
        let answer = self.post("/v3/kv/txn", body).await?;
        if answer["succeeded"].as_bool().unwrap_or(false) {
            return Ok(Created::Won { revision: int(&answer["header"]["revision"]) });
        }
        match answer["responses"][0]["response_range"]["kvs"].get(0) {
            Some(kv) => Ok(Created::Held(key_value(kv)?)),
            // Deleted between the compare and the range: nobody holds it now; try again later.
            None => Err(EtcdError::BadAnswer("the key vanished during the claim".to_owned())),
        }
    }

    /// Writes `key` = `value` (no lease) only if nobody wrote it since it was read: last written at
    /// `mod_revision`, or absent when that is `None`. Whether it did.
    pub async fn put_if_unchanged(&self, key: &str, value: &str, mod_revision: Option<i64>) -> Result<bool, EtcdError> {
        let key = encode(key);
        let compare = match mod_revision {
            Some(revision) => {
                json!({ "key": key, "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string() })
            }
            None => json!({ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }),
        };
        let body = json!({
            "compare": [compare],
            "success": [{ "request_put": { "key": key, "value": encode(value) } }],
        });
        let answer = self.post("/v3/kv/txn", body).await?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false))
    }

    /// Deletes `key` whatever it holds.
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.post("/v3/kv/deleterange", json!({ "key": encode(key) })).await.map(drop)
    }

    /// Applies `ops` only if every key of `created` still has the create revision given (a fenced
    /// write: each is a claim whose revision is its owner's fencing token); whether it did.
    pub async fn txn_if_created(&self, created: &[(String, i64)], ops: &[TxnOp]) -> Result<bool, EtcdError> {
        let compare: Vec<Value> = created
            .iter()
            .map(|(key, revision)| {
                json!({ "key": encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": revision.to_string() })
            })
            .collect();
        let success: Vec<Value> = ops.iter().map(TxnOp::to_json).collect();
        let answer = self.post("/v3/kv/txn", json!({ "compare": compare, "success": success })).await?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false))
    }

    /// Writes every key = `value` on lease `lease` if none of them exists, in one transaction;
    /// the revision of the write if it did, `None` if some key is held (claim those one by one).
    pub async fn create_all(&self, keys: &[String], value: &str, lease: i64) -> Result<Option<i64>, EtcdError> {
        let compare: Vec<Value> = keys
            .iter()
            .map(|key| json!({ "key": encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" }))
            .collect();
        let success: Vec<Value> =
            keys.iter().map(|key| TxnOp::Put { key: key.clone(), value: value.to_owned(), lease }.to_json()).collect();
        let answer = self.post("/v3/kv/txn", json!({ "compare": compare, "success": success })).await?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false).then(|| int(&answer["header"]["revision"])))
    }

    /// Watches every key under `prefix`: calls `changed` once the watch is set up and again as
    /// changes arrive, until the watch breaks; returns why. (Any part of the stream counts as a
    /// change: the caller reads what it needs afresh.)
    pub async fn watch_prefix(&self, prefix: &str, changed: impl Fn()) -> EtcdError {
        let index = self.preferred.load(Ordering::Relaxed) % self.endpoints.len().max(1);
        let Some(endpoint) = self.endpoints.get(index) else {
            return EtcdError::Unreachable("no endpoint configured".to_owned());
        };
        let url = format!("{endpoint}/v3/watch");
        let end = STANDARD.encode(prefix_end(prefix));
        let body = json!({ "create_request": { "key": encode(prefix), "range_end": end } });
        let mut response = match self.watcher.post(&url).json(&body).send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                let status = response.status().as_u16();
                return EtcdError::Refused { status, message: "the watch was refused".to_owned() };
            }
            Err(error) => return EtcdError::Unreachable(format!("{url}: {error}")),
        };
        loop {
            match response.chunk().await {
                Ok(Some(_)) => changed(),
                Ok(None) => return EtcdError::Unreachable(format!("{url}: the watch ended")),
                Err(error) => return EtcdError::Unreachable(format!("{url}: {error}")),
            }
        }
    }

    /// Deletes every key only if each was last written at the revision given with it (still our
    /// claims), in one transaction; whether it did (not: some key changed, delete those one by one).
    pub async fn delete_all_if(&self, keys: &[(String, i64)]) -> Result<bool, EtcdError> {
        let compare: Vec<Value> = keys
            .iter()
            .map(|(key, revision)| {
                json!({ "key": encode(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string() })
            })
            .collect();
        let success: Vec<Value> = keys.iter().map(|(key, _)| TxnOp::Delete { key: key.clone() }.to_json()).collect();
        let answer = self.post("/v3/kv/txn", json!({ "compare": compare, "success": success })).await?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false))
    }

    /// Deletes `key` only if it was last written at `mod_revision` (still our claim); whether it did.
    pub async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let key = encode(key);
        let body = json!({
            "compare": [{ "key": key, "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string() }],
            "success": [{ "request_delete_range": { "key": key } }],
        });
        let answer = self.post("/v3/kv/txn", body).await?;
        Ok(answer["succeeded"].as_bool().unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn numbers_come_as_strings_or_not_at_all() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }

    #[test]
    fn keys_round_trip_through_base64() {
        assert_eq!(
            decode(&json!(encode("/switchboard/owners/2001"))).ok().as_deref(),
            Some("/switchboard/owners/2001")
        );
    }
}
