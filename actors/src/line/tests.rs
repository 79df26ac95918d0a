//! The line state machine: presence, inputs, and every command's precondition, legal and illegal.

use proptest::prelude::*;

use super::*;

fn agent(state: AgentState) -> Agent {
    Agent { login_id: "anna".into(), state, roles: vec!["agent".into()], reason: String::new() }
}

fn line_with(calls: &[(&str, ConnState)]) -> LineState {
    let mut line = LineState::new("2001".into());
    line.apply(LineInput::Agent(Some(Box::new(agent(AgentState::Ready)))));
    for (call, state) in calls {
        line.apply(LineInput::Call { call: (*call).to_owned(), state: *state });
    }
    line
}

#[test]
fn presence_follows_the_agent_and_the_calls() {
    let mut line = LineState::new("2001".into());
    assert_eq!(line.presence(), Presence::Offline);
    line.apply(LineInput::Agent(Some(Box::new(agent(AgentState::Ready)))));
    assert_eq!(line.presence(), Presence::Available);
    line.apply(LineInput::Call { call: "C1".into(), state: ConnState::Alerting });
    assert_eq!(line.presence(), Presence::Busy);
    line.apply(LineInput::Call { call: "C1".into(), state: ConnState::Null });
    assert_eq!(line.presence(), Presence::Available);
    for (state, presence) in [
        (AgentState::NotReady, Presence::Away),
        (AgentState::WorkingAfterCall, Presence::AfterCallWork),
        (AgentState::DoNotDisturb, Presence::DoNotDisturb),
        (AgentState::LoggedOff, Presence::Offline),
    ] {
        line.apply(LineInput::Agent(Some(Box::new(agent(state)))));
        assert_eq!(line.presence(), presence, "{state:?}");
    }
}

#[test]
fn renames_and_snapshots_replace_what_was_known() {
    let mut line = line_with(&[("C1", ConnState::Held), ("C2", ConnState::Connected)]);
    assert!(line.apply(LineInput::Renamed { old: "C2".into(), new: "C3".into() }));
    assert_eq!(line.active_call().map(String::as_str), Some("C3"));
    assert!(!line.apply(LineInput::Renamed { old: "C9".into(), new: "C10".into() }));
    let calls = BTreeMap::from([("C7".to_owned(), ConnState::Alerting)]);
    assert!(line.apply(LineInput::Snapshot { agent: None, calls: calls.clone() }));
    assert_eq!(line.calls, calls);
    assert_eq!(line.agent, None);
    assert!(!line.apply(LineInput::Snapshot { agent: None, calls }), "the same snapshot changes nothing");
}

#[test]
fn single_call_commands_need_their_state() {
    use ConnState as S;
    type MakeCommand = fn(CallId) -> LineCommand;
    let cases: [(MakeCommand, &[S]); 6] = [
        (LineCommand::Answer, &[S::Alerting, S::Initiated]),
        (LineCommand::Hold, &[S::Connected]),
        (LineCommand::Retrieve, &[S::Held]),
        (LineCommand::Park, &[S::Connected, S::Held]),
        (LineCommand::BlindTransfer, &[S::Connected]),
        (LineCommand::ConsultStart, &[S::Connected]),
    ];
    for (command, allowed) in cases {
        for state in [S::Initiated, S::Alerting, S::Connected, S::Held, S::Queued, S::Failed] {
            let line = line_with(&[("C1", state)]);
            let outcome = line.check(&command("C1".into()));
            assert_eq!(outcome.is_ok(), allowed.contains(&state), "{:?} in {state}: {outcome:?}", command("C1".into()));
            if let Err(refusal) = outcome {
                assert!(matches!(refusal, CommandRefusal::WrongState { state: found, .. } if found == state));
            }
        }
        let refusal = line_with(&[]).check(&command("C9".into())).unwrap_err();
        assert_eq!(refusal.to_string(), "line 2001 is not in call C9");
    }
}

#[test]
fn a_wrong_state_refusal_says_what_was_needed() {
    let refusal = line_with(&[("C1", ConnState::Alerting)]).check(&LineCommand::Hold("C1".into())).unwrap_err();
    assert_eq!(refusal.to_string(), "cannot hold call C1 on line 2001: it is alerting, not connected");
}

