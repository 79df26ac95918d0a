//! The call actor: applies a call's inputs in order, publishes each change, and when the call ends
//! writes its call log records and stops.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::mailbox::{Mailbox, Tally, took_one};
use super::{CallOutcome, Context, Shared, bump, lock};
use crate::call::{CallInput, CallLogRecord, CallState, LegNote, Party, leg_key};
use crate::domain::{Cause, LegOutcome, Millis};
use crate::events::{CallView, ModelEvent};
use crate::port::{PbxCommand, PbxOutcome, PbxPort};

/// An order for a call actor, addressed to the call it is about. Call actors are pooled: one that
/// finished its call goes on to serve another, so an order that names a call the actor no longer
/// runs (sent just before that call ended) is dropped instead of applied to the wrong call.
pub(crate) struct CallMsg {
    /// The call the order is for: the state its registry entry shares.
    pub(crate) call: Shared<CallState>,
    /// What to do.
    pub(crate) order: CallOrder,
}

/// What a call actor is asked to do.
pub(crate) enum CallOrder {
    /// Take on the call the message names (the actor comes from the pool), then apply its first
    /// inputs: one message for both, where two would cost a second send and wake-up per call.
    Adopt(Vec<CallInput>),
    /// Apply inputs in order.
    Apply(Vec<CallInput>),
    /// Make the parties what a PBX snapshot says.
    Reconcile { parties: Vec<Party>, at: Millis },
    /// Hand the state over (for a merge) and stop.
    TakeState(RpcReplyPort<CallState>),
    /// Check the state against the PBX's: used after a restart and by the orphan sweep.
    Resnapshot { at: Millis },
    /// The call's last monitored party left at `at`: if it is still out of view, ask the PBX.
    CheckView { at: Millis },
    /// Answer once every order sent before is handled (and the notes they made are sent).
    Barrier(RpcReplyPort<()>),
    /// Panic, as a bug would (supervision tests).
    #[cfg_attr(not(any(test, feature = "testsuite")), allow(dead_code))]
    Crash,
}

/// What the journal was told of one leg: a leg is told again when any of it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Journaled {
    line: String,
    answered: bool,
    /// The call's id then.
    call: String,
    /// The call's root then: the leg's key is the root and the line.
    root: String,
}

/// The behaviour; the state is the shared [`CallState`].
pub(crate) struct CallActor<P>(std::marker::PhantomData<fn() -> P>);

impl<P> CallActor<P> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

pub(crate) struct CallActorState<P> {
    context: Arc<Context<P>>,
    /// The call it serves, or served last while it waits in the pool.
    call: Shared<CallState>,
    /// Whether it serves `call` now (false while in the pool).
    serving: bool,
    /// What the durable journal was last told of each leg. A restarted actor starts empty and
    /// tells it again, which the journal takes as an update.
    journaled: Vec<Journaled>,
    /// Messages waiting for it (see [`Mailbox`]).
    queued: Arc<Tally>,
}

impl<P: PbxPort> Actor for CallActor<P> {
    type Msg = CallMsg;
    type State = CallActorState<P>;
    type Arguments = (Arc<Context<P>>, Shared<CallState>, Arc<Tally>);

    async fn pre_start(
        &self,
        _myself: ActorRef<CallMsg>,
        (context, call, queued): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CallActorState { context, call, serving: true, journaled: Vec::new(), queued })
    }

    /// A call made from a snapshot (or restarted over its state) journals its legs at once.
    async fn post_start(&self, _myself: ActorRef<CallMsg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        journal(state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        message: CallMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        took_one(&state.queued);
        let CallMsg { call, order } = message;
        if let CallOrder::Adopt(first) = order {
            state.call = call;
            state.serving = true;
            state.journaled.clear();
            // As a freshly started actor does in `post_start`.
            journal(state).await;
            if !first.is_empty() {
                apply(&myself, state, first).await;
            }
            return Ok(());
        }
        if !state.serving || !Arc::ptr_eq(&state.call, &call) {
            tracing::debug!("an order for a call this actor no longer runs; dropped");
            return Ok(());
        }
        match order {
            CallOrder::Adopt(_) => {}
            CallOrder::Apply(inputs) => apply(&myself, state, inputs).await,
            CallOrder::Reconcile { parties, at } => {
                let view = {
                    let mut call = lock(&state.call);
                    call.reconcile(parties, at).then(|| CallView::from(&*call))
                };
                if let Some(view) = view {
                    state.context.publisher.publish(ModelEvent::Call(view));
                }
                journal(state).await;
            }
            CallOrder::Barrier(reply) => {
                let _ = reply.send(());
            }
            CallOrder::TakeState(reply) => {
                let call = lock(&state.call).clone();
                forget(&myself, state);
                if state.context.config.journal_legs && !state.journaled.is_empty() {
                    // The legs go on under the merged call, which journals them under its own key.
                    let keys = call.provisional_records(call.created_at).iter().map(CallLogRecord::key).collect();
                    let _ = state.context.logs.send(LegNote::Moved(keys)).await;
                }
                let _ = reply.send(call);
                release(&myself, state);
            }
            // Rare and deep futures are boxed: an actor's task is as large as its largest await,
            // and a hundred thousand actors pay for it all the time.
            CallOrder::Resnapshot { at } => Box::pin(resnapshot(&myself, state, at)).await,
            CallOrder::CheckView { at } => {
                let still_out = {
                    let call = lock(&state.call);
                    !call.in_view() && !call.is_ended()
                };
                if still_out {
                    Box::pin(resnapshot(&myself, state, at)).await;
                }
            }
            CallOrder::Crash => panic!("call actor crash requested"),
        }
        Ok(())
    }
}

