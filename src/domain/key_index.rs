//! The key index: a summary of every key record, held in memory by the store adapter and kept
//! current with each committed write (sled: by the write thread after each batch; cluster: by
//! the watch that applies etcd's changes). What it is for: the master key's per-version counts
//! and the console's filtered, sorted lists read memory instead of decoding every record. It
//! holds no digest, secret or policy: names, owners, scopes, states, times and which master
//! and wrapping key versions a key's digest and secret need (about 300 bytes a key with its map
//! entry, measured).
//!
//! It answers what the store holds as of its last commit; a decision that destroys something
//! (retiring a master key version) still reads the records themselves.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashSet},
    ops::Bound,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::SystemTime,
};

use super::{
    key::{KeyId, KeyRecord, KeyState, MasterKeyVersion},
    signing::WrapKeyVersion,
};

/// What a key needs of the HSM's keys: for the master key counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Custody {
    pub state: KeyState,
    /// A rotated key verifies until then.
    pub rotation_deadline: Option<SystemTime>,
    /// The digest's outermost version (the one `C_Verify` runs under).
    pub digest_version: MasterKeyVersion,
    /// The versions of the digest's inner MACs, innermost first; empty for a plain digest.
    pub digest_wrapped: Box<[MasterKeyVersion]>,
    /// The wrapping key version of a signing key's secret; `None` for a bearer key.
    pub signing: Option<WrapKeyVersion>,
}

impl Custody {
    pub fn of(r: &KeyRecord) -> Self {
        Self {
            state: r.state,
            rotation_deadline: r.rotation_deadline,
            digest_version: r.digest.version,
            digest_wrapped: r.digest.wrapped.as_slice().into(),
            signing: r.signing.as_ref().map(|s| s.version),
        }
    }

    /// Whether the key's digest still matters: not revoked, and not a rotated key past its
    /// overlap (neither can ever verify again).
    pub fn digest_needed(&self, now: SystemTime) -> bool {
        digest_needed(self.state, self.rotation_deadline, now)
    }

    /// Every master key version the digest needs, innermost first.
    pub fn digest_versions(&self) -> impl Iterator<Item = MasterKeyVersion> + '_ {
        self.digest_wrapped.iter().copied().chain(std::iter::once(self.digest_version))
    }

    /// A plain digest made under `version`: nothing left to migrate.
    pub fn is_plain_under(&self, version: MasterKeyVersion) -> bool {
        self.digest_version == version && self.digest_wrapped.is_empty()
    }
}

/// Whether a key in `state` (with this rotation deadline) can still verify at `now`: not
/// revoked, and not a rotated key past its overlap.
pub fn digest_needed(state: KeyState, rotation_deadline: Option<SystemTime>, now: SystemTime) -> bool {
    match state {
        KeyState::Revoked => false,
        KeyState::Rotated => rotation_deadline.is_none_or(|at| now < at),
        KeyState::Active | KeyState::Disabled => true,
    }
}

/// One key as the index holds it. Prefixes, owners and scope lists repeat across keys: the
/// index holds one copy of each (`Interned`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySummary {
    pub id: KeyId,
    /// Lowercase, for filtering and sorting.
    pub name_lower: Box<str>,
    pub prefix: Arc<str>,
    pub owner: Option<Arc<str>>,
    pub scopes: Arc<[String]>,
    pub created_at: SystemTime,
    pub last_used_at: Option<SystemTime>,
    pub custody: Custody,
}

impl KeySummary {
    pub fn of(r: &KeyRecord) -> Self {
        Self::interned(r, &mut Interned::default())
    }

    fn interned(r: &KeyRecord, shared: &mut Interned) -> Self {
        Self {
            id: r.id,
            name_lower: r.name.to_lowercase().into_boxed_str(),
            prefix: shared.text(&r.prefix),
            owner: r.owner.as_deref().map(|o| shared.text(o)),
            scopes: shared.scopes(&r.scopes),
            created_at: r.created_at,
            last_used_at: r.usage.last_used_at,
            custody: Custody::of(r),
        }
    }

