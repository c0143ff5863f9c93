//! The replay cache: the nonces of accepted signatures, per key, each remembered until its
//! signature could no longer be accepted (`SignatureParams::replay_horizon`, at most
//! `created + max_skew`). At most `capacity` nonces at once, each kept as the key id and a
//! 16-byte digest of the nonce (SHA-256, truncated: a collision could only refuse a genuine
//! request, never pass a replay), in a hash set and an expiry-ordered set: about 100 bytes per
//! entry, ~100 MB at the default 1,000,000 (enough for 3,300 signed requests per second and
//! node with the default 5-minute skew). When it is full of nonces that are all still live, new
//! signed requests are refused (`Full`) rather than forgetting a nonce and letting its replay
//! through.
//!
//! One per node: in cluster mode each node remembers the nonces it accepted, so a replay sent
//! to another node inside the window passes there once (at most one use per node; see
//! docs/signing.md).

use std::{
    collections::{BTreeSet, HashSet},
    sync::Mutex,
    time::SystemTime,
};

use sha2::{Digest, Sha256};

use crate::domain::key::KeyId;

/// A nonce as the cache keeps it.
type NonceDigest = [u8; 16];

fn digest(nonce: &str) -> NonceDigest {
    let full = Sha256::digest(nonce.as_bytes());
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

/// What the cache says of a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: remembered now.
    New,
    /// Already accepted for this key inside its window.
    Replayed,
    /// The cache is full of live nonces: the request cannot be checked.
    Full,
}

#[derive(Default)]
struct Entries {
    live: HashSet<(KeyId, NonceDigest)>,
    /// The same entries by expiry, oldest first, for pruning.
    by_expiry: BTreeSet<(SystemTime, KeyId, NonceDigest)>,
}

pub struct ReplayCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: Mutex::new(Entries::default()) }
    }

    /// Records `nonce` for `key` until `until`, unless it is already there.
    pub fn check(&self, key: KeyId, nonce: &str, until: SystemTime, now: SystemTime) -> Seen {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.prune(now);
        let entry = (key, digest(nonce));
        if entries.live.contains(&entry) {
            return Seen::Replayed;
        }
        if entries.live.len() >= self.capacity {
            return Seen::Full;
        }
        entries.by_expiry.insert((until, key, entry.1));
        entries.live.insert(entry);
        Seen::New
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Entries {
    /// Forgets the nonces whose signatures can no longer be accepted.
    fn prune(&mut self, now: SystemTime) {
        while let Some(first) = self.by_expiry.first()
            && first.0 <= now
        {
            if let Some((_, key, nonce)) = self.by_expiry.pop_first() {
                self.live.remove(&(key, nonce));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_nonce_is_a_replay_for_its_key_inside_its_window_only() {
        let cache = ReplayCache::new(10);
        let (a, b) = (KeyId::new_v7(), KeyId::new_v7());
        assert_eq!(cache.check(a, "n1", t(400), t(100)), Seen::New);
        assert_eq!(cache.check(a, "n1", t(400), t(200)), Seen::Replayed);
        assert_eq!(cache.check(b, "n1", t(400), t(200)), Seen::New, "another key's nonce");
        assert_eq!(cache.check(a, "n1", t(700), t(400)), Seen::New, "its window is over");
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_refuses_rather_than_forget() {
        let cache = ReplayCache::new(3);
        let key = KeyId::new_v7();
        for n in 0..3 {
            assert_eq!(cache.check(key, &format!("n{n}"), t(400), t(100)), Seen::New);
        }
        assert_eq!(cache.check(key, "n3", t(400), t(100)), Seen::Full);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.check(key, "n0", t(400), t(101)), Seen::Replayed, "nothing was forgotten");
        // Once the first nonces' windows end, there is room again.
        assert_eq!(cache.check(key, "n3", t(900), t(400)), Seen::New);
        assert_eq!(cache.len(), 1);
    }
}
