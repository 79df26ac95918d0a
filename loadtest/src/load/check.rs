//! The loadtest's checks, not timings: the gateway's lines and calls (from a fresh Events
//! snapshot) against the simulator's, and the sandbox's Tasks against the simulator's ledger of
//! finished call legs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::api::{self, event::Event};

use super::LoadError;
use super::gateway::Api;
use crate::salesforce::TaskRecord;
use crate::sim::inspect::{AgentDump, CallDump, PartyDump};
use crate::sim::{FinishedLeg, StateDump};

/// The simulator's agent state that a presence stands for. `busy` says only "on a call", so it
/// stands for whichever logged-on state the simulator has.
fn agent_state(presence: i32, simulator: Option<&str>) -> String {
    match api::Presence::try_from(presence).unwrap_or_default() {
        api::Presence::Available => "ready",
        api::Presence::Away => "not_ready",
        api::Presence::DoNotDisturb => "do_not_disturb",
        api::Presence::AfterCallWork => "working_after_call",
        api::Presence::Busy => match simulator {
            Some(state) if state != "logged_off" => state,
            _ => "busy",
        },
        api::Presence::Offline | api::Presence::Unspecified => "logged_off",
    }
    .to_owned()
}

/// Sorts a picture so two of them compare equal when they hold the same things.
pub fn sorted(mut dump: StateDump) -> StateDump {
    for call in &mut dump.calls {
        call.parties.sort_by(|a, b| a.device.cmp(&b.device));
    }
    dump.calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    dump.agents.sort_by(|a, b| a.device.cmp(&b.device));
    dump
}

/// What the gateway mirrors, from the snapshot at the start of a fresh Events stream, in the
/// simulator's terms (`simulator` is consulted only to read a `busy` presence).
pub async fn mirrored(api: &mut Api, simulator: &StateDump) -> Result<StateDump, LoadError> {
    let read = async {
        let request = api::SubscribeRequest::default();
        let mut stream = api.events.subscribe(request).await?.into_inner();
        let mut lines = Vec::new();
        let mut calls = Vec::new();
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(Event::Line(line)) => lines.push(line),
                Some(Event::Call(call)) => calls.push(call),
                Some(Event::SnapshotComplete(_)) => break,
                _ => {}
            }
        }
        Ok::<_, tonic::Status>((lines, calls))
    };
    let (lines, calls) = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| LoadError::Gateway("the events snapshot took over 30 s".to_owned()))?
        .map_err(|status| LoadError::Gateway(format!("events snapshot: {status}")))?;
    let simulated: BTreeMap<&str, &str> =
        simulator.agents.iter().map(|agent| (agent.device.as_str(), agent.state.as_str())).collect();
    let agents = lines
        .into_iter()
        .map(|line| AgentDump {
            state: agent_state(line.presence, simulated.get(line.line.as_str()).copied()),
            agent_id: line.agent.as_ref().map(|agent| agent.agent_id.clone()).unwrap_or_default(),
            roles: line.agent.map(|agent| agent.roles).unwrap_or_default(),
            device: line.line,
        })
        .collect();
    let calls = calls
        .into_iter()
        .filter(|call| call.ended_at_ms == 0)
        .map(|call| CallDump {
            call_id: call.call_id,
            parties: call
                .parties
                .into_iter()
                .map(|party| PartyDump { device: party.device, state: party.state })
                .collect(),
            calling: call.calling,
            called: call.called,
            queue: call.queue,
            park_id: call.park_id,
        })
        .collect();
    Ok(sorted(StateDump { agents, calls }))
}

