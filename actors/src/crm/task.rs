//! Turns a call log record into the Task Salesforce stores: subject and description from templates
//! with variables, the call fields, and who the call was with.

use std::fmt::Write as _;

use crate::call::CallLogRecord;
use crate::crm::lookup::Lookup;
use crate::crm::port::{RecordKind, TaskRecord};
use crate::domain::{Direction, LegOutcome, Millis};

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` names no variable.
    #[error("unknown template variable {{{name}}}; known: {known}")]
    UnknownVariable {
        /// The name.
        name: String,
        /// Every known name.
        known: String,
    },
    /// A `{` without its `}` (write `{{` and `}}` for braces).
    #[error("unclosed {{ at byte {0} (write {{{{ for a brace)")]
    Unclosed(usize),
    /// A `}` without its `{`.
    #[error("stray }} at byte {0} (write }}}} for a brace)")]
    Stray(usize),
}

/// A value a template can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// When the line was offered the call (UTC, `YYYY-MM-DD HH:MM:SS`).
    Time,
    /// answered, missed, abandoned, transferred.
    Status,
    /// inbound, outbound, internal.
    Direction,
    /// Who placed the call.
    From,
    /// Where it was placed to.
    To,
    /// Seconds talked.
    TalkDuration,
    /// Seconds on hold.
    HoldTime,
    /// The queue it came through.
    Queue,
    /// The agent's login id.
    Agent,
    /// The agent line.
    Line,
    /// The agent's disposition.
    Disposition,
    /// The agent's notes.
    Notes,
    /// The recording's address.
    Recording,
    /// The call's id at the PBX.
    CallId,
    /// The caller's name from the CRM, when one record matched.
    Contact,
}

const VARIABLES: &[(&str, Variable)] = &[
    ("time", Variable::Time),
    ("status", Variable::Status),
    ("direction", Variable::Direction),
    ("from", Variable::From),
    ("to", Variable::To),
    ("talk_duration", Variable::TalkDuration),
    ("hold_time", Variable::HoldTime),
    ("queue", Variable::Queue),
    ("agent", Variable::Agent),
    ("line", Variable::Line),
    ("disposition", Variable::Disposition),
    ("notes", Variable::Notes),
    ("recording", Variable::Recording),
    ("call_id", Variable::CallId),
    ("contact", Variable::Contact),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Variable),
}

/// A parsed template: text with `{variable}`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `source`, refusing unknown variables so a mistake shows when the template is set,
    /// not in every call log.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let rest = &source[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::Unclosed(at))?;
                    let name = rest[..end].trim();
                    let variable =
                        VARIABLES.iter().find(|(known, _)| *known == name).map(|(_, v)| *v).ok_or_else(|| {
                            TemplateError::UnknownVariable {
                                name: name.to_owned(),
                                known: VARIABLES.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "),
                            }
                        })?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Value(variable));
                    // Skip the name and its closing brace.
                    for _ in 0..rest[..=end].chars().count() {
                        chars.next();
                    }
                }
                '}' => return Err(TemplateError::Stray(at)),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self { source: source.to_owned(), pieces })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template filled in for one call log.
    pub fn render(&self, record: &CallLogRecord, lookup: Option<&Lookup>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(variable) => value(&mut out, *variable, record, lookup),
            }
        }
        out
    }
}

fn value(out: &mut String, variable: Variable, record: &CallLogRecord, lookup: Option<&Lookup>) {
    match variable {
        Variable::Time => out.push_str(&utc_timestamp(record.offered_at)),
        Variable::Status => out.push_str(record.outcome.as_str()),
        Variable::Direction => out.push_str(record.direction.as_str()),
        Variable::From => out.push_str(&record.calling),
        Variable::To => out.push_str(&record.called),
        Variable::TalkDuration => {
            let _ = write!(out, "{}", record.talk_seconds);
        }
        Variable::HoldTime => {
            let _ = write!(out, "{}", record.hold_seconds);
        }
        Variable::Queue => out.push_str(record.queue.as_deref().unwrap_or("")),
        Variable::Agent => out.push_str(record.agent_id.as_deref().unwrap_or("")),
        Variable::Line => out.push_str(&record.device),
        Variable::Disposition => out.push_str(record.disposition.as_deref().unwrap_or("")),
        Variable::Notes => out.push_str(&record.notes),
        Variable::Recording => out.push_str(record.recording_url.as_deref().unwrap_or("")),
        Variable::CallId => out.push_str(&record.call_id),
        Variable::Contact => {
            if let Some(Lookup::Found(records)) = lookup
                && let [only] = records.as_slice()
            {
                out.push_str(&only.name);
            }
        }
    }
}

/// The subject and description templates of call log Tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTemplates {
    /// The subject line (Salesforce keeps 255 characters).
    pub subject: Template,
    /// The body.
    pub description: Template,
}

/// The default subject.
pub const DEFAULT_SUBJECT: &str = "Call {direction} {status}: {from} to {to}";
/// The default description.
pub const DEFAULT_DESCRIPTION: &str = "Time: {time} UTC\nStatus: {status}\nFrom: {from}\nTo: {to}\nTalk: {talk_duration} s\nHold: {hold_time} s\nQueue: {queue}\nAgent: {agent}\nDisposition: {disposition}\nNotes: {notes}\nRecording: {recording}";

impl Default for TaskTemplates {
    fn default() -> Self {
        Self {
            subject: Template::parse(DEFAULT_SUBJECT).expect("the default subject parses"),
            description: Template::parse(DEFAULT_DESCRIPTION).expect("the default description parses"),
        }
    }
}

/// Salesforce's limits on the text fields we fill.
const SUBJECT_MAX: usize = 255;
const DESCRIPTION_MAX: usize = 32_000;
const SHORT_FIELD_MAX: usize = 255;

/// The Task for one call log record. `lookup` is what the CRM search found for the outside party:
/// the Task is linked to a Contact or Lead (`WhoId`) and an Account (`WhatId`) only when exactly one
/// of each matched, so a shared number never logs the call against the wrong person.
pub fn task_for(key: &str, record: &CallLogRecord, lookup: Option<&Lookup>, templates: &TaskTemplates) -> TaskRecord {
    let (who_id, what_id) = match lookup {
        Some(Lookup::Found(records)) => {
            let people: Vec<_> =
                records.iter().filter(|record| matches!(record.kind, RecordKind::Contact | RecordKind::Lead)).collect();
            let companies: Vec<_> = records.iter().filter(|record| record.kind == RecordKind::Account).collect();
            let only = |found: &[&crate::crm::port::CrmRecord]| match found {
                [one] => Some(one.id.clone()),
                _ => None,
            };
            (only(&people), only(&companies))
        }
        _ => (None, None),
    };
    TaskRecord {
        key: key.to_owned(),
        subject: truncate(templates.subject.render(record, lookup), SUBJECT_MAX),
        description: truncate(templates.description.render(record, lookup), DESCRIPTION_MAX),
        call_type: match record.direction {
            Direction::Inbound => "Inbound",
            Direction::Outbound => "Outbound",
            Direction::Internal => "Internal",
        },
        duration_seconds: record.talk_seconds,
        call_object: truncate(record.call_id.clone(), SHORT_FIELD_MAX),
        disposition: truncate(
            record.disposition.clone().unwrap_or_else(|| outcome_label(record.outcome).to_owned()),
            SHORT_FIELD_MAX,
        ),
        who_id,
        what_id,
        activity_date: utc_timestamp(record.offered_at)[..10].to_owned(),
    }
}

fn outcome_label(outcome: LegOutcome) -> &'static str {
    match outcome {
        LegOutcome::Answered => "Answered",
        LegOutcome::Missed => "Missed",
        LegOutcome::Abandoned => "Abandoned",
        LegOutcome::Transferred => "Transferred",
    }
}

/// Cuts `text` to at most `max` characters (Salesforce counts characters, not bytes).
fn truncate(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
    }
    text
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for ms since the epoch.
pub fn utc_timestamp(at: Millis) -> String {
    let seconds = at / 1000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", of_day / 3600, of_day / 60 % 60, of_day % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
