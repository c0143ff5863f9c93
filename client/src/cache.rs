//! The opt-in verdict cache: VALID verdicts only, bounded in entries and age, keyed by a keyed
//! hash of the request (never the key itself).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{Error, VerifiedKey, VerifyOptions};

/// The bound of the opt-in cache of VALID verdicts (see [`ClientBuilder::cache`](crate::ClientBuilder::cache)).
///
/// **What a cache costs**: a key revoked, disabled or expired while its verdict is cached is
/// still accepted until the entry is `ttl` old; a cached verdict spends no rate limit or quota
/// and is not in keyward's usage log; `remaining` in a cached [`VerifiedKey`] is the value
/// when it was cached. Refusals are never cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// At most this many verdicts are kept (least recently used ones go first).
    pub max_entries: usize,
    /// A verdict is used for at most this long after keyward gave it.
    pub ttl: Duration,
}

impl CacheConfig {
    /// At most `max_entries` verdicts, each used for at most `ttl`.
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        CacheConfig { max_entries, ttl }
    }
}

#[derive(Clone)]
struct Entry {
    cached_at: Instant,
    key: VerifiedKey,
}

/// VALID verdicts by BLAKE3 keyed hash of (key, scopes, client address, cost). The hash key is
/// random per cache, so entries mean nothing outside this process.
pub(crate) struct VerdictCache {
    config: CacheConfig,
    hash_key: [u8; 32],
    entries: quick_cache::sync::Cache<[u8; 32], Entry>,
}

impl VerdictCache {
    pub(crate) fn new(config: CacheConfig) -> Result<Arc<Self>, Error> {
        if config.max_entries == 0 || config.ttl.is_zero() {
            return Err(Error::Config("a cache needs max_entries and ttl above zero".into()));
        }
        let mut hash_key = [0u8; 32];
        getrandom::fill(&mut hash_key).map_err(|e| Error::Config(format!("no randomness for the cache: {e}")))?;
        Ok(Arc::new(VerdictCache { config, hash_key, entries: quick_cache::sync::Cache::new(config.max_entries) }))
    }

    pub(crate) fn config(&self) -> CacheConfig {
        self.config
    }

    /// The cache slot of a request: everything that can change the verdict.
    pub(crate) fn slot(&self, key: &str, options: &VerifyOptions) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.hash_key);
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(key.as_bytes());
        let mut scopes: Vec<&str> = options.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        for scope in scopes {
            field(scope.as_bytes());
        }
        field(options.client_ip.map(|ip| ip.to_string()).unwrap_or_default().as_bytes());
        field(&options.cost.map_or(u64::MAX, u64::from).to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    /// The cached verdict of `slot`, if younger than the TTL.
    pub(crate) fn get(&self, slot: &[u8; 32]) -> Option<VerifiedKey> {
        let entry = self.entries.get(slot)?;
        if entry.cached_at.elapsed() < self.config.ttl {
            return Some(entry.key);
        }
        self.entries.remove(slot);
        None
    }

    pub(crate) fn insert(&self, slot: [u8; 32], key: VerifiedKey) {
        self.entries.insert(slot, Entry { cached_at: Instant::now(), key });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(scopes: &[&str]) -> VerifyOptions {
        VerifyOptions { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn slots_differ_by_key_and_request_but_not_by_scope_order() {
        let cache = VerdictCache::new(CacheConfig::new(10, Duration::from_secs(1))).unwrap();
        let a = cache.slot("kw_a", &options(&["x", "y"]));
        assert_eq!(a, cache.slot("kw_a", &options(&["y", "x"])));
        assert_ne!(a, cache.slot("kw_b", &options(&["x", "y"])));
        assert_ne!(a, cache.slot("kw_a", &options(&["x"])));
        let with_ip = VerifyOptions { client_ip: Some([127, 0, 0, 1].into()), ..options(&["x", "y"]) };
        assert_ne!(a, cache.slot("kw_a", &with_ip));
        // Fields are length-prefixed: moving a boundary changes the slot.
        assert_ne!(cache.slot("kw_ax", &options(&["y"])), cache.slot("kw_a", &options(&["xy"])));
    }

    #[test]
    fn slots_are_keyed_per_cache() {
        let one = VerdictCache::new(CacheConfig::new(10, Duration::from_secs(1))).unwrap();
        let two = VerdictCache::new(CacheConfig::new(10, Duration::from_secs(1))).unwrap();
        assert_ne!(one.slot("kw_a", &options(&[])), two.slot("kw_a", &options(&[])));
    }

    #[test]
    fn a_verdict_is_used_until_its_ttl_and_not_after() {
        let cache = VerdictCache::new(CacheConfig::new(10, Duration::from_secs(1))).unwrap();
        let key = VerifiedKey {
            id: "id".into(),
            name: "n".into(),
            scopes: vec![],
            owner: None,
            metadata: Default::default(),
            expires_at: None,
            remaining: None,
            rotation_pending: false,
            rotation_due: false,
            rotation_deadline: None,
        };
        let slot = cache.slot("kw_a", &options(&[]));
        cache.insert(slot, key.clone());
        assert_eq!(cache.get(&slot), Some(key));
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(cache.get(&slot), None, "older than the TTL");
    }

    #[test]
    fn a_zero_bound_is_refused() {
        assert!(VerdictCache::new(CacheConfig::new(0, Duration::from_secs(1))).is_err());
        assert!(VerdictCache::new(CacheConfig::new(1, Duration::ZERO)).is_err());
    }
}
