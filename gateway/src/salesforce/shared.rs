//! A cluster node's view of the open legs of the lines it owns, kept in step with the shared
//! journal ([`crate::cluster::journal`]). Pure: it turns the model's leg notes into the journal
//! writes and the call logs they imply, and the caller carries them out (outbox first, then the
//! fenced journal writes, then delivery).
//!
//! A line's legs are read from the journal the first time a batch finds the line owned under a new
//! token; the model's first notes about a taken line come from its snapshot, with the call's id at
//! that time as its first id and the snapshot's time as its start. A journaled leg of the same
//! call continues: its key (the call's first id, as the previous owner knew it) and its start
//! times win. When the model says which legs it holds on the lines it took ([`LegNote::Taken`]),
//! the journaled legs it does not hold ended in the gap (their call ended, or the line left it):
//! they are logged, and a tombstone
//! takes their place in the journal.
//!
//! A node also keeps, for a while (the standby window), what the model said about the lines it
//! stands by for. When it takes such a line, that account is applied first, as if it had owned the
//! line all along: it saw what happened while the owner could no longer journal it (a leg that
//! began and ended in the gap, a consultation merged into the customer's call at the owner's last
//! moment), and the owner's `Logged` marks tell it which legs the owner logged already.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use actors::call::{CallLogRecord, LegNote};

use super::outbox::ended_while_down;
use crate::cluster::journal::{JournalEntry, Journaled, LineWrites, continue_leg, line_of};

/// Notes kept per standby line at most: a line's account of a window is a few calls long.
const WATCHED_PER_LINE: usize = 256;

/// One open leg as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenLeg {
    /// The journal's record when the line was taken, if the leg was inherited.
    inherited: Option<CallLogRecord>,
    /// Its record now.
    current: CallLogRecord,
    /// An inherited leg the model has reported on since: no other leg of the model continues it.
    continued: bool,
}

/// What a batch of notes comes to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Writes to the journal, by line (with the token each is fenced by).
    pub writes: Vec<LineWrites>,
    /// Call logs of legs that ended, to commit to the outbox before the writes.
    pub logs: Vec<CallLogRecord>,
}

/// A batch's writes by line and key, and its logs, as they are planned.
#[derive(Default)]
struct Batch {
    writes: BTreeMap<String, BTreeMap<String, Option<JournalEntry>>>,
    logs: Vec<CallLogRecord>,
}

/// The open legs of the lines a node owns.
#[derive(Debug)]
pub struct SharedLegs {
    node_id: String,
    /// Lines whose journal has been read, with the token it was read under.
    loaded: BTreeMap<String, i64>,
    /// Open legs by line, then key.
    open: BTreeMap<String, BTreeMap<String, OpenLeg>>,
    /// The model's key of a continued leg -> its key in the journal.
    aliases: HashMap<String, String>,
    /// What the model said about the lines this node stands by for, by line, oldest first, each
    /// with when (Unix ms).
    watched: BTreeMap<String, VecDeque<(u64, LegNote)>>,
    /// How long watched notes are kept, in ms.
    window_ms: u64,
    /// The watched notes of lines just taken, applied before the next batch.
    replay: Vec<LegNote>,
    /// Keys the journal says were logged lately, on lines just taken: their notes are not replayed.
    logged: HashSet<String>,
}

