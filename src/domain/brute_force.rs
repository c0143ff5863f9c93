//! Brute-force defence: failed verifications and failed authentications counted per source, in
//! memory, with exponential back-off. A source that fails `max_failures` times within `window`
//! (of the first of those failures) is blocked for `base_backoff`, doubled each time it trips
//! again, up to `max_backoff`; while blocked its calls are refused before any HSM operation or
//! database read. A success neither lifts a block nor clears the count (an attacker holding one
//! good key could otherwise reset its count between guesses): failures only age out. A source's
//! back-off level is forgotten once it has gone `max_backoff` past the end of its last block
//! without failing again.
//!
//! The state lives in a bounded cache (`capacity` sources), so memory stays flat however many
//! addresses an attacker uses; a source pushed out under pressure starts again with a clean slate.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use quick_cache::sync::Cache;

use super::key::KeyId;

/// Tunables; the defaults are documented in docs/configuration.md (`[brute_force]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BruteForceConfig {
    pub enabled: bool,
    /// Failures within `window` that block a source.
    pub max_failures: u32,
    pub window: Duration,
    /// The first block's length; each further one doubles it.
    pub base_backoff: Duration,
    /// The longest block.
    pub max_backoff: Duration,
    /// Sources tracked at once.
    pub capacity: usize,
}

impl Default for BruteForceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures: 20,
            window: Duration::from_secs(60),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            capacity: 100_000,
        }
    }
}

/// Who failed. The kinds are kept apart: an end user's `client_ip` never blocks a gateway whose
/// TCP address happens to be the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// VerifyKey's `client_ip`: the end user who presented the key.
    Client(IpAddr),
    /// The VerifyKey caller's own key, for requests without a `client_ip`.
    Caller(KeyId),
    /// The TCP peer of a call whose bearer credential failed.
    Peer(IpAddr),
}

impl Source {
    /// The address to audit, if the source is one.
    pub fn address(self) -> Option<IpAddr> {
        match self {
            Source::Client(ip) | Source::Peer(ip) => Some(ip),
            Source::Caller(_) => None,
        }
    }

    fn failures(self) -> &'static str {
        match self {
            Source::Client(_) | Source::Caller(_) => "failed verifications",
            Source::Peer(_) => "failed authentications",
        }
    }
}

/// A refusal: how long the source stays blocked, and why (for the audit trail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub retry_after: Duration,
    /// e.g. "blocked for 4s after 20 failed verifications within 60s".
    pub why: String,
}

#[derive(Debug)]
struct Entry {
    /// Failures counted since `window_start`.
    count: u32,
    window_start: SystemTime,
    /// Blocks so far: the next one lasts `base_backoff · 2^strikes`.
    strikes: u32,
    blocked_until: Option<SystemTime>,
    /// What the current (or last) block said.
    why: String,
}

