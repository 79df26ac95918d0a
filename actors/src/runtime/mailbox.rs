//! An actor's address paired with a count of the messages waiting in its mailbox, so that the
//! depth of every mailbox can be read without asking the actors (ractor does not expose it).
//!
//! The sender adds one before it sends, the actor takes one off as it starts on a message. The
//! count belongs to one actor's life: a restarted actor gets a fresh count, so what its crashed
//! predecessor left unread (ractor drops it) stops counting with it. The actor also marks itself
//! busy, which tells the idle sweep it has worked lately.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr, RpcReplyPort};

/// What an actor and its [`Mailbox`] share.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Messages sent and not yet started on.
    queued: AtomicU32,
    /// Whether the actor started on a message since the idle sweep last looked.
    busy: AtomicBool,
}

impl Tally {
    fn uncount(&self) {
        // Every message taken off was counted in by `Mailbox`; saturate anyway so that a message
        // sent around it can never make the gauge wrap to four billion.
        let _ = self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| Some(count.saturating_sub(1)));
    }
}

/// Called by the actor as it starts on a message.
pub(crate) fn took_one(tally: &Tally) {
    tally.uncount();
    tally.busy.store(true, Ordering::Relaxed);
}

/// Where messages to one actor go, and how many wait there.
pub(crate) struct Mailbox<M> {
    actor: ActorRef<M>,
    tally: Arc<Tally>,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self { actor: self.actor.clone(), tally: self.tally.clone() }
    }
}

impl<M: ractor::Message> Mailbox<M> {
    /// Pairs a just spawned actor with the count it was given.
    pub(crate) fn new(actor: ActorRef<M>, tally: Arc<Tally>) -> Self {
        Self { actor, tally }
    }

    /// The actor itself, for its id and to stop it.
    pub(crate) fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// Messages sent and not yet started on.
    pub(crate) fn queued(&self) -> u32 {
        self.tally.queued.load(Ordering::Relaxed)
    }

    /// Whether the actor has had nothing to do since the last time this was asked: no message
    /// started on, none waiting.
    pub(crate) fn idle_since_last_asked(&self) -> bool {
        let busy = self.tally.busy.swap(false, Ordering::Relaxed);
        !busy && self.queued() == 0
    }

    /// Sends without waiting.
    pub(crate) fn cast(&self, message: M) -> Result<(), MessagingErr<M>> {
        self.tally.queued.fetch_add(1, Ordering::Relaxed);
        self.actor.cast(message).inspect_err(|_| self.tally.uncount())
    }

    /// Sends and waits for the answer.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        message: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Option<Duration>,
    ) -> Result<CallResult<R>, MessagingErr<M>> {
        self.tally.queued.fetch_add(1, Ordering::Relaxed);
        // `call` fails only when the message could not be sent, which the count must undo.
        self.actor.call(message, timeout).await.inspect_err(|_| self.tally.uncount())
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
        let tally = Tally::default();
        took_one(&tally);
        assert_eq!(tally.queued.load(Ordering::Relaxed), 0);
        tally.queued.store(2, Ordering::Relaxed);
        took_one(&tally);
        assert_eq!(tally.queued.load(Ordering::Relaxed), 1);
        assert!(tally.busy.load(Ordering::Relaxed));
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