impl SharedLegs {
    /// An empty view for node `node_id`, keeping what it hears of standby lines for `window`.
    pub fn new(node_id: String, window: std::time::Duration) -> Self {
        Self {
            node_id,
            loaded: BTreeMap::new(),
            open: BTreeMap::new(),
            aliases: HashMap::new(),
            watched: BTreeMap::new(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            replay: Vec::new(),
            logged: HashSet::new(),
        }
    }

    /// Forgets lines no longer owned (or owned under another token) and returns the owned lines
    /// whose journal must be read before the next batch is planned.
    pub fn to_load(&mut self, owned: &BTreeMap<String, i64>) -> BTreeSet<String> {
        let gone: Vec<String> = self
            .loaded
            .iter()
            .filter(|(line, token)| owned.get(*line) != Some(*token))
            .map(|(line, _)| line.clone())
            .collect();
        for line in gone {
            self.forget(&line);
        }
        owned.keys().filter(|line| !self.loaded.contains_key(*line)).cloned().collect()
    }

    /// Takes the journal's legs of lines just read, under the tokens `owned` gives, and queues
    /// what this node heard of them while it stood by.
    pub fn loaded(&mut self, lines: &BTreeSet<String>, owned: &BTreeMap<String, i64>, journaled: Journaled) {
        let Journaled { open: mut legs, logged } = journaled;
        self.logged.extend(logged.into_iter().filter(|key| lines.contains(line_of(key))));
        for line in lines {
            let Some(token) = owned.get(line) else { continue };
            if let Some(watched) = self.watched.remove(line) {
                tracing::debug!(line, notes = watched.len(), "taking a line stood by for; replaying what was heard");
                self.replay.extend(watched.into_iter().map(|(_, note)| note));
            }
            let inherited = legs.remove(line).unwrap_or_default();
            let open = inherited
                .into_iter()
                .map(|(key, record)| {
                    (key, OpenLeg { inherited: Some(record.clone()), current: record, continued: false })
                })
                .collect();
            self.open.insert(line.clone(), open);
            self.loaded.insert(line.clone(), *token);
        }
    }

    /// Forgets a line: another node owns it now.
    pub fn forget(&mut self, line: &str) {
        self.loaded.remove(line);
        self.open.remove(line);
        self.aliases.retain(|model_key, _| line_of(model_key) != line);
    }

    /// Open legs known on `line`.
    pub fn open_legs(&self, line: &str) -> usize {
        self.open.get(line).map_or(0, BTreeMap::len)
    }

    /// The journal key and record of a leg the model reports.
    fn resolve(&mut self, record: CallLogRecord) -> (String, CallLogRecord) {
        let model_key = record.key();
        let legs = self.open.entry(record.device.clone()).or_default();
        let journal_key = match self.aliases.get(&model_key) {
            Some(alias) if legs.contains_key(alias) => Some(alias.clone()),
            _ if legs.contains_key(&model_key) => Some(model_key.clone()),
            // A leg rebuilt from a snapshot: the call's id then is its first id in the model. The
            // call may have changed ids in the gap (a transfer or conference): then it is the same
            // call if it has the same recording, or was placed from and to the same numbers.
            _ => {
                let unclaimed = |(_, leg): &(&String, &OpenLeg)| leg.inherited.is_some() && !leg.continued;
                let same_call = |leg: &OpenLeg| leg.current.call_id == record.root_call_id;
                let same_recording =
                    |leg: &OpenLeg| record.recording_url.is_some() && leg.current.recording_url == record.recording_url;
                let same_numbers =
                    |leg: &OpenLeg| leg.current.calling == record.calling && leg.current.called == record.called;
                let find = |test: &dyn Fn(&OpenLeg) -> bool| {
                    legs.iter().filter(unclaimed).find(|(_, leg)| test(leg)).map(|(key, _)| key.clone())
                };
                let found = find(&same_call).or_else(|| find(&same_recording)).or_else(|| find(&same_numbers));
                if found.is_none() && legs.iter().any(|leg| unclaimed(&leg)) {
                    tracing::debug!(?record, inherited = ?legs.values().filter(|leg| !leg.continued).collect::<Vec<_>>(), "a leg on a taken line matches none the journal had");
                }
                found
            }
        };
        match journal_key {
            Some(key) => {
                if key != model_key {
                    self.aliases.insert(model_key, key.clone());
                }
                let record = match legs.get(&key).and_then(|leg| leg.inherited.as_ref()) {
                    Some(inherited) => continue_leg(inherited, record),
                    None => record,
                };
                (key, record)
            }
            None => (model_key, record),
        }
    }

    /// Keeps `note` if it is about a line this node stands by for.
    fn watch(&mut self, note: &LegNote, standby: &BTreeSet<String>, now_ms: u64) {
        let mut keep = |line: &str, note: LegNote| {
            if standby.contains(line) {
                let notes = self.watched.entry(line.to_owned()).or_default();
                if notes.len() == WATCHED_PER_LINE {
                    notes.pop_front();
                }
                notes.push_back((now_ms, note));
            }
        };
        match note {
            LegNote::Open(record) | LegNote::Closed(record) | LegNote::Skipped(record) => {
                keep(&record.device, note.clone());
            }
            LegNote::Moved(keys) => {
                for key in keys {
                    keep(line_of(key), LegNote::Moved(vec![key.clone()]));
                }
            }
            LegNote::Present(_) | LegNote::Taken { .. } => {}
        }
    }

    /// Drops watched notes older than the window, and lines no longer stood by for once empty.
    fn prune(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(self.window_ms);
        self.watched.retain(|_, notes| {
            while notes.front().is_some_and(|(at, _)| *at < oldest) {
                notes.pop_front();
            }
            !notes.is_empty()
        });
    }

    /// Plans one note about lines `owned` into `batch`.
    fn apply(&mut self, note: &LegNote, owned: &BTreeMap<String, i64>, batch: &mut Batch, now_ms: u64) {
        let Batch { writes, logs } = batch;
        match note {
            LegNote::Open(record) | LegNote::Closed(record) | LegNote::Skipped(record) => {
                if !owned.contains_key(&record.device) {
                    return;
                }
                let model_key = record.key();
                let (key, record) = self.resolve(record.clone());
                let line = record.device.clone();
                let legs = self.open.entry(line.clone()).or_default();
                if let LegNote::Open(_) = note {
                    let inherited = legs.get(&key).and_then(|leg| leg.inherited.clone());
                    legs.insert(key.clone(), OpenLeg { inherited, current: record.clone(), continued: true });
                    let entry = JournalEntry::Open { record: Box::new(record) };
                    writes.entry(line).or_default().insert(key, Some(entry));
                    return;
                }
                legs.remove(&key);
                self.aliases.remove(&model_key);
                if let LegNote::Closed(_) = note {
                    // The mark tells a node standing by for the line that this leg is logged.
                    let mark = JournalEntry::Logged { by: self.node_id.clone() };
                    writes.entry(line).or_default().insert(key, Some(mark));
                    logs.push(record);
                } else {
                    writes.entry(line).or_default().insert(key, None);
                }
            }
            LegNote::Moved(keys) => {
                for model_key in keys {
                    let line = line_of(model_key).to_owned();
                    if !owned.contains_key(&line) {
                        continue;
                    }
                    let key = self.aliases.remove(model_key).unwrap_or_else(|| model_key.clone());
                    if let Some(legs) = self.open.get_mut(&line) {
                        legs.remove(&key);
                    }
                    writes.entry(line).or_default().insert(key, None);
                }
            }
            LegNote::Taken { lines, legs: held } => {
                let present: HashSet<(&str, &str)> =
                    held.iter().map(|(call, line)| (call.as_str(), line.as_str())).collect();
                for line in lines.iter().filter(|line| owned.contains_key(*line)) {
                    let Some(legs) = self.open.get_mut(line) else { continue };
                    tracing::debug!(line, legs = ?legs.keys().collect::<Vec<_>>(), ?held, "line taken; its journaled legs checked");
                    // A journaled leg goes on if the model holds its call with a leg on this line: a
                    // call rebuilt after the line left it (a transfer in the gap) has none.
                    let vanished: Vec<String> = legs
                        .iter()
                        .filter(|(_, leg)| {
                            !leg.continued && !present.contains(&(leg.current.call_id.as_str(), line.as_str()))
                        })
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in vanished {
                        let Some(leg) = legs.remove(&key) else { continue };
                        tracing::warn!(key, "a call leg ended while no node watched its line; logging it");
                        logs.push(ended_while_down(leg.current, now_ms));
                        let tombstone = JournalEntry::Closed { by: self.node_id.clone() };
                        writes.entry(line.clone()).or_default().insert(key, Some(tombstone));
                    }
                }
            }
            // The single node's restart check; a cluster node learns the same from `Taken`.
            LegNote::Present(_) => {}
        }
    }

    /// Plans a batch: `owned` is what the node owns now (notes of other lines are left out, but
    /// those of `standby` lines are kept for the window).
    pub fn plan(
        &mut self,
        notes: &[LegNote],
        owned: &BTreeMap<String, i64>,
        standby: &BTreeSet<String>,
        now_ms: u64,
    ) -> Plan {
        let mut batch = Batch::default();
        let replay = std::mem::take(&mut self.replay);
        let logged = std::mem::take(&mut self.logged);
        for note in &replay {
            let skip = match note {
                LegNote::Open(record) | LegNote::Closed(record) | LegNote::Skipped(record) => {
                    logged.contains(&record.key())
                }
                _ => false,
            };
            tracing::debug!(?note, skip, "replaying a note heard while standing by");
            if !skip {
                self.apply(note, owned, &mut batch, now_ms);
            }
        }
        for note in notes {
            self.watch(note, standby, now_ms);
            self.apply(note, owned, &mut batch, now_ms);
        }
        self.prune(now_ms);
        let Batch { writes, logs } = batch;
        let writes = writes
            .into_iter()
            .filter_map(|(line, legs)| {
                let token = *owned.get(&line)?;
                Some(LineWrites { line, token, legs })
            })
            .collect();
        Plan { writes, logs }
    }
}

#[cfg(test)]
mod tests {
    use actors::domain::{Direction, LegOutcome};

