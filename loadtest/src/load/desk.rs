//! The gRPC side of the load: agent desktops that drive calls on the lines the simulated agents
//! leave free (log in, click-to-dial, answer, hold and retrieve, notes, hang up), and a watcher
//! on the Events stream that times each screen pop from the ring it answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proto::api::{self, event::Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::gateway::Api;

/// One timed request: when it was sent (seconds since the run began) and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Seconds since the run began.
    pub at: f64,
    /// Milliseconds from send to answer.
    pub ms: f64,
}

/// What one desktop did.
#[derive(Debug, Default)]
pub struct DeskLog {
    /// Every call-control request that was answered with success, by gRPC method.
    pub requests: BTreeMap<&'static str, Vec<Timed>>,
    /// Requests refused or failed, and waits for the model that ran out.
    pub errors: u64,
    /// The first few errors, for the report.
    pub error_samples: Vec<String>,
    /// Calls the desktop placed and ended.
    pub calls: u64,
}

impl DeskLog {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(what);
        }
    }
}

/// What a desktop sees of its own line: its calls and their states, and each call's parties.
#[derive(Debug, Default, Clone)]
struct Seen {
    agent: bool,
    line_calls: HashMap<String, String>,
    parties: HashMap<String, Vec<(String, String)>>,
}

/// Keeps `seen` current from the line's filtered event stream until `stop`.
async fn follow_line(mut api: Api, line: String, seen: watch::Sender<Seen>, stop: CancellationToken) {
    let mut resume_after = 0;
    while !stop.is_cancelled() {
        let request = api::SubscribeRequest { resume_after, lines: vec![line.clone()] };
        let Ok(response) = api.events.subscribe(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = response.into_inner();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = stream.message() => next,
            };
            let Ok(Some(event)) = next else { break };
            resume_after = resume_after.max(event.sequence);
            seen.send_modify(|seen| match event.event {
                Some(Event::Line(view)) if view.line == line => {
                    seen.agent = view.agent.is_some();
                    seen.line_calls = view.calls.into_iter().map(|call| (call.call_id, call.state)).collect();
                }
                Some(Event::Call(call)) => {
                    if call.ended_at_ms != 0 {
                        seen.parties.remove(&call.call_id);
                    } else {
                        let parties = call.parties.into_iter().map(|party| (party.device, party.state)).collect();
                        seen.parties.insert(call.call_id, parties);
                    }
                }
                _ => {}
            });
        }
    }
}

/// A desktop on `line`: places calls and works them through the API while `placing` is set, then
/// finishes the call in hand and stops.
pub struct Desk {
    /// The line it works.
    pub line: String,
    /// Hold-and-retrieve rounds per call.
    pub toggles: u32,
    /// When the run began (timestamps are relative to it).
    pub origin: Instant,
    /// Cleared at closing time.
    pub placing: Arc<AtomicBool>,
    /// Requests answered, over every desktop, for the progress display.
    pub counter: Arc<AtomicU64>,
    /// Told once the desktop's login is done (or failed), so the traffic starts after it.
    pub logged_in: tokio::sync::mpsc::Sender<()>,
    /// Set when the day has started: the far ends the desktop dials are the day's to answer.
    pub day_started: watch::Receiver<bool>,
}

/// How long a desktop waits for the gateway to show what a command did.
const MODEL_WAIT: Duration = Duration::from_secs(15);

impl Desk {
    /// Runs the desktop to its end.
    pub async fn run(self, api: Api) -> DeskLog {
        let mut log = DeskLog::default();
        let (sender, mut seen) = watch::channel(Seen::default());
        let stop = CancellationToken::new();
        let follower = tokio::spawn(follow_line(api.clone(), self.line.clone(), sender, stop.clone()));
        let mut calls = api.calls.clone();
        let mut agents = api.agents.clone();
        let login = api::LogInRequest {
            line: self.line.clone(),
            agent_id: format!("LT{}", self.line),
            roles: vec!["agent".to_owned()],
            // Not ready: the queue keeps its calls for the simulated agents; this desk dials out.
            ready: false,
            ..Default::default()
        };
        let logged_in = self.timed(&mut log, "LogIn", agents.log_in(login)).await;
        if logged_in.is_some() && !wait(&mut seen, |seen| seen.agent).await {
            log.error(format!("{}: the login never showed", self.line));
        }
        let _ = self.logged_in.send(()).await;
        let mut day_started = self.day_started.clone();
        let started = day_started.wait_for(|started| *started).await.is_ok();
        match logged_in {
            Some(_) if started => {}
            _ => {
                stop.cancel();
                let _ = follower.await;
                return log;
            }
        }
        let mut dialled = 0u64;
        while self.placing.load(Ordering::Relaxed) {
            dialled += 1;
            // A fresh outside number per call (the line's digits and a count), so every call is a
            // new lookup, as a day of different customers would be.
            let number = format!("+4989{}{:04}", self.line, dialled % 10_000);
            self.one_call(&mut log, &mut calls, &mut seen, &number).await;
        }
        stop.cancel();
        let _ = follower.await;
        log
    }

