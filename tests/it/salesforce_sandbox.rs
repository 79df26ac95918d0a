//! The Salesforce sandbox over real HTTP on loopback: OAuth flows, SOSL search, Task upserts,
//! sessions, the allocation, `Sforce-Limit-Info` and injected faults, driven as a gateway would.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use loadtest::salesforce::{Sandbox, SandboxConfig};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

// The test-only key pair (tests/fixtures/README.md).
const PRIVATE_KEY: &str = include_str!("../fixtures/jwt-test-key.pem");
const PUBLIC_KEY: &str = include_str!("../fixtures/jwt-test-key.pub.pem");
const RETURNING: &str =
    "RETURNING Contact(Id,Name,Phone,MobilePhone),Lead(Id,Name,Phone,MobilePhone,Company),Account(Id,Name,Phone)";

async fn sandbox() -> Sandbox {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let config = SandboxConfig {
        jwt_public_key_pem: Some(PUBLIC_KEY.to_owned()),
        contacts: 300,
        leads: 80,
        accounts: 50,
        ..SandboxConfig::default()
    };
    Sandbox::start(config, listener).expect("the sandbox starts")
}

async fn client_credentials(http: &Client, sandbox: &Sandbox, secret: &str) -> Response {
    http.post(format!("{}/services/oauth2/token", sandbox.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "switchboard-sandbox-key"),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap()
}

async fn token(http: &Client, sandbox: &Sandbox) -> String {
    let response = client_credentials(http, sandbox, "switchboard-sandbox-secret").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn data_url(sandbox: &Sandbox, path: &str) -> String {
    format!("{}/services/data/v62.0/{path}", sandbox.base_url())
}

async fn search(http: &Client, sandbox: &Sandbox, token: &str, numbers: &[&str]) -> Response {
    let terms: Vec<String> = numbers.iter().map(|number| format!("\"{number}\"")).collect();
    let q = format!("FIND {{{}}} IN PHONE FIELDS {RETURNING}", terms.join(" OR "));
    http.get(data_url(sandbox, "search/")).bearer_auth(token).query(&[("q", q)]).send().await.unwrap()
}

async fn found(response: Response) -> Vec<String> {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let mut ids: Vec<String> =
        body["searchRecords"].as_array().unwrap().iter().map(|row| row["Id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// `api-usage=<used>/<max>` as numbers.
fn limit_info(response: &Response) -> (u64, u64) {
    let value = response.headers().get("Sforce-Limit-Info").expect("Sforce-Limit-Info").to_str().unwrap();
    let usage = value.strip_prefix("api-usage=").unwrap();
    let (used, max) = usage.split_once('/').unwrap();
    (used.parse().unwrap(), max.parse().unwrap())
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body[0]["errorCode"].as_str().unwrap_or_else(|| panic!("not a Salesforce error: {body}")).to_owned()
}

#[tokio::test]
async fn client_credentials_and_jwt_bearer_tokens_are_issued_and_bad_secrets_refused() {
    let sandbox = sandbox().await;
    let http = Client::new();
    let response = client_credentials(&http, &sandbox, "switchboard-sandbox-secret").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["instance_url"], sandbox.base_url());
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["id"].as_str().unwrap().starts_with(&format!("{}/id/00D", sandbox.base_url())));

    let response = client_credentials(&http, &sandbox, "wrong").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": "switchboard-sandbox-key", "sub": "integration@switchboard.sandbox",
                        "aud": "https://login.salesforce.com", "exp": now + 180});
    let key = EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).unwrap();
    let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
    let response = http
        .post(format!("{}/services/oauth2/token", sandbox.base_url()))
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let jwt_token = body["access_token"].as_str().unwrap();
    let response = http.get(data_url(&sandbox, "limits")).bearer_auth(jwt_token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let expired = json!({"iss": "switchboard-sandbox-key", "sub": "integration@switchboard.sandbox",
                         "aud": "https://login.salesforce.com", "exp": now - 10});
    let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &expired, &key).unwrap();
    let response = http
        .post(format!("{}/services/oauth2/token", sandbox.base_url()))
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(sandbox.stats().tokens_issued, 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn search_finds_one_several_or_no_records_and_the_usage_header_rises() {
    let sandbox = sandbox().await;
    let http = Client::new();
    let token = token(&http, &sandbox).await;
    let seeded = sandbox.seeded();
    let one = seeded.numbers_with_matches(1)[0];
    let (several, several_ids) = seeded.numbers.iter().find(|(_, ids)| ids.len() > 1).expect("a shared number");
    let none = seeded.unmatched_numbers(1).remove(0);

    let response = search(&http, &sandbox, &token, &[one]).await;
    assert_eq!(limit_info(&response), (1, 100_000));
    assert_eq!(found(response).await, seeded.matches(one));
    let response = search(&http, &sandbox, &token, &[several]).await;
    assert_eq!(limit_info(&response), (2, 100_000));
    let mut expected = several_ids.clone();
    expected.sort();
    assert_eq!(found(response).await, expected);
    let response = search(&http, &sandbox, &token, &[&none]).await;
    assert_eq!(limit_info(&response), (3, 100_000));
    assert!(found(response).await.is_empty());

    let response = http
        .get(data_url(&sandbox, "search/"))
        .bearer_auth(&token)
        .query(&[("q", "FIND {4930} IN ALL FIELDS RETURNING Contact")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "MALFORMED_QUERY");
    let stats: Value =
        http.get(format!("{}/sandbox/stats", sandbox.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["search_requests"], 4);
    assert_eq!(stats["allocation_used"], 4);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_upsert_batch_reports_each_record_and_a_repeat_updates() {
    let sandbox = sandbox().await;
    let http = Client::new();
    let token = token(&http, &sandbox).await;
    let who = sandbox.seeded().contacts[0].id.clone();
    let task = |id: &str| {
        json!({"attributes": {"type": "Task"}, "Gw_Call_Id__c": id, "Subject": "Inbound call", "TaskSubtype": "Call",
               "CallType": "Inbound", "CallDurationInSeconds": 61, "Status": "Completed", "WhoId": who})
    };
    let mut bad = task("sb-2");
    bad["CallType"] = "Sideways".into();
    let url = data_url(&sandbox, "composite/sobjects/Task/Gw_Call_Id__c");
    let body = json!({"allOrNone": false, "records": [task("sb-1"), bad, task("sb-3")]});
    let response = http.patch(&url).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(limit_info(&response).0, 1, "one request for the whole batch");
    let results: Value = response.json().await.unwrap();
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[0]["created"], true);
    assert_eq!(results[1]["success"], false);
    assert_eq!(results[1]["errors"][0]["statusCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(results[2]["success"], true);

    // A retry of the same call log updates the Task instead of duplicating it.
    let body = json!({"allOrNone": false, "records": [task("sb-1")]});
    let results: Value = http.patch(&url).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(results[0]["created"], false);
    assert_eq!(sandbox.task_by_external_id("sb-1").unwrap().writes, 2);
    let tasks: Value =
        http.get(format!("{}/sandbox/tasks", sandbox.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn expired_sessions_spent_allocations_and_injected_faults_answer_as_salesforce() {
    let sandbox = sandbox().await;
    let http = Client::new();
    let base = sandbox.base_url().to_owned();
    let token = token(&http, &sandbox).await;
    let limits = || http.get(data_url(&sandbox, "limits")).bearer_auth(&token).send();

    let response = limits().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(limit_info(&response), (1, 100_000));

    // An injected 503, set through the control API; it counts like a served request.
    let faults = json!({"fail_requests": 1, "fail_with": "unavailable"});
    let response = http.post(format!("{base}/sandbox/faults")).json(&faults).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = limits().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(limit_info(&response), (2, 100_000));
    assert_eq!(error_code(response).await, "SERVER_UNAVAILABLE");
    assert_eq!(limits().await.unwrap().status(), StatusCode::OK, "one failure only");

    // The allocation spent: 403, still with the header.
    let response =
        http.post(format!("{base}/sandbox/allocation")).json(&json!({"max": 5, "used": 5})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = limits().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(limit_info(&response), (5, 5));
    assert_eq!(error_code(response).await, "REQUEST_LIMIT_EXCEEDED");
    sandbox.set_allocation(100, 0);

    // Sessions expired: 401 until a new token is fetched.
    let response = http.post(format!("{base}/sandbox/tokens/expire")).send().await.unwrap();
    assert!(response.status().is_success());
    let response = limits().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "INVALID_SESSION_ID");
    let fresh = self::token(&http, &sandbox).await;
    let response = http.get(data_url(&sandbox, "limits")).bearer_auth(&fresh).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["DailyApiRequests"], json!({"Max": 100, "Remaining": 99}));

    let stats = sandbox.stats();
    assert_eq!((stats.failures_injected, stats.unauthorized, stats.allocation_refusals), (1, 1, 1));
    sandbox.shutdown().await;
}
