//! Fault injection: the ways a real PBX link misbehaves, each switchable at run time.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Standing faults applied to every link. Rates are per mille (0 to 1000) of events or requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSettings {
    /// Hold every event back this long before writing it (order is kept).
    pub event_delay: Duration,
    /// Send an event twice, with the same sequence number.
    pub duplicate_events_per_mille: u32,
    /// Swap an event with the one after it.
    pub reorder_events_per_mille: u32,
    /// Lose an event: its sequence number is spent, so the client sees a gap.
    pub drop_events_per_mille: u32,
    /// Refuse a call-control request with a congestion error instead of carrying it out.
    pub congestion_per_mille: u32,
}

/// What the faults decide for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventFate {
    Send,
    Duplicate,
    HoldBack,
    Drop,
}

/// The standing settings and a seeded random source, so a run with faults replays from its seed.
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) settings: FaultSettings,
    rng: SmallRng,
}

impl Faults {
    pub(crate) fn new(seed: u64) -> Self {
        Self { settings: FaultSettings::default(), rng: SmallRng::seed_from_u64(seed) }
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.random_range(0..1000) < per_mille
    }

    pub(crate) fn event_fate(&mut self) -> EventFate {
        let settings = self.settings.clone();
        if self.roll(settings.drop_events_per_mille) {
            EventFate::Drop
        } else if self.roll(settings.duplicate_events_per_mille) {
            EventFate::Duplicate
        } else if self.roll(settings.reorder_events_per_mille) {
            EventFate::HoldBack
        } else {
            EventFate::Send
        }
    }

    pub(crate) fn congested(&mut self) -> bool {
        let rate = self.settings.congestion_per_mille;
        self.roll(rate)
    }
}
