//! A node's view of the cluster: the key records, the master key state and the audit chain's
//! head as the watch delivered them (each with the etcd revision it was written at), and the
//! proof that the view is current. Reads check that proof and fail closed without it.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::domain::{
    key::{KeyId, KeyRecord, KeyState},
    key_index::KeyIndex,
    ports::{AUDIT_MAC_LEN, MasterState, StoreError},
};

/// Where the audit chain stands in etcd: the last sequence number, its MAC, and the revision of
/// `audit/head` (0: no head yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub mac: [u8; AUDIT_MAC_LEN],
    pub rev: i64,
}

impl Head {
    pub const EMPTY: Head = Head { seq: 0, mac: [0; AUDIT_MAC_LEN], rev: 0 };

    /// `seq ‖ mac`, as stored in `audit/head`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.seq.to_be_bytes().to_vec();
        v.extend_from_slice(&self.mac);
        v
    }

    pub fn decode(bytes: &[u8], rev: i64) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("the audit head in etcd".into());
        if bytes.len() != 8 + AUDIT_MAC_LEN {
            return Err(corrupt());
        }
        let seq = u64::from_be_bytes(bytes[..8].try_into().map_err(|_| corrupt())?);
        let mac = bytes[8..].try_into().map_err(|_| corrupt())?;
        Ok(Self { seq, mac, rev })
    }
}

/// The records, with their revisions.
#[derive(Default)]
pub struct Records {
    pub keys: BTreeMap<KeyId, (KeyRecord, i64)>,
    pub master: Option<(MasterState, i64)>,
    pub head: Option<Head>,
    /// The cluster marker's revision (0: none).
    pub cluster: i64,
}

/// A change seen on a key that stops it verifying (revoked, disabled): when it was made, for
/// the propagation metric.
pub struct Stopped {
    pub at: std::time::SystemTime,
}

pub struct NodeView {
    records: RwLock<Records>,
    /// The key records' summaries, changed with `records` under its write lock.
    index: KeyIndex,
    /// The revision up to which the watch delivered everything.
    applied: AtomicI64,
    /// Nanoseconds after `epoch` at which the view was last proven current (0: never).
    proven: AtomicU64,
    epoch: Instant,
    max_staleness: Duration,
    /// Waiters for `applied` to reach a revision.
    applied_tx: tokio::sync::watch::Sender<i64>,
    master_tx: tokio::sync::watch::Sender<Option<MasterState>>,
    /// Live keyward nodes by id, as their presence keys say.
    nodes: Mutex<HashMap<String, String>>,
    /// `nodes.len()`, at least 1, read on every rate-limited verification.
    node_count: AtomicU32,
}

impl NodeView {
    pub fn new(max_staleness: Duration) -> Self {
        Self {
            records: RwLock::default(),
            index: KeyIndex::new(),
            applied: AtomicI64::new(0),
            proven: AtomicU64::new(0),
            epoch: Instant::now(),
            max_staleness,
            applied_tx: tokio::sync::watch::Sender::new(0),
            master_tx: tokio::sync::watch::Sender::new(None),
            nodes: Mutex::default(),
            node_count: AtomicU32::new(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Records> {
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the view held everything etcd had committed at `at`.
    pub fn prove(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos().max(1) as u64;
        self.proven.fetch_max(nanos, Ordering::AcqRel);
    }

    /// How long ago the view was last proven current (`None`: never).
    pub fn staleness(&self) -> Option<Duration> {
        match self.proven.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(nanos))),
        }
    }

    pub fn is_current(&self) -> bool {
        self.staleness().is_some_and(|s| s <= self.max_staleness)
    }

    /// `Ok` while the view is proven current; else the node fails closed.
    pub fn require_current(&self) -> Result<(), StoreError> {
        match self.staleness() {
            Some(s) if s <= self.max_staleness => Ok(()),
            Some(s) => Err(StoreError::Unavailable(format!(
                "this node cannot prove its view of the cluster is current (last proven {} ms ago; limit {} ms): \
                 etcd is unreachable or has no quorum",
                s.as_millis(),
                self.max_staleness.as_millis()
            ))),
            None => Err(StoreError::Unavailable("this node has not loaded the cluster's state yet".into())),
        }
    }

    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn set_applied(&self, rev: i64) {
        if self.applied.fetch_max(rev, Ordering::AcqRel) < rev {
            self.applied_tx.send_replace(rev);
        }
    }

    /// Waits until the watch delivered everything up to `rev`, for at most `within`.
    pub async fn wait_applied(&self, rev: i64, within: Duration) -> bool {
        let mut rx = self.applied_tx.subscribe();
        tokio::time::timeout(within, rx.wait_for(|applied| *applied >= rev)).await.is_ok_and(|r| r.is_ok())
    }

    /// Replaces everything (a full load at revision `rev`).
    pub fn replace(&self, records: Records, rev: i64) {
        let master = records.master.as_ref().map(|(m, _)| m.clone());
        let mut held = self.write();
        self.index.replace(records.keys.values().map(|(r, _)| r));
        *held = records;
        drop(held);
        self.applied.store(rev, Ordering::Release);
        self.applied_tx.send_replace(rev);
        self.publish_master(master);
    }

    /// Takes `record` written at `rev` unless the view already has a later one. Returns whether
    /// this write stopped a key that verified before.
    pub fn put_key(&self, record: KeyRecord, rev: i64) -> Option<Stopped> {
        let mut records = self.write();
        let previous = records.keys.get(&record.id);
        if previous.is_some_and(|(_, at)| *at >= rev) {
            return None;
        }
        let stopped = stops(previous.map(|(r, _)| r), &record);
        self.index.put(&record);
        records.keys.insert(record.id, (record, rev));
        stopped
    }

    pub fn remove_key(&self, id: KeyId, rev: i64) {
        let mut records = self.write();
        if records.keys.get(&id).is_some_and(|(_, at)| *at < rev) {
            records.keys.remove(&id);
            self.index.remove(id);
        }
    }

    pub fn put_master(&self, master: MasterState, rev: i64) {
        let mut records = self.write();
        if records.master.as_ref().is_some_and(|(_, at)| *at >= rev) {
            return;
        }
        records.master = Some((master.clone(), rev));
        drop(records);
        self.publish_master(Some(master));
    }

    fn publish_master(&self, master: Option<MasterState>) {
        self.master_tx.send_if_modified(|current| {
            let changed = *current != master;
            *current = master;
            changed
        });
    }

    pub fn put_head(&self, head: Head) {
        let mut records = self.write();
        if records.head.is_none_or(|h| h.rev < head.rev) {
            records.head = Some(head);
        }
    }

    pub fn cluster_rev(&self) -> i64 {
        self.read().cluster
    }

    pub fn set_cluster_rev(&self, rev: i64) {
        let mut records = self.write();
        records.cluster = records.cluster.max(rev);
    }

    pub fn key(&self, id: KeyId) -> Option<KeyRecord> {
        self.read().keys.get(&id).map(|(r, _)| r.clone())
    }

    pub fn key_with_rev(&self, id: KeyId) -> Option<(KeyRecord, i64)> {
        self.read().keys.get(&id).cloned()
    }

    /// Up to `limit` keys after `after`, in id order.
    pub fn keys_after(&self, after: Option<KeyId>, limit: usize) -> Vec<KeyRecord> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.read().keys.range((start, Bound::Unbounded)).take(limit).map(|(_, (r, _))| r.clone()).collect()
    }

