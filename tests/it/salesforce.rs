//! The gateway's Salesforce side end to end: the PBX simulator, the gateway and the Salesforce
//! sandbox on loopback. Screen pops with one, several and no matches; automatic records; call logs
//! as Tasks; an expiring session; a spent allocation; refusals dead-lettered and replayed.

use std::sync::Arc;
use std::time::Duration;

use actors::events::{ModelEvent, PopResult, Subscription};
use gateway::app::Gateway;
use gateway::config::{Config, SalesforceConfig, Secret};
use loadtest::salesforce::{Sandbox, SandboxConfig};
use loadtest::sim::Simulator;

use crate::support::{PATIENCE, eventually, link_config, within};

/// A directory for one test's outbox, removed at the end.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("switchboard-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Setup {
    simulator: Simulator,
    sandbox: Sandbox,
    dir: TempDir,
}

async fn setup(name: &str) -> Setup {
    setup_with(name, SandboxConfig::default()).await
}

async fn setup_with(name: &str, sandbox: SandboxConfig) -> Setup {
    let simulator = crate::support::simulator(4).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox = Sandbox::start(sandbox, listener).unwrap();
    Setup { simulator, sandbox, dir: TempDir::new(name) }
}

impl Setup {
    fn salesforce(&self) -> SalesforceConfig {
        let defaults = SandboxConfig::default();
        SalesforceConfig {
            enabled: true,
            login_url: self.sandbox.base_url().to_owned(),
            client_id: defaults.consumer_key,
            client_secret: Secret::new(defaults.consumer_secret),
            outbox_path: self.dir.0.join("outbox.sqlite3").display().to_string(),
            // Plenty of pace, and short waits, so the test does not wait on batching.
            daily_allocation: 10_000_000,
            lookup_window_ms: 100,
            urgent_window_ms: 20,
            log_batch_age_ms: 100,
            probe_interval_secs: 1,
            ..SalesforceConfig::default()
        }
    }

    async fn gateway(&self, salesforce: SalesforceConfig) -> Gateway {
        let config = Config { pbx: link_config(&self.simulator), salesforce, ..Config::default() };
        let gateway = Gateway::start(&config).await.unwrap();
        within(gateway.wait_resynced()).await;
        gateway
    }

    /// An inbound call from `from` ringing `station`; its id.
    fn ring(&self, from: &str, station: &str) -> String {
        self.simulator.with_pbx(|pbx| pbx.inbound_call(from, station)).unwrap()
    }

    /// Answers and then ends every call at `station`.
    fn answer_and_hang_up(&self, station: &str) {
        self.simulator.with_pbx(|pbx| {
            for call in pbx.calls_of(station) {
                let connection = proto::pbx::ConnectionId { call_id: call.clone(), device_id: station.to_owned() };
                let _ = pbx.answer_call(&connection);
                pbx.clear_call(&call).unwrap();
            }
        });
    }

    async fn stop(self, gateway: Gateway) {
        gateway.shutdown(Duration::from_secs(5)).await;
        self.sandbox.shutdown().await;
        self.simulator.shutdown().await;
    }
}

/// The next screen pop for `call`.
async fn pop_for(events: &mut Subscription, call: &str) -> actors::events::ScreenPop {
    pops_for(events, &[call.to_owned()]).await.remove(0)
}