/// One picture of a cluster from its nodes' pictures: each node mirrors the lines it owns, and of
/// each call the parties it saw; a call's parties are the union of what the nodes saw. Every node
/// lists every line of the cluster (it asks each line's owner), so a line is taken once, from the
/// first node that lists it; that each line has one owner is for the claims in etcd to show.
pub fn merge(pictures: Vec<StateDump>) -> StateDump {
    let mut agents: BTreeMap<String, _> = BTreeMap::new();
    let mut calls: BTreeMap<String, CallDump> = BTreeMap::new();
    for picture in pictures {
        for agent in picture.agents {
            agents.entry(agent.device.clone()).or_insert(agent);
        }
        for call in picture.calls {
            match calls.get_mut(&call.call_id) {
                None => {
                    calls.insert(call.call_id.clone(), call);
                }
                Some(known) => {
                    for party in call.parties {
                        if !known.parties.iter().any(|seen| seen.device == party.device) {
                            known.parties.push(party);
                        }
                    }
                }
            }
        }
    }
    sorted(StateDump { agents: agents.into_values().collect(), calls: calls.into_values().collect() })
}

/// How two pictures differ: each agent or call that is in one and not (equal) in the other counts
/// once; with a few of them described for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mismatches {
    /// Lines and calls that differ.
    pub count: u64,
    /// The first few, in words.
    pub samples: Vec<String>,
}

/// Compares the simulator's picture with the gateway's.
pub fn compare(simulator: &StateDump, gateway: &StateDump) -> Mismatches {
    let mut found = Mismatches::default();
    let mut note = |what: String| {
        found.count += 1;
        if found.samples.len() < 5 {
            found.samples.push(what);
        }
    };
    let agents: BTreeMap<&str, &AgentDump> =
        gateway.agents.iter().map(|agent| (agent.device.as_str(), agent)).collect();
    for want in &simulator.agents {
        match agents.get(want.device.as_str()) {
            Some(have) if *have == want => {}
            Some(have) => note(format!("line {}: simulator {want:?}, gateway {have:?}", want.device)),
            None => note(format!("line {} is missing from the gateway", want.device)),
        }
    }
    let simulated: BTreeSet<&str> = simulator.agents.iter().map(|agent| agent.device.as_str()).collect();
    for have in gateway.agents.iter().filter(|agent| !simulated.contains(agent.device.as_str())) {
        note(format!("line {} is only in the gateway", have.device));
    }
    let calls: BTreeMap<&str, &CallDump> = gateway.calls.iter().map(|call| (call.call_id.as_str(), call)).collect();
    for want in &simulator.calls {
        match calls.get(want.call_id.as_str()) {
            Some(have) if *have == want => {}
            Some(have) => note(format!("call {}: simulator {want:?}, gateway {have:?}", want.call_id)),
            None => note(format!("call {} is missing from the gateway: {want:?}", want.call_id)),
        }
    }
    let simulated: BTreeSet<&str> = simulator.calls.iter().map(|call| call.call_id.as_str()).collect();
    for have in gateway.calls.iter().filter(|call| !simulated.contains(call.call_id.as_str())) {
        note(format!("call {} is only in the gateway: {have:?}", have.call_id));
    }
    found
}

/// The call logs in Salesforce against the legs that finished.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogCheck {
    /// Finished legs in the simulator's ledger: each should be one Task.
    pub expected: u64,
    /// Distinct Tasks whose external id is a finished leg's.
    pub delivered: u64,
    /// Tasks written more than once, plus Tasks that match no finished leg.
    pub duplicated: u64,
    /// Tasks that match no finished leg (part of `duplicated`).
    pub unexpected: u64,
    /// A few of what went wrong, in words.
    pub samples: Vec<String>,
}

impl LogCheck {
    /// Finished legs with no Task.
    pub fn lost(&self) -> u64 {
        self.expected - self.delivered
    }
}

/// A Task's external id for a leg: `<root_call_id>:<line>`, as the gateway keys its call logs.
pub fn external_id(leg: &FinishedLeg) -> String {
    format!("{}:{}", leg.root_call_id, leg.device)
}

