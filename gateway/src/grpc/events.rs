//! The Events service: a snapshot of the current state, then every change in order; resumable by
//! sequence number; a subscriber too slow to keep up is told so and cut off. In a cluster a stream
//! merges this node's events with every other member's ([`super::cluster_events`]).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use actors::domain::CallId;
use actors::events::{ModelEvent, Sequenced, Subscription, SubscriptionEnded};
use actors::runtime::Model;
use futures::Stream;
use proto::api::{self, events_server::Events};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::convert;
use super::forward::{Peers, Routing};
use super::guard::{Guard, Scope};
use crate::bridge::LinkPort;

/// The Events service over the model.
pub(crate) struct EventsService {
    pub(crate) model: Model<LinkPort>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) guard: Arc<Guard>,
    pub(crate) routing: Routing,
}

/// Events waiting to be written to one subscriber's stream.
pub(super) const STREAM_BUFFER: usize = 1_024;

type EventStream = Pin<Box<dyn Stream<Item = Result<api::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<api::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        self.guard.admit(&request, Scope::Read)?;
        let (metadata, _, request) = request.into_parts();
        let lines: HashSet<String> = request.lines.iter().map(|line| line.trim().to_owned()).collect();
        if lines.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("lines must not contain an empty line id"));
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        match &self.routing {
            // A stream another member opened for its own subscriber has this node's events only.
            Some(peers) if Peers::forwarded_by(&metadata).is_none() => {
                let (here, events_here) = mpsc::channel(STREAM_BUFFER);
                self.stream_here(0, Filter::new(lines), here);
                let wanted = api::SubscribeRequest { resume_after: 0, lines: request.lines };
                let resume_failed = request.resume_after != 0;
                super::cluster_events::merge(peers.clone(), metadata, wanted, resume_failed, events_here, sender);
            }
            _ => self.stream_here(request.resume_after, Filter::new(lines), sender),
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl EventsService {
    /// Streams this node's events into `sender`: a snapshot (unless resuming), then every change.
    fn stream_here(&self, resume_after: u64, mut filter: Filter, sender: mpsc::Sender<Result<api::Event, Status>>) {
        let node = self.routing.as_ref().map(|peers| peers.node_id().to_owned()).unwrap_or_default();
        let publisher = self.model.publisher();
        let (subscription, snapshot, resume_failed) = match resume_after {
            0 => (publisher.subscription(), true, false),
            after => match publisher.resume_subscription(after) {
                Ok(subscription) => (subscription, false, false),
                Err(too_old) => {
                    tracing::info!(%too_old, "subscriber cannot resume; sending a fresh snapshot");
                    (publisher.subscription(), true, true)
                }
            },
        };
        let model = self.model.clone();
        let shutdown = self.shutdown.clone();
        if !snapshot {
            // A resumed subscriber knows the calls on its lines as they are now (by their ids now).
            for call in self.model.calls() {
                filter.keeps(&ModelEvent::Call(call));
            }
        }
        tokio::spawn(async move {
            if snapshot {
                let as_of = subscription.last_seen();
                for event in snapshot_events(&model, &mut filter, as_of, resume_failed, &node) {
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
            forward(subscription, filter, sender, shutdown, node).await;
        });
    }
}

/// Which events one subscriber wants: those of its lines (all, if it named none), and the renames of
/// the calls it has been told about.
struct Filter {
    lines: HashSet<String>,
    /// Calls in progress this subscriber was told about, by their ids now.
    calls: HashSet<CallId>,
}

impl Filter {
    fn new(lines: HashSet<String>) -> Self {
        Self { lines, calls: HashSet::new() }
    }

    fn everything(&self) -> bool {
        self.lines.is_empty()
    }

    /// Whether the subscriber gets `event`; learns the calls it is told about as it goes.
    fn keeps(&mut self, event: &ModelEvent) -> bool {
        if self.everything() {
            return true;
        }
        match event {
            ModelEvent::Line(line) => {
                let keeps = self.lines.contains(&line.device);
                if keeps {
                    self.calls.extend(line.calls.iter().map(|(call, _)| call.clone()));
                }
                keeps
            }
            ModelEvent::Call(call) => {
                let keeps = call.parties.iter().any(|party| self.lines.contains(&party.device));
                if keeps && call.ended_at.is_none() {
                    self.calls.insert(call.id.clone());
                } else {
                    self.calls.remove(&call.id);
                }
                keeps
            }
            ModelEvent::CallLog(record) => self.lines.contains(&record.device),
            ModelEvent::ScreenPop(pop) => self.lines.contains(&pop.device),
            // A rename concerns the subscriber if it knew one of the calls, by an old id or the new.
            ModelEvent::CallRenamed { old, new } => {
                let mut keeps = self.calls.contains(new);
                for id in old {
                    keeps |= self.calls.remove(id);
                }
                if keeps {
                    self.calls.insert(new.clone());
                }
                keeps
            }
        }
    }
}

fn snapshot_events(
    model: &Model<LinkPort>,
    filter: &mut Filter,
    as_of: u64,
    resume_failed: bool,
    node: &str,
) -> Vec<api::Event> {
    use api::event::Event as E;
    let mut events = Vec::new();
    let event = |event| api::Event { sequence: as_of, node: node.to_owned(), event: Some(event) };
    for line in model.lines() {
        if filter.keeps(&ModelEvent::Line(line.clone())) {
            events.push(event(E::Line(convert::line(line))));
        }
    }
    for call in model.calls() {
        if filter.keeps(&ModelEvent::Call(call.clone())) {
            events.push(event(E::Call(convert::call(call))));
        }
    }
    events.push(event(E::SnapshotComplete(api::SnapshotComplete { resume_failed })));
    events
}

fn to_api(sequenced: &Sequenced, node: &str) -> api::Event {
    use api::event::Event as E;
    let event = match sequenced.event.clone() {
        ModelEvent::Line(line) => E::Line(convert::line(line)),
        ModelEvent::Call(call) => E::Call(convert::call(call)),
        ModelEvent::CallRenamed { old, new } => {
            E::CallRenamed(api::CallRenamed { old_call_ids: old, new_call_id: new })
        }
        ModelEvent::CallLog(record) => E::CallLog(convert::call_log(record)),
        ModelEvent::ScreenPop(pop) => E::ScreenPop(convert::screen_pop(pop)),
    };
    api::Event { sequence: sequenced.sequence, node: node.to_owned(), event: Some(event) }
}

/// Writes the live events until the subscriber leaves, falls behind, or the gateway stops.
async fn forward(
    mut subscription: Subscription,
    mut filter: Filter,
    sender: mpsc::Sender<Result<api::Event, Status>>,
    shutdown: CancellationToken,
    node: String,
) {
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = sender.send(Err(Status::unavailable("the gateway is shutting down; reconnect with resume_after"))).await;
                return;
            }
            () = sender.closed() => return,
            next = subscription.next() => next,
        };
        let event = match next {
            Ok(event) => event,
            Err(ended @ SubscriptionEnded::TooSlow { .. }) => {
                let _ = sender.send(Err(Status::resource_exhausted(ended.to_string()))).await;
                return;
            }
            Err(SubscriptionEnded::Closed) => {
                let _ = sender.send(Err(Status::unavailable("the model stopped"))).await;
                return;
            }
        };
        if !filter.keeps(&event.event) {
            continue;
        }
        // A subscriber whose own stream is full is as slow as one that fell behind the model.
        match sender.try_send(Ok(to_api(&event, &node))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let reason = SubscriptionEnded::TooSlow { missed: 1, last_seen: event.sequence.saturating_sub(1) };
                let _ = sender.send(Err(Status::resource_exhausted(reason.to_string()))).await;
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use actors::call::CallState;
    use actors::domain::{ConnState, DeviceKind, Presence};
    use actors::events::LineView;

    use super::*;

    fn line(device: &str, calls: &[&str]) -> ModelEvent {
        let calls = calls.iter().map(|call| ((*call).to_owned(), ConnState::Connected)).collect();
        ModelEvent::Line(LineView { device: device.into(), agent: None, presence: Presence::Busy, calls })
    }

    fn call(id: &str, devices: &[&str], ended: bool) -> ModelEvent {
        let mut call = CallState::new(id.into(), 0);
        call.parties = devices
            .iter()
            .map(|device| actors::call::Party {
                device: (*device).into(),
                kind: DeviceKind::Line,
                state: ConnState::Connected,
            })
            .collect();
        let mut view = actors::events::CallView::from(&call);
        view.ended_at = ended.then_some(9);
        ModelEvent::Call(view)
    }

    fn renamed(old: &[&str], new: &str) -> ModelEvent {
        ModelEvent::CallRenamed { old: old.iter().map(|id| (*id).to_owned()).collect(), new: new.into() }
    }

    #[test]
    fn a_subscriber_to_some_lines_hears_the_renames_of_their_calls_only() {
        let mut filter = Filter::new(HashSet::from(["2001".to_owned()]));
        assert!(filter.keeps(&call("C1", &["+4930", "2001"], false)));
        assert!(!filter.keeps(&call("C2", &["+4931", "2002"], false)));
        assert!(filter.keeps(&line("2001", &["C4"])), "a line's calls are known from its event too");
        assert!(!filter.keeps(&renamed(&["C2"], "C3")), "another line's call");
        assert!(filter.keeps(&renamed(&["C1", "C2"], "C5")), "a transfer that merged its call");
        assert!(filter.keeps(&renamed(&["C5"], "C6")), "known by its new id");
        assert!(filter.keeps(&renamed(&["C4"], "C7")));
        assert!(filter.keeps(&call("C6", &["2001"], true)));
        assert!(!filter.keeps(&renamed(&["C6"], "C8")), "an ended call is forgotten");
        assert!(Filter::new(HashSet::new()).keeps(&renamed(&["C2"], "C3")), "no lines named: everything");
    }
}
