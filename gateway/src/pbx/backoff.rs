//! Reconnect delays: exponential with jitter, so a fleet of gateways does not reconnect in lockstep
//! after a PBX restart.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Doubling delays between `initial` and `max`, each drawn from the upper half of its step
/// ("equal jitter"): never zero, never more than `max`.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    /// A backoff seeded from the OS, for production.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::seeded(initial, max, rand::random())
    }

    /// A backoff with a fixed seed, for tests.
    pub fn seeded(initial: Duration, max: Duration, seed: u64) -> Self {
        Self { initial, max: max.max(initial), attempt: 0, rng: SmallRng::seed_from_u64(seed) }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.initial.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_ms = self.rng.random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// Starts over from `initial`, after a connection that held.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_within_the_maximum() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::seeded(initial, max, 7);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        for (attempt, delay) in delays.iter().enumerate() {
            let step = (initial * (1 << attempt)).min(max);
            assert!(*delay >= step / 2 && *delay <= step, "attempt {attempt}: {delay:?} outside {step:?}");
        }
        assert!(delays[9] >= max / 2);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::seeded(Duration::from_millis(100), Duration::from_secs(10), 1);
        for _ in 0..6 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let draw = |seed| {
            let mut backoff = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(60), seed);
            (0..5).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(draw(1), draw(2));
    }
}
