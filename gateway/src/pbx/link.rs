//! The link task and its handle: connect, register, monitor, resync, heartbeat, reconnect; and the
//! request path with deadlines, a bounded queue and fail-fast when the link is down.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::pbx::{self, DeviceKind, ErrorCause, request, response};
use proto::wire::{FrameError, LinkCodec, LinkMessage};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::sequencer::Sequencer;
use crate::config::PbxConfig;

/// The service-level protocol version the gateway speaks (docs/pbx-link.md).
pub const PROTOCOL_VERSION: u32 = 1;

/// Internal requests (monitors, snapshots) in flight at once during a resync, so a resync of many
/// thousand lines neither floods the PBX nor starves callers' requests.
const RESYNC_WINDOW: usize = 256;

/// Frames read in a row before callers' commands and the timers get a turn: the socket is read
/// first, so a flood of events would otherwise keep a request (or a heartbeat) waiting behind it.
const FRAMES_PER_TURN: usize = 64;

/// Events waiting behind a gap before the gap is given up on, whatever the gap timeout.
const MAX_EVENTS_BEHIND_GAP: usize = 1024;

/// Events in one burst at most: a longer one (a gap closing releases up to
/// [`MAX_EVENTS_BEHIND_GAP`] at once) goes in several.
pub const MAX_BURST: usize = 1024;

/// The sending end of the link's events: bursts of them, in link order (see [`LinkEvents`]).
pub type EventSender = mpsc::Sender<Vec<LinkEvent>>;

/// A channel for the link's events with room for `bursts` bursts before the link feels
/// back-pressure (and stops reading the socket).
pub fn event_channel(bursts: usize) -> (EventSender, LinkEvents) {
    let (sender, receiver) = mpsc::channel(bursts);
    (sender, LinkEvents { receiver, burst: Vec::new().into_iter() })
}

/// The receiving end of the link's events, one at a time, in link order. The link sends the
/// events of the frames it reads without waiting in between as one burst: one channel message (and
/// one wake-up of the reader) per burst, and a reader that takes what has arrived gets the burst
/// whole, however fast it is.
#[derive(Debug)]
pub struct LinkEvents {
    receiver: mpsc::Receiver<Vec<LinkEvent>>,
    burst: std::vec::IntoIter<LinkEvent>,
}

impl LinkEvents {
    /// The next event; `None` once the link has ended and every event has been taken.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        loop {
            if let Some(event) = self.burst.next() {
                return Some(event);
            }
            self.burst = self.receiver.recv().await?.into_iter();
        }
    }

    /// The next event if one has arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<LinkEvent> {
        loop {
            if let Some(event) = self.burst.next() {
                return Some(event);
            }
            self.burst = self.receiver.try_recv().ok()?.into_iter();
        }
    }
}

/// The link task's events on their way out: gathered while frames keep arriving, and sent as one
/// burst before the task next waits for anything (or once [`MAX_BURST`] are gathered).
struct Outgoing {
    sender: EventSender,
    burst: Vec<LinkEvent>,
}

impl Outgoing {
    async fn push(&mut self, event: LinkEvent) -> Result<(), String> {
        self.burst.push(event);
        if self.burst.len() >= MAX_BURST { self.flush().await } else { Ok(()) }
    }

    /// Sends what is gathered; waits while the channel is full (back-pressure).
    async fn flush(&mut self) -> Result<(), String> {
        if self.burst.is_empty() {
            return Ok(());
        }
        let burst = std::mem::replace(&mut self.burst, Vec::with_capacity(FRAMES_PER_TURN));
        self.sender.send(burst).await.map_err(|_| "the event consumer is gone".to_owned())
    }
}

/// Pages of one device snapshot gathered at most (docs/pbx-link.md §7): with the default 64 KiB
/// frames, 16 MiB, some 100,000 waiting calls. A longer snapshot is refused, so a faulty PBX cannot
/// make the gateway gather without bound.
pub const MAX_SNAPSHOT_PAGES: usize = 256;

/// Devices to ask for in one page of the device list: as many as fit in a frame of our own limit
/// if each took 128 bytes (a device id, its kind and a name of some 100 characters). The PBX keeps
/// each page within its own limit too.
fn device_page_size(max_frame_length: usize) -> u32 {
    u32::try_from(max_frame_length / 128).unwrap_or(u32::MAX).max(1)
}

/// What the link tells whoever mirrors the phone system, in the order it happened on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// The link registered; snapshots of every monitored device follow. `session` counts links.
    Up {
        /// Counts sessions, from 1.
        session: u64,
        /// The PBX's name.
        pbx_name: String,
    },
    /// The state of one device and all its calls now; it replaces whatever was known of them.
    Snapshot {
        /// The session this belongs to.
        session: u64,
        /// The device, its agent and its calls.
        snapshot: pbx::SnapshotDeviceResult,
    },
    /// A device newly monitored mid-session (a line this node took over in a cluster): its state
    /// and its calls now. Unlike [`LinkEvent::Snapshot`], it begins no resync: what the model
    /// knows of other devices stands.
    Acquired {
        /// The session this belongs to.
        session: u64,
        /// The device, its agent and its calls.
        snapshot: pbx::SnapshotDeviceResult,
    },
    /// Devices no longer monitored (lines handed to another node): forget them. Events after this
    /// one still mention them when they share a call with a device still monitored.
    Released {
        /// The session this belongs to.
        session: u64,
        /// The devices.
        devices: Vec<String>,
    },
    /// Every monitored device has a fresh snapshot: anything not in them is gone.
    ResyncComplete {
        /// The session this belongs to.
        session: u64,
        /// Devices snapshotted.
        devices: usize,
    },
    /// An event, in sequence order, duplicates dropped.
    Event(pbx::EventReport),
    /// The link died; a new session (and a resync) follows when it comes back.
    Down {
        /// The session that ended.
        session: u64,
        /// Why, in words.
        reason: String,
    },
}

/// Where the link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Not registered; trying. `last_error` says why the last attempt failed.
    Connecting {
        /// Attempts since the link was last up.
        attempt: u32,
        /// Why the last attempt or session failed.
        last_error: Option<String>,
    },
    /// Registered.
    Up {
        /// The session number.
        session: u64,
        /// The PBX's name.
        pbx_name: String,
        /// Devices monitored.
        monitored: usize,
        /// Whether every monitored device has been snapshotted since registration.
        resynced: bool,
    },
    /// Shut down.
    Stopped,
}

