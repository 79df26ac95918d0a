//! An actor's address paired with a count of the messages waiting in its mailbox, so that the
//! depth of every mailbox can be read without asking the actors (ractor does not expose it).
//!
//! The sender adds one before it sends, the actor takes one off as it starts on a message. The
//! count belongs to one actor's life: a restarted actor gets a fresh count, so what its crashed
//! predecessor left unread (ractor drops it) stops counting with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr, RpcReplyPort};

/// The count an actor and its [`Mailbox`] share.
pub(crate) type Queued = Arc<AtomicU32>;

/// Called by the actor as it starts on a message.
pub(crate) fn took_one(queued: &Queued) {
    // Every message counted here was counted in by `Mailbox`; saturate anyway so that a message
    // sent around it can never make the gauge wrap to four billion.
    let _ = queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| Some(count.saturating_sub(1)));
}

/// Where messages to one actor go, and how many wait there.
pub(crate) struct Mailbox<M> {
    actor: ActorRef<M>,
    queued: Queued,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self { actor: self.actor.clone(), queued: self.queued.clone() }
    }
}

impl<M: ractor::Message> Mailbox<M> {
    /// Pairs a just spawned actor with the count it was given.
    pub(crate) fn new(actor: ActorRef<M>, queued: Queued) -> Self {
        Self { actor, queued }
    }

    /// The actor itself, for its id and to stop it.
    pub(crate) fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// Messages sent and not yet started on.
    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Sends without waiting.
    pub(crate) fn cast(&self, message: M) -> Result<(), MessagingErr<M>> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.actor.cast(message).inspect_err(|_| took_one(&self.queued))
    }

    /// Sends and waits for the answer.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        message: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Option<Duration>,
    ) -> Result<CallResult<R>, MessagingErr<M>> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        // `call` fails only when the message could not be sent, which the count must undo.
        self.actor.call(message, timeout).await.inspect_err(|_| took_one(&self.queued))
    }
}

/// The depth of a kind of actor's mailboxes, read at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MailboxDepth {
    /// Messages waiting across all of them.
    pub total: u64,
    /// Messages waiting in the fullest one.
    pub deepest: u32,
}

impl MailboxDepth {
    pub(crate) fn add(&mut self, queued: u32) {
        self.total += u64::from(queued);
        self.deepest = self.deepest.max(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_from_an_empty_count_stays_at_zero() {
        let queued = Queued::default();
        took_one(&queued);
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        queued.store(2, Ordering::Relaxed);
        took_one(&queued);
        assert_eq!(queued.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn depth_sums_and_keeps_the_deepest() {
        let mut depth = MailboxDepth::default();
        for queued in [3, 0, 7, 1] {
            depth.add(queued);
        }
        assert_eq!(depth, MailboxDepth { total: 11, deepest: 7 });
    }
}