/// Applies inputs in order and publishes the change once; ends the call if they ended it.
async fn apply<P: PbxPort>(myself: &ActorRef<CallMsg>, state: &mut CallActorState<P>, inputs: Vec<CallInput>) {
    let (changed, view, left_view) = {
        let mut call = lock(&state.call);
        let was_in_view = call.in_view();
        let mut changed = false;
        for input in inputs {
            changed |= call.apply(input);
        }
        let left_view = (was_in_view && !call.in_view() && !call.is_ended())
            .then(|| call.timeline.last().map_or(call.created_at, |entry| entry.at));
        (changed, changed.then(|| CallView::from(&*call)), left_view)
    };
    if let Some(view) = view {
        state.context.publisher.publish(ModelEvent::Call(view));
    }
    if let Some(at) = left_view {
        check_view_later(myself, state, at);
    }
    if changed {
        Box::pin(finish_if_ended(myself, state)).await;
        journal(state).await;
    }
}

/// Checks the call against the PBX's snapshot: reconciles it, or closes it if the PBX no longer has it.
async fn resnapshot<P: PbxPort>(myself: &ActorRef<CallMsg>, state: &mut CallActorState<P>, at: Millis) {
    let id = lock(&state.call).id.clone();
    match state.context.port.execute(PbxCommand::SnapshotCall { call: id.clone() }).await {
        Ok(PbxOutcome::Snapshot(Some(parties))) => {
            let (view, out_of_view) = {
                let mut call = lock(&state.call);
                let changed = call.reconcile(parties, at);
                let out_of_view = !call.in_view();
                if out_of_view {
                    // The PBX goes on with the call among outside parties only: it will report
                    // nothing more of it to this gateway, so the gateway's part ends now.
                    call.apply(CallInput::Ended { cause: Cause::Normal, at });
                }
                ((changed || out_of_view).then(|| CallView::from(&*call)), out_of_view)
            };
            if let Some(view) = view {
                state.context.publisher.publish(ModelEvent::Call(view));
            }
            if out_of_view {
                tracing::debug!(call = id, "a call left the gateway's view; its records are written");
                bump(&state.context.stats.out_of_view_closed);
                finish_if_ended(myself, state).await;
            }
        }
        Ok(PbxOutcome::Snapshot(None)) => {
            // The PBX has no such call: its end was never reported. Close it now.
            tracing::info!(call = id, "closing a call the pbx no longer has");
            bump(&state.context.stats.orphans_closed);
            let view = {
                let mut call = lock(&state.call);
                call.apply(CallInput::Ended { cause: Cause::Normal, at });
                CallView::from(&*call)
            };
            state.context.publisher.publish(ModelEvent::Call(view));
            finish_if_ended(myself, state).await;
        }
        Ok(other) => tracing::warn!(call = id, ?other, "unexpected answer to a call snapshot"),
        Err(error) => tracing::warn!(call = id, %error, "call snapshot failed; keeping the call"),
    }
}

/// Asks this actor, after the configured wait, whether a call that just lost its last monitored
/// party is still out of view (a call between outside parties only, for a moment, is common:
/// between an ACD queue letting go and the agent's phone ringing).
fn check_view_later<P>(myself: &ActorRef<CallMsg>, state: &CallActorState<P>, at: Millis) {
    let mailbox = Mailbox::new(myself.clone(), state.queued.clone());
    check_view_after(state.context.config.out_of_view_check, mailbox, state.call.clone(), at);
}

/// Sends [`CallOrder::CheckView`] for `call` after `wait` (zero: never).
pub(crate) fn check_view_after(
    wait: std::time::Duration,
    mailbox: Mailbox<CallMsg>,
    call: Shared<CallState>,
    at: Millis,
) {
    if wait.is_zero() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = mailbox.cast(CallMsg { call, order: CallOrder::CheckView { at } });
    });
}