    /// Times one request of `method`; a failure is logged and gives `None`.
    async fn timed<T>(
        &self,
        log: &mut DeskLog,
        method: &'static str,
        request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let at = started.duration_since(self.origin).as_secs_f64();
        match request.await {
            Ok(answer) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                log.requests.entry(method).or_default().push(Timed { at, ms });
                self.counter.fetch_add(1, Ordering::Relaxed);
                Some(answer.into_inner())
            }
            Err(status) => {
                log.error(format!("{}: {:?}: {}", self.line, status.code(), status.message()));
                None
            }
        }
    }

    async fn one_call(
        &self,
        log: &mut DeskLog,
        calls: &mut proto::api::call_control_client::CallControlClient<super::gateway::Authed>,
        seen: &mut watch::Receiver<Seen>,
        number: &str,
    ) {
        let line = self.line.clone();
        let request =
            |call_id: &str| api::CallRequest { line: line.clone(), call_id: call_id.to_owned(), ..Default::default() };
        let dial = api::MakeCallRequest { line: line.clone(), number: number.to_owned(), ..Default::default() };
        let Some(made) = self.timed(log, "MakeCall", calls.make_call(dial)).await else {
            // Nothing to clean up, but do not spin: the line may still be busy with the last call.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        };
        let call = made.call_id;
        let steps = async {
            let at_line = |state: &'static str| {
                let call = call.clone();
                move |seen: &Seen| seen.line_calls.get(&call).is_some_and(|have| have == state)
            };
            if !wait(seen, at_line("initiated")).await {
                return Err("the new call never showed as initiated");
            }
            self.timed(log, "Answer", calls.answer(request(&call))).await.ok_or("answer refused")?;
            // The far end (the simulator's traffic) answers after it rang a while.
            let far_end_talks = {
                let call = call.clone();
                let line = line.clone();
                move |seen: &Seen| {
                    seen.line_calls.get(&call).is_some_and(|state| state == "connected")
                        && seen.parties.get(&call).is_some_and(|parties| {
                            parties.iter().any(|(device, state)| *device != line && state == "connected")
                        })
                }
            };
            if !wait(seen, far_end_talks).await {
                return Err("the far end never answered");
            }
            for _ in 0..self.toggles {
                self.timed(log, "Hold", calls.hold(request(&call))).await.ok_or("hold refused")?;
                if !wait(seen, at_line("held")).await {
                    return Err("the hold never showed");
                }
                self.timed(log, "Retrieve", calls.retrieve(request(&call))).await.ok_or("retrieve refused")?;
                if !wait(seen, at_line("connected")).await {
                    return Err("the retrieve never showed");
                }
            }
            let notes = api::SetCallNotesRequest {
                call_id: call.clone(),
                notes: format!("loadtest call to {number}"),
                disposition: "resolved".to_owned(),
                ..Default::default()
            };
            self.timed(log, "SetCallNotes", calls.set_call_notes(notes)).await.ok_or("notes refused")?;
            self.timed(log, "HangUp", calls.hang_up(request(&call))).await.ok_or("hang up refused")?;
            Ok(())
        };
        if let Err(why) = steps.await {
            log.error(format!("{}: call {call}: {why}", self.line));
            let _ = calls.hang_up(request(&call)).await;
        }
        let gone = {
            let call = call.clone();
            move |seen: &Seen| !seen.line_calls.contains_key(&call)
        };
        if wait(seen, gone).await {
            log.calls += 1;
        } else {
            log.error(format!("{}: call {call} never ended at the line", self.line));
        }
    }
}

/// Waits (bounded) until the line shows what `ready` looks for.
async fn wait(seen: &mut watch::Receiver<Seen>, ready: impl FnMut(&Seen) -> bool) -> bool {
    matches!(tokio::time::timeout(MODEL_WAIT, seen.wait_for(ready)).await, Ok(Ok(_)))
}

/// What the watcher saw on the full Events stream.
#[derive(Debug, Default)]
pub struct WatchLog {
    /// Ring to pop, per screen pop that followed a ring it saw.
    pub pops: Vec<Timed>,
    /// Screen pops with no ring seen before them.
    pub pops_unmatched: u64,
    /// Screen pops that say Salesforce could not be asked.
    pub pops_failed: u64,
    /// Events received.
    pub events: u64,
    /// Call log events received.
    pub call_logs: u64,
    /// Times the stream ended and was resumed.
    pub resumes: u64,
}

/// Subscribes to every event until `stop`, timing each screen pop from its line's ring.
pub async fn watch_pops(mut api: Api, origin: Instant, stop: CancellationToken) -> WatchLog {
    let mut log = WatchLog::default();
    let mut rang: HashMap<(String, String), Instant> = HashMap::new();
    let mut resume_after = 0;
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            log.resumes += 1;
        }
        first = false;
        let request = api::SubscribeRequest { resume_after, lines: Vec::new() };
        let Ok(response) = api.events.subscribe(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = response.into_inner();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return log,
                next = stream.message() => next,
            };
            let Ok(Some(event)) = next else { break };
            let now = Instant::now();
            log.events += 1;
            resume_after = resume_after.max(event.sequence);
            match event.event {
                Some(Event::Line(view)) => {
                    for call in view.calls.into_iter().filter(|call| call.state == "alerting") {
                        rang.entry((call.call_id, view.line.clone())).or_insert(now);
                    }
                }
                Some(Event::ScreenPop(pop)) => {
                    if pop.result == api::screen_pop::Result::Failed as i32 {
                        log.pops_failed += 1;
                    }
                    match rang.remove(&(pop.call_id, pop.line)) {
                        Some(ring) => log.pops.push(Timed {
                            at: ring.duration_since(origin).as_secs_f64(),
                            ms: now.duration_since(ring).as_secs_f64() * 1000.0,
                        }),
                        None => log.pops_unmatched += 1,
                    }
                }
                Some(Event::CallLog(_)) => log.call_logs += 1,
                _ => {}
            }
        }
    }
    log
}
