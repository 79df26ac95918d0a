//! The org model's tests: every request answered as data, with the time passed in.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::salesforce::faults::InjectedFailure;

const NOW: u64 = 1_750_000_000_000;
const EXT: &str = "Gw_Call_Id__c";

fn config() -> SandboxConfig {
    SandboxConfig { contacts: 200, leads: 60, accounts: 40, ..SandboxConfig::default() }
}

fn org() -> Org {
    Org::new(config(), "http://sandbox.test").unwrap()
}

/// An org and a valid bearer header.
fn session() -> (Org, String) {
    let mut org = org();
    let token = token(&mut org);
    (org, format!("Bearer {token}"))
}

fn token(org: &mut Org) -> String {
    let reply = org.token(
        b"grant_type=client_credentials&client_id=switchboard-sandbox-key&client_secret=switchboard-sandbox-secret",
        NOW,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["access_token"].as_str().unwrap().to_owned()
}

fn request(org: &mut Org, auth: &str, method: &str, path: &str, query: Option<&str>, body: &Value) -> Reply {
    let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body).unwrap() };
    org.data(DataRequest { method, path, query, authorization: Some(auth), body: &body }, NOW + 1_000)
}

fn search(org: &mut Org, auth: &str, sosl: &str) -> Reply {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("q", sosl).finish();
    request(org, auth, "GET", "v62.0/search/", Some(&query), &Value::Null)
}

fn upsert(org: &mut Org, auth: &str, records: Vec<Value>, all_or_none: bool) -> Reply {
    let body = json!({"allOrNone": all_or_none, "records": records});
    request(org, auth, "PATCH", "v62.0/composite/sobjects/Task/Gw_Call_Id__c", None, &body)
}

fn task(external_id: &str) -> Value {
    json!({"attributes": {"type": "Task"}, EXT: external_id, "Subject": "Inbound call", "TaskSubtype": "Call",
           "CallType": "Inbound", "CallDurationInSeconds": 42, "Status": "Completed", "ActivityDate": "2025-06-01"})
}

fn with(mut record: Value, field: &str, value: Value) -> Value {
    record[field] = value;
    record
}

fn error_code(reply: &Reply) -> &str {
    reply.body[0]["errorCode"].as_str().unwrap_or_else(|| panic!("not an error: {}", reply.body))
}

/// The single per-record error code of one upserted record.
fn record_code(reply: &Reply, index: usize) -> &str {
    assert_eq!(reply.body[index]["success"], false, "{}", reply.body);
    reply.body[index]["errors"][0]["statusCode"].as_str().unwrap()
}

const RETURNING: &str =
    "RETURNING Contact(Id,Name,Phone,MobilePhone),Lead(Id,Name,Phone,MobilePhone,Company),Account(Id,Name,Phone)";

fn find(numbers: &[&str]) -> String {
    let terms: Vec<String> = numbers.iter().map(|number| format!("\"{number}\"")).collect();
    format!("FIND {{{}}} IN PHONE FIELDS {RETURNING}", terms.join(" OR "))
}