    /// The key records' summaries (not checked for currency: see `require_current`).
    pub fn index(&self) -> &KeyIndex {
        &self.index
    }

    pub fn key_count(&self) -> usize {
        self.read().keys.len()
    }

    pub fn master(&self) -> Option<(MasterState, i64)> {
        self.read().master.clone()
    }

    pub fn head(&self) -> Head {
        self.read().head.unwrap_or(Head::EMPTY)
    }

    /// The master key state as it changes (another node's rotation included).
    pub fn master_updates(&self) -> tokio::sync::watch::Receiver<Option<MasterState>> {
        self.master_tx.subscribe()
    }

    pub fn set_node(&self, id: String, about: Option<String>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        match about {
            Some(about) => nodes.insert(id, about),
            None => nodes.remove(&id),
        };
        self.node_count.store((nodes.len() as u32).max(1), Ordering::Release);
    }

    pub fn forget_nodes(&self) {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.node_count.store(1, Ordering::Release);
    }

    /// How many nodes announce themselves (at least 1: this one, before its own announcement).
    pub fn node_count(&self) -> u32 {
        self.node_count.load(Ordering::Acquire)
    }

    /// The live nodes' ids, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Whether `after` stops a key that `before` let verify.
fn stops(before: Option<&KeyRecord>, after: &KeyRecord) -> Option<Stopped> {
    let verifying = |s: KeyState| matches!(s, KeyState::Active | KeyState::Rotated);
    let was = before.is_some_and(|b| verifying(b.state));
    if was && !verifying(after.state) {
        let at = after.revoked_at.or(after.disabled_at).or(after.updated_at)?;
        return Some(Stopped { at });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_never_proven_or_proven_too_long_ago_fails_closed() {
        let view = NodeView::new(Duration::from_millis(50));
        assert!(view.require_current().is_err(), "never proven");
        view.prove(Instant::now());
        assert!(view.require_current().is_ok());
        std::thread::sleep(Duration::from_millis(80));
        let err = view.require_current().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(ref why) if why.contains("cannot prove")), "{err}");
        view.prove(Instant::now());
        assert!(view.is_current(), "a new proof restores it");
    }

    #[test]
    fn the_key_index_follows_the_newest_revision_of_each_key() {
        use crate::domain::key::{Digest, MasterKeyVersion};
        let view = NodeView::new(Duration::from_secs(1));
        let at = std::time::SystemTime::UNIX_EPOCH;
        let digest = Digest::plain(MasterKeyVersion(1), [1; 32]);
        let a = KeyRecord::new(KeyId::new_v7(), "A".into(), "kw".into(), vec![], at, digest.clone());
        let b = KeyRecord::new(KeyId::new_v7(), "B".into(), "kw".into(), vec![], at, digest);
        let mut records = Records::default();
        records.keys.insert(a.id, (a.clone(), 5));
        view.replace(records, 5);
        assert_eq!(view.index().len(), 1);
        view.put_key(b.clone(), 6);
        view.put_key(KeyRecord { name: "Newer".into(), ..a.clone() }, 7);
        view.put_key(KeyRecord { name: "Stale".into(), ..a.clone() }, 6);
        assert_eq!(&*view.index().get(a.id).unwrap().name_lower, "newer", "an older revision is ignored");
        view.remove_key(b.id, 8);
        assert!(view.index().get(b.id).is_none());
        assert_eq!(view.index().len(), view.key_count());
    }

    #[test]
    fn the_head_round_trips_and_a_short_one_is_corrupt() {
        let head = Head { seq: 7, mac: [3; AUDIT_MAC_LEN], rev: 11 };
        assert_eq!(Head::decode(&head.encode(), 11).unwrap(), head);
        assert!(Head::decode(&[1, 2, 3], 1).is_err());
    }
}
