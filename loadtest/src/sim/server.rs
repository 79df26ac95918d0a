//! The simulator's network side: accepts PBX links, registers them, answers services, and sends each
//! link the events of the devices it monitors, with faults applied.
//!
//! One lock (`Shared::state`) covers the phone system, the links and the faults, so every link sees
//! events in the order the phone system made them, and a request's result is queued on its link
//! before the events the request caused.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use proto::pbx::{self, DeviceKind, ErrorCause, request, response};
use proto::wire::{DEFAULT_MAX_FRAME_LENGTH, HEADER_LEN, LinkCodec, LinkMessage, MIN_MAX_FRAME_LENGTH};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::faults::{EventFate, FaultSettings, Faults};
use super::inspect::StateDump;
use super::model::{Layout, Pbx, PbxEvent, snapshot_pages};
use super::traffic::{Traffic, TrafficConfig};

/// The service-level protocol version this simulator speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// How the simulator listens and what it simulates.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where links connect; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The user name links must register with.
    pub user: String,
    /// The password links must register with.
    pub password: String,
    /// How often the simulator sends heartbeats on each link.
    pub heartbeat_interval: Duration,
    /// How long a new link may take to register before it is closed.
    pub register_timeout: Duration,
    /// The largest frame, header included, read or written.
    pub max_frame_length: usize,
    /// Frames queued for one link before it is cut as too slow (a real PBX does the same).
    pub link_queue: usize,
    /// Seeds the fault injection, so a run replays.
    pub seed: u64,
    /// The phone system's shape.
    pub layout: Layout,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            user: "switchboard".to_owned(),
            password: "switchboard".to_owned(),
            heartbeat_interval: Duration::from_secs(5),
            register_timeout: Duration::from_secs(10),
            max_frame_length: proto::wire::DEFAULT_MAX_FRAME_LENGTH,
            link_queue: 65_536,
            seed: 1,
            layout: Layout::default(),
        }
    }
}

/// Counters of what happened on the simulator's links, for tests and the loadtest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// TCP connections accepted.
    pub links_accepted: u64,
    /// Links that registered.
    pub links_registered: u64,
    /// Register attempts refused for wrong credentials or version.
    pub registrations_refused: u64,
    /// Links closed because what they sent could not be decoded.
    pub decode_errors: u64,
    /// Links closed because they missed heartbeats or never registered.
    pub links_timed_out: u64,
    /// Links cut because they could not keep up with their events.
    pub slow_links_cut: u64,
    /// Service requests answered (results and errors).
    pub requests: u64,
    /// Events written (duplicates included).
    pub events_sent: u64,
}