    use super::*;

    const WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

    fn standby(lines: &[&str]) -> BTreeSet<String> {
        lines.iter().map(|line| (*line).to_owned()).collect()
    }

    fn record(root: &str, call: &str, line: &str, offered_at: u64) -> CallLogRecord {
        CallLogRecord {
            root_call_id: root.into(),
            call_id: call.into(),
            device: line.into(),
            agent_id: None,
            direction: Direction::Inbound,
            outcome: LegOutcome::Answered,
            via_queue: false,
            queue: None,
            calling: "+4930".into(),
            called: line.into(),
            parties: vec!["+4930".into(), line.into()],
            offered_at,
            answered_at: Some(offered_at),
            ended_at: 0,
            talk_seconds: 0,
            hold_seconds: 0,
            notes: String::new(),
            disposition: None,
            recording_url: None,
        }
    }

    fn owned(lines: &[(&str, i64)]) -> BTreeMap<String, i64> {
        lines.iter().map(|(line, token)| ((*line).to_owned(), *token)).collect()
    }

    /// The model's word that it took `line`, holding `legs` (call, line) on it.
    fn model_took(
        shared: &mut SharedLegs,
        owned: &BTreeMap<String, i64>,
        line: &str,
        legs: &[(&str, &str)],
        at: u64,
    ) -> Plan {
        let legs = legs.iter().map(|(call, line)| ((*call).to_owned(), (*line).to_owned())).collect();
        shared.plan(&[LegNote::Taken { lines: vec![line.to_owned()], legs }], owned, &BTreeSet::new(), at)
    }