/// The next screen pop of each of `calls`, in the order of `calls` (whatever order they came in).
async fn pops_for(events: &mut Subscription, calls: &[String]) -> Vec<actors::events::ScreenPop> {
    let mut found: Vec<Option<actors::events::ScreenPop>> = vec![None; calls.len()];
    within(async {
        while found.iter().any(Option::is_none) {
            if let ModelEvent::ScreenPop(pop) = &events.next().await.unwrap().event
                && let Some(index) = calls.iter().position(|call| *call == pop.call)
            {
                found[index].get_or_insert_with(|| pop.clone());
            }
        }
    })
    .await;
    found.into_iter().map(|pop| pop.expect("every pop came")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_pops_show_one_several_or_no_records_and_each_call_leg_becomes_one_task() {
    let setup = setup("pops").await;
    let gateway = setup.gateway(setup.salesforce()).await;
    let mut events = gateway.model().publisher().subscription();
    let seeded = setup.sandbox.seeded();
    let one = seeded.numbers_with_matches(1)[0].to_owned();
    let several = seeded.numbers_with_matches(2)[0].to_owned();
    let none = seeded.unmatched_numbers(1)[0].clone();

    let calls = [setup.ring(&one, "2000"), setup.ring(&several, "2001"), setup.ring(&none, "2002")];
    let pops = pops_for(&mut events, &calls).await;
    let PopResult::Single(found) = &pops[0].result else { panic!("{:?}", pops[0].result) };
    assert_eq!(seeded.matches(&one), std::slice::from_ref(&found.id));
    assert_eq!((pops[0].device.as_str(), pops[0].number.as_str()), ("2000", one.as_str()));
    let PopResult::Multiple(found) = &pops[1].result else { panic!("{:?}", pops[1].result) };
    let mut ids: Vec<_> = found.iter().map(|record| record.id.clone()).collect();
    ids.sort();
    let mut expected = seeded.matches(&several).to_vec();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(pops[2].result, PopResult::NoMatch);
    let searches = setup.sandbox.stats().search_requests;
    assert!(searches <= 3, "three numbers, at most one search each ({searches})");

    for station in ["2000", "2001", "2002"] {
        setup.answer_and_hang_up(station);
    }
    eventually(|| setup.sandbox.tasks().len() == 3).await;
    let task = setup.sandbox.task_by_external_id(&format!("{}:2000", calls[0])).expect("the first call's task");
    let field = |name: &str| task.fields.get(name).and_then(|value| value.as_str()).map(str::to_owned);
    assert_eq!(field("TaskSubtype").as_deref(), Some("Call"));
    assert_eq!(field("CallType").as_deref(), Some("Inbound"));
    assert_eq!(field("CallObject").as_deref(), Some(calls[0].as_str()));
    assert!(field("Subject").unwrap().starts_with("Call inbound answered"), "{:?}", field("Subject"));
    let linked = field("WhoId").or_else(|| field("WhatId"));
    assert_eq!(linked.as_deref(), Some(seeded.matches(&one)[0].as_str()), "linked to the one record");
    let ambiguous = setup.sandbox.task_by_external_id(&format!("{}:2001", calls[1])).unwrap();
    assert!(!ambiguous.fields.contains_key("WhoId"), "a shared number names no one person");
    assert!(setup.sandbox.tasks().iter().all(|task| task.writes == 1), "each task written once");
    setup.stop(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_caller_gets_a_new_lead_and_the_pop_shows_it() {
    let setup = setup("auto").await;
    let gateway = setup.gateway(SalesforceConfig { auto_create_inbound: "lead".into(), ..setup.salesforce() }).await;
    let mut events = gateway.model().publisher().subscription();
    let unknown = setup.sandbox.seeded().unmatched_numbers(1)[0].clone();
    let call = setup.ring(&unknown, "2000");
    let pop = pop_for(&mut events, &call).await;
    let PopResult::Single(created) = &pop.result else { panic!("{:?}", pop.result) };
    assert_eq!(created.name, format!("Automatic New Contact -{unknown}"));
    let record = setup.sandbox.record(&created.id).expect("the lead exists in salesforce");
    assert_eq!(record.get("Phone"), Some(unknown.as_str()));
    assert_eq!(setup.sandbox.stats().create_requests, 1);

    // The next call from that number finds the new lead in the cache: no new search, no new lead.
    setup.answer_and_hang_up("2000");
    let searches = setup.sandbox.stats().search_requests;
    let again = setup.ring(&unknown, "2001");
    assert!(matches!(pop_for(&mut events, &again).await.result, PopResult::Single(_)));
    assert_eq!(setup.sandbox.stats().search_requests, searches);
    assert_eq!(setup.sandbox.stats().create_requests, 1);
    setup.answer_and_hang_up("2001");
    eventually(|| setup.sandbox.tasks().len() == 2).await;
    let task = setup.sandbox.task_by_external_id(&format!("{call}:2000")).unwrap();
    assert_eq!(task.fields.get("WhoId").and_then(|id| id.as_str()), Some(created.id.as_str()));
    setup.stop(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_faults_and_a_spent_allocation_lose_no_log_and_double_none() {
    let setup = setup("budget").await;
    let gateway = setup.gateway(setup.salesforce()).await;
    let salesforce: Arc<_> = gateway.salesforce().expect("salesforce is on").clone();
    let mut events = gateway.model().publisher().subscription();
    let known = setup.sandbox.seeded().numbers_with_matches(1)[0].to_owned();

    // A first call caches the caller.
    let first = setup.ring(&known, "2000");
    assert!(matches!(pop_for(&mut events, &first).await.result, PopResult::Single(_)));
    setup.answer_and_hang_up("2000");
    eventually(|| setup.sandbox.tasks().len() == 1).await;

    // The session expires and the org's allocation is spent.
    setup.sandbox.expire_tokens();
    setup.sandbox.set_allocation(1_000, 1_000);
    let second = setup.ring(&known, "2001");
    let pop = pop_for(&mut events, &second).await;
    assert!(matches!(pop.result, PopResult::Single(_)), "a known caller still pops, from the cache: {pop:?}");
    setup.answer_and_hang_up("2001");
    // The log is held: the budget stops after the org says it is spent.
    within(async {
        loop {
            let (status, _) = salesforce.status().await.unwrap();
            if status.state == actors::crm::budget::BudgetState::Stopped && status.logs_held == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(setup.sandbox.tasks().len(), 1);

    // Room again, but the next answers are server errors and a locked row: retried, not lost.
    setup.sandbox.set_faults(loadtest::salesforce::FaultSettings {
        fail_requests: 2,
        fail_with: loadtest::salesforce::InjectedFailure::Unavailable,
        lock_records: 1,
        ..Default::default()
    });
    setup.sandbox.set_allocation(1_000_000, 10);
    tokio::time::timeout(PATIENCE * 2, async {
        while setup.sandbox.tasks().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the held log lands once the allocation has room");
    let task = setup.sandbox.task_by_external_id(&format!("{second}:2001")).unwrap();
    assert_eq!(task.writes, 1, "landed once");
    let stats = setup.sandbox.stats();
    assert!(stats.tokens_issued >= 2, "the expired session was re-minted");
    // The sandbox stores the Task before its answer reaches the gateway, so the hold
    // is released a moment after the Task appears.
    within(async {
        loop {
            let (status, dead) = salesforce.status().await.unwrap();
            assert_eq!(dead, 0, "nothing is dead-lettered");
            if status.logs_held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    setup.stop(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logs_are_dead_lettered_and_replayed_once_the_configuration_is_fixed() {
    let setup = setup("dead").await;
    // A Task field that does not exist in the org: Salesforce refuses every write.
    let wrong = SalesforceConfig { external_id_field: "No_Such_Field__c".into(), ..setup.salesforce() };
    let gateway = setup.gateway(wrong).await;
    let salesforce = gateway.salesforce().unwrap().clone();
    let number = setup.sandbox.seeded().unmatched_numbers(1)[0].clone();
    let call = setup.ring(&number, "2000");
    setup.answer_and_hang_up("2000");
    within(async {
        loop {
            if salesforce.status().await.unwrap().1 == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let letters = salesforce.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key, format!("{call}:2000"));
    assert!(letters[0].reason.contains("INVALID_FIELD"), "{}", letters[0].reason);
    drop(salesforce);
    gateway.shutdown(Duration::from_secs(5)).await;

    // Fixed, restarted on the same outbox: the dead letter waits for an administrator.
    let gateway = setup.gateway(setup.salesforce()).await;
    let salesforce = gateway.salesforce().unwrap().clone();
    assert_eq!(salesforce.status().await.unwrap().1, 1);
    assert_eq!(salesforce.replay(Vec::new()).await.unwrap(), 1);
    eventually(|| setup.sandbox.tasks().len() == 1).await;
    assert_eq!(setup.sandbox.tasks()[0].external_id, format!("{call}:2000"));
    assert_eq!(salesforce.status().await.unwrap().1, 0);
    drop(salesforce);
    setup.stop(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bearer_flow_signs_in_and_call_logs_land() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let public_key = std::fs::read_to_string(root.join("fixtures/jwt-test-key.pub.pem")).unwrap();
    let setup =
        setup_with("jwt", SandboxConfig { jwt_public_key_pem: Some(public_key), ..SandboxConfig::default() }).await;
    let defaults = SandboxConfig::default();
    let jwt = SalesforceConfig {
        auth_flow: "jwt_bearer".into(),
        client_secret: Secret::default(),
        username: defaults.username.clone(),
        audience: defaults.audience.clone(),
        private_key_file: root.join("fixtures/jwt-test-key.pem").display().to_string(),
        ..setup.salesforce()
    };
    let gateway = setup.gateway(jwt).await;
    let number = setup.sandbox.seeded().unmatched_numbers(1)[0].clone();
    let call = setup.ring(&number, "2000");
    setup.answer_and_hang_up("2000");
    eventually(|| setup.sandbox.tasks().len() == 1).await;
    assert_eq!(setup.sandbox.tasks()[0].external_id, format!("{call}:2000"));
    assert!(setup.sandbox.stats().tokens_issued >= 1);
    setup.stop(gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_pauses_the_integration_changes_a_template_and_nothing_is_lost() {
    use proto::api::admin_client::AdminClient;
    const TOKEN: &str = "admin-token-for-the-tests";
    let setup = setup("admin").await;
    let gateway = setup.gateway(setup.salesforce()).await;
    let grpc = gateway::config::GrpcConfig {
        tokens: vec![gateway::config::TokenConfig {
            name: "ops".into(),
            token: Secret::new(TOKEN),
            scopes: vec!["admin".into()],
        }],
        ..gateway::config::GrpcConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = gateway::grpc::GrpcServer::start_with(
        gateway.model().clone(),
        gateway.salesforce().cloned(),
        listener,
        &grpc,
        &[],
    )
    .await
    .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(request)
    });

    // Paused: the call's log waits in the outbox.
    let status = admin
        .update_salesforce_settings(proto::api::UpdateSalesforceSettingsRequest {
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!status.settings.unwrap().enabled);
    let number = setup.sandbox.seeded().unmatched_numbers(1)[0].clone();
    let call = setup.ring(&number, "2000");
    setup.answer_and_hang_up("2000");
    within(async {
        loop {
            let status = admin.get_salesforce_status(proto::api::GetSalesforceStatusRequest {}).await.unwrap();
            if status.into_inner().logs_held == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(setup.sandbox.tasks().is_empty());

    // A bad template is refused, and changes nothing.
    let refused = admin
        .update_salesforce_settings(proto::api::UpdateSalesforceSettingsRequest {
            subject_template: Some("{nope}".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A new subject, and on again: the waiting log lands with it.
    admin
        .update_salesforce_settings(proto::api::UpdateSalesforceSettingsRequest {
            enabled: Some(true),
            subject_template: Some("{status} call from {from} on line {line}".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(|| setup.sandbox.tasks().len() == 1).await;
    let task = setup.sandbox.task_by_external_id(&format!("{call}:2000")).unwrap();
    assert_eq!(
        task.fields.get("Subject").and_then(|subject| subject.as_str()),
        Some(format!("answered call from {number} on line 2000").as_str())
    );
    let letters = admin.list_dead_letters(proto::api::ListDeadLettersRequest { limit: 0 }).await.unwrap();
    assert!(letters.into_inner().dead_letters.is_empty());
    server.shutdown(Duration::from_secs(5)).await;
    setup.stop(gateway).await;
}