#[derive(Debug, Default)]
struct Counters {
    links_accepted: AtomicU64,
    links_registered: AtomicU64,
    registrations_refused: AtomicU64,
    decode_errors: AtomicU64,
    links_timed_out: AtomicU64,
    slow_links_cut: AtomicU64,
    requests: AtomicU64,
    events_sent: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a link's writer task is asked to do, in order.
#[derive(Debug)]
enum Outbound {
    Frame(LinkMessage),
    /// Frames written back to back, nothing between them: the pages of one snapshot.
    Frames(Vec<LinkMessage>),
    Event {
        report: pbx::EventReport,
        not_before: Instant,
    },
    /// Bytes written as they are: a malformed frame, on purpose.
    Raw(Bytes),
    /// Write nothing, heartbeats included, for this long.
    Stall(Duration),
    /// Flush what came before, then close the link.
    Close,
}

/// One link's entry in the shared state.
#[derive(Debug)]
struct Link {
    outbound: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
    registered: bool,
    monitors: BTreeMap<u32, String>,
    monitor_of_device: HashMap<String, u32>,
    next_monitor: u32,
    next_sequence: u64,
    held_back: Option<pbx::EventReport>,
    /// The largest frame this link may be sent: the smaller of the simulator's and the client's.
    max_frame_length: usize,
}

impl Link {
    /// Queues a frame; a link whose queue is full is cut, never waited for.
    fn send(&mut self, outbound: Outbound, counters: &Counters) {
        if matches!(outbound, Outbound::Event { .. }) {
            bump(&counters.events_sent);
        } else if let Some(report) = self.held_back.take() {
            // Reordering swaps neighbouring events only: an event held back never crosses a result,
            // so a snapshot never arrives before an event it already reflects (docs/pbx-link.md).
            self.send(Outbound::Event { report, not_before: Instant::now() }, counters);
        }
        match self.outbound.try_send(outbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.cancel.is_cancelled() {
                    tracing::warn!("cutting a link that cannot keep up with its events");
                    bump(&counters.slow_links_cut);
                    self.cancel.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Maps tokio's clock (paused in tests) to the PBX's wall clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch_ms_at_start: u64,
    started: Instant,
}

impl Clock {
    fn new() -> Self {
        let epoch_ms_at_start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_default();
        Self { epoch_ms_at_start, started: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch_ms_at_start + self.started.elapsed().as_millis() as u64
    }
}

struct State {
    pbx: Pbx,
    links: BTreeMap<u64, Link>,
    faults: Faults,
    traffic: Option<Traffic>,
    traffic_paused: bool,
    next_link: u64,
}

struct Shared {
    config: SimConfig,
    /// False while the simulator plays a PBX that is down: new connections are closed at once.
    accepting: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    counters: Counters,
    clock: Clock,
    shutdown: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in the simulator; the state is still the best
        // ground truth there is, so keep using it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends the phone system's new events to every link monitoring a device they concern.
    fn publish(&self, state: &mut State) {
        let events = state.pbx.drain_events();
        if let Some(traffic) = state.traffic.as_mut() {
            traffic.observe(&state.pbx, &events);
        }
        let State { links, faults, .. } = state;
        for event in events {
            for link in links.values_mut().filter(|link| link.registered) {
                self.publish_to(link, faults, &event);
            }
        }
    }

    fn publish_to(&self, link: &mut Link, faults: &mut Faults, event: &PbxEvent) {
        let mut monitor_ids: Vec<u32> =
            event.devices.iter().filter_map(|device| link.monitor_of_device.get(device).copied()).collect();
        if monitor_ids.is_empty() {
            return;
        }
        monitor_ids.sort_unstable();
        let report = pbx::EventReport {
            sequence: link.next_sequence,
            timestamp_ms: event.timestamp_ms,
            monitor_ids,
            cause: event.cause as i32,
            event: Some(event.event.clone()),
            call_linkage_id: event.linkage.clone(),
        };
        link.next_sequence += 1;
        let not_before = Instant::now() + faults.settings.event_delay;
        match faults.event_fate() {
            EventFate::Drop => return,
            EventFate::HoldBack if link.held_back.is_none() => {
                link.held_back = Some(report);
                return;
            }
            EventFate::Duplicate => {
                link.send(Outbound::Event { report: report.clone(), not_before }, &self.counters);
                link.send(Outbound::Event { report, not_before }, &self.counters);
            }
            EventFate::Send | EventFate::HoldBack => link.send(Outbound::Event { report, not_before }, &self.counters),
        }
        if let Some(report) = link.held_back.take() {
            link.send(Outbound::Event { report, not_before }, &self.counters);
        }
    }

    /// Sends every held-back event, so a reordered event is late, never lost.
    fn flush_held_back(&self, state: &mut State) {
        let not_before = Instant::now() + state.faults.settings.event_delay;
        for link in state.links.values_mut() {
            if let Some(report) = link.held_back.take() {
                link.send(Outbound::Event { report, not_before }, &self.counters);
            }
        }
    }
}

/// A running PBX simulator: its links, its phone system, its faults and its traffic.
pub struct Simulator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds the listener and starts accepting links and running the phone system's clock.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let clock = Clock::new();
        let mut pbx = Pbx::new(config.layout.clone(), clock.now_ms());
        // The same limit both ways: what this PBX states it accepts is what its answers keep to.
        pbx.set_max_frame_length(config.max_frame_length);
        let state = State {
            pbx,
            links: BTreeMap::new(),
            faults: Faults::new(config.seed),
            traffic: None,
            traffic_paused: false,
            next_link: 1,
        };
        let shared = Arc::new(Shared {
            config,
            accepting: std::sync::atomic::AtomicBool::new(true),
            state: Mutex::new(state),
            counters: Counters::default(),
            clock,
            shutdown: CancellationToken::new(),
        });
        let tasks = vec![tokio::spawn(accept_loop(shared.clone(), listener)), tokio::spawn(clock_loop(shared.clone()))];
        tracing::info!(%local_addr, "pbx simulator listening");
        Ok(Self { shared, local_addr, tasks })
    }

    /// Where links connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Every device of the phone system a gateway monitors (stations, queues, park orbits): what
    /// the PBX lists, outside numbers aside. The lines a cluster of gateways shares.
    pub fn shared_devices(&self) -> std::collections::BTreeSet<String> {
        self.with_pbx(|pbx| {
            pbx.devices()
                .into_iter()
                .filter(|device| device.kind != DeviceKind::External as i32)
                .map(|device| device.device_id)
                .collect()
        })
    }

    /// Acts on the phone system as a person at a phone would (or inspects it); the events caused go
    /// out on the links at once.
    pub fn with_pbx<R>(&self, action: impl FnOnce(&mut Pbx) -> R) -> R {
        let mut state = self.shared.lock();
        let now = self.shared.clock.now_ms();
        state.pbx.advance_to(now);
        let result = action(&mut state.pbx);
        self.shared.publish(&mut state);
        result
    }

    /// The whole phone system's state, for comparison with what a client mirrors.
    pub fn dump(&self) -> StateDump {
        StateDump::of(&self.shared.lock().pbx)
    }

    /// Replaces the standing faults.
    pub fn set_faults(&self, settings: FaultSettings) {
        self.shared.lock().faults.settings = settings;
    }

    /// Starts (or replaces) the seeded traffic generator.
    pub fn start_traffic(&self, config: TrafficConfig) {
        let mut state = self.shared.lock();
        let now = self.shared.clock.now_ms();
        let traffic = Traffic::new(config, &mut state.pbx, now);
        state.traffic = Some(traffic);
        self.shared.publish(&mut state);
    }

    /// Stops the traffic generator; calls in progress stay as they are.
    pub fn stop_traffic(&self) {
        self.shared.lock().traffic = None;
    }

    /// Closing time: the traffic generator places no new call, and plays the calls in progress to
    /// their end (unlike [`Simulator::stop_traffic`], which leaves them as they are).
    pub fn stop_new_calls(&self) {
        if let Some(traffic) = self.shared.lock().traffic.as_mut() {
            traffic.stop_placing();
        }
    }

    /// Pauses (or resumes) the traffic generator: while paused nobody places, answers or hangs up a
    /// call, so the phone system holds still but for its own timers. What fell due meanwhile
    /// happens on resume.
    pub fn pause_traffic(&self, paused: bool) {
        self.shared.lock().traffic_paused = paused;
    }

    /// Calls the traffic generator has placed, if it runs.
    pub fn traffic_calls_started(&self) -> u64 {
        self.shared.lock().traffic.as_ref().map_or(0, Traffic::calls_started)
    }

    /// Calls the traffic generator has finished (both ends hung up), if it runs.
    pub fn traffic_calls_finished(&self) -> u64 {
        self.shared.lock().traffic.as_ref().map_or(0, Traffic::calls_finished)
    }

    /// Plays a PBX that is down (`false`: every new connection is closed at once) or back up.
    pub fn set_accepting(&self, accepting: bool) {
        self.shared.accepting.store(accepting, Ordering::Relaxed);
    }

    /// Closes every link at once, as a PBX restart or a network cut would.
    pub fn drop_links(&self) {
        for link in self.shared.lock().links.values() {
            link.cancel.cancel();
        }
    }

    /// Makes every link go silent (no events, results or heartbeats) for `duration`.
    pub fn stall_links(&self, duration: Duration) {
        let counters = &self.shared.counters;
        for link in self.shared.lock().links.values_mut() {
            link.send(Outbound::Stall(duration), counters);
        }
    }

    /// Writes a frame with a bad header on every registered link.
    pub fn send_malformed_frame(&self) {
        let counters = &self.shared.counters;
        for link in self.shared.lock().links.values_mut().filter(|link| link.registered) {
            link.send(Outbound::Raw(Bytes::from_static(b"GARBAGE!GARBAGE!")), counters);
        }
    }

    /// Writes a frame whose header claims a body longer than any limit, on every registered link.
    pub fn send_oversized_frame(&self) {
        let mut header = Vec::with_capacity(proto::wire::HEADER_LEN);
        header.extend_from_slice(&proto::wire::MAGIC.to_be_bytes());
        header.push(proto::wire::FRAME_VERSION);
        header.push(4);
        header.extend_from_slice(&0u32.to_be_bytes());
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        let counters = &self.shared.counters;
        for link in self.shared.lock().links.values_mut().filter(|link| link.registered) {
            link.send(Outbound::Raw(Bytes::from(header.clone())), counters);
        }
    }

    /// Links open now (registered or not).
    pub fn link_count(&self) -> usize {
        self.shared.lock().links.len()
    }

    /// Devices monitored on each registered link, in link order.
    pub fn monitored_devices(&self) -> Vec<Vec<String>> {
        let state = self.shared.lock();
        state
            .links
            .values()
            .filter(|link| link.registered)
            .map(|link| link.monitors.values().cloned().collect())
            .collect()
    }

    /// What has happened on the links so far.
    pub fn stats(&self) -> SimStats {
        let counters = &self.shared.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimStats {
            links_accepted: read(&counters.links_accepted),
            links_registered: read(&counters.links_registered),
            registrations_refused: read(&counters.registrations_refused),
            decode_errors: read(&counters.decode_errors),
            links_timed_out: read(&counters.links_timed_out),
            slow_links_cut: read(&counters.slow_links_cut),
            requests: read(&counters.requests),
            events_sent: read(&counters.events_sent),
        }
    }

    /// Stops accepting, closes every link and stops the clock.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.drop_links();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        for link in self.shared.lock().links.values() {
            link.cancel.cancel();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) if !shared.accepting.load(Ordering::Relaxed) => drop(stream),
            Ok((stream, peer)) => {
                bump(&shared.counters.links_accepted);
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_link(shared.clone(), stream, peer));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Advances the phone system's timers and the traffic generator.
async fn clock_loop(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = shared.clock.now_ms();
        let mut state = shared.lock();
        let state = &mut *state;
        state.pbx.advance_to(now);
        if let Some(traffic) = state.traffic.as_mut().filter(|_| !state.traffic_paused) {
            traffic.tick(&mut state.pbx, now);
        }
        shared.publish(state);
        shared.flush_held_back(state);
    }
}

async fn serve_link(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let (reader, writer) = stream.into_split();
    let max = shared.config.max_frame_length;
    let mut frames = FramedRead::new(reader, LinkCodec::new(max));
    let (outbound, outbound_rx) = mpsc::channel(shared.config.link_queue);
    let cancel = shared.shutdown.child_token();
    let link_id = {
        let mut state = shared.lock();
        let id = state.next_link;
        state.next_link += 1;
        let link = Link {
            outbound: outbound.clone(),
            cancel: cancel.clone(),
            registered: false,
            monitors: BTreeMap::new(),
            monitor_of_device: HashMap::new(),
            next_monitor: 1,
            next_sequence: 1,
            held_back: None,
            max_frame_length: shared.config.max_frame_length,
        };
        state.links.insert(id, link);
        id
    };
    let writer_task = tokio::spawn(write_link(
        FramedWrite::new(writer, LinkCodec::new(max)),
        outbound_rx,
        cancel.clone(),
        shared.config.heartbeat_interval,
    ));
    let reason = read_link(&shared, link_id, &mut frames, &cancel).await;
    tracing::info!(%peer, link_id, reason, "pbx link closed");
    shared.lock().links.remove(&link_id);
    // Let the writer flush a final error frame, but not forever.
    drop(outbound);
    if tokio::time::timeout(Duration::from_secs(1), writer_task).await.is_err() {
        cancel.cancel();
    }
}

/// Reads and answers frames until the link ends; returns why it ended.
async fn read_link(
    shared: &Shared,
    link_id: u64,
    frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, LinkCodec>,
    cancel: &CancellationToken,
) -> &'static str {
    let mut liveness = shared.config.register_timeout;
    let mut registered = false;
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return "closed by the simulator",
            next = tokio::time::timeout(liveness, frames.next()) => next,
        };
        let message = match next {
            Err(_) => {
                bump(&shared.counters.links_timed_out);
                let reason = if registered { "heartbeat timeout" } else { "not registered in time" };
                close_with_error(shared, link_id, ErrorCause::Unspecified, reason);
                return reason;
            }
            Ok(None) => return "peer closed the link",
            Ok(Some(Err(error))) => {
                bump(&shared.counters.decode_errors);
                tracing::warn!(link_id, %error, "undecodable frame from client");
                close_with_error(shared, link_id, ErrorCause::MalformedRequest, &format!("undecodable frame: {error}"));
                return "undecodable frame";
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            LinkMessage::Request { invoke_id, body } => {
                let service = body.service;
                if !registered {
                    match register(shared, link_id, invoke_id, service) {
                        Registration::Done { client_heartbeat } => {
                            registered = true;
                            liveness = client_heartbeat * 3;
                        }
                        Registration::Refused(reason) => return reason,
                        Registration::NotYet => {}
                    }
                    continue;
                }
                answer(shared, link_id, invoke_id, service);
            }
            // Answers to our heartbeats: their arrival is all that matters.
            LinkMessage::Result { .. } => {}
            LinkMessage::Error { invoke_id, body } => {
                tracing::warn!(link_id, invoke_id, message = body.message, "client sent an error");
            }
            LinkMessage::Event(_) => {
                close_with_error(shared, link_id, ErrorCause::MalformedRequest, "clients do not send events");
                return "client sent an event";
            }
        }
    }
}