#[test]
fn two_call_commands_need_one_held_and_one_active_call() {
    let line = line_with(&[("C1", ConnState::Held), ("C2", ConnState::Connected)]);
    let pair = |make: fn(CallId, CallId) -> LineCommand| make("C1".into(), "C2".into());
    assert_eq!(line.check(&pair(|held, active| LineCommand::ConsultComplete { held, active })), Ok(()));
    assert_eq!(line.check(&pair(|held, active| LineCommand::Conference { held, active })), Ok(()));
    assert_eq!(line.check(&pair(|held, active| LineCommand::Alternate { active, held })), Ok(()));
    assert_eq!(line.check(&pair(|held, active| LineCommand::ConsultCancel { held, active })), Ok(()));
    let swapped = LineCommand::ConsultComplete { held: "C2".into(), active: "C1".into() };
    assert!(matches!(line.check(&swapped), Err(CommandRefusal::WrongState { .. })));
    let same = LineCommand::Conference { held: "C1".into(), active: "C1".into() };
    assert_eq!(line.check(&same), Err(CommandRefusal::SameCall { action: "conference", call: "C1".into() }));
    // Cancelling a consultation that still rings is fine: the consulted party never answered.
    let ringing = line_with(&[("C1", ConnState::Held), ("C2", ConnState::Alerting)]);
    assert_eq!(ringing.check(&LineCommand::ConsultCancel { held: "C1".into(), active: "C2".into() }), Ok(()));
}

#[test]
fn agent_commands_need_the_right_agent_state() {
    let empty = LineState::new("2001".into());
    assert_eq!(empty.check(&LineCommand::LogOn("anna".into())), Ok(()));
    assert_eq!(empty.check(&LineCommand::LogOff), Err(CommandRefusal::NotLoggedOn { line: "2001".into() }));
    assert_eq!(
        empty.check(&LineCommand::SetState(AgentState::Ready)),
        Err(CommandRefusal::NotLoggedOn { line: "2001".into() })
    );
    let busy = line_with(&[("C1", ConnState::Connected)]);
    assert_eq!(
        busy.check(&LineCommand::LogOn("bob".into())),
        Err(CommandRefusal::AlreadyLoggedOn { line: "2001".into(), agent: "anna".into() })
    );
    assert_eq!(
        busy.check(&LineCommand::LogOff),
        Err(CommandRefusal::CallsInProgress { line: "2001".into(), calls: 1 })
    );
    let mut dnd = line_with(&[]);
    dnd.apply(LineInput::Agent(Some(Box::new(agent(AgentState::DoNotDisturb)))));
    assert_eq!(dnd.check(&LineCommand::MakeCall), Err(CommandRefusal::DoNotDisturb { line: "2001".into() }));
    assert_eq!(line_with(&[]).check(&LineCommand::MakeCall), Ok(()));
}

proptest! {
    /// Presence is Busy exactly when the agent is logged on, not in do-not-disturb, and the line has
    /// a ringing, talking or held call.
    #[test]
    fn presence_is_busy_exactly_when_on_a_call(
        inputs in proptest::collection::vec((0usize..4, 0usize..7, 0usize..6), 0..40)
    ) {
        use ConnState as S;
        let states = [S::Null, S::Initiated, S::Alerting, S::Connected, S::Held, S::Queued, S::Failed];
        let agent_states = [AgentState::LoggedOff, AgentState::Ready, AgentState::NotReady, AgentState::WorkingAfterCall, AgentState::DoNotDisturb];
        let mut line = LineState::new("2001".into());
        for (call, state, agent_state) in inputs {
            if agent_state == 5 {
                line.apply(LineInput::Call { call: format!("C{call}"), state: states[state] });
            } else {
                line.apply(LineInput::Agent(Some(Box::new(agent(agent_states[agent_state])))));
            }
            let on_a_call = line.calls.values().any(|state| matches!(state, S::Initiated | S::Alerting | S::Connected | S::Held));
            let dnd = line.agent.as_ref().is_some_and(|agent| agent.state == AgentState::DoNotDisturb);
            prop_assert_eq!(line.presence() == Presence::Busy, line.agent.is_some() && !dnd && on_a_call);
            prop_assert!(!line.calls.values().any(|state| *state == S::Null), "a line never keeps a cleared call");
        }
    }
}