    pub fn state(&self) -> KeyState {
        self.custody.state
    }
}

/// The order of a sorted list; ties (and `Created`) fall back to id order, which is creation
/// order, so a sort is total and stable from page to page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    Created,
    Name,
    State,
    Owner,
    LastUsed,
}

impl SortBy {
    fn compare(self, a: &KeySummary, b: &KeySummary) -> Ordering {
        let first = match self {
            SortBy::Created => Ordering::Equal,
            SortBy::Name => a.name_lower.cmp(&b.name_lower),
            SortBy::State => state_rank(a.state()).cmp(&state_rank(b.state())),
            SortBy::Owner => a.owner.cmp(&b.owner),
            SortBy::LastUsed => a.last_used_at.cmp(&b.last_used_at),
        };
        first.then_with(|| a.id.cmp(&b.id))
    }
}

/// States in the order a list sorts them: alphabetical by name, as they are shown.
fn state_rank(s: KeyState) -> u8 {
    match s {
        KeyState::Active => 0,
        KeyState::Disabled => 1,
        KeyState::Revoked => 2,
        KeyState::Rotated => 3,
    }
}

/// One shared copy of each prefix, owner and scope list the index has seen (kept while the
/// process runs: they are few, and bounded by the keys ever indexed).
#[derive(Default)]
struct Interned {
    texts: HashSet<Arc<str>>,
    scopes: HashSet<Arc<[String]>>,
}

impl Interned {
    fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(held) = self.texts.get(text) {
            return held.clone();
        }
        let held: Arc<str> = text.into();
        self.texts.insert(held.clone());
        held
    }

    fn scopes(&mut self, scopes: &[String]) -> Arc<[String]> {
        if let Some(held) = self.scopes.get(scopes) {
            return held.clone();
        }
        let held: Arc<[String]> = scopes.into();
        self.scopes.insert(held.clone());
        held
    }
}

/// Every key's summary by id.
#[derive(Default)]
pub struct KeyIndex {
    keys: RwLock<BTreeMap<KeyId, Arc<KeySummary>>>,
    interned: Mutex<Interned>,
}

