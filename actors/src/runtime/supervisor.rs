//! The supervisor of every line and call actor: a crashed actor is restarted over its last state and
//! told to check it against a PBX snapshot. Also the orphan sweep.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::call_actor::CallOrder;
use super::line_actor::LineMsg;
use super::mailbox::Mailbox;
use super::{Context, Member, bump, lock};
use crate::port::PbxPort;

/// The supervisor takes no messages of its own; it only watches its children.
pub(crate) enum SupervisorMsg {}

pub(crate) struct Supervisor<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Supervisor<P> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<P: PbxPort> Actor for Supervisor<P> {
    type Msg = SupervisorMsg;
    type State = Arc<Context<P>>;
    type Arguments = Arc<Context<P>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        context: Arc<Context<P>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(context)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        _context: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {}
    }

    /// Unlike ractor's default, a child's exit never stops the supervisor: calls end all the time.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        context: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Every call's actor ends here when its call ends: look it up before putting anything
        // into words, since almost every exit is a clean one that needs no restart.
        let cell = match &event {
            SupervisionEvent::ActorFailed(cell, _) | SupervisionEvent::ActorTerminated(cell, _, _) => cell,
            _ => return Ok(()),
        };
        // A child that stops on its own removes itself from the registry first; one still
        // registered failed, or was killed from outside.
        let Some((_, member)) = context.members.remove(&cell.get_id()) else { return Ok(()) };
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, format!("failed: {error}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("terminated: {}", reason.unwrap_or_else(|| "killed".to_owned())))
            }
            _ => return Ok(()),
        };
        restart(context, member, &cell, &why).await;
        Ok(())
    }
}

async fn restart<P: PbxPort>(context: &Arc<Context<P>>, member: Member, cell: &ractor::ActorCell, why: &str) {
    match member {
        Member::Call(id) => {
            let Some(entry) = context.calls.get(&id).map(|entry| entry.clone()) else { return };
            if entry.actor().get_id() != cell.get_id() {
                return;
            }
            tracing::error!(call = id, why, "call actor crashed; restarting it");
            bump(&context.stats.restarts);
            match context.start_call_actor(id.clone(), entry.state.clone()).await {
                Ok(entry) => {
                    let _ = entry.cast(CallOrder::Resnapshot { at: wall_clock_ms() });
                }
                Err(error) => tracing::error!(call = id, %error, "call actor could not be restarted"),
            }
        }
        Member::Line(device) => {
            let Some(entry) = context.lines.get(&device).map(|entry| entry.clone()) else { return };
            if entry.actor().map(|actor| actor.get_id()) != Some(cell.get_id()) {
                return;
            }
            tracing::error!(device, why, "line actor crashed; restarting it");
            bump(&context.stats.restarts);
            if let Err(error) = context.start_line_actor(device.clone(), entry.state.clone(), LineMsg::Resnapshot).await
            {
                tracing::error!(device, %error, "line actor could not be restarted");
            }
        }
    }
}

/// Milliseconds since the Unix epoch on the gateway's clock, for ends the PBX did not time.
pub(crate) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

/// Periodically stops the actors of lines that had nothing to do since the last look (see
/// [`super::ModelConfig::line_idle`]).
pub(crate) async fn rest_idle_lines<P: PbxPort>(context: Arc<Context<P>>) {
    let mut ticks = tokio::time::interval(context.config.line_idle);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        rest_idle_lines_once(&context);
    }
}

/// Stops the actor of every line that has not started on a message since the last call, and has
/// none waiting; returns how many. The line's state stays in the registry.
pub(crate) fn rest_idle_lines_once<P>(context: &Context<P>) -> usize {
    let mut stopped = 0;
    // Each registry shard is write-locked while it is looked through, so nothing is sent to an
    // actor between the check that it is idle and its removal (the router sends under a read
    // guard). ractor's `stop` lets a message already begun finish first.
    for mut entry in context.lines.iter_mut() {
        if !entry.mailbox.as_ref().is_some_and(Mailbox::idle_since_last_asked) {
            continue;
        }
        let Some(mailbox) = entry.mailbox.take() else { continue };
        context.members.remove(&mailbox.actor().get_id());
        mailbox.actor().stop(Some("idle".to_owned()));
        bump(&context.stats.lines_rested);
        stopped += 1;
    }
    stopped
}

/// Periodically asks the PBX about calls with no news for a while, so a call whose end was never
/// reported is closed rather than leaked.
pub(crate) async fn sweep<P: PbxPort>(context: Arc<Context<P>>) {
    let interval = context.config.sweep_interval.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        sweep_once(&context);
    }
}

pub(crate) fn sweep_once<P: PbxPort>(context: &Context<P>) -> usize {
    let now = wall_clock_ms();
    let idle = context.config.sweep_idle.as_millis() as u64;
    let mut checked = 0;
    for entry in context.calls.iter() {
        let last_news = {
            let call = lock(&entry.state);
            call.timeline.last().map_or(call.created_at, |moment| moment.at)
        };
        if now.saturating_sub(last_news) >= idle {
            checked += 1;
            let _ = entry.cast(CallOrder::Resnapshot { at: now });
        }
    }
    checked
}
