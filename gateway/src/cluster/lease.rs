//! The lease clock: when a node must stop serving its lines if etcd has not renewed its lease. Pure:
//! instants come in, deadlines go out, so the fencing rule is tested without a clock.

use std::time::Duration;

use tokio::time::Instant;

/// Keep-alive pacing and the fencing deadline for one lease TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseClock {
    ttl: Duration,
}

impl LeaseClock {
    /// The clock for leases of `ttl` (at least a second: etcd's unit).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl: ttl.max(Duration::from_secs(1)) }
    }

    /// The TTL asked of etcd, in its unit.
    pub fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// How often to renew: four times a TTL, so two renewals in a row may fail before fencing.
    pub fn keepalive_interval(&self) -> Duration {
        self.ttl / 4
    }

    /// How long before the earliest moment etcd could expire the lease the node fences itself: a
    /// quarter of the TTL covers a node's clock running slower than etcd's and the time it takes to
    /// stop the link's monitors.
    pub fn margin(&self) -> Duration {
        self.ttl / 4
    }

    /// How long one etcd request may take: past the next renewal it is no use waiting.
    pub fn request_timeout(&self) -> Duration {
        self.keepalive_interval()
    }

    /// When to fence, given that a grant or renewal *sent* at `sent` came back with `granted_secs`.
    /// etcd counts the TTL from when it received the request, which is after `sent`, so the lease
    /// lives at least until `sent + granted`; the node stops serving a margin before that. `None`
    /// when the lease is gone (etcd answers a renewal of an expired lease with a TTL of 0 or less).
    pub fn fence_at(&self, sent: Instant, granted_secs: i64) -> Option<Instant> {
        let granted = Duration::from_secs(u64::try_from(granted_secs).ok().filter(|secs| *secs > 0)?);
        Some(sent + granted.saturating_sub(self.margin()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_expired_lease_fences_at_once() {
        let clock = LeaseClock::new(Duration::from_secs(4));
        assert_eq!(clock.fence_at(Instant::now(), 0), None);
        assert_eq!(clock.fence_at(Instant::now(), -1), None);
    }

    #[test]
    fn two_renewals_may_fail_before_fencing() {
        let clock = LeaseClock::new(Duration::from_secs(4));
        let sent = Instant::now();
        let fence = clock.fence_at(sent, 4).unwrap_or(sent);
        assert!(sent + clock.keepalive_interval() * 2 < fence);
    }

    proptest! {
        #[test]
        fn a_node_fences_before_etcd_can_expire_its_lease(
            ttl_secs in 1u64..60,
            granted in 1i64..60,
            sent_ms in 0u64..1_000_000,
            transit_ms in 0u64..10_000,
        ) {
            // etcd expires the lease no earlier than the renewal's arrival plus the TTL it granted;
            // survivors claim the lines only after that.
            let clock = LeaseClock::new(Duration::from_secs(ttl_secs));
            let start = Instant::now();
            let sent = start + Duration::from_millis(sent_ms);
            let arrived = sent + Duration::from_millis(transit_ms);
            let expires = arrived + Duration::from_secs(granted as u64);
            let fence = clock.fence_at(sent, granted);
            prop_assert!(fence.is_some_and(|fence| fence < expires));
            if granted as u64 >= ttl_secs {
                prop_assert!(fence.is_some_and(|fence| fence + clock.margin() <= expires));
            }
        }
    }
}
