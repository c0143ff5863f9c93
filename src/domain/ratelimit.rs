//! Per-key rate limits, in memory on each node: one GCRA limiter (governor) per key that has a
//! limit and was used lately, held in a bounded cache so memory stays flat however many keys
//! exist. A limiter evicted under pressure starts again full, which can let one extra burst pass
//! for that key; the cache is sized so that only keys idle for long are evicted.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use quick_cache::sync::Cache;

use super::key::{KeyId, RateLimit};

struct Limiter {
    config: RateLimit,
    gcra: DefaultDirectRateLimiter,
}

impl Limiter {
    fn new(config: RateLimit) -> Self {
        let burst = NonZeroU32::new(config.limit).unwrap_or(NonZeroU32::MIN);
        // Validation keeps window ≥ 1 ms and limit ≤ 10^6, so the period is at least 1 ns.
        let period = (config.window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).expect("a non-zero period").allow_burst(burst);
        Self { config, gcra: RateLimiter::direct(quota) }
    }
}

pub(crate) struct RateLimits {
    limiters: Cache<KeyId, Arc<Limiter>>,
}

impl RateLimits {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { limiters: Cache::new(capacity.max(1)) }
    }

    /// Takes one call from key `id`'s allowance; `Err(wait)` when over the limit.
    pub(crate) fn check(&self, id: KeyId, config: RateLimit) -> Result<(), Duration> {
        let limiter = self
            .limiters
            .get_or_insert_with(&id, || Ok::<_, std::convert::Infallible>(Arc::new(Limiter::new(config))))
            .unwrap_or_else(|never| match never {});
        let limiter = if limiter.config == config {
            limiter
        } else {
            // The key's limit was changed: start the new limit afresh.
            let fresh = Arc::new(Limiter::new(config));
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
        let passed = (0..50).filter(|_| limits.check(id, config).is_ok()).count();
        assert_eq!(passed, 5);
        let wait = limits.check(id, config).unwrap_err();
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(12), "{wait:?}");
    }

    #[test]
    fn keys_have_their_own_allowance_and_a_changed_limit_starts_afresh() {
        let limits = RateLimits::new(10);
        let (a, b) = (KeyId::new_v7(), KeyId::new_v7());
        let one = RateLimit { limit: 1, window: Duration::from_secs(60) };
        assert!(limits.check(a, one).is_ok());
        assert!(limits.check(a, one).is_err());
        assert!(limits.check(b, one).is_ok());
        let two = RateLimit { limit: 2, window: Duration::from_secs(60) };
        assert!(limits.check(a, two).is_ok());
        assert!(limits.check(a, two).is_ok());
        assert!(limits.check(a, two).is_err());
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let limits = RateLimits::new(100);
        let config = RateLimit { limit: 1, window: Duration::from_secs(1) };
        for _ in 0..10_000 {
            let _ = limits.check(KeyId::new_v7(), config);
        }
        assert!(limits.limiters.len() <= 100, "{}", limits.limiters.len());
    }
}
