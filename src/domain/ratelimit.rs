//! Per-key rate limits, in memory on each node: one GCRA limiter (governor) per key that has a
//! limit and was used lately, held in a bounded cache so memory stays flat however many keys
//! exist. A limiter evicted under pressure starts again full, which can let one extra burst pass
//! for that key; the cache is sized so that only keys idle for long are evicted.
//!
//! In a cluster of `n` nodes each node enforces its share: one call per `window·n/limit` and a
//! burst of `limit/n` (at least 1), so that all nodes together allow what one node allows alone:
//! `limit` per window, with a burst of `limit` (of `n` when `limit < n`).

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use quick_cache::sync::Cache;

use super::key::{KeyId, RateLimit};

struct Limiter {
    config: RateLimit,
    nodes: u32,
    gcra: DefaultDirectRateLimiter,
}

impl Limiter {
    /// This node's share of `config` when `nodes` nodes share it.
    fn new(config: RateLimit, nodes: u32) -> Self {
        let nodes = nodes.max(1);
        let limit = config.limit.max(1);
        let burst = NonZeroU32::new(limit / nodes).unwrap_or(NonZeroU32::MIN);
        // Validation keeps window ≥ 1 ms and limit ≤ 10^6, so the period is at least 1 ns.
        let period = (config.window * nodes / limit).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).expect("a non-zero period").allow_burst(burst);
        Self { config, nodes, gcra: RateLimiter::direct(quota) }
    }
}

pub(crate) struct RateLimits {
    limiters: Cache<KeyId, Arc<Limiter>>,
}

impl RateLimits {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { limiters: Cache::new(capacity.max(1)) }
    }

    /// Takes one call from key `id`'s allowance (this node's share of it when `nodes` nodes
    /// share it); `Err(wait)` when over the limit.
    pub(crate) fn check(&self, id: KeyId, config: RateLimit, nodes: u32) -> Result<(), Duration> {
        let limiter = self
            .limiters
            .get_or_insert_with(&id, || Ok::<_, std::convert::Infallible>(Arc::new(Limiter::new(config, nodes))))
            .unwrap_or_else(|never| match never {});
        let limiter = if limiter.config == config && limiter.nodes == nodes.max(1) {
            limiter
        } else {
            // The key's limit (or the number of nodes sharing it) changed: start afresh.
            let fresh = Arc::new(Limiter::new(config, nodes));
            self.limiters.insert(id, fresh.clone());
            fresh
        };
        limiter.gcra.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_gets_the_limit_then_a_wait() {
        let limits = RateLimits::new(10);
        let id = KeyId::new_v7();
        let config = RateLimit { limit: 5, window: Duration::from_secs(60) };
        let passed = (0..50).filter(|_| limits.check(id, config, 1).is_ok()).count();
        assert_eq!(passed, 5);
        let wait = limits.check(id, config, 1).unwrap_err();
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(12), "{wait:?}");
    }

    #[test]
    fn keys_have_their_own_allowance_and_a_changed_limit_starts_afresh() {
        let limits = RateLimits::new(10);
        let (a, b) = (KeyId::new_v7(), KeyId::new_v7());
        let one = RateLimit { limit: 1, window: Duration::from_secs(60) };
        assert!(limits.check(a, one, 1).is_ok());
        assert!(limits.check(a, one, 1).is_err());
        assert!(limits.check(b, one, 1).is_ok());
        let two = RateLimit { limit: 2, window: Duration::from_secs(60) };
        assert!(limits.check(a, two, 1).is_ok());
        assert!(limits.check(a, two, 1).is_ok());
        assert!(limits.check(a, two, 1).is_err());
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let limits = RateLimits::new(100);
        let config = RateLimit { limit: 1, window: Duration::from_secs(1) };
        for _ in 0..10_000 {
            let _ = limits.check(KeyId::new_v7(), config, 1);
        }
        assert!(limits.limiters.len() <= 100, "{}", limits.limiters.len());
    }

    #[test]
    fn nodes_sharing_a_limit_together_allow_what_one_node_allows() {
        let config = RateLimit { limit: 30, window: Duration::from_secs(60) };
        let id = KeyId::new_v7();
        let nodes: Vec<RateLimits> = (0..3).map(|_| RateLimits::new(10)).collect();
        let passed: usize = nodes.iter().map(|n| (0..100).filter(|_| n.check(id, config, 3).is_ok()).count()).sum();
        assert_eq!(passed, 30, "each of 3 nodes lets its burst of 10 through");
        let wait = nodes[0].check(id, config, 3).unwrap_err();
        assert!(wait > Duration::from_secs(3) && wait <= Duration::from_secs(6), "one call per 6 s per node: {wait:?}");
        // A limit below the node count: one call per node, then one per window·n/limit.
        let (tiny, tiny_id) = (RateLimit { limit: 1, window: Duration::from_secs(60) }, KeyId::new_v7());
        let passed: usize = nodes.iter().map(|n| (0..10).filter(|_| n.check(tiny_id, tiny, 3).is_ok()).count()).sum();
        assert_eq!(passed, 3);
    }

    #[test]
    fn a_change_in_the_number_of_nodes_starts_the_share_afresh() {
        let limits = RateLimits::new(10);
        let id = KeyId::new_v7();
        let config = RateLimit { limit: 4, window: Duration::from_secs(60) };
        assert_eq!((0..10).filter(|_| limits.check(id, config, 2).is_ok()).count(), 2);
        assert_eq!((0..10).filter(|_| limits.check(id, config, 1).is_ok()).count(), 4);
    }
}
