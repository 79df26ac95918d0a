//! The running gateway: starts the PBX link and the consumer of its events, and stops them in order.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pbx::{self, LinkEvent, LinkHandle};

/// What the gateway has seen of the phone system, for the status line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Sessions that came up.
    pub sessions: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// Device snapshots taken.
    pub snapshots: u64,
    /// Events received in order.
    pub events: u64,
}

/// A running gateway.
pub struct Gateway {
    link: LinkHandle,
    shutdown: CancellationToken,
    link_task: JoinHandle<()>,
    consumer: JoinHandle<()>,
    progress: tokio::sync::watch::Receiver<Progress>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("link", &self.link).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts the gateway's parts with `config`.
    pub fn start(config: &Config) -> Self {
        let shutdown = CancellationToken::new();
        let (events_tx, events) = mpsc::channel(8_192);
        let (link, link_task) = pbx::start(config.pbx.clone(), events_tx, shutdown.child_token());
        let (progress_tx, progress) = tokio::sync::watch::channel(Progress::default());
        let consumer = tokio::spawn(consume(events, progress_tx));
        Self { link, shutdown, link_task, consumer, progress }
    }

    /// The PBX link, for sending requests and watching its status.
    pub fn link(&self) -> &LinkHandle {
        &self.link
    }

    /// What the gateway has seen so far.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// A receiver that sees what the gateway has seen, as it changes.
    pub fn watch_progress(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Stops the link (failing requests in flight with a clear error), then drains the events it
    /// had delivered. Waits at most `grace` for each part.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        if tokio::time::timeout(grace, self.link_task).await.is_err() {
            tracing::warn!("pbx link did not stop in time");
        }
        if tokio::time::timeout(grace, self.consumer).await.is_err() {
            tracing::warn!("event consumer did not drain in time");
        }
    }
}

async fn consume(mut events: mpsc::Receiver<LinkEvent>, progress: tokio::sync::watch::Sender<Progress>) {
    while let Some(event) = events.recv().await {
        progress.send_modify(|progress| match &event {
            LinkEvent::Up { session, pbx_name } => {
                tracing::info!(session, pbx_name, "pbx link up; resyncing");
                progress.sessions += 1;
            }
            LinkEvent::Snapshot { .. } => progress.snapshots += 1,
            LinkEvent::ResyncComplete { devices, .. } => {
                tracing::info!(devices, "resync complete");
                progress.resyncs += 1;
            }
            LinkEvent::Event(_) => progress.events += 1,
            LinkEvent::Down { reason, .. } => tracing::warn!(reason, "pbx link down"),
        });
    }
}