    fn taken(shared: &mut SharedLegs, owned: &BTreeMap<String, i64>, journal: Vec<CallLogRecord>) {
        taken_with_marks(shared, owned, journal, &[]);
    }

    fn taken_with_marks(
        shared: &mut SharedLegs,
        owned: &BTreeMap<String, i64>,
        journal: Vec<CallLogRecord>,
        logged: &[&str],
    ) {
        let lines = shared.to_load(owned);
        let mut journaled = Journaled::default();
        for record in journal {
            journaled.open.entry(record.device.clone()).or_default().insert(record.key(), record);
        }
        journaled.logged = logged.iter().map(|key| (*key).to_owned()).collect();
        shared.loaded(&lines, owned, journaled);
    }

    #[test]
    fn an_owners_legs_are_journaled_while_open_and_logged_once_closed() {
        let owned = owned(&[("2001", 7)]);
        let mut shared = SharedLegs::new("n1".into(), WINDOW);
        taken(&mut shared, &owned, Vec::new());
        let plan = shared.plan(&[LegNote::Open(record("C1", "C1", "2001", 10))], &owned, &BTreeSet::new(), 20);
        assert!(plan.logs.is_empty());
        assert_eq!(plan.writes.len(), 1);
        assert_eq!((plan.writes[0].line.as_str(), plan.writes[0].token), ("2001", 7));
        assert!(matches!(plan.writes[0].legs["C1:2001"], Some(JournalEntry::Open { .. })));
        let plan = shared.plan(&[LegNote::Closed(record("C1", "C1", "2001", 10))], &owned, &BTreeSet::new(), 30);
        assert_eq!(plan.logs, [record("C1", "C1", "2001", 10)]);
        assert_eq!(plan.writes[0].legs["C1:2001"], Some(JournalEntry::Logged { by: "n1".into() }));
        assert_eq!(shared.open_legs("2001"), 0);
    }

