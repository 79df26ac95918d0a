//! How fast the gateway may spend the org's Salesforce API allocation: a share of the daily
//! allocation paced by governor (GCRA), slowed as the org's reported usage nears its limit.
//!
//! | usage of the org's allocation | state | what is sent |
//! |---|---|---|
//! | below `throttle_at` | normal | everything, at the full pace |
//! | from `throttle_at` | throttled | everything, at half the pace |
//! | from `reads_only_at` | reads only | screen-pop searches; call logs wait in the outbox |
//! | exhausted (`REQUEST_LIMIT_EXCEEDED`) | stopped | nothing but a rare probe; pops come from the cache |
//!
//! In a cluster the nodes share one allowance: the share of the day's allocation is a counter all
//! nodes take blocks of requests from ([`crate::crm::port::BudgetLedger`]), and a node sends a
//! request only with a permit from a block in hand as well as from its own governor. The org's
//! reported usage still rules over both: blocks in hand are no licence to pass the org's limits.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::crm::port::ApiUsage;

/// The budget's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// The org's daily allocation, until the org reports its own.
    pub daily_allocation: u64,
    /// The share of it this gateway (or cluster) may spend, 0 to 1.
    pub share: f64,
    /// Usage (as a fraction of the allocation) from which the pace halves.
    pub throttle_at: f64,
    /// Usage from which only screen-pop searches go out.
    pub reads_only_at: f64,
    /// Requests that may go out at once after a quiet spell, at least.
    pub burst: u32,
    /// How often to ask whether an exhausted allocation has room again.
    pub probe_interval: Duration,
    /// Requests taken at once from the cluster's shared allowance; `None` on a single node, which
    /// spends its share alone.
    pub shared_block: Option<u32>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            daily_allocation: 100_000,
            share: 0.25,
            throttle_at: 0.80,
            reads_only_at: 0.95,
            burst: 20,
            probe_interval: Duration::from_secs(60),
            shared_block: None,
        }
    }
}

/// Where the budget stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetState {
    /// Full pace.
    Normal,
    /// Half pace.
    Throttled,
    /// Searches only.
    ReadsOnly,
    /// Nothing but probes until usage shows room.
    Stopped,
}

impl BudgetState {
    /// Every state, in order of severity.
    pub const ALL: [Self; 4] = [Self::Normal, Self::Throttled, Self::ReadsOnly, Self::Stopped];

    /// The state in words (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Throttled => "throttled",
            Self::ReadsOnly => "reads_only",
            Self::Stopped => "stopped",
        }
    }

    /// Whether call logs may be written.
    pub fn allows_writes(self) -> bool {
        matches!(self, Self::Normal | Self::Throttled)
    }

    /// Whether searches may be sent.
    pub fn allows_reads(self) -> bool {
        self != Self::Stopped
    }
}

/// A clock that reads the budget's own notion of now, so pacing follows the time the actor is given
/// (and tokio's paused time in tests) rather than the wall clock.
#[derive(Debug, Clone, Default)]
struct GivenClock(Arc<AtomicU64>);

impl Clock for GivenClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, GivenClock, NoOpMiddleware<Duration>>;

/// How long to wait before asking the ledger again after it failed to answer.
const LEDGER_RETRY: Duration = Duration::from_secs(1);

/// What a node holds of the cluster's shared allowance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowance {
    /// Requests per block.
    block: u64,
    /// Permits in hand.
    held: u64,
    /// A block has been asked for and not yet answered.
    asking: bool,
    /// No block is to be asked for before this (the window's share is spent, or the ledger failed).
    not_before: Duration,
}

/// How a request for a block of the shared allowance went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockGrant {
    /// This many requests are ours to spend (fewer than asked when the window's share runs out).
    Granted(u64),
    /// The cluster spent its share of this window; a new window starts in `retry_after`.
    Spent {
        /// Until the next window.
        retry_after: Duration,
    },
}

/// The pacing of requests: a GCRA limiter at a rate that follows the org's usage.
#[derive(Debug)]
pub struct Budget {
    config: BudgetConfig,
    clock: GivenClock,
    limiter: Limiter,
    /// Requests per second the limiter runs at.
    rate: f64,
    usage: Option<ApiUsage>,
    exhausted: bool,
    /// The shared allowance, in a cluster.
    allowance: Option<Allowance>,
}

impl Budget {
    /// A budget at the full pace of the configured allocation.
    pub fn new(config: BudgetConfig) -> Self {
        let clock = GivenClock::default();
        let rate = Self::rate_for(&config, config.daily_allocation, BudgetState::Normal);
        let limiter = RateLimiter::direct_with_clock(quota(rate, config.burst), clock.clone());
        let allowance = config.shared_block.map(|block| Allowance {
            block: u64::from(block.max(1)),
            held: 0,
            asking: false,
            not_before: Duration::ZERO,
        });
        Self { config, clock, limiter, rate, usage: None, exhausted: false, allowance }
    }

    fn rate_for(config: &BudgetConfig, allocation: u64, state: BudgetState) -> f64 {
        let full = config.share * allocation as f64 / 86_400.0;
        match state {
            BudgetState::Throttled => full / 2.0,
            _ => full,
        }
    }