impl KeyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<KeyId, Arc<KeySummary>>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<KeyId, Arc<KeySummary>>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    fn summarize(&self, record: &KeyRecord) -> Arc<KeySummary> {
        let mut interned = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        Arc::new(KeySummary::interned(record, &mut interned))
    }

    /// Takes `record` as it now stands (new or changed).
    pub fn put(&self, record: &KeyRecord) {
        let summary = self.summarize(record);
        self.write().insert(record.id, summary);
    }

    pub fn remove(&self, id: KeyId) {
        self.write().remove(&id);
    }

    /// Replaces everything with `records` (a store opened, a cluster view loaded afresh).
    pub fn replace<'a>(&self, records: impl IntoIterator<Item = &'a KeyRecord>) {
        let keys = records.into_iter().map(|r| (r.id, self.summarize(r))).collect();
        *self.write() = keys;
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn get(&self, id: KeyId) -> Option<Arc<KeySummary>> {
        self.read().get(&id).cloned()
    }

    /// The custody of every key, for counting. Holds the index's read lock while `each` runs:
    /// keep it short (writers wait).
    pub fn for_each_custody(&self, mut each: impl FnMut(&Custody)) {
        for summary in self.read().values() {
            each(&summary.custody);
        }
    }

    /// Up to `limit` ids after `after` (id order, which is creation order) of keys `keep`
    /// accepts, and whether any key after the last one returned is accepted too. Reads in
    /// slices of `SLICE` summaries, taking the read lock for each apart, so that writers never
    /// wait long behind a narrow filter over many keys.
    pub fn ids_after(
        &self,
        after: Option<KeyId>,
        keep: impl Fn(&KeySummary) -> bool,
        limit: usize,
    ) -> (Vec<KeyId>, bool) {
        const SLICE: usize = 4096;
        let mut ids = Vec::with_capacity(limit.min(SLICE));
        let mut cursor = after;
        loop {
            let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
            let keys = self.read();
            let mut seen = 0;
            for (id, summary) in keys.range((start, Bound::Unbounded)).take(SLICE) {
                seen += 1;
                cursor = Some(*id);
                if keep(summary) {
                    if ids.len() == limit {
                        return (ids, true);
                    }
                    ids.push(*id);
                }
            }
            if seen < SLICE {
                return (ids, false);
            }
        }
    }

    /// In creation order (newest first when `desc`): the ids of the keys `keep` accepts at
    /// positions `offset..offset + limit`, and how many it accepts in all. Clones only the
    /// window's ids (the whole-list sort of `select` is not needed for this order).
    pub fn window_by_creation(
        &self,
        keep: impl Fn(&KeySummary) -> bool,
        desc: bool,
        offset: usize,
        limit: usize,
    ) -> (Vec<KeyId>, usize) {
        let keys = self.read();
        let mut ids = Vec::with_capacity(limit.min(keys.len()));
        let mut total = 0;
        let mut take = |summary: &KeySummary| {
            if keep(summary) {
                if total >= offset && ids.len() < limit {
                    ids.push(summary.id);
                }
                total += 1;
            }
        };
        if desc {
            keys.values().rev().for_each(|s| take(s));
        } else {
            keys.values().for_each(|s| take(s));
        }
        (ids, total)
    }

    /// The keys `keep` accepts, sorted by `sort` (descending when `desc`). The read lock is
    /// held only while filtering; the sort runs after it is released.
    pub fn select(&self, keep: impl Fn(&KeySummary) -> bool, sort: SortBy, desc: bool) -> Vec<Arc<KeySummary>> {
        let mut keys: Vec<Arc<KeySummary>> = self.read().values().filter(|s| keep(s)).cloned().collect();
        if sort != SortBy::Created {
            keys.sort_unstable_by(|a, b| sort.compare(a, b));
        }
        if desc {
            keys.reverse();
        }
        keys
    }
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex").field("keys", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::key::Digest;

    fn record(name: &str, at: u64) -> KeyRecord {
        let digest = Digest::plain(MasterKeyVersion(1), [7; 32]);
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
        KeyRecord::new(KeyId::new_v7(), name.into(), "kw".into(), vec!["a:b".into()], when, digest)
    }

    #[test]
    fn follows_puts_and_removes() {
        let index = KeyIndex::new();
        let mut a = record("Alpha", 1);
        index.put(&a);
        assert_eq!(&*index.get(a.id).unwrap().name_lower, "alpha");
        a.state = KeyState::Revoked;
        a.name = "Renamed".into();
        index.put(&a);
        let held = index.get(a.id).unwrap();
        assert_eq!((&*held.name_lower, held.state()), ("renamed", KeyState::Revoked));
        assert_eq!(index.len(), 1);
        index.remove(a.id);
        assert!(index.is_empty());
    }

    #[test]
    fn sorts_whole_selection_with_ties_in_creation_order() {
        let index = KeyIndex::new();
        let recs = [record("b", 3), record("a", 2), record("b", 1), record("C", 4)];
        index.replace(recs.iter());
        let names = |sort, desc| -> Vec<(String, KeyId)> {
            index.select(|_| true, sort, desc).iter().map(|s| (s.name_lower.to_string(), s.id)).collect()
        };
        let by_name = names(SortBy::Name, false);
        assert_eq!(by_name.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b", "b", "c"]);
        assert_eq!((by_name[1].1, by_name[2].1), (recs[0].id, recs[2].id), "equal names: creation (id) order");
        let desc = names(SortBy::Name, true);
        assert_eq!(desc.first().unwrap().0, "c");
        let created: Vec<KeyId> = names(SortBy::Created, false).into_iter().map(|(_, id)| id).collect();
        assert_eq!(created, recs.iter().map(|r| r.id).collect::<Vec<_>>());
        let only_b = index.select(|s| &*s.name_lower == "b", SortBy::Name, false);
        assert_eq!(only_b.len(), 2);
    }

    #[test]
    fn ids_after_pages_through_matches_in_creation_order() {
        let index = KeyIndex::new();
        let recs: Vec<KeyRecord> =
            (0..10_000).map(|i| record(if i % 1000 == 7 { "rare" } else { "common" }, i)).collect();
        index.replace(recs.iter());
        let rare = |s: &KeySummary| &*s.name_lower == "rare";
        let (first, more) = index.ids_after(None, rare, 4);
        assert_eq!(first, [7, 1007, 2007, 3007].map(|i| recs[i].id));
        assert!(more);
        let (rest, more) = index.ids_after(first.last().copied(), rare, 10);
        assert_eq!(rest.len(), 6, "past a slice boundary: {rest:?}");
        assert!(!more);
        let (exact, more) = index.ids_after(None, rare, 10);
        assert_eq!((exact.len(), more), (10, false), "a full last page says there is no more");
    }

    #[test]
    fn keys_share_one_copy_of_equal_prefixes_owners_and_scope_lists() {
        let index = KeyIndex::new();
        let (mut a, mut b) = (record("a", 1), record("b", 2));
        (a.owner, b.owner) = (Some("team".into()), Some("team".into()));
        index.replace([&a, &b]);
        let (a, b) = (index.get(a.id).unwrap(), index.get(b.id).unwrap());
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes) && Arc::ptr_eq(&a.prefix, &b.prefix));
        assert!(Arc::ptr_eq(a.owner.as_ref().unwrap(), b.owner.as_ref().unwrap()));
        assert_eq!(*a.scopes, ["a:b".to_string()]);
    }

    #[test]
    fn a_window_in_creation_order_matches_the_sorted_selection() {
        let index = KeyIndex::new();
        let recs: Vec<KeyRecord> = (0..50).map(|i| record(if i % 3 == 0 { "x" } else { "y" }, i)).collect();
        index.replace(recs.iter());
        let keep = |s: &KeySummary| &*s.name_lower == "x";
        for desc in [false, true] {
            let all: Vec<KeyId> = index.select(keep, SortBy::Created, desc).iter().map(|s| s.id).collect();
            for (offset, limit) in [(0, 5), (5, 5), (15, 10), (17, 3), (40, 5)] {
                let (ids, total) = index.window_by_creation(keep, desc, offset, limit);
                assert_eq!(total, all.len());
                let expected: Vec<KeyId> = all.iter().skip(offset).take(limit).copied().collect();
                assert_eq!(ids, expected, "desc {desc}, offset {offset}, limit {limit}");
            }
        }
    }

    #[test]
    fn never_used_sorts_before_used() {
        let index = KeyIndex::new();
        let mut used = record("used", 1);
        used.usage.last_used_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(9));
        let unused = record("unused", 2);
        index.replace([&used, &unused]);
        let order: Vec<KeyId> = index.select(|_| true, SortBy::LastUsed, false).iter().map(|s| s.id).collect();
        assert_eq!(order, [unused.id, used.id]);
    }

    #[test]
    fn custody_mirrors_the_digest() {
        let mut r = record("x", 1);
        r.digest.wrapped = vec![MasterKeyVersion(1)];
        r.digest.version = MasterKeyVersion(2);
        let c = Custody::of(&r);
        assert_eq!(c.digest_versions().collect::<Vec<_>>(), r.digest.versions().collect::<Vec<_>>());
        assert_eq!(c.is_plain_under(MasterKeyVersion(2)), r.digest.is_plain_under(MasterKeyVersion(2)));
        r.digest.wrapped.clear();
        assert!(Custody::of(&r).is_plain_under(MasterKeyVersion(2)));
    }
}