    #[test]
    fn notes_of_lines_not_owned_are_left_out() {
        let owned = owned(&[("2001", 7)]);
        let mut shared = SharedLegs::new("n1".into(), WINDOW);
        taken(&mut shared, &owned, Vec::new());
        let plan = shared.plan(&[LegNote::Closed(record("C1", "C1", "2002", 10))], &owned, &BTreeSet::new(), 30);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_taken_leg_continues_under_its_first_id_and_one_that_ended_in_the_gap_is_logged() {
        let owned = owned(&[("2001", 9), ("2002", 9)]);
        let mut shared = SharedLegs::new("n2".into(), WINDOW);
        // The previous owner journaled C1 (now known as C5 after a transfer) and C2.
        let mut transferred = record("C1", "C5", "2001", 100);
        transferred.answered_at = Some(200);
        taken(&mut shared, &owned, vec![transferred, record("C2", "C2", "2002", 300)]);
        // The snapshot shows C5 on 2001 only, as a call first seen now.
        let rebuilt = record("C5", "C5", "2001", 9_000);
        let plan = shared.plan(
            &[
                LegNote::Open(rebuilt.clone()),
                LegNote::Taken { lines: vec!["2001".into(), "2002".into()], legs: vec![("C5".into(), "2001".into())] },
            ],
            &owned,
            &BTreeSet::new(),
            10_000,
        );
        assert_eq!(plan.logs.len(), 1);
        assert_eq!(plan.logs[0].key(), "C2:2002");
        assert!(plan.logs[0].notes.contains("ended while the gateway was down"));
        let by_line: BTreeMap<&str, &LineWrites> = plan.writes.iter().map(|w| (w.line.as_str(), w)).collect();
        assert!(matches!(by_line["2001"].legs["C1:2001"], Some(JournalEntry::Open { .. })));
        assert_eq!(by_line["2002"].legs["C2:2002"], Some(JournalEntry::Closed { by: "n2".into() }));
        // The continued leg ends later: logged under its first id, with its first start times.
        let plan = shared.plan(&[LegNote::Closed(rebuilt)], &owned, &BTreeSet::new(), 20_000);
        assert_eq!(plan.logs.len(), 1);
        assert_eq!(plan.logs[0].key(), "C1:2001");
        assert_eq!((plan.logs[0].offered_at, plan.logs[0].answered_at), (100, Some(200)));
        assert_eq!(plan.writes[0].legs["C1:2001"], Some(JournalEntry::Logged { by: "n2".into() }));
    }

    #[test]
    fn a_call_that_changed_ids_in_the_gap_is_known_by_its_numbers() {
        let owned = owned(&[("2001", 9)]);
        let mut shared = SharedLegs::new("n2".into(), WINDOW);
        taken(&mut shared, &owned, vec![record("C1", "C3", "2001", 100)]);
        // Transferred in the gap: the snapshot shows C8, placed from and to the same numbers.
        let rebuilt = record("C8", "C8", "2001", 9_000);
        let plan = shared.plan(
            &[
                LegNote::Open(rebuilt.clone()),
                LegNote::Taken { lines: vec!["2001".into()], legs: vec![("C8".into(), "2001".into())] },
            ],
            &owned,
            &BTreeSet::new(),
            10_000,
        );
        assert!(plan.logs.is_empty(), "{:?}", plan.logs);
        let plan = shared.plan(&[LegNote::Closed(rebuilt)], &owned, &BTreeSet::new(), 20_000);
        assert_eq!(plan.logs.iter().map(CallLogRecord::key).collect::<Vec<_>>(), ["C1:2001"]);
    }

    #[test]
    fn a_line_lost_and_taken_again_is_read_afresh() {
        let mut shared = SharedLegs::new("n1".into(), WINDOW);
        let first = owned(&[("2001", 3)]);
        taken(&mut shared, &first, Vec::new());
        shared.plan(&[LegNote::Open(record("C1", "C1", "2001", 10))], &first, &BTreeSet::new(), 20);
        assert_eq!(shared.open_legs("2001"), 1);
        assert!(shared.to_load(&BTreeMap::new()).is_empty());
        assert_eq!(shared.open_legs("2001"), 0);
        let again = owned(&[("2001", 11)]);
        assert_eq!(shared.to_load(&again), BTreeSet::from(["2001".to_owned()]));
    }
    #[test]
    fn a_standby_that_takes_a_line_logs_a_leg_that_began_and_ended_while_the_owner_was_dying() {
        let mut shared = SharedLegs::new("n2".into(), WINDOW);
        let watching = standby(&["2001"]);
        let none = BTreeMap::new();
        let leg = record("C1", "C1", "2001", 1_000);
        let plan = shared.plan(&[LegNote::Open(leg.clone()), LegNote::Closed(leg.clone())], &none, &watching, 2_000);
        assert_eq!(plan, Plan::default(), "a standby line's notes are kept, not acted on");
        // The owner died before it journaled anything of the leg; n2 takes the line.
        let owned = owned(&[("2001", 9)]);
        taken(&mut shared, &owned, Vec::new());
        let plan = shared.plan(&[], &owned, &BTreeSet::new(), 5_000);
        assert_eq!(plan.logs, [leg]);
        assert_eq!(plan.writes[0].legs["C1:2001"], Some(JournalEntry::Logged { by: "n2".into() }));
    }

    #[test]
    fn a_standby_does_not_log_again_a_leg_its_owner_marked_logged() {
        let mut shared = SharedLegs::new("n2".into(), WINDOW);
        let leg = record("C1", "C1", "2001", 1_000);
        let notes = [LegNote::Open(leg.clone()), LegNote::Closed(leg)];
        shared.plan(&notes, &BTreeMap::new(), &standby(&["2001"]), 2_000);
        let owned = owned(&[("2001", 9)]);
        taken_with_marks(&mut shared, &owned, Vec::new(), &["C1:2001"]);
        let plan = shared.plan(&[], &owned, &BTreeSet::new(), 5_000);
        assert!(plan.logs.is_empty(), "{plan:?}");
        assert!(plan.writes.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_consultation_merged_after_the_owners_last_journal_write_is_no_leg_of_its_own() {
        let mut shared = SharedLegs::new("n2".into(), WINDOW);
        // The owner journaled the consultation C2 on 2002; n2 heard it merge into C1.
        let consultation = record("C2", "C2", "2002", 1_000);
        let merged = record("C1", "C1", "2002", 1_000);
        let heard = [LegNote::Moved(vec!["C2:2002".into()]), LegNote::Open(merged.clone())];
        shared.plan(&heard, &BTreeMap::new(), &standby(&["2002"]), 2_000);
        let owned = owned(&[("2002", 9)]);
        taken(&mut shared, &owned, vec![consultation]);
        let plan = model_took(&mut shared, &owned, "2002", &[("C1", "2002")], 5_000);
        assert!(plan.logs.is_empty(), "the consultation's leg goes on in C1: {:?}", plan.logs);
        assert_eq!(plan.writes[0].legs["C2:2002"], None);
        assert!(matches!(plan.writes[0].legs["C1:2002"], Some(JournalEntry::Open { .. })));
        let plan = shared.plan(&[LegNote::Closed(merged)], &owned, &BTreeSet::new(), 9_000);
        assert_eq!(plan.logs.iter().map(CallLogRecord::key).collect::<Vec<_>>(), ["C1:2002"]);
    }

    #[test]
    fn what_a_standby_heard_is_kept_for_the_window_only_and_only_for_its_standby_lines() {
        let mut shared = SharedLegs::new("n2".into(), WINDOW);
        let old = record("C1", "C1", "2001", 1_000);
        shared.plan(&[LegNote::Open(old.clone()), LegNote::Closed(old)], &BTreeMap::new(), &standby(&["2001"]), 1_000);
        let other = record("C3", "C3", "2003", 1_000);
        let notes = [LegNote::Open(other.clone()), LegNote::Closed(other)];
        shared.plan(&notes, &BTreeMap::new(), &standby(&["2001"]), 40_000);
        let owned = owned(&[("2001", 9), ("2003", 9)]);
        taken(&mut shared, &owned, Vec::new());
        let plan = shared.plan(&[], &owned, &BTreeSet::new(), 41_000);
        assert_eq!(plan, Plan::default(), "30 s on, the owner had long journaled C1; C3 was never stood by for");
    }

    #[test]
    fn a_journaled_leg_whose_line_left_the_call_in_the_gap_ended_though_the_call_goes_on() {
        let owned = owned(&[("2007", 9)]);
        let mut shared = SharedLegs::new("n3".into(), WINDOW);
        // 2007 transferred C9 (now C36) to 2001 while the line had no owner; C36 goes on at 2001.
        let mut transferred = record("C9", "C36", "2007", 100);
        transferred.outcome = LegOutcome::Transferred;
        taken(&mut shared, &owned, vec![transferred]);
        let plan = model_took(&mut shared, &owned, "2007", &[("C36", "2001")], 10_000);
        assert_eq!(plan.logs.iter().map(CallLogRecord::key).collect::<Vec<_>>(), ["C9:2007"]);
    }
}