    /// Where the budget stands.
    pub fn state(&self) -> BudgetState {
        if self.exhausted {
            return BudgetState::Stopped;
        }
        let Some(usage) = self.usage.filter(|usage| usage.max > 0) else {
            return BudgetState::Normal;
        };
        let used = usage.used as f64 / usage.max as f64;
        if used >= 1.0 {
            BudgetState::Stopped
        } else if used >= self.config.reads_only_at {
            BudgetState::ReadsOnly
        } else if used >= self.config.throttle_at {
            BudgetState::Throttled
        } else {
            BudgetState::Normal
        }
    }

    /// What the org last reported.
    pub fn usage(&self) -> Option<ApiUsage> {
        self.usage
    }

    /// Requests per second allowed now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes in what a response said of the org's usage.
    pub fn observe(&mut self, usage: ApiUsage) {
        self.usage = Some(usage);
        if usage.used < usage.max {
            self.exhausted = false;
        }
        self.repace();
    }

    /// The org said its allocation is spent.
    pub fn exhausted(&mut self) {
        self.exhausted = true;
        self.repace();
    }

    fn repace(&mut self) {
        let allocation = self.usage.map_or(self.config.daily_allocation, |usage| usage.max);
        let rate = Self::rate_for(&self.config, allocation, self.state());
        if (rate - self.rate).abs() > f64::EPSILON * rate.max(1.0) {
            self.rate = rate;
            self.limiter = RateLimiter::direct_with_clock(quota(rate, self.config.burst), self.clock.clone());
        }
    }

