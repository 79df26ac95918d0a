//! Tests of call log Tasks and their templates.

use super::*;
use crate::crm::port::CrmRecord;

fn record() -> CallLogRecord {
    CallLogRecord {
        root_call_id: "C1".into(),
        call_id: "C7".into(),
        device: "2001".into(),
        agent_id: Some("anna".into()),
        direction: Direction::Inbound,
        outcome: LegOutcome::Answered,
        via_queue: true,
        queue: Some("5000".into()),
        calling: "+49301111111".into(),
        called: "5000".into(),
        parties: vec!["+49301111111".into(), "5000".into(), "2001".into()],
        // 2023-11-14 22:13:20 UTC
        offered_at: 1_700_000_000_000,
        answered_at: Some(1_700_000_005_000),
        ended_at: 1_700_000_125_000,
        talk_seconds: 110,
        hold_seconds: 10,
        notes: "wants a callback".into(),
        disposition: Some("Resolved".into()),
        recording_url: Some("https://rec.example/C1".into()),
    }
}

fn contact(id: &str) -> CrmRecord {
    CrmRecord { kind: RecordKind::Contact, id: id.into(), name: format!("Ada {id}"), phones: vec![] }
}

#[test]
fn every_variable_renders() {
    let template = Template::parse(
        "{time}|{status}|{direction}|{from}|{to}|{talk_duration}|{hold_time}|{queue}|{agent}|{line}|{disposition}|{notes}|{recording}|{call_id}|{contact}",
    )
    .unwrap();
    let lookup = Lookup::Found(vec![contact("003A")]);
    assert_eq!(
        template.render(&record(), Some(&lookup)),
        "2023-11-14 22:13:20|answered|inbound|+49301111111|5000|110|10|5000|anna|2001|Resolved|wants a callback|https://rec.example/C1|C7|Ada 003A"
    );
}

#[test]
fn braces_escape_and_mistakes_are_refused_when_the_template_is_set() {
    assert_eq!(Template::parse("{{literal}} {status}").unwrap().render(&record(), None), "{literal} answered");
    assert!(matches!(Template::parse("{nope}"), Err(TemplateError::UnknownVariable { name, .. }) if name == "nope"));
    assert_eq!(Template::parse("call {status"), Err(TemplateError::Unclosed(5)));
    assert_eq!(Template::parse("call status}"), Err(TemplateError::Stray(11)));
    assert_eq!(Template::parse("déjà {status} vu").unwrap().render(&record(), None), "déjà answered vu");
}

#[test]
fn a_task_carries_the_call_fields() {
    let task = task_for("C1:2001", &record(), None, &TaskTemplates::default());
    assert_eq!(task.key, "C1:2001");
    assert_eq!(task.subject, "Call inbound answered: +49301111111 to 5000");
    assert!(task.description.contains("Talk: 110 s\nHold: 10 s\nQueue: 5000\nAgent: anna"));
    assert_eq!(task.call_type, "Inbound");
    assert_eq!(task.duration_seconds, 110);
    assert_eq!(task.call_object, "C7");
    assert_eq!(task.disposition, "Resolved");
    assert_eq!(task.activity_date, "2023-11-14");
    assert_eq!((task.who_id, task.what_id), (None, None));
}

#[test]
fn a_missed_call_without_disposition_says_so() {
    let mut missed = record();
    missed.outcome = LegOutcome::Missed;
    missed.disposition = None;
    missed.talk_seconds = 0;
    let task = task_for("k", &missed, None, &TaskTemplates::default());
    assert_eq!(task.disposition, "Missed");
    assert_eq!(task.duration_seconds, 0);
}

#[test]
fn the_task_names_a_person_and_a_company_only_when_each_is_unambiguous() {
    let account = CrmRecord { kind: RecordKind::Account, id: "001A".into(), name: "Acme".into(), phones: vec![] };
    let one = Lookup::Found(vec![contact("003A"), account.clone()]);
    let task = task_for("k", &record(), Some(&one), &TaskTemplates::default());
    assert_eq!((task.who_id.as_deref(), task.what_id.as_deref()), (Some("003A"), Some("001A")));
    let two = Lookup::Found(vec![contact("003A"), contact("003B"), account]);
    let task = task_for("k", &record(), Some(&two), &TaskTemplates::default());
    assert_eq!((task.who_id.as_deref(), task.what_id.as_deref()), (None, Some("001A")));
}

#[test]
fn long_fields_are_cut_to_salesforces_limits_in_characters() {
    let mut long = record();
    long.notes = "é".repeat(40_000);
    let templates = TaskTemplates {
        subject: Template::parse("{notes}").unwrap(),
        description: Template::parse("{notes}").unwrap(),
    };
    let task = task_for("k", &long, None, &templates);
    assert_eq!(task.subject.chars().count(), 255);
    assert_eq!(task.description.chars().count(), 32_000);
}

#[test]
fn timestamps_are_utc_calendar_dates() {
    assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00");
    assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29 00:00:00");
    assert_eq!(utc_timestamp(4_102_444_799_000), "2099-12-31 23:59:59");
}
