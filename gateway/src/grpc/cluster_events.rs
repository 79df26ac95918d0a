//! One Events stream for the whole cluster: this node's events merged with every other member's.
//! Each member is asked for its own lines' events only (the forwarding mark), so each line's events
//! come once, from the node that owns it. Members that join are added and members that leave are
//! dropped as this node reads the membership; a member whose stream breaks is asked again, and its
//! fresh snapshot then arrives as ordinary events.
//!
//! Order: each node's events keep their order and carry that node's sequence numbers and id
//! (`Event.node`); events of different nodes interleave as they arrive, with no order between
//! them. One `SnapshotComplete` (this node's sequence) ends the snapshots of the members there were
//! when the stream opened; a member that does not answer is not waited for.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use proto::api::{self, event::Event as E, events_client::EventsClient};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::events::STREAM_BUFFER;
use super::forward::{Peers, SUBSCRIBE};
use super::status::{fell_behind, member_stream_ended};

type Sender = mpsc::Sender<Result<api::Event, Status>>;

/// The first pause before asking a member whose stream broke again; it doubles up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// What one source (this node, or another member) said: an event, or the status its stream ended
/// with (another member's is asked again).
type Said = Result<api::Event, Status>;

type Source = Pin<Box<dyn Stream<Item = Said> + Send + Sync>>;

/// Streams every member's events into `sender`: this node's from `here`, the others' asked for
/// with the subscriber's `metadata` (its token) and `wanted` (its line filter).
pub(crate) fn merge(
    peers: Arc<Peers>,
    metadata: MetadataMap,
    wanted: api::SubscribeRequest,
    resume_failed: bool,
    here: mpsc::Receiver<Result<api::Event, Status>>,
    sender: Sender,
) {
    let me = peers.node_id().to_owned();
    let mut merge = Merge {
        peers,
        metadata,
        wanted,
        resume_failed,
        sender,
        sources: StreamMap::new(),
        waiting: BTreeSet::new(),
        held: Vec::new(),
        snapshot_done: false,
        as_of: 0,
        me: me.clone(),
    };
    merge.sources.insert(me.clone(), Box::pin(ReceiverStream::new(here)));
    merge.waiting.insert(me);
    tokio::spawn(merge.run());
}

struct Merge {
    peers: Arc<Peers>,
    metadata: MetadataMap,
    wanted: api::SubscribeRequest,
    resume_failed: bool,
    sender: Sender,
    sources: StreamMap<String, Source>,
    /// Sources whose first snapshot the merged snapshot still waits for.
    waiting: BTreeSet<String>,
    /// Live events of sources done with their snapshot, while others still send theirs.
    held: Vec<api::Event>,
    snapshot_done: bool,
    /// This node's snapshot sequence, for the merged `SnapshotComplete`.
    as_of: u64,
    me: String,
}

impl Merge {
    async fn run(mut self) {
        let mut members = self.peers.placement().watch_members();
        self.follow_members();
        loop {
            let said = tokio::select! {
                () = self.sender.closed() => return,
                changed = members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.follow_members();
                    if !self.snapshot_complete_if_ready().await {
                        return;
                    }
                    continue;
                }
                said = self.sources.next() => said,
            };
            let going_on = match said {
                None => false,
                Some((node, Ok(event))) => self.take(node, event).await,
                Some((node, Err(status))) if node == self.me => {
                    // This node's stream ends only for good: shutting down, too slow, model gone.
                    let _ = self.sender.send(Err(status)).await;
                    false
                }
                Some((node, Err(status))) => {
                    tracing::info!(node, %status, "a member's event stream broke; asking it again");
                    self.waiting.remove(&node);
                    self.snapshot_complete_if_ready().await
                }
            };
            if !going_on {
                return;
            }
        }
    }

    /// Asks members that joined, drops members that left.
    fn follow_members(&mut self) {
        let others: BTreeSet<String> = self.peers.others().into_iter().map(|peer| peer.node).collect();
        let gone: Vec<String> =
            self.sources.keys().filter(|node| **node != self.me && !others.contains(*node)).cloned().collect();
        for node in gone {
            self.sources.remove(&node);
            self.waiting.remove(&node);
        }
        for node in others {
            if self.sources.contains_key(&node) {
                continue;
            }
            let (out, said) = mpsc::channel(STREAM_BUFFER);
            let relay = relay(self.peers.clone(), node.clone(), self.metadata.clone(), self.wanted.clone(), out);
            tokio::spawn(relay);
            self.sources.insert(node.clone(), Box::pin(ReceiverStream::new(said)));
            if !self.snapshot_done {
                self.waiting.insert(node);
            }
        }
    }

    /// Handles one event of `node`; false once the subscriber is gone or cut off.
    async fn take(&mut self, node: String, event: api::Event) -> bool {
        if matches!(event.event, Some(E::SnapshotComplete(_))) {
            if node == self.me {
                self.as_of = event.sequence;
            }
            self.waiting.remove(&node);
            return self.snapshot_complete_if_ready().await;
        }
        if self.snapshot_done {
            return self.deliver(event).await;
        }
        if self.waiting.contains(&node) {
            // Part of the snapshot: the subscriber waits for it, as on a single node.
            return self.sender.send(Ok(event)).await.is_ok();
        }
        self.held.push(event);
        if self.held.len() >= STREAM_BUFFER {
            // A member is slow with its snapshot: stop waiting rather than hold the others back.
            self.waiting.clear();
            return self.snapshot_complete_if_ready().await;
        }
        true
    }

    /// Ends the merged snapshot once no source is waited for; false if the subscriber is gone.
    async fn snapshot_complete_if_ready(&mut self) -> bool {
        if self.snapshot_done || !self.waiting.is_empty() {
            return true;
        }
        self.snapshot_done = true;
        let complete = api::Event {
            sequence: self.as_of,
            node: self.me.clone(),
            event: Some(E::SnapshotComplete(api::SnapshotComplete { resume_failed: self.resume_failed })),
        };
        if self.sender.send(Ok(complete)).await.is_err() {
            return false;
        }
        for event in std::mem::take(&mut self.held) {
            if !self.deliver(event).await {
                return false;
            }
        }
        true
    }

    /// Writes a live event; a subscriber whose stream is full is cut off, as on a single node.
    async fn deliver(&self, event: api::Event) -> bool {
        match self.sender.try_send(Ok(event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = self.sender.send(Err(fell_behind())).await;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Relays `node`'s own events into `out` until `out` closes or the node leaves, asking again
/// (with a growing pause) whenever its stream breaks.
async fn relay(
    peers: Arc<Peers>,
    node: String,
    metadata: MetadataMap,
    wanted: api::SubscribeRequest,
    out: mpsc::Sender<Said>,
) {
    let mut pause = RETRY_FIRST;
    loop {
        // Looked up on each attempt: a member that restarts may come back at another address.
        let Some(peer) = peers.member(&node) else { return };
        let opened = peers
            .send(SUBSCRIBE, &peer, &metadata, Instant::now(), wanted.clone(), |channel, request| async move {
                EventsClient::new(channel).subscribe(request).await
            })
            .await;
        let broke = match opened {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        () = out.closed() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(event)) => {
                            pause = RETRY_FIRST;
                            if out.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break member_stream_ended(&node),
                        Err(status) => break status,
                    }
                }
            }
        };
        if out.send(Err(broke)).await.is_err() {
            return;
        }
        tokio::select! {
            () = out.closed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_MOST);
    }
}
