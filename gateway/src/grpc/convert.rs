//! The model's views in the API's terms.

use actors::call::CallLogRecord;
use actors::domain::{DeviceKind, Presence};
use actors::events::{CallView, LineView};
use proto::api;

pub(crate) fn presence(presence: Presence) -> api::Presence {
    match presence {
        Presence::Offline => api::Presence::Offline,
        Presence::Available => api::Presence::Available,
        Presence::Busy => api::Presence::Busy,
        Presence::Away => api::Presence::Away,
        Presence::DoNotDisturb => api::Presence::DoNotDisturb,
        Presence::AfterCallWork => api::Presence::AfterCallWork,
    }
}

pub(crate) fn line(view: LineView) -> api::Line {
    api::Line {
        line: view.device,
        agent: view.agent.map(|agent| api::Agent {
            agent_id: agent.login_id,
            roles: agent.roles,
            reason: agent.reason,
        }),
        presence: presence(view.presence) as i32,
        calls: view
            .calls
            .into_iter()
            .map(|(call_id, state)| api::LineCall { call_id, state: state.as_str().to_owned() })
            .collect(),
    }
}

fn kind(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Line => "line",
        DeviceKind::Queue => "queue",
        DeviceKind::ParkOrbit => "park_orbit",
        DeviceKind::External => "external",
    }
}

pub(crate) fn call(view: CallView) -> api::Call {
    api::Call {
        call_id: view.id,
        root_call_id: view.root,
        parties: view
            .parties
            .into_iter()
            .map(|party| api::Party {
                device: party.device,
                kind: kind(party.kind).to_owned(),
                state: party.state.as_str().to_owned(),
            })
            .collect(),
        calling: view.calling,
        called: view.called,
        direction: view.direction.map(|direction| direction.as_str().to_owned()).unwrap_or_default(),
        queue: view.queue.unwrap_or_default(),
        park_id: view.park_id.unwrap_or_default(),
        recording_url: view.recording_url.unwrap_or_default(),
        notes: view.notes,
        disposition: view.disposition.unwrap_or_default(),
        created_at_ms: view.created_at,
        ended_at_ms: view.ended_at.unwrap_or_default(),
    }
}

pub(crate) fn call_log(record: CallLogRecord) -> api::CallLog {
    api::CallLog {
        root_call_id: record.root_call_id,
        call_id: record.call_id,
        line: record.device,
        agent_id: record.agent_id.unwrap_or_default(),
        direction: record.direction.as_str().to_owned(),
        outcome: record.outcome.as_str().to_owned(),
        queue: record.queue.unwrap_or_default(),
        calling: record.calling,
        called: record.called,
        parties: record.parties,
        offered_at_ms: record.offered_at,
        answered_at_ms: record.answered_at.unwrap_or_default(),
        ended_at_ms: record.ended_at,
        talk_seconds: record.talk_seconds,
        hold_seconds: record.hold_seconds,
        notes: record.notes,
        disposition: record.disposition.unwrap_or_default(),
        recording_url: record.recording_url.unwrap_or_default(),
    }
}

/// A screen pop as the API shows it.
pub(crate) fn screen_pop(pop: actors::events::ScreenPop) -> api::ScreenPop {
    use actors::events::PopResult;
    use api::screen_pop::Result as R;
    let record = |record: actors::crm::port::CrmRecord| api::CrmRecord {
        object: record.kind.as_str().to_owned(),
        id: record.id,
        name: record.name,
    };
    let (result, records, error) = match pop.result {
        PopResult::Single(one) => (R::Single, vec![record(one)], String::new()),
        PopResult::Multiple(many) => (R::Multiple, many.into_iter().map(record).collect(), String::new()),
        PopResult::NoMatch => (R::NoMatch, Vec::new(), String::new()),
        PopResult::Failed(why) => (R::Failed, Vec::new(), why),
    };
    api::ScreenPop { call_id: pop.call, line: pop.device, number: pop.number, result: result as i32, records, error }
}
