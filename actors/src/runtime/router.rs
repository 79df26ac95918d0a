//! The router: takes the model's inputs in link order and hands each to the right actor, creating
//! actors for new lines and calls, joining calls on transfer and conference, and closing calls a
//! resync shows are gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::call_actor::{CallMsg, CallOrder, check_view_after};
use super::line_actor::LineMsg;
use super::supervisor::wall_clock_ms;
use super::{CallSnapshot, Context, IdHasher, Merge, ModelInput, bump, creates_call, lock};
use crate::call::{CallInput, CallState, Party};
use crate::domain::{CallId, Cause, ConnState, DeviceKind, Millis};
use crate::events::{CallView, ModelEvent};
use crate::line::{LineInput, LineState};
use crate::port::PbxPort;

/// Routes [`ModelInput`]s to the actors. One router per model; it is fed in link order.
pub struct Router<P> {
    context: Arc<Context<P>>,
    /// During a resync: the calls a snapshot or an event has mentioned since it began.
    resync: Option<HashSet<CallId>>,
}

impl<P: PbxPort> Router<P> {
    pub(crate) fn new(context: Arc<Context<P>>) -> Self {
        Self { context, resync: None }
    }

    /// Routes every input from `inputs` until the sender is dropped.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<ModelInput>) {
        while let Some(input) = inputs.recv().await {
            self.route(input).await;
        }
    }

    /// Routes a batch of inputs, in order, with one message per actor for each run of inputs that
    /// can be merged: an actor applies a run at once and publishes once. Merges, snapshots and
    /// resync bounds split runs, since they need every earlier input applied first.
    pub async fn route_all(&mut self, inputs: &mut Vec<ModelInput>) {
        let mut calls: Vec<(CallId, Vec<CallInput>)> = Vec::new();
        let mut call_index: HashMap<CallId, usize, IdHasher> = HashMap::default();
        let mut lines: Vec<(String, Vec<LineInput>)> = Vec::new();
        let mut line_index: HashMap<String, usize, IdHasher> = HashMap::default();
        for input in inputs.drain(..) {
            match input {
                // A call's events mostly come one after another: the last call needs no look-up.
                ModelInput::Call { call, inputs } if calls.last().is_some_and(|(last, _)| *last == call) => {
                    if let Some((_, run)) = calls.last_mut() {
                        run.extend(inputs);
                    }
                }
                ModelInput::Call { call, inputs } => match call_index.get(&call) {
                    Some(&index) => calls[index].1.extend(inputs),
                    None => {
                        call_index.insert(call.clone(), calls.len());
                        calls.push((call, inputs));
                    }
                },
                ModelInput::Line { device, input } if lines.last().is_some_and(|(last, _)| *last == device) => {
                    if let Some((_, run)) = lines.last_mut() {
                        run.push(input);
                    }
                }
                ModelInput::Line { device, input } => match line_index.get(&device) {
                    Some(&index) => lines[index].1.push(input),
                    None => {
                        line_index.insert(device.clone(), lines.len());
                        lines.push((device, vec![input]));
                    }
                },
                barrier => {
                    self.flush(&mut calls, &mut lines).await;
                    call_index.clear();
                    line_index.clear();
                    self.route(barrier).await;
                }
            }
        }
        self.flush(&mut calls, &mut lines).await;
    }

    async fn flush(&mut self, calls: &mut Vec<(CallId, Vec<CallInput>)>, lines: &mut Vec<(String, Vec<LineInput>)>) {
        for (call, inputs) in calls.drain(..) {
            bump(&self.context.stats.inputs);
            self.route_call(call, inputs).await;
        }
        for (device, inputs) in lines.drain(..) {
            bump(&self.context.stats.inputs);
            self.route_line(device, inputs).await;
        }
    }

    /// Routes one input.
    pub async fn route(&mut self, input: ModelInput) {
        bump(&self.context.stats.inputs);
        match input {
            ModelInput::Call { call, inputs } => self.route_call(call, inputs).await,
            ModelInput::Line { device, input } => self.route_line(device, vec![input]).await,
            ModelInput::Merge(merge) => {
                let Merge { primary, secondary, new, leaving, devices, linkage, at } = *merge;
                self.merge(primary, secondary, new, leaving, devices, linkage, at).await;
            }
            ModelInput::ResyncStarted => self.resync = Some(HashSet::new()),
            ModelInput::CallSnapshot(snapshot) => self.snapshot(*snapshot).await,
            ModelInput::ResyncComplete { at } => self.resync_complete(at),
            ModelInput::Forget { devices } => self.forget(&devices),
        }
    }

    /// Stops mirroring `devices`: their line actors stop, and so do the actors of calls in which no
    /// line still mirrored here takes part. Each is unregistered first, so the supervisor does not
    /// restart it, and none writes a record.
    fn forget(&mut self, devices: &[String]) {
        for device in devices {
            if let Some(actor) = self.context.lines.remove(device).and_then(|(_, entry)| entry.actor().cloned()) {
                self.context.members.remove(&actor.get_id());
                actor.stop(Some("line released".to_owned()));
            }
        }
        let forgotten: HashSet<&String> = devices.iter().collect();
        // A queue or park orbit in a call is mirrored here when this node monitors it.
        let mirrored = |party: &Party| {
            self.context.lines.contains_key(&party.device)
                || (matches!(party.kind, DeviceKind::Queue | DeviceKind::ParkOrbit)
                    && !forgotten.contains(&party.device))
        };
        let orphaned: Vec<CallId> = self
            .context
            .calls
            .iter()
            .filter(|entry| !lock(&entry.state).parties.iter().any(mirrored))
            .map(|entry| entry.key().clone())
            .collect();
        for call in orphaned {
            if let Some((_, entry)) = self.context.calls.remove(&call) {
                self.context.members.remove(&entry.actor().get_id());
                entry.actor().stop(Some("no line mirrored here is in it".to_owned()));
            }
        }
    }

    fn mentioned(&mut self, call: &CallId) {
        if let Some(seen) = self.resync.as_mut() {
            seen.insert(call.clone());
        }
    }

    async fn route_call(&mut self, call: CallId, inputs: Vec<CallInput>) {
        self.mentioned(&call);
        let entry = self.context.calls.get(&call).map(|entry| entry.clone());
        let entry = match entry {
            Some(entry) => entry,
            None if inputs.iter().any(creates_call) => {
                let created_at = inputs.iter().find_map(input_time).unwrap_or_else(wall_clock_ms);
                // The new call's actor applies the inputs as it takes the call on.
                if let Err(error) = self.context.spawn_call(CallState::new(call.clone(), created_at), inputs).await {
                    tracing::error!(call, %error, "call actor could not be started");
                }
                return;
            }
            // News of the end of a call the model never knew (or has closed): nothing to do.
            None => return,
        };
        if entry.cast(CallOrder::Apply(inputs)).is_err() {
            // The actor is restarting; its successor checks the state against the PBX.
            tracing::debug!(call, "call actor unavailable; input left to its resnapshot");
        }
    }

    async fn route_line(&mut self, device: String, inputs: Vec<LineInput>) {
        // Sent while the registry's guard is held, so that the idle sweep cannot stop the actor
        // between the look-up and the send (it stops only actors with nothing sent to them).
        let state = match self.context.lines.get(&device) {
            Some(entry) => match &entry.mailbox {
                Some(mailbox) => {
                    if mailbox.cast(LineMsg::Apply(inputs)).is_err() {
                        tracing::debug!(device, "line actor unavailable; input left to its resnapshot");
                    }
                    return;
                }
                // Idle: its actor was stopped; a new one takes over the same state.
                None => entry.state.clone(),
            },
            None => Arc::new(std::sync::Mutex::new(LineState::new(device.clone()))),
        };
        // Boxed, as in `Context::spawn_call`: a line actor starts rarely, and its large future
        // would otherwise be part of every routing step's.
        if let Err(error) = Box::pin(self.context.start_line_actor(device.clone(), state, LineMsg::Apply(inputs))).await
        {
            tracing::error!(device, %error, "line actor could not be started");
        }
    }

    /// Takes a call's state out of its actor, which stops; `None` if the model does not know it.
    async fn take(&self, call: &CallId) -> Option<CallState> {
        let (_, entry) = self.context.calls.remove(call)?;
        let order = |reply| CallMsg { call: entry.state.clone(), order: CallOrder::TakeState(reply) };
        match entry.mailbox.call(order, None).await {
            Ok(ractor::rpc::CallResult::Success(state)) => Some(state),
            // The actor died before answering: the state it shared is still the best there is.
            _ => Some(lock(&entry.state).clone()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn merge(
        &mut self,
        primary: CallId,
        secondary: Option<CallId>,
        new: CallId,
        leaving: Option<String>,
        devices: Vec<String>,
        linkage: Option<CallId>,
        at: Millis,
    ) {
        self.mentioned(&new);
        let first = self.take(&primary).await.unwrap_or_else(|| CallState::new(primary.clone(), at));
        let merged = match &secondary {
            None => first.transferred_single_step(new.clone(), leaving.as_deref().unwrap_or_default(), at),
            Some(secondary_id) => {
                let second = self.take(secondary_id).await.unwrap_or_else(|| CallState::new(secondary_id.clone(), at));
                let parties = merged_parties(&first, &second, &devices);
                CallState::merged(first, second, new.clone(), leaving.as_deref(), parties, at)
            }
        };
        let mut merged = merged;
        if let Some(id) = linkage {
            merged.apply(CallInput::Linkage { id });
        }
        let mut old = vec![primary];
        old.extend(secondary);
        self.context.publisher.publish(ModelEvent::CallRenamed { old, new: new.clone() });
        let view = CallView::from(&merged);
        // A merge that leaves only outside parties (a transfer to an outside number) took the call
        // out of view at once: no input will, so the check starts here.
        let out_of_view = !merged.in_view();
        match self.context.spawn_call(merged, Vec::new()).await {
            Ok(entry) => {
                if out_of_view {
                    let wait = self.context.config.out_of_view_check;
                    check_view_after(wait, entry.mailbox.clone(), entry.state.clone(), at);
                }
                self.context.publisher.publish(ModelEvent::Call(view));
            }
            Err(error) => tracing::error!(call = new, %error, "merged call actor could not be started"),
        }
    }

    async fn snapshot(&mut self, snapshot: CallSnapshot) {
        self.mentioned(&snapshot.call);
        let mut inputs: Vec<CallInput> =
            snapshot.linkage.clone().map(|id| CallInput::Linkage { id }).into_iter().collect();
        inputs.push(CallInput::Info {
            calling: snapshot.calling.clone(),
            called: snapshot.called.clone(),
            direction: snapshot.direction,
        });
        if let Some(queue) = snapshot.queue.clone() {
            inputs.push(CallInput::Queue { queue });
        }
        if let Some(url) = snapshot.recording_url.clone() {
            inputs.push(CallInput::Recording { url });
        }
        let existing = self.context.calls.get(&snapshot.call).map(|entry| entry.clone());
        match existing {
            Some(entry) => {
                let parked = lock(&entry.state).park_id.clone();
                match (&parked, &snapshot.park_id) {
                    (None, Some(park_id)) => inputs.push(CallInput::Parked {
                        park_id: park_id.clone(),
                        parked_by: String::new(),
                        at: snapshot.at,
                    }),
                    (Some(_), None) => inputs.push(CallInput::Unparked { at: snapshot.at }),
                    _ => {}
                }
                let _ = entry.cast(CallOrder::Apply(inputs));
                let _ = entry.cast(CallOrder::Reconcile { parties: snapshot.parties, at: snapshot.at });
            }
            None => {
                let mut state = CallState::new(snapshot.call.clone(), snapshot.created_at);
                for input in inputs {
                    state.apply(input);
                }
                if let Some(park_id) = snapshot.park_id {
                    state.apply(CallInput::Parked { park_id, parked_by: String::new(), at: snapshot.at });
                }
                // A call first seen in a snapshot started before the gateway saw it: its legs start
                // at the call's creation, the best the PBX tells.
                for party in &snapshot.parties {
                    state.apply(CallInput::PartyState {
                        device: party.device.clone(),
                        kind: party.kind,
                        state: party.state,
                        cause: Cause::Normal,
                        at: snapshot.created_at,
                    });
                }
                let view = CallView::from(&state);
                match self.context.spawn_call(state, Vec::new()).await {
                    Ok(_) => self.context.publisher.publish(ModelEvent::Call(view)),
                    Err(error) => tracing::error!(call = snapshot.call, %error, "call actor could not be started"),
                }
            }
        }
    }

    /// Ends every call the resync did not mention: it ended while the link was down.
    fn resync_complete(&mut self, at: Millis) {
        let Some(seen) = self.resync.take() else { return };
        for entry in self.context.calls.iter() {
            if !seen.contains(entry.key()) {
                bump(&self.context.stats.orphans_closed);
                let _ = entry.cast(CallOrder::Apply(vec![CallInput::Ended { cause: Cause::Normal, at }]));
            }
        }
    }
}

/// The new call's parties: each device the PBX lists, with its state in the old calls (a device in
/// both, the conferencing line, is connected in the new call).
fn merged_parties(first: &CallState, second: &CallState, devices: &[String]) -> Vec<Party> {
    let mut parties: Vec<Party> = Vec::new();
    for device in devices {
        if parties.iter().any(|party| &party.device == device) {
            continue;
        }
        let mine = first.party(device);
        let theirs = second.party(device);
        let state = match (mine, theirs) {
            (Some(_), Some(_)) => ConnState::Connected,
            (Some(party), None) | (None, Some(party)) => party.state,
            (None, None) => ConnState::Connected,
        };
        let kind = mine.or(theirs).map_or(DeviceKind::External, |party| party.kind);
        parties.push(Party { device: device.clone(), kind, state });
    }
    parties
}

fn input_time(input: &CallInput) -> Option<Millis> {
    match input {
        CallInput::PartyState { at, .. }
        | CallInput::PartyCleared { at, .. }
        | CallInput::Parked { at, .. }
        | CallInput::Unparked { at }
        | CallInput::Ended { at, .. } => Some(*at),
        _ => None,
    }
}