enum Registration {
    Done { client_heartbeat: Duration },
    Refused(&'static str),
    NotYet,
}

fn service_names() -> Vec<String> {
    [
        "heartbeat",
        "monitor_start",
        "monitor_stop",
        "snapshot_device",
        "snapshot_call",
        "list_devices",
        "make_call",
        "answer_call",
        "clear_connection",
        "clear_call",
        "hold_call",
        "retrieve_call",
        "park_call",
        "retrieve_parked_call",
        "single_step_transfer_call",
        "consultation_call",
        "transfer_call",
        "conference_call",
        "alternate_call",
        "reconnect_call",
        "set_agent_state",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn register(shared: &Shared, link_id: u64, invoke_id: u32, service: Option<request::Service>) -> Registration {
    let config = &shared.config;
    let mut state = shared.lock();
    let Some(link) = state.links.get_mut(&link_id) else { return Registration::Refused("link gone") };
    let Some(request::Service::Register(register)) = service else {
        let error = error_response(invoke_id, ErrorCause::NotRegistered, "register first: send a register request");
        link.send(Outbound::Frame(error), &shared.counters);
        return Registration::NotYet;
    };
    let client_max_frame_length = match register.max_frame_length as usize {
        0 => DEFAULT_MAX_FRAME_LENGTH,
        stated => stated,
    };
    let refusal = if register.protocol_version != PROTOCOL_VERSION {
        Some((
            ErrorCause::UnsupportedVersion,
            format!(
                "protocol version {} is not supported; this PBX speaks version {PROTOCOL_VERSION}",
                register.protocol_version
            ),
        ))
    } else if register.user != config.user || register.password != config.password {
        Some((ErrorCause::InvalidCredentials, format!("wrong user name or password for user {:?}", register.user)))
    } else if client_max_frame_length < MIN_MAX_FRAME_LENGTH {
        Some((
            ErrorCause::MalformedRequest,
            format!(
                "max_frame_length {client_max_frame_length} is below the smallest a client may state \
                 ({MIN_MAX_FRAME_LENGTH} bytes; 0 means {DEFAULT_MAX_FRAME_LENGTH})"
            ),
        ))
    } else {
        None
    };
    if let Some((cause, message)) = refusal {
        bump(&shared.counters.registrations_refused);
        tracing::warn!(link_id, client = register.client_name, message, "registration refused");
        link.send(Outbound::Frame(error_response(invoke_id, cause, &message)), &shared.counters);
        link.send(Outbound::Close, &shared.counters);
        return Registration::Refused("registration refused");
    }
    link.registered = true;
    link.max_frame_length = config.max_frame_length.min(client_max_frame_length);
    bump(&shared.counters.links_registered);
    let result = pbx::RegisterResult {
        pbx_name: config.layout.pbx_name.clone(),
        protocol_version: PROTOCOL_VERSION,
        services: service_names(),
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
        max_frame_length: config.max_frame_length as u32,
        next_event_sequence: link.next_sequence,
    };
    let frame =
        LinkMessage::Result { invoke_id, body: pbx::Response { result: Some(response::Result::Register(result)) } };
    link.send(Outbound::Frame(frame), &shared.counters);
    tracing::info!(link_id, client = register.client_name, "link registered");
    let client_heartbeat = match register.heartbeat_interval_ms {
        0 => config.heartbeat_interval,
        ms => Duration::from_millis(u64::from(ms)).max(Duration::from_millis(100)),
    };
    Registration::Done { client_heartbeat }
}

fn error_response(invoke_id: u32, cause: ErrorCause, message: &str) -> LinkMessage {
    LinkMessage::Error { invoke_id, body: pbx::ErrorResponse { cause: cause as i32, message: message.to_owned() } }
}

/// Sends a link-level error (invoke id 0) and closes the link after it.
fn close_with_error(shared: &Shared, link_id: u64, cause: ErrorCause, message: &str) {
    let mut state = shared.lock();
    if let Some(link) = state.links.get_mut(&link_id) {
        link.send(Outbound::Frame(error_response(0, cause, message)), &shared.counters);
        link.send(Outbound::Close, &shared.counters);
    }
}

/// Answers one request on a registered link, then publishes the events it caused.
fn answer(shared: &Shared, link_id: u64, invoke_id: u32, service: Option<request::Service>) {
    bump(&shared.counters.requests);
    let mut guard = shared.lock();
    let state = &mut *guard;
    state.pbx.advance_to(shared.clock.now_ms());
    let outcome = match service {
        // An empty request, or one whose service this PBX does not know (protobuf cannot tell them apart).
        None => Err((ErrorCause::ServiceNotSupported, "the request names no service this pbx offers".to_owned())),
        Some(request::Service::Register(_)) => {
            Err((ErrorCause::InvalidObjectState, "this link is registered already".to_owned()))
        }
        Some(request::Service::Heartbeat(_)) => {
            let last_event_sequence = state.links.get(&link_id).map_or(0, |link| link.next_sequence - 1);
            Ok(response::Result::Heartbeat(pbx::HeartbeatResult {
                timestamp_ms: state.pbx.now_ms(),
                last_event_sequence,
            }))
        }
        Some(request::Service::MonitorStart(monitor)) => monitor_start(state, link_id, &monitor.device_id),
        Some(request::Service::MonitorStop(monitor)) => monitor_stop(state, link_id, monitor.monitor_id),
        Some(_) if state.faults.congested() => {
            Err((ErrorCause::Congestion, "the switch is congested; try again later".to_owned()))
        }
        Some(request::Service::ListDevices(list)) => {
            let max_answer_bytes = state.links.get(&link_id).map_or(0, |link| link.max_frame_length - HEADER_LEN);
            state
                .pbx
                .list_devices_within(&list, max_answer_bytes)
                .map(response::Result::ListDevices)
                .map_err(|error| (error.cause, error.message))
        }
        Some(service) => state.pbx.execute(service).map_err(|error| (error.cause, error.message)),
    };
    if let Some(link) = state.links.get_mut(&link_id) {
        let outbound = match outcome {
            // Taken at this instant and queued as one item, so no event can come between the pages.
            Ok(response::Result::SnapshotDevice(snapshot)) => {
                let pages = snapshot_pages(snapshot, link.max_frame_length - HEADER_LEN);
                let mut frames: Vec<LinkMessage> = pages
                    .into_iter()
                    .map(|page| LinkMessage::Result {
                        invoke_id,
                        body: pbx::Response { result: Some(response::Result::SnapshotDevice(page)) },
                    })
                    .collect();
                match frames.len() {
                    1 => Outbound::Frame(frames.remove(0)),
                    _ => Outbound::Frames(frames),
                }
            }
            Ok(result) => {
                Outbound::Frame(LinkMessage::Result { invoke_id, body: pbx::Response { result: Some(result) } })
            }
            Err((cause, message)) => Outbound::Frame(error_response(invoke_id, cause, &message)),
        };
        link.send(outbound, &shared.counters);
    }
    shared.publish(state);
}

type Outcome = Result<response::Result, (ErrorCause, String)>;

fn monitor_start(state: &mut State, link_id: u64, device: &str) -> Outcome {
    match state.pbx.device_kind(device) {
        Some(DeviceKind::Station | DeviceKind::AcdQueue | DeviceKind::ParkOrbit) => {}
        _ => return Err((ErrorCause::InvalidDeviceId, format!("no device {device:?} to monitor on this PBX"))),
    }
    let Some(link) = state.links.get_mut(&link_id) else {
        return Err((ErrorCause::Unspecified, "link gone".to_owned()));
    };
    // Monitoring a device twice on one link returns the first monitor, so events are never doubled.
    let monitor_id = match link.monitor_of_device.get(device) {
        Some(existing) => *existing,
        None => {
            let id = link.next_monitor;
            link.next_monitor += 1;
            link.monitors.insert(id, device.to_owned());
            link.monitor_of_device.insert(device.to_owned(), id);
            id
        }
    };
    Ok(response::Result::MonitorStart(pbx::MonitorStartResult { monitor_id }))
}

fn monitor_stop(state: &mut State, link_id: u64, monitor_id: u32) -> Outcome {
    let Some(link) = state.links.get_mut(&link_id) else {
        return Err((ErrorCause::Unspecified, "link gone".to_owned()));
    };
    match link.monitors.remove(&monitor_id) {
        Some(device) => {
            link.monitor_of_device.remove(&device);
            Ok(response::Result::MonitorStop(pbx::Empty {}))
        }
        None => Err((ErrorCause::InvalidMonitorId, format!("no monitor {monitor_id} on this link"))),
    }
}

/// Writes a link's frames in order, with heartbeats when due, until closed or cancelled.
async fn write_link(
    mut sink: FramedWrite<tokio::net::tcp::OwnedWriteHalf, LinkCodec>,
    mut outbound: mpsc::Receiver<Outbound>,
    cancel: CancellationToken,
    heartbeat_interval: Duration,
) {
    let mut heartbeats = tokio::time::interval(heartbeat_interval);
    heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeats.reset();
    let mut next_invoke_id: u32 = 1;
    loop {
        let item = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            item = outbound.recv() => item,
            _ = heartbeats.tick() => {
                let heartbeat = LinkMessage::Request {
                    invoke_id: next_invoke_id,
                    body: pbx::Request { service: Some(request::Service::Heartbeat(pbx::HeartbeatRequest {})) },
                };
                next_invoke_id = next_invoke_id.wrapping_add(1).max(1);
                if sink.send(heartbeat).await.is_err() { break; }
                continue;
            }
        };
        let written = match item {
            None | Some(Outbound::Close) => break,
            Some(Outbound::Frame(frame)) => sink.feed(frame).await,
            Some(Outbound::Frames(frames)) => {
                let mut written = Ok(());
                for frame in frames {
                    written = sink.feed(frame).await;
                    if written.is_err() {
                        break;
                    }
                }
                written
            }
            Some(Outbound::Event { report, not_before }) => {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep_until(not_before) => {}
                }
                sink.feed(LinkMessage::Event(report)).await
            }
            Some(Outbound::Raw(bytes)) => match sink.flush().await {
                Ok(()) => sink.get_mut().write_all(&bytes).await.map_err(Into::into),
                Err(error) => Err(error),
            },
            Some(Outbound::Stall(duration)) => {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(duration) => {}
                }
                heartbeats.reset();
                Ok(())
            }
        };
        if written.is_err() {
            break;
        }
        // Batch what is already queued into one write, then flush.
        if outbound.is_empty() && sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.flush().await;
    let _ = sink.get_mut().shutdown().await;
}