/// Tells the durable journal about legs that opened or changed since it was last told (answered, or
/// the call got a new id), unless the call has ended (its final records said everything).
async fn journal<P: PbxPort>(state: &mut CallActorState<P>) {
    // Boxed, and only when configured: the journal's future holds records and a channel send, and
    // inline it would make every call actor's task that much larger (see `handle`).
    if state.context.config.journal_legs {
        Box::pin(journal_changes(state)).await;
    }
}

async fn journal_changes<P: PbxPort>(state: &mut CallActorState<P>) {
    let (rekeyed, changed): (Vec<String>, Vec<CallLogRecord>) = {
        let call = lock(&state.call);
        if call.is_ended() {
            return;
        }
        let signature: Vec<Journaled> = call
            .legs
            .iter()
            .map(|leg| Journaled {
                line: leg.device.clone(),
                answered: leg.answered_at.is_some(),
                call: call.id.clone(),
                root: call.root.clone(),
            })
            .collect();
        if signature == state.journaled {
            return;
        }
        // Legs journaled under another root (the PBX's linkage id came after them) are told
        // under their new key below; the old keys must go.
        let rekeyed = state
            .journaled
            .iter()
            .filter(|told| told.root != call.root)
            .map(|told| leg_key(&told.root, &told.line))
            .collect();
        let at = call.timeline.last().map_or(call.created_at, |entry| entry.at);
        let records = call
            .provisional_records(at)
            .into_iter()
            .filter(|record| {
                let now = signature.iter().find(|leg| leg.line == record.device);
                !state.journaled.iter().any(|told| Some(told) == now)
            })
            .collect();
        state.journaled = signature;
        (rekeyed, records)
    };
    if !rekeyed.is_empty() {
        let _ = state.context.logs.send(LegNote::Moved(rekeyed)).await;
    }
    for mut record in changed {
        record.agent_id = state.context.agent_on(&record.device);
        tracing::debug!(call = record.call_id, line = record.device, "journaling a leg");
        if state.context.logs.send(LegNote::Open(record)).await.is_err() {
            tracing::error!("the call log sink is gone; a leg could not be journaled");
        }
    }
}

/// Removes the call from the registry if the entry is still this actor's.
fn forget<P>(myself: &ActorRef<CallMsg>, state: &CallActorState<P>) {
    let id = lock(&state.call).id.clone();
    state.context.calls.remove_if(&id, |_, entry| entry.actor().get_id() == myself.get_id());
    state.context.members.remove(&myself.get_id());
}

/// When the call has ended: writes one record per agent leg to the log sink (waiting for room: a
/// record is never dropped), publishes them, and stops.
async fn finish_if_ended<P: PbxPort>(myself: &ActorRef<CallMsg>, state: &mut CallActorState<P>) {
    let publisher = &state.context.publisher;
    let (records, counted) = {
        let call = lock(&state.call);
        if !call.is_ended() {
            return;
        }
        // A node counts the calls it answers for; those it only watches (a cluster standby's) are
        // their owner's to count.
        let counted = !publisher.is_scoped()
            || call.legs.iter().any(|leg| publisher.serves(&leg.device))
            || call.queue.as_deref().is_some_and(|queue| publisher.serves(queue));
        (call.log_records(), counted)
    };
    forget(myself, state);
    // Every leg counts towards the outcome, including the records left out below.
    let outcome = CallOutcome::of(records.iter().map(|record| record.outcome));
    let skip_missed = state.context.config.skip_missed_queue_records;
    for mut record in records {
        if skip_missed && record.via_queue && record.outcome == LegOutcome::Missed {
            if state.context.config.journal_legs {
                let _ = state.context.logs.send(LegNote::Skipped(record)).await;
            }
            continue;
        }
        record.agent_id = state.context.agent_on(&record.device);
        if publisher.serves(&record.device) {
            bump(&state.context.stats.records);
        }
        state.context.publisher.publish(ModelEvent::CallLog(record.clone()));
        if state.context.logs.send(LegNote::Closed(record)).await.is_err() {
            tracing::error!("the call log sink is gone; a record could not be written");
        }
    }
    if counted {
        state.context.stats.call_ended(outcome);
    }
    release(myself, state);
}

/// Done with its call (already out of the registry): back to the pool if it has room, else stop.
/// Reuse spares the next call an actor's start and stop, which cost more than the call's events.
fn release<P: PbxPort>(myself: &ActorRef<CallMsg>, state: &mut CallActorState<P>) {
    state.serving = false;
    state.journaled.clear();
    if !state.context.pool_call_actor(Mailbox::new(myself.clone(), state.queued.clone())) {
        myself.stop(None);
    }
}
