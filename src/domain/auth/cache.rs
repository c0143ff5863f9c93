//! Memory-only cache of callers' credentials that the HSM has already verified, so an admin or
//! a service calling many times costs one HSM operation, not one per call.
//!
//! An entry is a keyed BLAKE3 of (key id, secret) under a random key made at startup and never
//! stored; entries expire after a TTL. The key's state (revoked, expired, scopes) is still read
//! from the store on every call, so revocation takes effect on the next call.

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use zeroize::Zeroizing;

use crate::domain::{key::KeyId, secret::Secret};

pub(super) struct AuthCache {
    hash_key: Zeroizing<[u8; 32]>,
    entries: Cache<KeyId, (blake3::Hash, Instant)>,
    ttl: Duration,
}

impl AuthCache {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        let mut hash_key = Zeroizing::new([0u8; 32]);
        // A fresh random key each run; failing to get one is a broken OS, caught at startup.
        getrandom::fill(hash_key.as_mut()).expect("the OS random number generator works");
        Self { hash_key, entries: Cache::new(capacity.max(1)), ttl }
    }

    fn tag(&self, id: KeyId, secret: &Secret) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.hash_key);
        hasher.update(id.as_bytes());
        hasher.update(secret.expose());
        hasher.finalize()
    }

    /// Whether this exact credential was verified by the HSM within the TTL.
    pub(super) fn contains(&self, id: KeyId, secret: &Secret) -> bool {
        match self.entries.get(&id) {
            // blake3::Hash compares in constant time.
            Some((tag, at)) => at.elapsed() < self.ttl && tag == self.tag(id, secret),
            None => false,
        }
    }

    pub(super) fn insert(&self, id: KeyId, secret: &Secret) {
        self.entries.insert(id, (self.tag(id, secret), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_credential_hits_and_entries_expire() {
        let cache = AuthCache::new(10, Duration::from_millis(50));
        let id = KeyId::new_v7();
        let secret = Secret::from_bytes([7; 32]);
        assert!(!cache.contains(id, &secret));
        cache.insert(id, &secret);
        assert!(cache.contains(id, &secret));
        assert!(!cache.contains(id, &Secret::from_bytes([8; 32])));
        assert!(!cache.contains(KeyId::new_v7(), &secret));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.contains(id, &secret));
    }
}
