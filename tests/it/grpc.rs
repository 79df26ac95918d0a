//! The gRPC API over real sockets: call control end to end on the simulator, agents, the event
//! stream with snapshot and resume, request-id idempotency, and each status code.

use std::time::Duration;

use gateway::app::Gateway;
use gateway::config::{Config, PbxConfig};
use gateway::config::{GrpcConfig, Secret, TokenConfig};
use gateway::grpc::GrpcServer;
use loadtest::sim::{Layout, SimConfig, Simulator};
use proto::api::agents_client::AgentsClient;
use proto::api::call_control_client::CallControlClient;
use proto::api::events_client::EventsClient;
use proto::api::{self, event::Event as E};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::support::{PATIENCE, certificates, link_config, within};

pub(crate) const TOKEN: &str = "test-token-with-every-scope";
const READ_ONLY: &str = "test-token-that-only-reads";

pub(crate) type Authed = InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>;

pub(crate) fn bearer(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

pub(crate) fn grpc_config() -> GrpcConfig {
    GrpcConfig {
        tokens: vec![
            TokenConfig { name: "tests".into(), token: Secret::new(TOKEN), scopes: vec!["admin".into()] },
            TokenConfig { name: "wallboard".into(), token: Secret::new(READ_ONLY), scopes: vec!["calls:read".into()] },
        ],
        ..GrpcConfig::default()
    }
}

fn directory() -> Vec<gateway::config::AgentConfig> {
    vec![gateway::config::AgentConfig {
        id: "dora".into(),
        email: "Dora@Example.com".into(),
        roles: vec!["agent".into(), "supervisor".into()],
    }]
}

struct Api {
    simulator: Simulator,
    gateway: Gateway,
    server: GrpcServer,
    channel: Channel,
    calls: CallControlClient<Authed>,
    agents: AgentsClient<Authed>,
    events: EventsClient<Authed>,
}

async fn api() -> Api {
    let simulator = Simulator::start(SimConfig {
        heartbeat_interval: Duration::from_millis(200),
        layout: Layout { stations: 4, ..Layout::default() },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let config = Config { pbx: PbxConfig { ..link_config(&simulator) }, ..Config::default() };
    let gateway = Gateway::start(&config).await.unwrap();
    within(gateway.wait_resynced()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = GrpcServer::start(gateway.model().clone(), listener, &grpc_config(), &directory()).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (calls, agents, events) = clients(&channel);
    Api { simulator, gateway, server, calls, agents, events, channel }
}

/// Clients of each service over `channel`, sending the bearer token of every scope.
pub(crate) fn clients(channel: &Channel) -> (CallControlClient<Authed>, AgentsClient<Authed>, EventsClient<Authed>) {
    let authed = bearer as fn(Request<()>) -> Result<Request<()>, Status>;
    (
        CallControlClient::with_interceptor(channel.clone(), authed),
        AgentsClient::with_interceptor(channel.clone(), authed),
        EventsClient::with_interceptor(channel.clone(), authed),
    )
}

impl Api {
    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(5)).await;
        self.gateway.shutdown(Duration::from_secs(5)).await;
        self.simulator.shutdown().await;
    }

    async fn line_state(&mut self, line: &str, call: &str) -> String {
        let reply = self.agents.get_line(api::GetLineRequest { line: line.into() }).await.unwrap().into_inner();
        reply.calls.into_iter().find(|c| c.call_id == call).map(|c| c.state).unwrap_or_default()
    }

    /// Waits until the line shows the call in `state`.
    async fn until_line(&mut self, line: &str, call: &str, state: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.line_state(line, call).await != state {
            assert!(tokio::time::Instant::now() < deadline, "{line} never showed {call} {state}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn call_request(line: &str, call: &str, request_id: &str) -> api::CallRequest {
    api::CallRequest { request_id: request_id.into(), line: line.into(), call_id: call.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_logs_in_dials_holds_retrieves_and_hangs_up_over_grpc() {
    let mut api = api().await;
    let mut stream = api.events.subscribe(api::SubscribeRequest::default()).await.unwrap().into_inner();
    // The stream opens with the current state.
    let mut snapshot_lines = 0;
    loop {
        let event = within(stream.message()).await.unwrap().unwrap();
        match event.event.unwrap() {
            E::Line(_) => snapshot_lines += 1,
            E::SnapshotComplete(complete) => {
                assert!(!complete.resume_failed);
                break;
            }
            other => panic!("unexpected snapshot event {other:?}"),
        }
    }
    assert_eq!(snapshot_lines, 4);

    let login = api::LogInRequest {
        request_id: "login-1".into(),
        line: "2000".into(),
        agent_id: "anna".into(),
        roles: vec!["agent".into(), "operator".into()],
        ready: false,
        email: String::new(),
    };
    let line = api.agents.log_in(login).await.unwrap().into_inner();
    assert_eq!(line.agent.as_ref().map(|agent| agent.agent_id.as_str()), Some("anna"));
    assert_eq!(line.presence, api::Presence::Away as i32);

    let dial = api::MakeCallRequest { request_id: "dial-1".into(), line: "2000".into(), number: "+4930123456".into() };
    let call = api.calls.make_call(dial.clone()).await.unwrap().into_inner().call_id;
    // The same request id again is the same call, not a second one.
    let again = api.calls.make_call(dial).await.unwrap().into_inner().call_id;
    assert_eq!(again, call);
    assert_eq!(api.simulator.dump().calls.len(), 1);

    api.until_line("2000", &call, "initiated").await;
    api.calls.answer(call_request("2000", &call, "answer-1")).await.unwrap();
    api.simulator
        .with_pbx(|pbx| {
            pbx.answer_call(&proto::pbx::ConnectionId { call_id: call.clone(), device_id: "+4930123456".into() })
        })
        .unwrap();
    api.until_line("2000", &call, "connected").await;
    api.calls.hold(call_request("2000", &call, "hold-1")).await.unwrap();
    api.until_line("2000", &call, "held").await;
    // Holding a held call is refused by the line's state.
    let refused = api.calls.hold(call_request("2000", &call, "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.message(), format!("cannot hold call {call} on line 2000: it is held, not connected"));
    api.calls.retrieve(call_request("2000", &call, "retrieve-1")).await.unwrap();
    api.until_line("2000", &call, "connected").await;
    let notes = api::SetCallNotesRequest {
        request_id: String::new(),
        call_id: call.clone(),
        notes: "wants the invoice again".into(),
        disposition: "resolved".into(),
    };
    api.calls.set_call_notes(notes).await.unwrap();
    let shown = api.calls.get_call(api::GetCallRequest { call_id: call.clone() }).await.unwrap().into_inner();
    assert_eq!((shown.direction.as_str(), shown.calling.as_str()), ("outbound", "2000"));
    api.calls.hang_up(call_request("2000", &call, "hangup-1")).await.unwrap();

    // The live events include the call's log record, with the notes.
    let record = within(async {
        loop {
            let event = stream.message().await.unwrap().unwrap();
            if let Some(E::CallLog(record)) = event.event {
                break record;
            }
        }
    })
    .await;
    assert_eq!((record.line.as_str(), record.outcome.as_str(), record.agent_id.as_str()), ("2000", "answered", "anna"));
    assert_eq!((record.notes.as_str(), record.disposition.as_str()), ("wants the invoice again", "resolved"));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wrong_request_gets_the_status_grpc_defines() {
    let mut api = api().await;
    let missing = api.agents.get_line(api::GetLineRequest { line: "9999".into() }).await.unwrap_err();
    assert_eq!((missing.code(), missing.message()), (Code::NotFound, "no agent line 9999"));
    let empty = api.calls.hold(call_request("", "C1", "")).await.unwrap_err();
    assert_eq!((empty.code(), empty.message()), (Code::InvalidArgument, "line is required"));
    let no_call = api.calls.hold(call_request("2000", "C404", "")).await.unwrap_err();
    assert_eq!(no_call.code(), Code::NotFound);
    let bad_number = api
        .calls
        .make_call(api::MakeCallRequest { request_id: String::new(), line: "2000".into(), number: "call me".into() })
        .await
        .unwrap_err();
    assert_eq!(bad_number.code(), Code::InvalidArgument);
    let presence = api::SetPresenceRequest {
        request_id: String::new(),
        line: "2000".into(),
        presence: api::Presence::Busy as i32,
        reason: String::new(),
    };
    let busy = api.agents.set_presence(presence).await.unwrap_err();
    assert_eq!(busy.code(), Code::InvalidArgument);
    let page = api::ListLinesRequest { page_size: 5000, ..Default::default() };
    assert_eq!(api.agents.list_lines(page).await.unwrap_err().code(), Code::InvalidArgument);

    // The PBX down (links cut, none accepted): UNAVAILABLE, at once.
    api.simulator.set_accepting(false);
    api.simulator.drop_links();
    let mut status = api.gateway.link().watch_status();
    within(status.wait_for(|status| !matches!(status, gateway::pbx::LinkStatus::Up { .. }))).await.unwrap();
    let login = api::LogInRequest { line: "2001".into(), agent_id: "bo".into(), ..Default::default() };
    let down = api.agents.log_in(login).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_listed_in_pages_with_filters() {
    let mut api = api().await;
    for (line, agent, roles) in [("2000", "anna", vec!["agent"]), ("2002", "carl", vec!["agent", "operator"])] {
        let login = api::LogInRequest {
            line: line.into(),
            agent_id: agent.into(),
            roles: roles.into_iter().map(str::to_owned).collect(),
            ready: true,
            ..Default::default()
        };
        api.agents.log_in(login).await.unwrap();
    }
    let first =
        api.agents.list_lines(api::ListLinesRequest { page_size: 3, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(first.lines.iter().map(|line| line.line.as_str()).collect::<Vec<_>>(), vec!["2000", "2001", "2002"]);
    let rest = api::ListLinesRequest { page_size: 3, page_token: first.next_page_token.clone(), ..Default::default() };
    let second = api.agents.list_lines(rest).await.unwrap().into_inner();
    assert_eq!(second.lines.iter().map(|line| line.line.as_str()).collect::<Vec<_>>(), vec!["2003"]);
    assert!(second.next_page_token.is_empty());
    let operators = api::ListLinesRequest { role: "operator".into(), ..Default::default() };
    let found = api.agents.list_lines(operators).await.unwrap().into_inner();
    assert_eq!(found.lines.iter().map(|line| line.line.as_str()).collect::<Vec<_>>(), vec!["2002"]);
    let offline = api::ListLinesRequest { presence: api::Presence::Offline as i32, ..Default::default() };
    let found = api.agents.list_lines(offline).await.unwrap().into_inner();
    assert_eq!(found.lines.iter().map(|line| line.line.as_str()).collect::<Vec<_>>(), vec!["2001", "2003"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_where_it_left_off_or_is_told_to_take_a_snapshot() {
    let mut api = api().await;
    let mut stream = api.events.subscribe(api::SubscribeRequest::default()).await.unwrap().into_inner();
    let last = loop {
        let event = within(stream.message()).await.unwrap().unwrap();
        if matches!(event.event, Some(E::SnapshotComplete(_))) {
            break event.sequence;
        }
    };
    let login = api::LogInRequest { line: "2001".into(), agent_id: "bo".into(), ready: true, ..Default::default() };
    api.agents.log_in(login).await.unwrap();
    let seen = within(stream.message()).await.unwrap().unwrap();
    assert!(matches!(seen.event, Some(E::Line(ref line)) if line.line == "2001"));
    drop(stream);

    // While away, more happens; on return, the missed events come first, in order.
    let away = api::SetPresenceRequest {
        line: "2001".into(),
        presence: api::Presence::Away as i32,
        reason: "lunch".into(),
        ..Default::default()
    };
    api.agents.set_presence(away).await.unwrap();
    let resumed = api::SubscribeRequest { resume_after: seen.sequence, lines: vec!["2001".into()] };
    let mut stream = api.events.subscribe(resumed).await.unwrap().into_inner();
    let next = within(stream.message()).await.unwrap().unwrap();
    assert!(next.sequence > seen.sequence && next.sequence > last);
    let Some(E::Line(line)) = next.event else { panic!("expected the line's change, got {next:?}") };
    assert_eq!(line.agent.map(|agent| agent.reason), Some("lunch".to_owned()));

    // A sequence the gateway never issued (another run's): a fresh snapshot, flagged.
    let unknown = api::SubscribeRequest { resume_after: 1_000_000, lines: Vec::new() };
    let mut stream = api.events.subscribe(unknown).await.unwrap().into_inner();
    let flagged = within(async {
        loop {
            if let Some(E::SnapshotComplete(complete)) = stream.message().await.unwrap().unwrap().event {
                break complete;
            }
        }
    })
    .await;
    assert!(flagged.resume_failed);

    // Shutdown ends streams with a reason.
    api.server.shutdown(Duration::from_secs(5)).await;
    let ended = within(stream.message()).await.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);
    api.gateway.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_guard_every_call_and_health_needs_none() {
    let api = api().await;
    let mut anonymous = AgentsClient::new(api.channel.clone());
    let refused = anonymous.get_line(api::GetLineRequest { line: "2000".into() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let read_only = |mut request: Request<()>| -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", format!("Bearer {READ_ONLY}").parse().unwrap());
        Ok(request)
    };
    let mut wallboard = AgentsClient::with_interceptor(api.channel.clone(), read_only);
    assert!(wallboard.get_line(api::GetLineRequest { line: "2000".into() }).await.is_ok());
    let login = api::LogInRequest { line: "2000".into(), agent_id: "eve".into(), ..Default::default() };
    let denied = wallboard.log_in(login).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "client \"wallboard\" lacks the scope calls:control this request needs");

    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "switchboard.v1.CallControl".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Reflection lists the API's services, so grpcurl-style tools need no .proto files.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(api.channel.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(vec![ask])).await.unwrap().into_inner();
    let answer = within(answers.message()).await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(listed)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<String> = listed.service.into_iter().map(|service| service.name).collect();
    for service in ["switchboard.v1.CallControl", "switchboard.v1.Agents", "switchboard.v1.Events"] {
        assert!(names.iter().any(|name| name == service), "{service} not in {names:?}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultation_conference_alternate_park_and_blind_transfer_over_grpc() {
    let mut api = api().await;
    for (line, agent) in [("2000", "anna"), ("2001", "bo"), ("2002", "cy")] {
        let login = api::LogInRequest { line: line.into(), agent_id: agent.into(), ready: false, ..Default::default() };
        api.agents.log_in(login).await.unwrap();
    }
    let call = api.simulator.with_pbx(|pbx| pbx.inbound_call("+4930555111", "2000")).unwrap();
    api.until_line("2000", &call, "alerting").await;
    api.calls.answer(call_request("2000", &call, "")).await.unwrap();
    api.until_line("2000", &call, "connected").await;

    // Consult 2001, alternate twice, cancel the consultation.
    let start = |to: &str| api::StartConsultationRequest {
        request_id: String::new(),
        line: "2000".into(),
        call_id: call.clone(),
        destination: to.into(),
    };
    let consult = api.calls.start_consultation(start("2001")).await.unwrap().into_inner().consultation_call_id;
    api.until_line("2001", &consult, "alerting").await;
    api.calls.answer(call_request("2001", &consult, "")).await.unwrap();
    api.until_line("2001", &consult, "connected").await;
    let pair = |held: &str, active: &str| api::TwoCallRequest {
        request_id: String::new(),
        line: "2000".into(),
        held_call_id: held.into(),
        active_call_id: active.into(),
    };
    api.until_line("2000", &consult, "connected").await;
    api.calls.alternate(pair(&call, &consult)).await.unwrap();
    api.until_line("2000", &call, "connected").await;
    api.calls.alternate(pair(&consult, &call)).await.unwrap();
    api.until_line("2000", &consult, "connected").await;
    api.calls.cancel_consultation(pair(&call, &consult)).await.unwrap();
    api.until_line("2000", &call, "connected").await;

    // Consult 2001 again and make a conference; its id is new.
    let consult = api.calls.start_consultation(start("2001")).await.unwrap().into_inner().consultation_call_id;
    api.until_line("2001", &consult, "alerting").await;
    api.calls.answer(call_request("2001", &consult, "")).await.unwrap();
    api.until_line("2000", &consult, "connected").await;
    let conference = api.calls.conference(pair(&call, &consult)).await.unwrap().into_inner().call_id;
    assert_ne!(conference, call);
    api.until_line("2001", &conference, "connected").await;
    api.calls.hang_up(call_request("2001", &conference, "")).await.unwrap();
    api.until_line("2000", &conference, "connected").await;

    // Consult 2002 and complete the transfer: 2000 leaves, 2002 has the customer.
    let consult = api
        .calls
        .start_consultation(api::StartConsultationRequest {
            request_id: String::new(),
            line: "2000".into(),
            call_id: conference.clone(),
            destination: "2002".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consultation_call_id;
    api.until_line("2002", &consult, "alerting").await;
    api.calls.answer(call_request("2002", &consult, "")).await.unwrap();
    api.until_line("2000", &consult, "connected").await;
    let transferred = api.calls.complete_consultation(pair(&conference, &consult)).await.unwrap().into_inner().call_id;
    api.until_line("2002", &transferred, "connected").await;

    // 2002 parks the customer; 2001 picks the call up by its park id.
    let park_id = api.calls.park(call_request("2002", &transferred, "")).await.unwrap().into_inner().park_id;
    assert!(!park_id.is_empty());
    let picked = api
        .calls
        .retrieve_parked(api::RetrieveParkedRequest { request_id: String::new(), line: "2001".into(), park_id })
        .await
        .unwrap()
        .into_inner()
        .call_id;
    api.until_line("2001", &picked, "connected").await;

    // 2001 sends it on, blind, to 2000.
    let blind = api::BlindTransferRequest {
        request_id: String::new(),
        line: "2001".into(),
        call_id: picked.clone(),
        destination: "2000".into(),
    };
    api.calls.blind_transfer(blind).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let ringing = loop {
        let line = api.agents.get_line(api::GetLineRequest { line: "2000".into() }).await.unwrap().into_inner();
        if let Some(call) = line.calls.into_iter().find(|call| call.state == "alerting") {
            break call.call_id;
        }
        assert!(tokio::time::Instant::now() < deadline, "2000 never rang");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let shown = api.calls.get_call(api::GetCallRequest { call_id: ringing.clone() }).await.unwrap().into_inner();
    assert_eq!(shown.root_call_id, call, "transfers and conferences keep the customer call's first id");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_clients_with_a_certificate_get_in() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, (client_cert, client_key)) = certificates(&dir);
    let simulator = Simulator::start(SimConfig::default()).await.unwrap();
    let gateway = Gateway::start(&Config { pbx: link_config(&simulator), ..Config::default() }).await.unwrap();
    let config = GrpcConfig {
        tls_cert: Some(dir.join("server.pem")),
        tls_key: Some(dir.join("server.key")),
        tls_client_ca: Some(dir.join("ca.pem")),
        ..grpc_config()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = GrpcServer::start(gateway.model().clone(), listener, &config, &[]).await.unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", server.local_addr())).unwrap();
    let trusted = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("127.0.0.1");

    let with_certificate = trusted.clone().identity(tonic::transport::Identity::from_pem(&client_cert, &client_key));
    let channel = endpoint.clone().tls_config(with_certificate).unwrap().connect().await.unwrap();
    let mut agents = AgentsClient::with_interceptor(channel, bearer as fn(Request<()>) -> Result<Request<()>, Status>);
    let listed = agents.list_lines(api::ListLinesRequest::default()).await.unwrap().into_inner();
    assert!(!listed.lines.is_empty());

    // Without a client certificate the handshake fails: no request gets through.
    let refused = match endpoint.clone().tls_config(trusted).unwrap().connect().await {
        Err(_) => true,
        Ok(channel) => {
            let mut agents =
                AgentsClient::with_interceptor(channel, bearer as fn(Request<()>) -> Result<Request<()>, Status>);
            agents.list_lines(api::ListLinesRequest::default()).await.is_err()
        }
    };
    assert!(refused, "a client without a certificate got in");
    // Plaintext to a TLS port gets nowhere either.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr())).unwrap();
    let plaintext = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => AgentsClient::new(channel).list_lines(api::ListLinesRequest::default()).await.is_err(),
    };
    assert!(plaintext);
    server.shutdown(Duration::from_secs(5)).await;
    gateway.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_log_in_by_email_and_log_out() {
    let mut api = api().await;
    let by_email =
        api::LogInRequest { line: "2001".into(), email: "dora@example.com".into(), ready: true, ..Default::default() };
    let line = api.agents.log_in(by_email).await.unwrap().into_inner();
    let agent = line.agent.unwrap();
    assert_eq!(agent.agent_id, "dora");
    assert_eq!(agent.roles, vec!["agent".to_owned(), "supervisor".to_owned()], "the directory's roles");
    assert_eq!(line.presence, api::Presence::Available as i32);
    let unknown = api::LogInRequest { line: "2002".into(), email: "nobody@example.com".into(), ..Default::default() };
    assert_eq!(api.agents.log_in(unknown).await.unwrap_err().code(), Code::NotFound);
    let neither = api::LogInRequest { line: "2002".into(), ..Default::default() };
    assert_eq!(api.agents.log_in(neither).await.unwrap_err().code(), Code::InvalidArgument);
    let out = api.agents.log_out(api::LogOutRequest { request_id: String::new(), line: "2001".into() }).await.unwrap();
    assert!(out.into_inner().agent.is_none());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_pbx_never_confirms_fails_with_deadline_exceeded() {
    let mut api = api().await;
    let login = api::LogInRequest { line: "2000".into(), agent_id: "anna".into(), ..Default::default() };
    api.agents.log_in(login).await.unwrap();
    let call = api.simulator.with_pbx(|pbx| pbx.inbound_call("+4930555222", "2000")).unwrap();
    api.until_line("2000", &call, "alerting").await;
    // The PBX goes silent with the command in flight: the link gives up on it, and says so.
    api.simulator.stall_links(Duration::from_secs(30));
    let outcome = within(api.calls.answer(call_request("2000", &call, ""))).await.unwrap_err();
    assert_eq!(outcome.code(), Code::DeadlineExceeded, "{outcome:?}");
    api.stop().await;
}