/// Why a request got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link is not registered; the request was not sent.
    #[error("pbx link is down: {reason}")]
    Down {
        /// Why the link is down.
        reason: String,
    },
    /// Too many requests are queued or awaiting answers; the request was not sent.
    #[error("pbx link is congested: {0}")]
    Congested(&'static str),
    /// The PBX did not answer in time. The request may still have been carried out.
    #[error("pbx did not answer within {0:?}")]
    DeadlineExceeded(Duration),
    /// The link dropped after the request was sent. It may have been carried out.
    #[error("pbx link dropped before the answer came: {reason}")]
    Lost {
        /// Why the link dropped.
        reason: String,
    },
    /// The PBX refused the request.
    #[error("pbx refused the request ({}): {message}", cause.as_str_name())]
    Refused {
        /// The CSTA-style cause.
        cause: ErrorCause,
        /// The PBX's words.
        message: String,
    },
    /// The PBX answered with the result of another service.
    #[error("pbx answered a {sent} request with a {received} result")]
    Mismatch {
        /// The service asked for.
        sent: &'static str,
        /// The service answered.
        received: &'static str,
    },
    /// The request could not be encoded (larger than the frame limit).
    #[error("request cannot be sent: {0}")]
    Unsendable(String),
    /// The PBX answered against the protocol (for example a device list whose pages never end).
    #[error("the pbx broke the link protocol: {0}")]
    Protocol(String),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// Counters of the link's life, read by tests and exported as metrics.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Sessions that registered.
    pub registrations: AtomicU64,
    /// Registrations the PBX refused (credentials, version).
    pub registrations_refused: AtomicU64,
    /// Links closed because a frame from the PBX could not be decoded, by cause.
    pub decode_errors: AtomicU64,
    /// Links declared dead after missed heartbeats.
    pub heartbeat_timeouts: AtomicU64,
    /// Links that ended for any reason after registering.
    pub sessions_lost: AtomicU64,
    /// Events delivered in order.
    pub events: AtomicU64,
    /// Duplicate events dropped.
    pub duplicate_events: AtomicU64,
    /// Gaps in event sequence numbers given up on (each triggers a resync).
    pub sequence_gaps: AtomicU64,
    /// Resyncs completed.
    pub resyncs: AtomicU64,
    /// Answers that came for requests no longer waiting (past their deadline).
    pub late_answers: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Decode errors by kind, in the order of [`FrameError::KINDS`].
    pub decode_errors_by_kind: [AtomicU64; FrameError::KINDS.len()],
    /// Reconnects by why the link was lost or not established, in the order of
    /// [`ReconnectReason::ALL`].
    pub reconnects: [AtomicU64; ReconnectReason::ALL.len()],
    /// When the last frame came from the PBX, in milliseconds since the Unix epoch; 0 before any.
    pub last_frame_unix_ms: AtomicU64,
}

/// Why the link task is about to reconnect: a fixed set, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// No TCP connection, or no registration answer within the connect timeout.
    ConnectFailed,
    /// The PBX refused the registration (credentials, version).
    RegistrationRefused,
    /// The PBX closed the connection.
    ClosedByPbx,
    /// Nothing came from the PBX for three heartbeat intervals.
    HeartbeatTimeout,
    /// A frame from the PBX could not be decoded.
    DecodeError,
    /// The socket failed while writing.
    WriteFailed,
    /// The PBX broke the protocol (an unexpected answer, or a link-level error it reported).
    ProtocolError,
}

impl ReconnectReason {
    /// Every reason, to register metric labels at zero.
    pub const ALL: [ReconnectReason; 7] = [
        Self::ConnectFailed,
        Self::RegistrationRefused,
        Self::ClosedByPbx,
        Self::HeartbeatTimeout,
        Self::DecodeError,
        Self::WriteFailed,
        Self::ProtocolError,
    ];

    /// The reason as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectFailed => "connect_failed",
            Self::RegistrationRefused => "registration_refused",
            Self::ClosedByPbx => "closed_by_pbx",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::DecodeError => "decode_error",
            Self::WriteFailed => "write_failed",
            Self::ProtocolError => "protocol_error",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|reason| *reason == self).unwrap_or(0)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl LinkStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn decode_error(&self, error: &FrameError) {
        bump(&self.decode_errors);
        let kind = FrameError::KINDS.iter().position(|kind| *kind == error.kind()).unwrap_or(0);
        bump(&self.decode_errors_by_kind[kind]);
    }
}

/// Which devices the link monitors: `None`, the configured ones or, when none are configured, every
/// device the PBX lists; otherwise exactly these (a cluster node's lines).
#[derive(Debug, Clone, Default)]
struct Selection {
    generation: u64,
    devices: Option<Arc<BTreeSet<String>>>,
}

struct Command {
    service: request::Service,
    reply: oneshot::Sender<Result<response::Result, LinkError>>,
    deadline: Instant,
}

/// A cheap, cloneable handle for sending requests and watching the link.
#[derive(Clone)]
pub struct LinkHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<LinkStatus>,
    stats: Arc<LinkStats>,
    default_timeout: Duration,
    /// Devices asked for per page of the device list.
    device_page_size: u32,
    /// Time from sending a caller's request to its outcome; a handle, so recording costs no lookup.
    latency: metrics::Histogram,
    selection: Arc<watch::Sender<Selection>>,
    /// The generation of the selection the link has applied.
    applied: watch::Receiver<u64>,
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle").field("status", &*self.status.borrow()).finish_non_exhaustive()
    }
}

impl LinkHandle {
    /// Sends a request and waits for its answer, at most the configured request timeout.
    pub async fn request(&self, service: request::Service) -> Result<response::Result, LinkError> {
        self.request_within(service, self.default_timeout).await
    }