fn found_ids(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut ids: Vec<String> = reply.body["searchRecords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["Id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn seeding_is_deterministic_and_has_numbers_with_none_one_and_several_matches() {
    let (a, b) = (org(), org());
    assert_eq!(a.seeded(), b.seeded());
    let seeded = a.seeded();
    assert_eq!((seeded.contacts.len(), seeded.leads.len(), seeded.accounts.len()), (200, 60, 40));
    assert!(!seeded.numbers_with_matches(1).is_empty());
    assert!(seeded.numbers.values().any(|ids| ids.len() > 1), "some numbers are shared");
    assert!(seeded.unmatched_numbers(3).iter().all(|number| seeded.matches(number).is_empty()));
    let other = Org::new(SandboxConfig { seed: 2, ..config() }, "http://sandbox.test").unwrap();
    assert_ne!(other.seeded().contacts, seeded.contacts);
    for record in seeded.records() {
        assert!(ids::is_valid_id(record.object.prefix(), &record.id), "{}", record.id);
    }
}

#[test]
fn search_finds_one_several_or_no_records_whatever_the_format() {
    let (mut org, auth) = session();
    let seeded = org.seeded().clone();
    let one = seeded.numbers_with_matches(1)[0];
    assert_eq!(found_ids(&search(&mut org, &auth, &find(&[one]))), seeded.matches(one));
    // The national form finds the same records as the international one.
    let national = format!("0{}", &one[3..]);
    assert_eq!(found_ids(&search(&mut org, &auth, &find(&[&national]))), seeded.matches(one));
    let (several, ids) = seeded.numbers.iter().find(|(_, ids)| ids.len() > 1).unwrap();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(found_ids(&search(&mut org, &auth, &find(&[several]))), expected);
    let none = seeded.unmatched_numbers(1);
    assert!(found_ids(&search(&mut org, &auth, &find(&[&none[0]]))).is_empty());
    let mut both: Vec<String> = seeded.matches(one).iter().chain(ids).cloned().collect();
    both.sort();
    assert_eq!(found_ids(&search(&mut org, &auth, &find(&[one, several, &none[0]]))), both);
}

#[test]
fn search_returns_only_the_requested_fields_and_objects() {
    let (mut org, auth) = session();
    let account = org.seeded().accounts[0].clone();
    let phone = account.get("Phone").unwrap().to_owned();
    let reply = search(&mut org, &auth, &format!("FIND {{\"{phone}\"}} IN PHONE FIELDS RETURNING Account(Name)"));
    let rows = reply.body["searchRecords"].as_array().unwrap();
    let row = rows.iter().find(|row| row["Name"] == account.get("Name").unwrap()).unwrap();
    assert_eq!(row["attributes"]["type"], "Account");
    assert_eq!(row["attributes"]["url"], format!("/services/data/v62.0/sobjects/Account/{}", account.id));
    assert_eq!(row.as_object().unwrap().len(), 2, "attributes and Name only: {row}");
    assert!(rows.iter().all(|row| row["attributes"]["type"] == "Account"), "no Contacts sharing the line");
}

#[test]
fn search_errors_are_salesforce_shaped() {
    let (mut org, auth) = session();
    let reply = search(&mut org, &auth, "FIND {4930} IN ALL FIELDS RETURNING Contact");
    assert_eq!((reply.status, error_code(&reply)), (400, "MALFORMED_QUERY"));
    assert_eq!(reply.body[0]["fields"], json!([]));
    let reply = search(&mut org, &auth, "FIND {4930} IN PHONE FIELDS RETURNING Case(Id)");
    assert_eq!((reply.status, error_code(&reply)), (400, "INVALID_TYPE"));
    let reply = search(&mut org, &auth, "FIND {4930} IN PHONE FIELDS RETURNING Lead(Id,Industry)");
    assert_eq!((reply.status, error_code(&reply)), (400, "INVALID_FIELD"));
    let reply = request(&mut org, &auth, "GET", "v62.0/search/", None, &Value::Null);
    assert_eq!((reply.status, error_code(&reply)), (400, "MALFORMED_QUERY"));
    let long = find(&(0..400).map(|_| "+49301234567").collect::<Vec<_>>());
    let reply = search(&mut org, &auth, &long);
    assert_eq!((reply.status, error_code(&reply)), (400, "MALFORMED_QUERY"));
}

#[test]
fn search_returns_at_most_two_thousand_rows() {
    // Every record shares one of two numbers: a search for both would return 2,400.
    let plan = NumberPlan { first_index: 7, end_index: 9, ..NumberPlan::default() };
    let config = SandboxConfig { contacts: 2_000, leads: 300, accounts: 100, number_plan: plan.clone(), ..config() };
    let mut org = Org::new(config, "http://sandbox.test").unwrap();
    let auth = format!("Bearer {}", token(&mut org));
    let reply = search(&mut org, &auth, &find(&[&plan.e164(7), &plan.e164(8)]));
    assert_eq!(reply.body["searchRecords"].as_array().unwrap().len(), MAX_SEARCH_ROWS);
}

#[test]
fn an_upsert_creates_then_updates_by_external_id() {
    let (mut org, auth) = session();
    let who = org.seeded().contacts[0].id.clone();
    let what = org.seeded().accounts[0].id.clone();
    let first = upsert(
        &mut org,
        &auth,
        vec![with(with(task("sb-1"), "WhoId", who.clone().into()), "WhatId", what.into())],
        false,
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.body[0]["success"], true);
    assert_eq!(first.body[0]["created"], true);
    let id = first.body[0]["id"].as_str().unwrap().to_owned();
    assert!(ids::is_valid_id(ids::TASK_PREFIX, &id), "{id}");
    let second = upsert(&mut org, &auth, vec![with(task("sb-1"), "CallDisposition", "answered".into())], false);
    assert_eq!(second.body[0], json!({"id": id, "success": true, "created": false, "errors": []}));
    assert_eq!(org.tasks().len(), 1);
    let stored = org.task_by_external_id("sb-1").unwrap();
    assert_eq!(stored.writes, 2);
    assert_eq!(stored.fields["CallDisposition"], "answered");
    assert_eq!(stored.fields["WhoId"], who.as_str(), "an update keeps fields it does not send");
    assert_eq!(stored.fields["CallDurationInSeconds"], 42);
    let stats = org.stats();
    assert_eq!((stats.upsert_requests, stats.api_requests, stats.records_upserted), (2, 2, 2));
}

#[test]
fn a_batch_counts_as_one_request() {
    let (mut org, auth) = session();
    let records: Vec<Value> = (0..MAX_UPSERT_RECORDS).map(|i| task(&format!("sb-{i}"))).collect();
    let reply = upsert(&mut org, &auth, records, false);
    assert!(reply.body.as_array().unwrap().iter().all(|result| result["success"] == true));
    assert_eq!(reply.limit_info, Some((1, 100_000)));
    assert_eq!(org.tasks().len(), MAX_UPSERT_RECORDS);
    let records: Vec<Value> = (0..=MAX_UPSERT_RECORDS).map(|i| task(&format!("sb-{i}"))).collect();
    let reply = upsert(&mut org, &auth, records, false);
    assert_eq!((reply.status, error_code(&reply)), (400, "EXCEEDED_ID_LIMIT"));
}

#[test]
fn per_record_validation_fails_only_the_bad_records() {
    let (mut org, auth) = session();
    let account = org.seeded().accounts[0].id.clone();
    let contact = org.seeded().contacts[0].id.clone();
    let lead = org.seeded().leads[0].id.clone();
    let cases: Vec<(Value, &str)> = vec![
        (with(task("a"), "Subject", "x".repeat(256).into()), "STRING_TOO_LONG"),
        (with(task("b"), "Description", "x".repeat(32_001).into()), "STRING_TOO_LONG"),
        (with(task("c"), "CallObject", "x".repeat(256).into()), "STRING_TOO_LONG"),
        (with(task("d"), "CallDisposition", "x".repeat(256).into()), "STRING_TOO_LONG"),
        (with(task("e"), "TaskSubtype", "Email".into()), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        (with(task("f"), "CallType", "inbound".into()), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        (with(task("g"), "WhoId", account.clone().into()), "INVALID_CROSS_REFERENCE_KEY"),
        (with(task("h"), "WhoId", "003000000000000AAA".into()), "INVALID_CROSS_REFERENCE_KEY"),
        (with(task("i"), "WhatId", contact.clone().into()), "INVALID_CROSS_REFERENCE_KEY"),
        (with(task("j"), "attributes", json!({"type": "Event"})), "INVALID_TYPE"),
        (with(task("k"), EXT, Value::Null), "MISSING_ARGUMENT"),
        (with(task("l"), "OwnerId", contact.clone().into()), "INVALID_CROSS_REFERENCE_KEY"),
    ];
    let good = vec![
        with(task("ok-1"), "WhoId", lead.into()),
        with(task("ok-2"), "WhoId", contact[..15].into()),
        with(with(task("ok-3"), "Description", "x".repeat(32_000).into()), "Subject", "ü".repeat(255).into()),
    ];
    let records: Vec<Value> = cases.iter().map(|(record, _)| record.clone()).chain(good.clone()).collect();
    let reply = upsert(&mut org, &auth, records, false);
    assert_eq!(reply.status, 200);
    for (index, (_, code)) in cases.iter().enumerate() {
        assert_eq!(record_code(&reply, index), *code, "case {index}: {}", reply.body[index]);
    }
    for index in cases.len()..cases.len() + good.len() {
        assert_eq!(reply.body[index]["success"], true, "{}", reply.body[index]);
    }
    assert_eq!(org.tasks().len(), good.len());
    assert_eq!(org.stats().records_failed, cases.len() as u64);
}

#[test]
fn duplicate_external_ids_in_one_request_fail_each_copy() {
    let (mut org, auth) = session();
    let reply = upsert(&mut org, &auth, vec![task("dup"), task("solo"), task("dup")], false);
    assert_eq!(record_code(&reply, 0), "DUPLICATE_EXTERNAL_ID");
    assert_eq!(reply.body[1]["success"], true);
    assert_eq!(record_code(&reply, 2), "DUPLICATE_EXTERNAL_ID");
    assert!(org.task_by_external_id("dup").is_none());
}

#[test]
fn request_level_upsert_errors_fail_the_whole_request() {
    let (mut org, auth) = session();
    let reply = upsert(&mut org, &auth, vec![task("a"), with(task("b"), "Colour", "blue".into())], false);
    assert_eq!((reply.status, error_code(&reply)), (400, "INVALID_FIELD"));
    assert_eq!(reply.body[0]["fields"], json!(["Colour"]));
    let reply = upsert(&mut org, &auth, vec![with(task("a"), "CallDurationInSeconds", "long".into())], false);
    assert_eq!((reply.status, error_code(&reply)), (400, "JSON_PARSER_ERROR"));
    let reply = upsert(&mut org, &auth, vec![with(task("a"), "ActivityDate", "01.06.2025".into())], false);
    assert_eq!((reply.status, error_code(&reply)), (400, "JSON_PARSER_ERROR"));
    let reply =
        request(&mut org, &auth, "PATCH", "v62.0/composite/sobjects/Task/Gw_Call_Id__c", None, &json!({"records": 1}));
    assert_eq!((reply.status, error_code(&reply)), (400, "JSON_PARSER_ERROR"));
    let reply =
        request(&mut org, &auth, "PATCH", "v62.0/composite/sobjects/Task/CallObject", None, &json!({"records": []}));
    assert_eq!((reply.status, error_code(&reply)), (400, "INVALID_FIELD"));
    assert!(org.tasks().is_empty());
}

#[test]
fn all_or_none_rolls_back_every_record() {
    let (mut org, auth) = session();
    let reply = upsert(&mut org, &auth, vec![task("a"), with(task("b"), "CallType", "Sideways".into())], true);
    assert_eq!(record_code(&reply, 0), "ALL_OR_NONE_OPERATION_ROLLED_BACK");
    assert_eq!(record_code(&reply, 1), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert!(org.tasks().is_empty());
    let reply = upsert(&mut org, &auth, vec![task("a"), task("b")], true);
    assert!(reply.body.as_array().unwrap().iter().all(|result| result["success"] == true));
}

#[test]
fn lock_faults_fail_chosen_records_and_the_rest_succeed() {
    let (mut org, auth) = session();
    org.set_faults(FaultSettings { lock_records: 1, lock_external_ids: vec!["c".into()], ..FaultSettings::default() });
    let reply = upsert(&mut org, &auth, vec![task("a"), task("b"), task("c"), task("d")], false);
    assert_eq!(record_code(&reply, 0), "UNABLE_TO_LOCK_ROW");
    assert_eq!(reply.body[1]["success"], true);
    assert_eq!(record_code(&reply, 2), "UNABLE_TO_LOCK_ROW");
    assert_eq!(reply.body[3]["success"], true);
    assert_eq!(org.stats().failures_injected, 2);
    assert_eq!(org.faults(), &FaultSettings::default(), "used up");
    let retry = upsert(&mut org, &auth, vec![task("a"), task("c")], false);
    assert!(retry.body.as_array().unwrap().iter().all(|result| result["created"] == true));
}

#[test]
fn create_needs_the_required_fields_and_makes_records_searchable() {
    let (mut org, auth) = session();
    let reply = request(&mut org, &auth, "POST", "v62.0/sobjects/Contact", None, &json!({"FirstName": "Ada"}));
    assert_eq!((reply.status, error_code(&reply)), (400, "REQUIRED_FIELD_MISSING"));
    assert_eq!(reply.body[0]["fields"], json!(["LastName"]));
    let reply = request(&mut org, &auth, "POST", "v62.0/sobjects/Lead", None, &json!({"LastName": "Lovelace"}));
    assert_eq!((reply.status, error_code(&reply)), (400, "REQUIRED_FIELD_MISSING"));
    assert_eq!(reply.body[0]["fields"], json!(["Company"]));
    let reply =
        request(&mut org, &auth, "POST", "v62.0/sobjects/Contact", None, &json!({"LastName": "L", "Shoe": "7"}));
    assert_eq!((reply.status, error_code(&reply)), (400, "INVALID_FIELD"));
    let number = org.seeded().unmatched_numbers(1).remove(0);
    let body = json!({"LastName": "Lovelace", "FirstName": "Ada", "Company": "Engines", "MobilePhone": number});
    let reply = request(&mut org, &auth, "POST", "v62.0/sobjects/Lead", None, &body);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert!(ids::is_valid_id(ids::LEAD_PREFIX, &id));
    assert_eq!(reply.body, json!({"id": id, "success": true, "errors": []}));
    assert_eq!(found_ids(&search(&mut org, &auth, &find(&[&number]))), std::slice::from_ref(&id));
    assert_eq!(org.record(&id).unwrap().get("Name"), Some("Ada Lovelace"));
    assert_eq!(org.stats().create_requests, 4);
}

#[test]
fn the_allocation_counts_each_request_and_refuses_when_spent() {
    let (mut org, auth) = session();
    org.set_allocation(3, 1);
    let reply = request(&mut org, &auth, "GET", "v62.0/limits", None, &Value::Null);
    assert_eq!(reply.body, json!({"DailyApiRequests": {"Max": 3, "Remaining": 1}}));
    assert_eq!(reply.limit_info, Some((2, 3)));
    let reply = search(&mut org, &auth, &find(&["4930"]));
    assert_eq!((reply.status, reply.limit_info), (200, Some((3, 3))));
    let reply = search(&mut org, &auth, &find(&["4930"]));
    assert_eq!((reply.status, error_code(&reply)), (403, "REQUEST_LIMIT_EXCEEDED"));
    assert_eq!(reply.body[0]["message"], "TotalRequests Limit exceeded.");
    assert_eq!(reply.limit_info, Some((3, 3)), "a refused request is not counted");
    let stats = org.stats();
    assert_eq!((stats.api_requests, stats.allocation_refusals, stats.allocation_used), (2, 1, 3));
    // Token requests are not counted, and still work.
    token(&mut org);
    org.set_allocation(10, 0);
    assert_eq!(search(&mut org, &auth, &find(&["4930"])).status, 200);
}

#[test]
fn sessions_end_by_timeout_or_on_demand_and_are_never_counted() {
    let (mut org, auth) = session();
    let body = Vec::new();
    let at = |org: &mut Org, authorization: Option<&str>, now: u64| {
        org.data(DataRequest { method: "GET", path: "v62.0/limits", query: None, authorization, body: &body }, now)
    };
    assert_eq!(at(&mut org, Some(&auth), NOW).status, 200);
    for (authorization, now) in
        [(None, NOW), (Some("Bearer nonsense"), NOW), (Some(auth.as_str()), NOW + 2 * 60 * 60 * 1000)]
    {
        let reply = at(&mut org, authorization, now);
        assert_eq!((reply.status, error_code(&reply)), (401, "INVALID_SESSION_ID"));
        assert_eq!(reply.body[0]["message"], "Session expired or invalid");
    }
    org.expire_tokens();
    assert_eq!(at(&mut org, Some(&auth), NOW).status, 401);
    let stats = org.stats();
    assert_eq!((stats.api_requests, stats.unauthorized, stats.limits_requests), (1, 4, 5));
    let short = SandboxConfig { session_timeout: Duration::from_secs(1), ..config() };
    let mut org = Org::new(short, "x").unwrap();
    let auth = format!("Bearer {}", token(&mut org));
    assert_eq!(at(&mut org, Some(&auth), NOW + 999).status, 200);
    assert_eq!(at(&mut org, Some(&auth), NOW + 1_000).status, 401);
}

#[test]
fn injected_failures_answer_as_salesforce_and_still_count() {
    let (mut org, auth) = session();
    for (failure, status, code) in [
        (InjectedFailure::ServerError, 500, "UNKNOWN_EXCEPTION"),
        (InjectedFailure::Unavailable, 503, "SERVER_UNAVAILABLE"),
        (InjectedFailure::ConcurrentLimit, 403, "REQUEST_LIMIT_EXCEEDED"),
    ] {
        org.set_faults(FaultSettings { fail_requests: 1, fail_with: failure, ..FaultSettings::default() });
        let reply = search(&mut org, &auth, &find(&["4930"]));
        assert_eq!((reply.status, error_code(&reply)), (status, code));
        assert_eq!(search(&mut org, &auth, &find(&["4930"])).status, 200, "one failure only");
    }
    let stats = org.stats();
    assert_eq!((stats.failures_injected, stats.api_requests), (3, 6));
}

#[test]
fn token_requests_check_the_client_and_the_grant() {
    let mut org = org();
    let reply = org.token(b"grant_type=client_credentials&client_id=switchboard-sandbox-key&client_secret=wrong", NOW);
    assert_eq!((reply.status, reply.body["error"].as_str()), (400, Some("invalid_client")));
    let reply = org.token(b"grant_type=password&username=a&password=b", NOW);
    assert_eq!(reply.body["error"], "unsupported_grant_type");
    let reply = org.token(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=x", NOW);
    assert_eq!(reply.body["error"], "unsupported_grant_type", "no public key: the jwt flow is off");
    org.set_faults(FaultSettings { fail_token_requests: 1, ..FaultSettings::default() });
    let reply = org.token(
        b"grant_type=client_credentials&client_id=switchboard-sandbox-key&client_secret=switchboard-sandbox-secret",
        NOW,
    );
    assert_eq!(reply.body["error"], "invalid_grant");
    let token = token(&mut org);
    assert!(token.starts_with("00D"), "{token}");
    let reply = org.token(
        b"grant_type=client_credentials&client_id=switchboard-sandbox-key&client_secret=switchboard-sandbox-secret",
        NOW,
    );
    for field in ["access_token", "instance_url", "id", "token_type", "issued_at", "signature", "scope"] {
        assert!(reply.body[field].is_string(), "{field} in {}", reply.body);
    }
    assert!(reply.body.get("expires_in").is_none());
    assert_eq!(reply.body["instance_url"], "http://sandbox.test");
    assert_eq!(reply.body["issued_at"], NOW.to_string());
    assert_eq!(org.stats().tokens_issued, 2);
}

#[test]
fn unknown_resources_versions_and_methods_are_refused() {
    let (mut org, auth) = session();
    let reply = request(&mut org, &auth, "GET", "v62.0/sobjects/Contact/describe", None, &Value::Null);
    assert_eq!((reply.status, error_code(&reply)), (404, "NOT_FOUND"));
    let reply = request(&mut org, &auth, "GET", "62.0/limits", None, &Value::Null);
    assert_eq!(reply.status, 404);
    let reply = request(&mut org, &auth, "POST", "v62.0/limits", None, &Value::Null);
    assert_eq!((reply.status, error_code(&reply)), (405, "METHOD_NOT_ALLOWED"));
    let reply = request(&mut org, &auth, "GET", "v58.0/limits/", None, &Value::Null);
    assert_eq!(reply.status, 200);
}
