//! The line actor: applies a line's inputs in order and publishes each change.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::mailbox::{Tally, took_one};
use super::{Context, Shared, lock};
use crate::events::{LineView, ModelEvent};
use crate::line::{LineInput, LineState};
use crate::port::{PbxCommand, PbxOutcome, PbxPort};

/// What a line actor is asked to do.
pub(crate) enum LineMsg {
    /// Apply inputs in order.
    Apply(Vec<LineInput>),
    /// Check the state against the PBX's: used after a restart.
    Resnapshot,
    /// Panic, as a bug would (supervision tests).
    #[cfg_attr(not(any(test, feature = "testsuite")), allow(dead_code))]
    Crash,
}

/// The behaviour; the state is the shared [`LineState`].
pub(crate) struct LineActor<P>(std::marker::PhantomData<fn() -> P>);

impl<P> LineActor<P> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

pub(crate) struct LineActorState<P> {
    context: Arc<Context<P>>,
    line: Shared<LineState>,
    /// Messages waiting for it (see [`super::mailbox::Mailbox`]).
    queued: Arc<Tally>,
}

impl<P: PbxPort> Actor for LineActor<P> {
    type Msg = LineMsg;
    type State = LineActorState<P>;
    type Arguments = (Arc<Context<P>>, Shared<LineState>, Arc<Tally>);

    async fn pre_start(
        &self,
        _myself: ActorRef<LineMsg>,
        (context, line, queued): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(LineActorState { context, line, queued })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LineMsg>,
        message: LineMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        took_one(&state.queued);
        match message {
            LineMsg::Apply(inputs) => apply(state, inputs),
            // Boxed: an actor's task is as large as its largest await (see the call actor).
            LineMsg::Resnapshot => Box::pin(resnapshot(state)).await,
            LineMsg::Crash => panic!("line actor crash requested"),
        }
        Ok(())
    }
}

/// Replaces the line's state with the PBX's snapshot of it.
async fn resnapshot<P: PbxPort>(state: &LineActorState<P>) {
    let device = lock(&state.line).device.clone();
    match state.context.port.execute(PbxCommand::SnapshotLine { device: device.clone() }).await {
        Ok(PbxOutcome::LineSnapshot { agent, calls }) => apply(state, vec![super::line_snapshot(agent, calls)]),
        Ok(other) => tracing::warn!(device, ?other, "unexpected answer to a line snapshot"),
        Err(error) => tracing::warn!(device, %error, "line snapshot failed; keeping what is known"),
    }
}

fn apply<P>(state: &LineActorState<P>, inputs: Vec<LineInput>) {
    let view = {
        let mut line = lock(&state.line);
        let mut changed = false;
        for input in inputs {
            changed |= line.apply(input);
        }
        changed.then(|| LineView::from(&*line))
    };
    if let Some(view) = view {
        state.context.publisher.publish(ModelEvent::Line(view));
    }
}