pub struct BruteForce {
    config: BruteForceConfig,
    sources: Cache<Source, Arc<Mutex<Entry>>>,
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl BruteForce {
    pub fn new(config: BruteForceConfig) -> Self {
        let sources = Cache::new(config.capacity.max(1));
        Self { config, sources }
    }

    /// `Err` while `source` is blocked. Costs a cache lookup.
    pub fn check(&self, source: Source, now: SystemTime) -> Result<(), Blocked> {
        if !self.config.enabled {
            return Ok(());
        }
        let Some(entry) = self.sources.get(&source) else { return Ok(()) };
        let entry = entry.lock().unwrap_or_else(|e| e.into_inner());
        match entry.blocked_until {
            Some(until) if now < until => Err(Blocked { retry_after: since(until, now), why: entry.why.clone() }),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `source`; returns the block it starts, if this failure trips one.
    pub fn fail(&self, source: Source, now: SystemTime) -> Option<Blocked> {
        if !self.config.enabled {
            return None;
        }
        let c = &self.config;
        let entry = self
            .sources
            .get_or_insert_with(&source, || {
                Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(Entry {
                    count: 0,
                    window_start: now,
                    strikes: 0,
                    blocked_until: None,
                    why: String::new(),
                })))
            })
            .unwrap_or_else(|never| match never {});
        let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = e.blocked_until {
            if now < until {
                // Calls already past the check when the block began: it stands as it is.
                return None;
            }
            if since(now, until) >= c.max_backoff {
                e.strikes = 0;
            }
        }
        if since(now, e.window_start) >= c.window {
            e.count = 0;
            e.window_start = now;
        }
        e.count += 1;
        if e.count < c.max_failures.max(1) {
            return None;
        }
        let backoff = c.base_backoff.saturating_mul(1u32 << e.strikes.min(31)).min(c.max_backoff);
        e.strikes = e.strikes.saturating_add(1);
        e.count = 0;
        e.window_start = now;
        e.blocked_until = Some(now + backoff);
        e.why = format!(
            "blocked for {}s after {} {} within {}s",
            secs(backoff),
            c.max_failures.max(1),
            source.failures(),
            secs(c.window)
        );
        Some(Blocked { retry_after: backoff, why: e.why.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn config() -> BruteForceConfig {
        BruteForceConfig { max_failures: 3, capacity: 100, ..Default::default() }
    }

    fn at(secs: u64) -> SystemTime {
        T0 + Duration::from_secs(secs)
    }

    fn ip(s: &str) -> Source {
        Source::Client(s.parse().unwrap())
    }

    #[test]
    fn the_nth_failure_in_the_window_blocks_and_blocks_double_up_to_the_cap() {
        let t = BruteForce::new(BruteForceConfig { max_backoff: Duration::from_secs(3), ..config() });
        let a = ip("10.0.0.1");
        assert_eq!(t.fail(a, at(0)), None);
        assert_eq!(t.fail(a, at(1)), None);
        assert!(t.check(a, at(1)).is_ok());
        let blocked = t.fail(a, at(2)).expect("the third failure blocks");
        assert_eq!(blocked.retry_after, Duration::from_secs(1));
        assert_eq!(blocked.why, "blocked for 1s after 3 failed verifications within 60s");
        assert_eq!(t.check(a, at(2)).unwrap_err().retry_after, Duration::from_secs(1));
        assert!(t.check(a, at(3)).is_ok(), "the block expires");
        for _ in 0..2 {
            assert_eq!(t.fail(a, at(3)), None);
        }
        assert_eq!(t.fail(a, at(3)).unwrap().retry_after, Duration::from_secs(2), "doubled");
        for _ in 0..3 {
            t.fail(a, at(5));
        }
        assert_eq!(t.check(a, at(5)).unwrap_err().retry_after, Duration::from_secs(3), "capped");
    }

    #[test]
    fn failures_age_out_of_the_window_and_sources_are_apart() {
        let t = BruteForce::new(config());
        let (a, b) = (ip("10.0.0.1"), Source::Peer("10.0.0.1".parse().unwrap()));
        t.fail(a, at(0));
        t.fail(a, at(1));
        assert_eq!(t.fail(a, at(60)), None, "the window restarted at 60 s");
        t.fail(b, at(60));
        t.fail(b, at(60));
        assert!(t.fail(b, at(60)).is_some());
        assert!(t.check(a, at(60)).is_ok(), "a peer block does not block the same client_ip");
        assert!(t.check(Source::Caller(KeyId::new_v7()), at(60)).is_ok());
    }

    #[test]
    fn the_backoff_level_is_forgotten_after_a_quiet_max_backoff() {
        let t = BruteForce::new(BruteForceConfig { max_backoff: Duration::from_secs(10), ..config() });
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            t.fail(a, at(0));
        }
        for _ in 0..3 {
            t.fail(a, at(1));
        }
        assert_eq!(t.check(a, at(1)).unwrap_err().retry_after, Duration::from_secs(2));
        // The block ended at 3 s; quiet until 13 s.
        for _ in 0..2 {
            t.fail(a, at(13));
        }
        assert_eq!(t.fail(a, at(13)).unwrap().retry_after, Duration::from_secs(1));
    }

    #[test]
    fn disabled_never_blocks_and_memory_is_bounded() {
        let t = BruteForce::new(BruteForceConfig { enabled: false, ..config() });
        for _ in 0..10 {
            assert_eq!(t.fail(ip("10.0.0.1"), at(0)), None);
        }
        assert!(t.check(ip("10.0.0.1"), at(0)).is_ok());
        let t = BruteForce::new(config());
        for i in 0..10_000u32 {
            t.fail(Source::Client(IpAddr::from(i.to_be_bytes())), at(0));
        }
        assert!(t.sources.len() <= 100, "{}", t.sources.len());
    }
}