    /// Takes a permit for one request at `now`, or says how long until one is free. In a cluster
    /// the permit also spends one request of a block in hand.
    pub fn try_acquire(&mut self, now: Duration) -> Result<(), Duration> {
        if let Some(allowance) = &self.allowance
            && allowance.held == 0
        {
            // The answer to the block's request wakes the actor; this is only a backstop.
            return Err(allowance.not_before.saturating_sub(now).max(LEDGER_RETRY));
        }
        self.clock.0.store(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.limiter.check().map_err(|not_until| -> Duration {
            let earliest: Duration = not_until.earliest_possible();
            earliest.duration_since(now).into()
        })?;
        if let Some(allowance) = &mut self.allowance {
            allowance.held -= 1;
        }
        Ok(())
    }

    /// In a cluster, the size of the block to ask the ledger for now, if one is due: when half a
    /// block or less is left in hand, none is being asked for, and the last answer allows it.
    /// Asking early keeps a busy node from waiting on etcd between blocks.
    pub fn ask_for_block(&mut self, now: Duration) -> Option<u64> {
        let allowance = self.allowance.as_mut()?;
        if allowance.asking || now < allowance.not_before || allowance.held > allowance.block / 2 {
            return None;
        }
        allowance.asking = true;
        Some(allowance.block)
    }

    /// The most the cluster may spend in one window (a day): the share of the org's allocation.
    pub fn window_cap(&self) -> u64 {
        let allocation = self.usage.map_or(self.config.daily_allocation, |usage| usage.max);
        (self.config.share * allocation as f64).floor() as u64
    }

    /// Takes in the ledger's answer to [`Self::ask_for_block`]; `None` when the ledger could not be
    /// reached (etcd down): what is in hand is spent, and no more until it answers again.
    pub fn block_answered(&mut self, grant: Option<BlockGrant>, now: Duration) {
        let Some(allowance) = &mut self.allowance else { return };
        allowance.asking = false;
        match grant {
            Some(BlockGrant::Granted(requests)) => {
                allowance.held += requests;
                allowance.not_before = now;
            }
            Some(BlockGrant::Spent { retry_after }) => allowance.not_before = now + retry_after,
            None => allowance.not_before = now + LEDGER_RETRY,
        }
    }

    /// Permits in hand from the shared allowance (`None` on a single node).
    pub fn held(&self) -> Option<u64> {
        self.allowance.as_ref().map(|allowance| allowance.held)
    }

    /// How often to probe an exhausted allocation.
    pub fn probe_interval(&self) -> Duration {
        self.config.probe_interval
    }
}

/// A quota of `rate` requests per second (at least one a day) with `burst` at once.
fn quota(rate: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0 / 86_400.0));
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("the period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least one"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BudgetConfig {
        // 86,400 a day at a share of 1: one request a second.
        BudgetConfig { daily_allocation: 86_400, share: 1.0, burst: 2, ..BudgetConfig::default() }
    }

    #[test]
    fn requests_are_paced_at_the_share_of_the_allocation() {
        let mut budget = Budget::new(config());
        assert!((budget.rate() - 1.0).abs() < 1e-9);
        let t0 = Duration::from_secs(100);
        assert!(budget.try_acquire(t0).is_ok());
        assert!(budget.try_acquire(t0).is_ok(), "a burst of two");
        let wait = budget.try_acquire(t0).expect_err("the third waits");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(budget.try_acquire(t0 + wait).is_ok());
    }

    #[test]
    fn usage_moves_the_budget_through_its_states() {
        let mut budget = Budget::new(config());
        assert_eq!(budget.state(), BudgetState::Normal);
        budget.observe(ApiUsage { used: 79, max: 100 });
        assert_eq!(budget.state(), BudgetState::Normal);
        budget.observe(ApiUsage { used: 80, max: 100 });
        assert_eq!(budget.state(), BudgetState::Throttled);
        assert!(budget.state().allows_writes());
        budget.observe(ApiUsage { used: 95, max: 100 });
        assert_eq!(budget.state(), BudgetState::ReadsOnly);
        assert!(!budget.state().allows_writes() && budget.state().allows_reads());
        budget.observe(ApiUsage { used: 100, max: 100 });
        assert_eq!(budget.state(), BudgetState::Stopped);
        budget.observe(ApiUsage { used: 10, max: 100 });
        assert_eq!(budget.state(), BudgetState::Normal, "room again");
    }

    #[test]
    fn an_exhausted_allocation_stops_everything_until_usage_shows_room() {
        let mut budget = Budget::new(config());
        budget.exhausted();
        assert_eq!(budget.state(), BudgetState::Stopped);
        assert!(!budget.state().allows_reads());
        budget.observe(ApiUsage { used: 100, max: 100 });
        assert_eq!(budget.state(), BudgetState::Stopped);
        budget.observe(ApiUsage { used: 99, max: 100 });
        assert_eq!(budget.state(), BudgetState::ReadsOnly);
    }

    fn shared(block: u32) -> Budget {
        Budget::new(BudgetConfig { shared_block: Some(block), burst: 100, ..config() })
    }

    #[test]
    fn a_single_node_never_asks_for_blocks() {
        let mut budget = Budget::new(config());
        assert_eq!(budget.ask_for_block(Duration::ZERO), None);
        assert_eq!(budget.held(), None);
        assert!(budget.try_acquire(Duration::ZERO).is_ok());
    }

    #[test]
    fn in_a_cluster_nothing_goes_without_a_block_and_each_request_spends_one() {
        let mut budget = shared(4);
        let t0 = Duration::from_secs(10);
        assert!(budget.try_acquire(t0).is_err(), "no block in hand yet");
        assert_eq!(budget.ask_for_block(t0), Some(4));
        assert_eq!(budget.ask_for_block(t0), None, "one request for a block at a time");
        budget.block_answered(Some(BlockGrant::Granted(4)), t0);
        assert_eq!(budget.held(), Some(4));
        assert!(budget.try_acquire(t0).is_ok());
        assert_eq!(budget.ask_for_block(t0), None, "three left: more than half a block");
        assert!(budget.try_acquire(t0).is_ok());
        assert_eq!(budget.ask_for_block(t0), Some(4), "half a block left: ask ahead");
        assert!(budget.try_acquire(t0).is_ok());
        assert!(budget.try_acquire(t0).is_ok());
        assert_eq!(budget.held(), Some(0));
        assert!(budget.try_acquire(t0).is_err(), "the block is spent and the next not here");
        budget.block_answered(Some(BlockGrant::Granted(2)), t0);
        assert!(budget.try_acquire(t0).is_ok(), "a short block (the window's last) still counts");
    }

    #[test]
    fn a_spent_window_or_an_unreachable_ledger_holds_requests_until_the_next_try() {
        let mut budget = shared(10);
        let t0 = Duration::from_secs(10);
        assert!(budget.ask_for_block(t0).is_some());
        budget.block_answered(Some(BlockGrant::Spent { retry_after: Duration::from_secs(3600) }), t0);
        let wait = budget.try_acquire(t0).expect_err("nothing in hand");
        assert_eq!(wait, Duration::from_secs(3600));
        assert_eq!(budget.ask_for_block(t0 + Duration::from_secs(3599)), None);
        assert_eq!(budget.ask_for_block(t0 + Duration::from_secs(3600)), Some(10), "a new window");
        budget.block_answered(None, t0 + Duration::from_secs(3600));
        assert_eq!(budget.ask_for_block(t0 + Duration::from_millis(3_600_500)), None, "etcd down: wait a second");
        assert_eq!(budget.ask_for_block(t0 + Duration::from_secs(3601)), Some(10));
    }

    #[test]
    fn the_window_cap_is_the_share_of_the_orgs_allocation() {
        let mut budget = Budget::new(BudgetConfig { daily_allocation: 100_000, share: 0.25, ..config() });
        assert_eq!(budget.window_cap(), 25_000);
        budget.observe(ApiUsage { used: 0, max: 200_000 });
        assert_eq!(budget.window_cap(), 50_000, "the org's reported allocation rules");
    }

    #[test]
    fn the_pace_follows_the_orgs_allocation_and_halves_when_throttled() {
        let mut budget = Budget::new(config());
        budget.observe(ApiUsage { used: 0, max: 172_800 });
        assert!((budget.rate() - 2.0).abs() < 1e-9, "{}", budget.rate());
        budget.observe(ApiUsage { used: 150_000, max: 172_800 });
        assert!((budget.rate() - 1.0).abs() < 1e-9, "{}", budget.rate());
    }
}