/// Checks the Tasks against the ledger.
pub fn check_logs(legs: &[FinishedLeg], tasks: &[TaskRecord]) -> LogCheck {
    let expected: BTreeSet<String> = legs.iter().map(external_id).collect();
    let mut check = LogCheck { expected: expected.len() as u64, ..LogCheck::default() };
    let note = |samples: &mut Vec<String>, what: String| {
        if samples.len() < 5 {
            samples.push(what);
        }
    };
    for task in tasks {
        if expected.contains(&task.external_id) {
            check.delivered += 1;
        } else {
            check.unexpected += 1;
            check.duplicated += 1;
            note(&mut check.samples, format!("task {} matches no finished leg", task.external_id));
            continue;
        }
        if task.writes > 1 {
            check.duplicated += 1;
            note(&mut check.samples, format!("task {} written {} times", task.external_id, task.writes));
        }
    }
    let written: BTreeSet<&str> = tasks.iter().map(|task| task.external_id.as_str()).collect();
    for missing in expected.iter().filter(|id| !written.contains(id.as_str())).take(5) {
        note(&mut check.samples, format!("no task for leg {missing}"));
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(root: &str, device: &str) -> FinishedLeg {
        FinishedLeg { root_call_id: root.to_owned(), device: device.to_owned(), answered: true }
    }

    fn task(external_id: &str, writes: u32) -> TaskRecord {
        TaskRecord {
            id: format!("00T{external_id}"),
            external_id: external_id.to_owned(),
            fields: BTreeMap::new(),
            writes,
        }
    }

    #[test]
    fn logs_are_delivered_lost_duplicated_or_unexpected() {
        let legs = [leg("C1", "2000"), leg("C1", "2001"), leg("C2", "2000"), leg("C3", "2002")];
        let tasks = [task("C1:2000", 1), task("C1:2001", 2), task("C2:2000", 1), task("C9:2000", 1)];
        let check = check_logs(&legs, &tasks);
        assert_eq!((check.expected, check.delivered, check.lost()), (4, 3, 1));
        assert_eq!((check.duplicated, check.unexpected), (2, 1));
        assert_eq!(check.samples.len(), 3, "{:?}", check.samples);
    }

    #[test]
    fn pictures_differ_by_each_line_or_call_not_alike() {
        let agent = |device: &str, state: &str| AgentDump {
            device: device.to_owned(),
            state: state.to_owned(),
            agent_id: String::new(),
            roles: Vec::new(),
        };
        let call = |id: &str| CallDump {
            call_id: id.to_owned(),
            parties: Vec::new(),
            calling: String::new(),
            called: String::new(),
            queue: String::new(),
            park_id: String::new(),
        };
        let simulator =
            StateDump { agents: vec![agent("2000", "ready"), agent("2001", "ready")], calls: vec![call("C1")] };
        assert_eq!(compare(&simulator, &simulator).count, 0);
        let gateway = StateDump { agents: vec![agent("2000", "not_ready")], calls: vec![call("C1"), call("C2")] };
        assert_eq!(compare(&simulator, &gateway).count, 3);
    }

    #[test]
    fn a_clusters_picture_joins_its_nodes_lines_and_each_calls_parties() {
        let agent = |device: &str| AgentDump {
            device: device.to_owned(),
            state: "ready".to_owned(),
            agent_id: String::new(),
            roles: Vec::new(),
        };
        let call = |devices: &[&str]| CallDump {
            call_id: "C1".to_owned(),
            parties: devices
                .iter()
                .map(|device| PartyDump { device: (*device).to_owned(), state: "connected".to_owned() })
                .collect(),
            calling: String::new(),
            called: String::new(),
            queue: String::new(),
            park_id: String::new(),
        };
        let first = StateDump { agents: vec![agent("2001")], calls: vec![call(&["+4930", "2001"])] };
        let second = StateDump { agents: vec![agent("2001"), agent("2002")], calls: vec![call(&["2002", "+4930"])] };
        let merged = merge(vec![first, second]);
        assert_eq!(merged.agents, [agent("2001"), agent("2002")]);
        assert_eq!(merged.calls, [call(&["+4930", "2001", "2002"])]);
    }

    #[test]
    fn busy_stands_for_any_logged_on_state() {
        let busy = api::Presence::Busy as i32;
        assert_eq!(agent_state(busy, Some("not_ready")), "not_ready");
        assert_eq!(agent_state(busy, Some("logged_off")), "busy");
        assert_eq!(agent_state(api::Presence::Offline as i32, None), "logged_off");
    }
}
