//! Puts a link's events back in sequence order: drops duplicates, waits briefly for a late event,
//! and reports a gap that will not fill (an event was lost), so the link can resync by snapshot.
//!
//! Pure: the caller owns the clock and decides how long a gap may stay open.

use std::collections::BTreeMap;

use proto::pbx::EventReport;

/// What one pushed event did.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    /// Events now in order, oldest first, to deliver.
    pub events: Vec<EventReport>,
    /// The pushed event had been seen already (or its gap was given up on) and was dropped.
    pub duplicate: bool,
}

/// The per-link sequencer. Sequence numbers start where the PBX said at registration.
#[derive(Debug)]
pub struct Sequencer {
    /// The sequence number the next delivered event must carry.
    next: u64,
    /// Events that arrived ahead of a missing one, by sequence number.
    waiting: BTreeMap<u64, EventReport>,
    /// How many events may wait for a gap before it is given up on.
    max_waiting: usize,
}

impl Sequencer {
    /// A sequencer expecting `first` next, holding at most `max_waiting` events behind a gap.
    pub fn new(first: u64, max_waiting: usize) -> Self {
        Self { next: first, waiting: BTreeMap::new(), max_waiting: max_waiting.max(1) }
    }

    /// The sequence number expected next.
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// Whether events wait behind a missing one.
    pub fn has_gap(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Takes one event off the link.
    pub fn push(&mut self, event: EventReport) -> Released {
        if event.sequence < self.next || self.waiting.contains_key(&event.sequence) {
            return Released { events: Vec::new(), duplicate: true };
        }
        if event.sequence > self.next {
            self.waiting.insert(event.sequence, event);
            if self.waiting.len() > self.max_waiting {
                return Released { events: self.give_up_gap(), duplicate: false };
            }
            return Released::default();
        }
        self.next += 1;
        let mut events = vec![event];
        self.release_in_order(&mut events);
        Released { events, duplicate: false }
    }

    /// Gives up on the missing events: releases everything waiting, in order, and moves past the
    /// gap. The caller must resync, since what was lost is not coming.
    pub fn give_up_gap(&mut self) -> Vec<EventReport> {
        let Some(first_waiting) = self.waiting.keys().next().copied() else { return Vec::new() };
        self.next = first_waiting;
        let mut events = Vec::new();
        self.release_in_order(&mut events);
        // Anything still waiting sits behind a second gap; release it too, the resync covers both.
        while let Some((sequence, event)) = self.waiting.pop_first() {
            self.next = sequence + 1;
            events.push(event);
        }
        events
    }

    /// Moves past events known to be lost at the end of the stream (nothing waits behind them).
    pub fn skip_to(&mut self, next: u64) {
        if self.waiting.is_empty() {
            self.next = self.next.max(next);
        }
    }

    fn release_in_order(&mut self, events: &mut Vec<EventReport>) {
        while let Some(event) = self.waiting.remove(&self.next) {
            self.next += 1;
            events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn event(sequence: u64) -> EventReport {
        EventReport { sequence, ..Default::default() }
    }

    fn sequences(events: &[EventReport]) -> Vec<u64> {
        events.iter().map(|event| event.sequence).collect()
    }

    #[test]
    fn in_order_events_pass_straight_through() {
        let mut sequencer = Sequencer::new(1, 8);
        for sequence in 1..=3 {
            assert_eq!(sequences(&sequencer.push(event(sequence)).events), vec![sequence]);
        }
        assert_eq!(sequencer.next_expected(), 4);
    }

    #[test]
    fn a_duplicate_is_dropped() {
        let mut sequencer = Sequencer::new(1, 8);
        sequencer.push(event(1));
        let released = sequencer.push(event(1));
        assert!(released.duplicate);
        assert!(released.events.is_empty());
    }

    #[test]
    fn a_swapped_pair_is_put_back_in_order() {
        let mut sequencer = Sequencer::new(1, 8);
        assert!(sequencer.push(event(2)).events.is_empty());
        assert!(sequencer.has_gap());
        assert_eq!(sequences(&sequencer.push(event(1)).events), vec![1, 2]);
        assert!(!sequencer.has_gap());
    }

    #[test]
    fn a_lost_event_is_given_up_on_when_too_many_wait() {
        let mut sequencer = Sequencer::new(1, 2);
        assert!(sequencer.push(event(2)).events.is_empty());
        assert!(sequencer.push(event(3)).events.is_empty());
        assert_eq!(sequences(&sequencer.push(event(4)).events), vec![2, 3, 4]);
        assert_eq!(sequencer.next_expected(), 5);
        // The lost event, arriving after all, is too late: the resync has covered it.
        assert!(sequencer.push(event(1)).duplicate);
    }

    #[test]
    fn skipping_past_lost_trailing_events_drops_them_if_they_come_late() {
        let mut sequencer = Sequencer::new(1, 8);
        sequencer.push(event(1));
        sequencer.skip_to(4);
        assert_eq!(sequencer.next_expected(), 4);
        assert!(sequencer.push(event(3)).duplicate);
        sequencer.skip_to(2);
        assert_eq!(sequencer.next_expected(), 4, "never backwards");
    }

    #[test]
    fn giving_up_releases_past_several_gaps() {
        let mut sequencer = Sequencer::new(1, 8);
        sequencer.push(event(3));
        sequencer.push(event(6));
        assert_eq!(sequences(&sequencer.give_up_gap()), vec![3, 6]);
        assert_eq!(sequencer.next_expected(), 7);
        assert!(sequencer.give_up_gap().is_empty());
    }

    proptest! {
        /// Whatever duplication and local reordering the link does, every event is delivered once,
        /// in order, as long as none is lost.
        #[test]
        fn shuffled_and_duplicated_events_come_out_once_in_order(
            count in 1u64..60,
            swaps in proptest::collection::vec(0usize..60, 0..30),
            duplicates in proptest::collection::vec(0usize..60, 0..10),
        ) {
            let mut arriving: Vec<u64> = (1..=count).collect();
            for swap in swaps {
                let index = swap % arriving.len();
                if index + 1 < arriving.len() {
                    arriving.swap(index, index + 1);
                }
            }
            for duplicate in duplicates {
                let index = duplicate % arriving.len();
                arriving.insert(index, arriving[index]);
            }
            let mut sequencer = Sequencer::new(1, 64);
            let mut delivered = Vec::new();
            for sequence in arriving {
                delivered.extend(sequences(&sequencer.push(event(sequence)).events));
            }
            prop_assert_eq!(delivered, (1..=count).collect::<Vec<_>>());
            prop_assert!(!sequencer.has_gap());
        }

        /// With losses, what is delivered is still strictly increasing and never repeats.
        #[test]
        fn with_losses_delivery_stays_strictly_increasing(
            arriving in proptest::collection::vec(1u64..100, 0..80),
            max_waiting in 1usize..8,
        ) {
            let mut sequencer = Sequencer::new(1, max_waiting);
            let mut delivered = Vec::new();
            for sequence in arriving {
                delivered.extend(sequences(&sequencer.push(event(sequence)).events));
            }
            delivered.extend(sequences(&sequencer.give_up_gap()));
            prop_assert!(delivered.windows(2).all(|pair| pair[0] < pair[1]), "{:?}", delivered);
        }
    }
}