    /// Sends a request and waits for its answer at most `timeout`. Fails at once, without sending,
    /// when the link is down or congested.
    pub async fn request_within(
        &self,
        service: request::Service,
        timeout: Duration,
    ) -> Result<response::Result, LinkError> {
        match &*self.status.borrow() {
            LinkStatus::Up { .. } => {}
            LinkStatus::Connecting { last_error, .. } => {
                let reason = last_error.clone().unwrap_or_else(|| "connecting".to_owned());
                return Err(LinkError::Down { reason });
            }
            LinkStatus::Stopped => return Err(LinkError::ShuttingDown),
        }
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        self.commands.try_send(Command { service, reply, deadline }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => LinkError::Congested("the outbound queue is full"),
            mpsc::error::TrySendError::Closed(_) => LinkError::ShuttingDown,
        })?;
        let sent = Instant::now();
        let outcome = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(LinkError::ShuttingDown),
            Err(_) => Err(LinkError::DeadlineExceeded(timeout)),
        };
        self.latency.record(sent.elapsed().as_secs_f64());
        outcome
    }

    /// Every device the PBX lists, page by page (docs/pbx-link.md §9); each page within the
    /// request timeout.
    pub async fn list_devices(&self) -> Result<Vec<pbx::DeviceInfo>, LinkError> {
        let mut devices = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pbx::ListDevicesRequest { page_token: page_token.clone(), page_size: self.device_page_size };
            let answer = self.request(request::Service::ListDevices(request)).await?;
            let response::Result::ListDevices(page) = answer else {
                return Err(LinkError::Mismatch { sent: "list_devices", received: answer.name() });
            };
            devices.extend(page.devices);
            if page.next_page_token.is_empty() {
                return Ok(devices);
            }
            if page.next_page_token == page_token {
                return Err(LinkError::Protocol(format!("page token {page_token:?} came back again")));
            }
            page_token = page.next_page_token;
        }
    }

    /// The link's status now.
    pub fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Waits until the link is registered and every monitored device has been snapshotted.
    pub async fn wait_resynced(&self) -> Result<(), LinkError> {
        let mut status = self.status.clone();
        let outcome = status
            .wait_for(|status| matches!(status, LinkStatus::Up { resynced: true, .. } | LinkStatus::Stopped))
            .await;
        match outcome.as_deref() {
            Ok(LinkStatus::Up { .. }) => Ok(()),
            _ => Err(LinkError::ShuttingDown),
        }
    }

    /// The link's counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Monitors exactly `devices` from now on: starts monitors (and snapshots, reported as
    /// [`LinkEvent::Acquired`]) for new ones, stops the others (reported as
    /// [`LinkEvent::Released`]). Returns once the link has stopped the monitors it drops, or at
    /// once while the link is down (the next session monitors the new set).
    pub async fn monitor_only(&self, devices: BTreeSet<String>) {
        let mut generation = 0;
        self.selection.send_modify(|selection| {
            selection.generation += 1;
            generation = selection.generation;
            selection.devices = Some(Arc::new(devices));
        });
        let mut applied = self.applied.clone();
        let mut status = self.status.clone();
        loop {
            if *applied.borrow_and_update() >= generation
                || !matches!(*status.borrow_and_update(), LinkStatus::Up { .. })
            {
                return;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                changed = status.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Starts the link task. `events` receives the ordered [`LinkEvent`] stream, in bursts (see
/// [`event_channel`]); when it is full, the link stops reading (back-pressure) rather than drop
/// anything. `shutdown` ends the task.
pub fn start(config: PbxConfig, events: EventSender, shutdown: CancellationToken) -> (LinkHandle, JoinHandle<()>) {
    start_with(config, None, events, shutdown)
}

/// Starts the link task monitoring no device until [`LinkHandle::monitor_only`] names some: for a
/// cluster node, which monitors only the lines it owns.
pub fn start_selective(
    config: PbxConfig,
    events: EventSender,
    shutdown: CancellationToken,
) -> (LinkHandle, JoinHandle<()>) {
    start_with(config, Some(Arc::default()), events, shutdown)
}

fn start_with(
    config: PbxConfig,
    devices: Option<Arc<BTreeSet<String>>>,
    events: EventSender,
    shutdown: CancellationToken,
) -> (LinkHandle, JoinHandle<()>) {
    let (selection_tx, selection) = watch::channel(Selection { generation: 0, devices });
    let (applied_tx, applied) = watch::channel(0);
    let (commands_tx, commands) = mpsc::channel(config.outbound_queue);
    let (status_tx, status) = watch::channel(LinkStatus::Connecting { attempt: 0, last_error: None });
    let stats = Arc::new(LinkStats::default());
    let handle = LinkHandle {
        commands: commands_tx,
        status,
        stats: stats.clone(),
        default_timeout: config.request_timeout(),
        device_page_size: device_page_size(config.max_frame_length),
        latency: metrics::histogram!(crate::metrics::PBX_REQUEST_DURATION),
        selection: Arc::new(selection_tx),
        applied,
    };
    let selector = Selector { selection, applied: applied_tx };
    let task = tokio::spawn(run(config, commands, status_tx, events, stats, selector, shutdown));
    (handle, task)
}

/// The link task's side of the selection: what to monitor, and what it has applied.
struct Selector {
    selection: watch::Receiver<Selection>,
    applied: watch::Sender<u64>,
}

async fn run(
    config: PbxConfig,
    mut commands: mpsc::Receiver<Command>,
    status: watch::Sender<LinkStatus>,
    events: EventSender,
    stats: Arc<LinkStats>,
    mut selector: Selector,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(config.reconnect_initial_ms),
        Duration::from_millis(config.reconnect_max_ms),
    );
    let mut session_number = 0;
    let mut attempt = 0;
    let mut events = Outgoing { sender: events, burst: Vec::with_capacity(FRAMES_PER_TURN) };
    while !shutdown.is_cancelled() {
        attempt += 1;
        let (generation, selected) = {
            let selection = selector.selection.borrow_and_update();
            (selection.generation, selection.devices.clone())
        };
        let (reason, last_error) = match establish(&config, selected, &stats, &shutdown).await {
            Ok(mut session) => {
                session_number += 1;
                attempt = 0;
                let started = Instant::now();
                selector.applied.send_replace(generation);
                let reason =
                    session.serve(session_number, &mut commands, &status, &mut events, &mut selector, &shutdown).await;
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                bump(&stats.sessions_lost);
                tracing::warn!(session = session_number, %reason, "pbx link down");
                session.fail_pending(&reason);
                // What the session gathered goes first: nothing it read is lost with it.
                let _ = events.push(LinkEvent::Down { session: session_number, reason: reason.clone() }).await;
                let _ = events.flush().await;
                (session.end_reason.unwrap_or(ReconnectReason::ProtocolError), reason)
            }
            Err((reason, error)) => {
                tracing::warn!(attempt, %error, "pbx link not established");
                (reason, error)
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        bump(&stats.reconnects[reason.index()]);
        status.send_replace(LinkStatus::Connecting { attempt, last_error: Some(last_error.clone()) });
        // While waiting to reconnect, callers get a clear "down" at once instead of waiting.
        let wake = Instant::now() + backoff.next_delay();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => break,
                command = commands.recv() => match command {
                    Some(command) => {
                        let _ = command.reply.send(Err(LinkError::Down { reason: last_error.clone() }));
                    }
                    None => break,
                },
            }
        }
    }
    status.send_replace(LinkStatus::Stopped);
    commands.close();
    while let Some(command) = commands.recv().await {
        let _ = command.reply.send(Err(LinkError::ShuttingDown));
    }
}

/// What a request in flight is for.
enum Pending {
    Caller {
        reply: oneshot::Sender<Result<response::Result, LinkError>>,
        deadline: Instant,
        sent: &'static str,
    },
    Heartbeat,
    /// A page of the device list: the token it starts at (empty: the first).
    ListDevices(String),
    Monitor(String),
    MonitorStop(String, u32),
    Snapshot(String),
}

/// One registered connection to the PBX.
struct Session {
    config: PbxConfig,
    stats: Arc<LinkStats>,
    reader: FramedRead<OwnedReadHalf, LinkCodec>,
    writer: FramedWrite<OwnedWriteHalf, LinkCodec>,
    pbx_name: String,
    pbx_heartbeat: Duration,
    sequencer: Sequencer,
    pending: HashMap<u32, Pending>,
    next_invoke_id: u32,
    /// Monitors and snapshots waiting to be sent.
    internal: VecDeque<Pending>,
    internal_in_flight: usize,
    /// Monitor ids by device.
    monitors: HashMap<String, u32>,
    /// What to monitor: `None`, the configured or discovered devices; otherwise exactly these.
    selection: Option<Arc<BTreeSet<String>>>,
    /// Devices whose monitor is queued or in flight.
    monitoring: HashSet<String>,
    /// Devices monitored mid-session whose first snapshot is reported as [`LinkEvent::Acquired`].
    acquiring: HashSet<String>,
    /// Snapshots still to come before the resync is complete.
    snapshots_due: usize,
    snapshotted: usize,
    resynced: bool,
    gap_open_since: Option<Instant>,
    /// A snapshot whose pages are still coming.
    gathering: Option<SnapshotPages>,
    last_frame_at: Instant,
    /// Why the session ended, when it ended for a cause worth counting apart.
    end_reason: Option<ReconnectReason>,
}

/// Connects and registers, within the connect timeout.
async fn establish(
    config: &PbxConfig,
    selection: Option<Arc<BTreeSet<String>>>,
    stats: &Arc<LinkStats>,
    shutdown: &CancellationToken,
) -> Result<Session, (ReconnectReason, String)> {
    use ReconnectReason::{ConnectFailed, ProtocolError, RegistrationRefused};
    let attempt = async {
        let stream = TcpStream::connect(&config.address)
            .await
            .map_err(|error| (ConnectFailed, format!("cannot connect to the pbx at {}: {error}", config.address)))?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let mut reader = FramedRead::new(read_half, LinkCodec::new(config.max_frame_length));
        let mut writer = FramedWrite::new(write_half, LinkCodec::new(config.max_frame_length));
        let register = pbx::RegisterRequest {
            user: config.user.clone(),
            password: config.password.expose().to_owned(),
            protocol_version: PROTOCOL_VERSION,
            client_name: config.client_name.clone(),
            heartbeat_interval_ms: config.heartbeat_interval_ms.try_into().unwrap_or(u32::MAX),
            max_frame_length: config.max_frame_length.try_into().unwrap_or(u32::MAX),
        };
        let request = LinkMessage::Request {
            invoke_id: 1,
            body: pbx::Request { service: Some(request::Service::Register(register)) },
        };
        writer.send(request).await.map_err(|error| (ConnectFailed, format!("cannot send registration: {error}")))?;
        loop {
            match reader.next().await {
                None => return Err((ConnectFailed, "the pbx closed the link during registration".to_owned())),
                Some(Err(error)) => {
                    stats.decode_error(&error);
                    let message = format!("undecodable frame from the pbx during registration: {error}");
                    return Err((ReconnectReason::DecodeError, message));
                }
                Some(Ok(LinkMessage::Result { invoke_id: 1, body })) => match body.result {
                    Some(response::Result::Register(result)) => return Ok((reader, writer, result)),
                    other => {
                        let received = other.as_ref().map_or("empty", response::Result::name);
                        return Err((ProtocolError, format!("the pbx answered registration with a {received} result")));
                    }
                },
                Some(Ok(LinkMessage::Error { body, .. })) => {
                    bump(&stats.registrations_refused);
                    let cause = ErrorCause::try_from(body.cause).unwrap_or(ErrorCause::Unspecified);
                    let message = format!("registration refused ({}): {}", cause.as_str_name(), body.message);
                    return Err((RegistrationRefused, message));
                }
                // Nothing else is expected before registration; skip it rather than guess.
                Some(Ok(other)) => tracing::debug!(class = %other.class(), "frame before registration ignored"),
            }
        }
    };
    let (reader, writer, registered) = tokio::select! {
        () = shutdown.cancelled() => return Err((ConnectFailed, "shutting down".to_owned())),
        outcome = tokio::time::timeout(config.connect_timeout(), attempt) => match outcome {
            Ok(outcome) => outcome?,
            Err(_) => return Err((ConnectFailed, format!("no registration with the pbx at {} within {:?}", config.address, config.connect_timeout()))),
        },
    };
    bump(&stats.registrations);
    tracing::info!(pbx = registered.pbx_name, version = registered.protocol_version, "pbx link registered");
    let mut session = Session {
        config: config.clone(),
        stats: stats.clone(),
        reader,
        writer,
        pbx_name: registered.pbx_name,
        pbx_heartbeat: Duration::from_millis(u64::from(registered.heartbeat_interval_ms)),
        sequencer: Sequencer::new(registered.next_event_sequence, MAX_EVENTS_BEHIND_GAP),
        pending: HashMap::new(),
        next_invoke_id: 2,
        internal: VecDeque::new(),
        internal_in_flight: 0,
        monitors: HashMap::new(),
        selection: selection.clone(),
        monitoring: HashSet::new(),
        acquiring: HashSet::new(),
        snapshots_due: 0,
        snapshotted: 0,
        resynced: false,
        gap_open_since: None,
        gathering: None,
        last_frame_at: Instant::now(),
        end_reason: None,
    };
    match selection {
        Some(devices) => {
            session.monitoring.extend(devices.iter().cloned());
            session.internal.extend(devices.iter().cloned().map(Pending::Monitor));
        }
        None if config.devices.is_empty() => session.internal.push_back(Pending::ListDevices(String::new())),
        None => session.internal.extend(config.devices.iter().cloned().map(Pending::Monitor)),
    }
    Ok(session)
}

impl Session {
    /// Serves the link until it fails or the gateway shuts down; returns why it ended.
    async fn serve(
        &mut self,
        session: u64,
        commands: &mut mpsc::Receiver<Command>,
        status: &watch::Sender<LinkStatus>,
        events: &mut Outgoing,
        selector: &mut Selector,
        shutdown: &CancellationToken,
    ) -> String {
        let up = LinkEvent::Up { session, pbx_name: self.pbx_name.clone() };
        if let Err(reason) = events.push(up).await {
            return reason;
        }
        self.publish_status(session, status);
        let silence_limit = self.config.heartbeat_interval().max(self.pbx_heartbeat) * 3;
        let mut heartbeats = tokio::time::interval(self.config.heartbeat_interval());
        heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeats.reset();
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        let mut frames_in_a_row = 0;
        loop {
            // The events gathered go before the task can wait: unless the last frame read left a
            // whole frame buffered, which the select below takes at once (the socket comes first),
            // and no request is due to go out first (a write may wait on the socket).
            let frame_buffered = frames_in_a_row > 0
                && frames_in_a_row < FRAMES_PER_TURN
                && (self.internal.is_empty() || self.internal_in_flight >= RESYNC_WINDOW)
                && self.reader.decoder().has_frame(self.reader.read_buffer());
            if !frame_buffered && let Err(reason) = events.flush().await {
                return reason;
            }
            if let Err(reason) = self.send_internal().await {
                return reason;
            }
            if frames_in_a_row >= FRAMES_PER_TURN {
                // Fairness without dropping anything: reading pauses for one turn, it never skips.
                frames_in_a_row = 0;
                if let Err(reason) = self.take_a_turn(commands, &mut heartbeats, &mut sweep, silence_limit).await {
                    return reason;
                }
            }
            let gap_deadline = self.gap_open_since.map(|since| since + self.config.gap_timeout());
            let room_for_more = self.pending.len() < self.config.max_in_flight;
            let mut read_a_frame = false;
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => return "the gateway is shutting down".to_owned(),
                frame = self.reader.next() => match frame {
                    None => {
                        self.end_reason = Some(ReconnectReason::ClosedByPbx);
                        Err("the pbx closed the link".to_owned())
                    }
                    Some(Err(error)) => Err(self.decode_failure(&error)),
                    Some(Ok(message)) => {
                        read_a_frame = true;
                        self.on_message(session, message, events).await
                    }
                },
                command = commands.recv(), if room_for_more => match command {
                    Some(command) => self.send_command(command).await,
                    None => Err("the gateway is shutting down".to_owned()),
                },
                () = sleep_until_some(gap_deadline) => self.give_up_gap(events).await,
                changed = selector.selection.changed() => match changed {
                    Ok(()) => {
                        let (generation, devices) = {
                            let selection = selector.selection.borrow_and_update();
                            (selection.generation, selection.devices.clone())
                        };
                        let outcome = self.select(session, devices, events).await;
                        selector.applied.send_replace(generation);
                        outcome
                    }
                    Err(_) => Err("the gateway is shutting down".to_owned()),
                },
                _ = heartbeats.tick() => self.heartbeat(silence_limit).await,
                _ = sweep.tick() => self.sweep_expired(),
            };
            if let Err(reason) = outcome {
                return reason;
            }
            frames_in_a_row = if read_a_frame { frames_in_a_row + 1 } else { 0 };
            self.publish_status(session, status);
        }
    }

    /// One turn for what waits behind the socket: up to [`FRAMES_PER_TURN`] queued commands (as
    /// many as the in-flight bound allows), then a heartbeat or a sweep if one is due. Never waits.
    async fn take_a_turn(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        heartbeats: &mut tokio::time::Interval,
        sweep: &mut tokio::time::Interval,
        silence_limit: Duration,
    ) -> Result<(), String> {
        for _ in 0..FRAMES_PER_TURN {
            if self.pending.len() >= self.config.max_in_flight {
                break;
            }
            match commands.try_recv() {
                Ok(command) => self.send_command(command).await?,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Err("the gateway is shutting down".to_owned()),
            }
        }
        tokio::select! {
            biased;
            _ = heartbeats.tick() => self.heartbeat(silence_limit).await,
            _ = sweep.tick() => self.sweep_expired(),
            () = std::future::ready(()) => Ok(()),
        }
    }

    /// A heartbeat is due: the link is dead if the PBX has been silent too long, else one goes out.
    async fn heartbeat(&mut self, silence_limit: Duration) -> Result<(), String> {
        if self.last_frame_at.elapsed() > silence_limit {
            bump(&self.stats.heartbeat_timeouts);
            self.end_reason = Some(ReconnectReason::HeartbeatTimeout);
            Err(format!("no frame from the pbx for {:?} (heartbeats missed)", self.last_frame_at.elapsed()))
        } else {
            self.send_request(Pending::Heartbeat, request::Service::Heartbeat(pbx::HeartbeatRequest {})).await
        }
    }

    fn wants(&self, device: &str) -> bool {
        self.selection.as_ref().is_none_or(|devices| devices.contains(device))
    }

    /// Monitors exactly `devices` from now on: stops the monitors of the others (reporting them
    /// released at once, so the model forgets them in link order), and monitors and snapshots the
    /// new ones.
    async fn select(
        &mut self,
        session: u64,
        devices: Option<Arc<BTreeSet<String>>>,
        events: &mut Outgoing,
    ) -> Result<(), String> {
        self.selection = devices;
        let Some(wanted) = self.selection.clone() else { return Ok(()) };
        let mut released: Vec<String> =
            self.monitors.keys().filter(|device| !wanted.contains(*device)).cloned().collect();
        released.sort();
        for device in &released {
            if let Some(monitor_id) = self.monitors.remove(device) {
                self.acquiring.remove(device);
                self.internal.push_back(Pending::MonitorStop(device.clone(), monitor_id));
            }
        }
        if !released.is_empty() {
            tracing::info!(devices = released.len(), "monitors stopped: lines released");
            events.push(LinkEvent::Released { session, devices: released }).await?;
        }
        for device in wanted.iter() {
            if !self.monitors.contains_key(device) && self.monitoring.insert(device.clone()) {
                self.acquiring.insert(device.clone());
                self.internal.push_back(Pending::Monitor(device.clone()));
            }
        }
        Ok(())
    }

    fn publish_status(&self, session: u64, status: &watch::Sender<LinkStatus>) {
        let next = LinkStatus::Up {
            session,
            pbx_name: self.pbx_name.clone(),
            monitored: self.monitors.len(),
            resynced: self.resynced,
        };
        status.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }

    fn decode_failure(&mut self, error: &FrameError) -> String {
        self.stats.decode_error(error);
        self.end_reason = Some(ReconnectReason::DecodeError);
        tracing::error!(%error, kind = error.kind(), "undecodable frame from the pbx; closing the link");
        format!("undecodable frame from the pbx: {error}")
    }

    fn allocate_invoke_id(&mut self) -> u32 {
        loop {
            let id = self.next_invoke_id;
            self.next_invoke_id = self.next_invoke_id.wrapping_add(1).max(1);
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    async fn send_request(&mut self, pending: Pending, service: request::Service) -> Result<(), String> {
        let invoke_id = self.allocate_invoke_id();
        let frame = LinkMessage::Request { invoke_id, body: pbx::Request { service: Some(service) } };
        match self.writer.send(frame).await {
            Ok(()) => {
                bump(&self.stats.frames_out);
                self.pending.insert(invoke_id, pending);
                Ok(())
            }
            Err(FrameError::TooLong { length, max }) => {
                if let Pending::Caller { reply, .. } = pending {
                    let message = format!("the request is {length} bytes; the link allows {max}");
                    let _ = reply.send(Err(LinkError::Unsendable(message)));
                }
                Ok(())
            }
            Err(error) => {
                self.end_reason = Some(ReconnectReason::WriteFailed);
                Err(format!("cannot write to the pbx: {error}"))
            }
        }
    }

    async fn send_command(&mut self, command: Command) -> Result<(), String> {
        if command.reply.is_closed() {
            return Ok(());
        }
        if Instant::now() >= command.deadline {
            let _ = command.reply.send(Err(LinkError::DeadlineExceeded(Duration::ZERO)));
            return Ok(());
        }
        let pending =
            Pending::Caller { reply: command.reply, deadline: command.deadline, sent: command.service.name() };
        self.send_request(pending, command.service).await
    }

    /// Sends queued monitor and snapshot requests, keeping at most a window of them in flight.
    async fn send_internal(&mut self) -> Result<(), String> {
        while self.internal_in_flight < RESYNC_WINDOW {
            let Some(pending) = self.internal.pop_front() else { break };
            let service = match &pending {
                Pending::ListDevices(page_token) => request::Service::ListDevices(pbx::ListDevicesRequest {
                    page_token: page_token.clone(),
                    page_size: device_page_size(self.config.max_frame_length),
                }),
                Pending::Monitor(device) if !self.wants(device) => {
                    // Dropped from the selection before its monitor was even asked for.
                    self.monitoring.remove(device);
                    self.acquiring.remove(device);
                    continue;
                }
                Pending::Monitor(device) => {
                    request::Service::MonitorStart(pbx::MonitorStartRequest { device_id: device.clone() })
                }
                Pending::MonitorStop(_, monitor_id) => {
                    request::Service::MonitorStop(pbx::MonitorStopRequest { monitor_id: *monitor_id })
                }
                Pending::Snapshot(device) => {
                    request::Service::SnapshotDevice(pbx::SnapshotDeviceRequest { device_id: device.clone() })
                }
                Pending::Heartbeat | Pending::Caller { .. } => continue,
            };
            self.internal_in_flight += 1;
            self.send_request(pending, service).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, session: u64, message: LinkMessage, events: &mut Outgoing) -> Result<(), String> {
        self.last_frame_at = Instant::now();
        self.stats.last_frame_unix_ms.store(unix_time_ms(), Ordering::Relaxed);
        bump(&self.stats.frames_in);
        let message = match self.gather_pages(message) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(PageError::Overlong { invoke_id, message }) => {
                let Some(pending) = self.pending.remove(&invoke_id) else { return Ok(()) };
                return self.on_answer(session, pending, Err(LinkError::Protocol(message)), events).await;
            }
            Err(PageError::Broken(reason)) => {
                self.end_reason = Some(ReconnectReason::ProtocolError);
                return Err(reason);
            }
        };
        if !matches!(message, LinkMessage::Event(_)) && self.sequencer.has_gap() {
            // Events never cross results on a conforming link, so a result arriving while a gap is
            // open means the missing event is lost: stop waiting for it (docs/pbx-link.md).
            self.give_up_gap(events).await?;
        }
        match message {
            LinkMessage::Event(report) => {
                let released = self.sequencer.push(report);
                if released.duplicate {
                    bump(&self.stats.duplicate_events);
                }
                for event in released.events {
                    bump(&self.stats.events);
                    events.push(LinkEvent::Event(event)).await?;
                }
                self.gap_open_since = match (self.sequencer.has_gap(), self.gap_open_since) {
                    (false, _) => None,
                    (true, Some(since)) => Some(since),
                    (true, None) => Some(Instant::now()),
                };
                Ok(())
            }
            LinkMessage::Result { invoke_id, body } => {
                let Some(pending) = self.pending.remove(&invoke_id) else {
                    bump(&self.stats.late_answers);
                    return Ok(());
                };
                self.on_answer(session, pending, Ok(body.result), events).await
            }
            LinkMessage::Error { invoke_id: 0, body } => {
                Err(format!("the pbx reported a link error: {}", body.message))
            }
            LinkMessage::Error { invoke_id, body } => {
                let Some(pending) = self.pending.remove(&invoke_id) else {
                    bump(&self.stats.late_answers);
                    return Ok(());
                };
                let cause = ErrorCause::try_from(body.cause).unwrap_or(ErrorCause::Unspecified);
                self.on_answer(session, pending, Err(LinkError::Refused { cause, message: body.message }), events).await
            }
            LinkMessage::Request { invoke_id, body } => {
                let answer = match body.service {
                    Some(request::Service::Heartbeat(_)) => LinkMessage::Result {
                        invoke_id,
                        body: pbx::Response {
                            result: Some(response::Result::Heartbeat(pbx::HeartbeatResult {
                                timestamp_ms: unix_time_ms(),
                                last_event_sequence: 0,
                            })),
                        },
                    },
                    other => LinkMessage::Error {
                        invoke_id,
                        body: pbx::ErrorResponse {
                            cause: ErrorCause::ServiceNotSupported as i32,
                            message: format!(
                                "the gateway serves only heartbeats, not {}",
                                other.as_ref().map_or("an empty request", request::Service::name)
                            ),
                        },
                    },
                };
                self.writer.send(answer).await.map_err(|error| format!("cannot write to the pbx: {error}"))?;
                bump(&self.stats.frames_out);
                Ok(())
            }
        }
    }

    /// Gathers the pages of a snapshot (docs/pbx-link.md §7): returns the message to handle, the
    /// whole snapshot once its last page is in, or `None` while pages are still coming. Anything
    /// but a request between pages breaks the protocol: the pages would no longer be one instant.
    fn gather_pages(&mut self, message: LinkMessage) -> Result<Option<LinkMessage>, PageError> {
        if let Some(gathering) = self.gathering.as_mut() {
            let (invoke_id, page) = match message {
                LinkMessage::Request { .. } => return Ok(Some(message)),
                LinkMessage::Result {
                    invoke_id,
                    body: pbx::Response { result: Some(response::Result::SnapshotDevice(page)) },
                } if invoke_id == gathering.invoke_id => (invoke_id, page),
                other => {
                    return Err(PageError::Broken(format!(
                        "a frame of class {} came between the pages of the snapshot of {} (invoke id {})",
                        other.class(),
                        gathering.device_id,
                        gathering.invoke_id
                    )));
                }
            };
            let device_id = page.device.as_ref().map(|device| device.device_id.as_str()).unwrap_or_default();
            if device_id != gathering.device_id {
                return Err(PageError::Broken(format!(
                    "a page of the snapshot of {} (invoke id {invoke_id}) is about {device_id:?}",
                    gathering.device_id
                )));
            }
            gathering.add(page);
            if gathering.more {
                return Ok(None);
            }
            let Some(gathered) = self.gathering.take() else { return Ok(None) };
            return gathered.finish(&self.pending, &self.stats);
        }
        match message {
            LinkMessage::Result {
                invoke_id,
                body: pbx::Response { result: Some(response::Result::SnapshotDevice(page)) },
            } if page.more => {
                self.gathering = Some(SnapshotPages::start(invoke_id, page));
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    async fn on_answer(
        &mut self,
        session: u64,
        pending: Pending,
        outcome: Result<Option<response::Result>, LinkError>,
        events: &mut Outgoing,
    ) -> Result<(), String> {
        match pending {
            Pending::Caller { reply, sent, .. } => {
                let answer = outcome.and_then(|result| match result {
                    Some(result) if result.name() == sent => Ok(result),
                    Some(result) => Err(LinkError::Mismatch { sent, received: result.name() }),
                    None => Err(LinkError::Mismatch { sent, received: "empty" }),
                });
                let _ = reply.send(answer);
                Ok(())
            }
            Pending::Heartbeat => {
                // Results never overtake events: every event up to the PBX's last one has arrived by
                // now, or was lost. Lost events at the end of the stream show only here.
                if let Ok(Some(response::Result::Heartbeat(beat))) = outcome
                    && beat.last_event_sequence >= self.sequencer.next_expected()
                    && !self.sequencer.has_gap()
                {
                    bump(&self.stats.sequence_gaps);
                    tracing::warn!(
                        last_sent = beat.last_event_sequence,
                        next_expected = self.sequencer.next_expected(),
                        "events lost at the end of the stream; resyncing from snapshots"
                    );
                    self.sequencer.skip_to(beat.last_event_sequence + 1);
                    self.resync();
                }
                Ok(())
            }
            Pending::ListDevices(page_token) => {
                self.internal_in_flight -= 1;
                match outcome {
                    Ok(Some(response::Result::ListDevices(list))) => {
                        if !list.next_page_token.is_empty() {
                            if list.next_page_token == page_token {
                                return Err(format!(
                                    "the pbx gave page token {page_token:?} again: the list would not end"
                                ));
                            }
                            // The rest of the list first, so the resync cannot end without it.
                            self.internal.push_front(Pending::ListDevices(list.next_page_token));
                        }
                        let devices = list
                            .devices
                            .into_iter()
                            .filter(|device| device.kind != DeviceKind::External as i32)
                            .map(|device| Pending::Monitor(device.device_id));
                        self.internal.extend(devices);
                        if self.internal.is_empty() {
                            self.finish_resync_if_done(session, events).await?;
                        }
                        Ok(())
                    }
                    Ok(_) => Err("the pbx answered list_devices with another result".to_owned()),
                    Err(error) => Err(format!("the pbx would not list its devices: {error}")),
                }
            }
            Pending::Monitor(device) => {
                self.internal_in_flight -= 1;
                self.monitoring.remove(&device);
                match outcome {
                    Ok(Some(response::Result::MonitorStart(started))) if !self.wants(&device) => {
                        // Released while its monitor was being started: stop it again.
                        self.acquiring.remove(&device);
                        self.internal.push_back(Pending::MonitorStop(device, started.monitor_id));
                    }
                    Ok(Some(response::Result::MonitorStart(started))) => {
                        self.monitors.insert(device.clone(), started.monitor_id);
                        self.snapshots_due += 1;
                        self.internal.push_back(Pending::Snapshot(device));
                    }
                    Ok(_) => return Err(format!("the pbx answered monitor_start for {device} with another result")),
                    Err(error) => {
                        // One unknown device must not keep every other line unmonitored.
                        tracing::error!(device, %error, "device cannot be monitored");
                    }
                }
                self.finish_resync_if_done(session, events).await
            }
            Pending::MonitorStop(device, _) => {
                self.internal_in_flight -= 1;
                if let Err(error) = outcome {
                    // The PBX may have ended it already (monitor_ended); nothing is lost either way.
                    tracing::debug!(device, %error, "monitor stop refused");
                }
                self.finish_resync_if_done(session, events).await
            }
            Pending::Snapshot(device) => {
                self.internal_in_flight -= 1;
                self.snapshots_due = self.snapshots_due.saturating_sub(1);
                match outcome {
                    // Released since it was asked for: the model has forgotten it already.
                    Ok(Some(response::Result::SnapshotDevice(_))) if !self.monitors.contains_key(&device) => {}
                    Ok(Some(response::Result::SnapshotDevice(snapshot))) if self.acquiring.remove(&device) => {
                        events.push(LinkEvent::Acquired { session, snapshot }).await?;
                    }
                    Ok(Some(response::Result::SnapshotDevice(snapshot))) => {
                        self.snapshotted += 1;
                        events.push(LinkEvent::Snapshot { session, snapshot }).await?;
                    }
                    Ok(_) => return Err(format!("the pbx answered snapshot_device for {device} with another result")),
                    Err(error) => tracing::error!(device, %error, "device snapshot refused"),
                }
                self.finish_resync_if_done(session, events).await
            }
        }
    }

    async fn finish_resync_if_done(&mut self, session: u64, events: &mut Outgoing) -> Result<(), String> {
        let done = self.snapshots_due == 0 && self.internal.is_empty() && self.internal_in_flight == 0;
        if done && !self.resynced {
            self.resynced = true;
            bump(&self.stats.resyncs);
            tracing::info!(devices = self.snapshotted, "pbx link resynced");
            let devices = self.snapshotted;
            events.push(LinkEvent::ResyncComplete { session, devices }).await?;
        }
        Ok(())
    }

    /// Stops waiting for lost events: delivers what waited, then snapshots every monitored device.
    async fn give_up_gap(&mut self, events: &mut Outgoing) -> Result<(), String> {
        self.gap_open_since = None;
        let waiting = self.sequencer.give_up_gap();
        if waiting.is_empty() {
            return Ok(());
        }
        bump(&self.stats.sequence_gaps);
        tracing::warn!(next = self.sequencer.next_expected(), "events lost on the pbx link; resyncing from snapshots");
        for event in waiting {
            bump(&self.stats.events);
            events.push(LinkEvent::Event(event)).await?;
        }
        self.resync();
        Ok(())
    }

    /// Snapshots every monitored device again, to recover from lost events.
    fn resync(&mut self) {
        let devices: Vec<String> = self.monitors.keys().cloned().collect();
        self.snapshots_due += devices.len();
        self.snapshotted = 0;
        self.resynced = false;
        self.internal.extend(devices.into_iter().map(Pending::Snapshot));
    }

    /// Drops callers whose deadline has passed (they have given up already), and fails the link if
    /// the PBX stopped answering the gateway's own requests.
    fn sweep_expired(&mut self) -> Result<(), String> {
        let now = Instant::now();
        self.pending.retain(|_, pending| match pending {
            Pending::Caller { deadline, reply, .. } => *deadline > now && !reply.is_closed(),
            _ => true,
        });
        Ok(())
    }

    /// Fails every request still waiting, so no caller hangs on a dead link.
    fn fail_pending(&mut self, reason: &str) {
        for (_, pending) in self.pending.drain() {
            if let Pending::Caller { reply, .. } = pending {
                let _ = reply.send(Err(LinkError::Lost { reason: reason.to_owned() }));
            }
        }
    }
}

/// Why gathering a snapshot's pages failed.
enum PageError {
    /// More pages than [`MAX_SNAPSHOT_PAGES`]: the request fails, the link stays.
    Overlong { invoke_id: u32, message: String },
    /// Something else came between the pages, or a page of another device: the link is dropped.
    Broken(String),
}

/// The pages of one device snapshot gathered so far.
struct SnapshotPages {
    invoke_id: u32,
    device_id: String,
    /// The snapshot so far; its `more` is the last page's.
    snapshot: pbx::SnapshotDeviceResult,
    pages: usize,
    /// Whether more pages follow.
    more: bool,
    /// Set once the snapshot passed [`MAX_SNAPSHOT_PAGES`]: later pages are read and dropped.
    overlong: bool,
}

impl SnapshotPages {
    fn start(invoke_id: u32, first: pbx::SnapshotDeviceResult) -> Self {
        let device_id = first.device.as_ref().map(|device| device.device_id.clone()).unwrap_or_default();
        let more = first.more;
        Self { invoke_id, device_id, snapshot: first, pages: 1, more, overlong: false }
    }

    fn add(&mut self, page: pbx::SnapshotDeviceResult) {
        self.pages += 1;
        self.more = page.more;
        if self.pages > MAX_SNAPSHOT_PAGES {
            self.overlong = true;
            self.snapshot.calls = Vec::new();
        }
        if !self.overlong {
            self.snapshot.calls.extend(page.calls);
        }
    }

    /// The whole snapshot as one result; `None` when nobody waits for it any more.
    fn finish(self, pending: &HashMap<u32, Pending>, stats: &LinkStats) -> Result<Option<LinkMessage>, PageError> {
        if !pending.contains_key(&self.invoke_id) {
            bump(&stats.late_answers);
            return Ok(None);
        }
        let invoke_id = self.invoke_id;
        if self.overlong {
            let message = format!(
                "the snapshot of {} came in {} pages; the gateway gathers at most {MAX_SNAPSHOT_PAGES}",
                self.device_id, self.pages
            );
            return Err(PageError::Overlong { invoke_id, message });
        }
        let mut snapshot = self.snapshot;
        snapshot.more = false;
        Ok(Some(LinkMessage::Result {
            invoke_id,
            body: pbx::Response { result: Some(response::Result::SnapshotDevice(snapshot)) },
        }))
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}
