//! `Store` on sled: trees `keys` (key id → record), `audit` (sequence → sealed event),
//! `audit_by_key` (key id ‖ sequence) and `audit_by_time` (time ‖ sequence) indexes, and `meta`.
//! Writes go through the write combiner (`writer`): one thread commits queued mutations in
//! batches, so audit sequence numbers are gapless and each event's MAC chains to the one before;
//! durability comes from the group-commit flusher, awaited by each caller after its batch.

use std::{ops::Bound, path::Path, sync::Arc, time::Duration};

use super::{
    codec,
    confirm::WriteGate,
    disk_space::DiskGuard,
    flusher::{FlushFn, Flusher, sled_flush},
    usage_log::UsageTree,
    writer::{AUDIT_HEAD, Abort, BodyResult, Head, Stage, Tree, Trees, Writer, abort, time_key},
};
use crate::domain::{
    audit::{self, AuditEvent, AuditQuery, ChainReport, RecordedEvent},
    error::Error,
    key::{KeyId, KeyRecord},
    key_index::KeyIndex,
    ports::{AUDIT_MAC_LEN, AuditSealer, DigestSwap, KeyChange, MasterState, Store, StoreError, Updated},
    usage::UsageDelta,
    usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
};

#[path = "replica.rs"]
mod replica;
pub use replica::SealedEvent;
use replica::checkpoint;

const MASTER: &[u8] = b"master";

/// How long a write waits for sled to commit and flush it, by default (`store.write_timeout`).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the store refuses, and how long it waits for the database.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Mutations are refused (`UNAVAILABLE`, not attempted) while fewer bytes are free on the
    /// database's file system (0: no reserve).
    pub min_free_bytes: u64,
    /// The longest a mutation waits for sled to commit and flush it. Past it the mutation
    /// answers `UNAVAILABLE` and writes are refused until a restart (see `confirm.rs`).
    pub write_timeout: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self { min_free_bytes: 0, write_timeout: DEFAULT_WRITE_TIMEOUT }
    }
}

struct Inner {
    db: sled::Db,
    keys: sled::Tree,
    audit: sled::Tree,
    by_key: sled::Tree,
    by_time: sled::Tree,
    meta: sled::Tree,
    usage: UsageTree,
    /// The newest audit sequence number that is durable: what tails may show.
    durable: tokio::sync::watch::Sender<u64>,
    sealer: Arc<dyn AuditSealer>,
    /// Dropped before the flusher: the write thread stops first.
    writer: Writer,
    flusher: Flusher,
    /// Refuses mutations while the free space is below the reserve.
    disk: DiskGuard,
    /// Bounds every wait for sled in the write path by `store.write_timeout`.
    gate: WriteGate,
    /// Every key record's summary; the write thread keeps it current.
    index: Arc<KeyIndex>,
    /// Key records that did not decode when the database opened.
    corrupt_keys: usize,
}

/// The key index of the records in `keys`, read once when the database opens, and how many
/// records did not decode (the index cannot answer for them: see `Store::key_index`).
fn load_index(keys: &sled::Tree) -> Result<(KeyIndex, usize), StoreError> {
    let index = KeyIndex::new();
    let mut records = Vec::with_capacity(keys.len());
    let mut corrupt = 0;
    for item in keys.iter() {
        match codec::decode_key(&item.map_err(unavailable)?.1) {
            Ok(record) => records.push(record),
            Err(_) => corrupt += 1,
        }
    }
    index.replace(records.iter());
    Ok((index, corrupt))
}

fn seq_of(index_key: &[u8]) -> Result<u64, StoreError> {
    let tail = index_key.len().checked_sub(8).ok_or_else(|| StoreError::Corrupt("audit index".into()))?;
    Ok(u64::from_be_bytes(index_key[tail..].try_into().expect("8 bytes")))
}

/// Whether a write waits until it is flushed to disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    Wait,
    Later,
}

/// The sled-backed store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore(Arc<Inner>);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `path`, sealing audit events with `sealer`. Fails if
    /// another process holds it.
    pub fn open(path: &Path, sealer: Arc<dyn AuditSealer>) -> Result<Self, StoreError> {
        Self::open_with_limits(path, sealer, StoreLimits::default())
    }

    /// Opens the database with `limits`: the free-space reserve and the write timeout.
    pub fn open_with_limits(
        path: &Path,
        sealer: Arc<dyn AuditSealer>,
        limits: StoreLimits,
    ) -> Result<Self, StoreError> {
        Self::open_with_flush(path, sealer, limits, None)
    }

    /// `open_with_limits`, the flusher calling `flush` instead of sled's own (tests: a flush
    /// that never returns).
    pub(super) fn open_with_flush(
        path: &Path,
        sealer: Arc<dyn AuditSealer>,
        limits: StoreLimits,
        flush: Option<FlushFn>,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| StoreError::Unavailable(format!("cannot open the database at {}: {e}", path.display())))?;
        let open = |name: &str| db.open_tree(name).map_err(unavailable);
        let (keys, audit, meta) = (open("keys")?, open("audit")?, open("meta")?);
        let (by_key, by_time) = (open("audit_by_key")?, open("audit_by_time")?);
        let head = match audit.last().map_err(unavailable)? {
            Some((k, v)) => {
                Head { next_seq: seq_of(&k)? + 1, last_mac: codec::decode_audit(&v)?.mac.unwrap_or_default() }
            }
            None => match checkpoint(&meta)? {
                Some((seq, mac)) => Head { next_seq: seq + 1, last_mac: mac },
                None => Head { next_seq: 1, last_mac: [0; AUDIT_MAC_LEN] },
            },
        };
        let usage = UsageTree::open(&db)?;
        let flusher = Flusher::start(flush.unwrap_or_else(|| sled_flush(db.clone())), limits.write_timeout);
        let durable = tokio::sync::watch::Sender::new(head.next_seq - 1);
        let trees = Trees {
            keys: keys.clone(),
            audit: audit.clone(),
            by_key: by_key.clone(),
            by_time: by_time.clone(),
            meta: meta.clone(),
        };
        let (index, corrupt_keys) = load_index(&keys)?;
        let index = Arc::new(index);
        let writer = Writer::start(trees, head, sealer.clone(), flusher.tickets(), limits.write_timeout, index.clone());
        let disk = DiskGuard::new(path, limits.min_free_bytes);
        disk.measure();
        Ok(Self(Arc::new(Inner {
            db,
            keys,
            audit,
            by_key,
            by_time,
            meta,
            usage,
            durable,
            sealer,
            writer,
            flusher,
            disk,
            gate: WriteGate::new(limits.write_timeout),
            index,
            corrupt_keys,
        })))
    }

    /// Measures the free space every `interval` (the metrics and the reserve's transition logs
    /// stay current while no mutation comes). Runs until aborted.
    pub async fn watch_disk(self, interval: std::time::Duration) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            self.0.disk.measure();
        }
    }

    /// How many usage records are kept.
    pub fn usage_count(&self) -> u64 {
        self.0.usage.count()
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.0.db.size_on_disk().map_err(unavailable)
    }

    /// A tree by name, for tests that tamper with the database behind the store's back.
    #[cfg(test)]
    pub fn raw_tree(&self, name: &str) -> sled::Tree {
        self.0.db.open_tree(name).unwrap()
    }

    /// Writes queued for the write combiner, not yet taken into a batch.
    #[cfg(test)]
    pub(super) fn queued_writes(&self) -> usize {
        self.0.writer.queued()
    }

    /// Flushes and stops the flush thread. Later writes fail.
    pub fn close(&self) {
        self.0.flusher.stop();
        if !self.0.gate.writes_confirmed() {
            tracing::warn!("closing without a final flush: the database stopped confirming writes");
            return;
        }
        if let Err(e) = self.0.db.flush() {
            tracing::error!(error = %e, "flushing the database at close failed");
        }
    }

    /// Runs `body` in the write combiner's next batch, then waits until it is durable, for at
    /// most `store.write_timeout`.
    async fn write<F, T>(&self, body: F) -> Result<T, Abort>
    where
        F: Fn(&Stage<'_>) -> BodyResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.write_then(body, Flush::Wait).await
    }

    /// `write`, waiting for the flush (`Flush::Wait`) or leaving it to the next one
    /// (`Flush::Later`: sled's own within 500 ms, or the next write that waits).
    async fn write_then<F, T>(&self, body: F, flush: Flush) -> Result<T, Abort>
    where
        F: Fn(&Stage<'_>) -> BodyResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.0.disk.admit().map_err(Abort::Store)?;
        let done = self
            .0
            .gate
            .confirm(async {
                let done = self.0.writer.submit(body).await?;
                if flush == Flush::Wait {
                    self.0.flusher.wait(done.ticket).await.map_err(Abort::Store)?;
                }
                Ok::<_, Abort>(done)
            })
            .await?;
        if let Some(last) = done.last_seq {
            self.0.durable.send_if_modified(|h| std::mem::replace(h, (*h).max(last)) < last);
        }
        Ok(done.out)
    }
}

impl Store for SledStore {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        match self.0.keys.get(id.as_bytes()).map_err(unavailable)? {
            Some(bytes) => codec::decode_key(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn key_index(&self) -> Result<&KeyIndex, StoreError> {
        match self.0.corrupt_keys {
            0 => Ok(&self.0.index),
            n => Err(StoreError::Corrupt(format!("{n} key records did not decode when the database opened"))),
        }
    }

    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_ {
        let start = match after {
            Some(id) => Bound::Excluded(id.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.0
            .keys
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .map(|item| codec::decode_key(&item.map_err(unavailable)?.1))
    }

    async fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        let value = codec::encode_key(&record);
        self.write(move |t| {
            t.insert(Tree::Keys, record.id.as_bytes(), value.as_slice());
            t.append_audit(&event)
        })
        .await
        .map_err(StoreError::from)
    }

    async fn update_key<F>(&self, id: KeyId, change: F) -> Result<Updated, Error>
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static,
    {
        Ok(self
            .write(move |t| {
                let Some(bytes) = t.get(Tree::Keys, id.as_bytes())? else {
                    return abort(Abort::Domain(Error::NotFound(format!("key {id}"))));
                };
                let before = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                match change(&before) {
                    Err(e) => abort(Abort::Domain(e)),
                    Ok(None) => Ok(Updated { after: before.clone(), before }),
                    Ok(Some((after, event))) => {
                        t.insert(Tree::Keys, id.as_bytes(), codec::encode_key(&after));
                        if let Some(event) = event {
                            t.append_audit(&event)?;
                        }
                        Ok(Updated { before, after })
                    }
                }
            })
            .await?)
    }

    async fn rotate_key<F>(&self, id: KeyId, change: F) -> Result<(Updated, KeyRecord), Error>
    where
        F: Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord, Vec<AuditEvent>), Error> + Send + 'static,
    {
        Ok(self
            .write(move |t| {
                let Some(bytes) = t.get(Tree::Keys, id.as_bytes())? else {
                    return abort(Abort::Domain(Error::NotFound(format!("key {id}"))));
                };
                let before = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                let (after, successor, events) = change(&before).or_else(|e| abort(Abort::Domain(e)))?;
                if t.get(Tree::Keys, successor.id.as_bytes())?.is_some() {
                    return abort(Abort::Domain(Error::AlreadyExists(format!("key {}", successor.id))));
                }
                t.insert(Tree::Keys, id.as_bytes(), codec::encode_key(&after));
                t.insert(Tree::Keys, successor.id.as_bytes(), codec::encode_key(&successor));
                for event in &events {
                    t.append_audit(event)?;
                }
                Ok((Updated { before, after }, successor))
            })
            .await?)
    }

    async fn replace_digests(
        &self,
        swaps: Vec<DigestSwap>,
        master: Option<(MasterState, Option<AuditEvent>)>,
    ) -> Result<usize, StoreError> {
        let master = master.map(|(state, event)| (codec::encode_master(&state), event));
        self.write(move |t| {
            let mut replaced = 0;
            for swap in &swaps {
                let Some(bytes) = t.get(Tree::Keys, swap.id.as_bytes())? else { continue };
                let mut record = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                if !swap.apply(&mut record) {
                    continue;
                }
                t.insert(Tree::Keys, swap.id.as_bytes(), codec::encode_key(&record));
                replaced += 1;
            }
            if let Some((state, event)) = &master {
                t.insert(Tree::Meta, MASTER, state.as_slice());
                if let Some(event) = event {
                    t.append_audit(event)?;
                }
            }
            Ok(replaced)
        })
        .await
        .map_err(StoreError::from)
    }

    async fn set_master(&self, master: MasterState, event: AuditEvent) -> Result<(), StoreError> {
        let state = codec::encode_master(&master);
        self.write(move |t| {
            t.insert(Tree::Meta, MASTER, state.as_slice());
            t.append_audit(&event)
        })
        .await
        .map_err(StoreError::from)
    }

    async fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> Result<(), StoreError> {
        self.write(move |t| {
            for (id, delta) in &batch {
                let Some(bytes) = t.get(Tree::Keys, id.as_bytes())? else { continue };
                let mut record = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                record.usage.absorb(delta);
                t.insert(Tree::Keys, id.as_bytes(), codec::encode_key(&record));
            }
            Ok(())
        })
        .await
        .map_err(StoreError::from)
    }

    async fn append_events(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.write(move |t| {
            for event in &events {
                t.append_audit(event)?;
            }
            Ok(())
        })
        .await
        .map_err(StoreError::from)
    }

    async fn append_usage(&self, records: Vec<UsageRecord>, retention: Retention) -> Result<u64, StoreError> {
        self.0.disk.admit()?;
        let inner = self.0.clone();
        self.0
            .gate
            .confirm(async {
                let pruned = tokio::task::spawn_blocking(move || inner.usage.append(&records, retention))
                    .await
                    .map_err(unavailable)??;
                self.0.flusher.durable().await?;
                Ok(pruned)
            })
            .await
    }

    fn key_usage(
        &self,
        key: KeyId,
        since: Option<std::time::SystemTime>,
        until: Option<std::time::SystemTime>,
        max_scan: usize,
    ) -> Result<KeyUsage, StoreError> {
        self.0.usage.key_usage(key, since, until, max_scan)
    }

    fn query_usage(
        &self,
        query: &UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Vec<u8>>), StoreError> {
        self.0.usage.query(query, cursor, limit, max_scan)
    }

    fn master(&self) -> Result<Option<MasterState>, StoreError> {
        match self.0.meta.get(MASTER).map_err(unavailable)? {
            Some(bytes) => codec::decode_master(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn initialize(&self, master: MasterState, root: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        let (master, root_value) = (codec::encode_master(&master), codec::encode_key(&root));
        self.write(move |t| {
            if t.get(Tree::Meta, MASTER)?.is_some() {
                return abort(Abort::Store(StoreError::AlreadyInitialized));
            }
            t.insert(Tree::Meta, MASTER, master.as_slice());
            t.insert(Tree::Keys, root.id.as_bytes(), root_value.as_slice());
            t.append_audit(&event)
        })
        .await
        .map_err(StoreError::from)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.0
            .audit
            .range(start..)
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(unavailable)?;
                let seq = u64::from_be_bytes(
                    k.as_ref().try_into().map_err(|_| StoreError::Corrupt("audit sequence".into()))?,
                );
                let record = codec::decode_audit(&v)?;
                Ok(RecordedEvent { seq, event: record.event, mac: record.mac, node: record.node })
            })
            .collect()
    }

    fn query_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<Vec<u8>>), StoreError> {
        // The narrowest index: one key's events, else the time range, else the whole trail.
        let (tree, start, end): (&sled::Tree, Vec<u8>, Vec<u8>) = match (query.key, query.since, query.until) {
            (Some(key), _, _) => {
                let k = key.as_bytes().to_vec();
                (&self.0.by_key, [k.as_slice(), &[0; 8]].concat(), [k.as_slice(), &[0xff; 8]].concat())
            }
            (None, None, None) => (&self.0.audit, vec![0; 8], vec![0xff; 8]),
            (None, since, until) => {
                let since = since.map_or([0; 8], time_key);
                let until = until.map_or([0xff; 8], time_key);
                (&self.0.by_time, [since.as_slice(), &[0; 8]].concat(), [until.as_slice(), &[0; 8]].concat())
            }
        };
        let (lower, upper) = match (cursor, query.newest_first) {
            (Some(c), false) => (Bound::Excluded(c.to_vec()), Bound::Included(end)),
            (Some(c), true) => (Bound::Included(start), Bound::Excluded(c.to_vec())),
            (None, _) => (Bound::Included(start), Bound::Included(end)),
        };
        let range = tree.range::<Vec<u8>, _>((lower, upper));
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if query.newest_first { Box::new(range.rev()) } else { Box::new(range) };
        let indexed = !std::ptr::eq(tree, &self.0.audit);
        let mut found = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        for (scanned, entry) in entries.enumerate() {
            if found.len() == limit || scanned == max_scan {
                return Ok((found, last)); // At least one more entry: resume after the last read.
            }
            let (index_key, value) = entry.map_err(unavailable)?;
            let seq = seq_of(&index_key)?;
            last = Some(index_key.to_vec());
            let bytes = if indexed {
                // An index entry without its event means a deleted event: VerifyChain reports it.
                let Some(bytes) = self.0.audit.get(seq.to_be_bytes()).map_err(unavailable)? else { continue };
                bytes
            } else {
                value
            };
            let record = codec::decode_audit(&bytes)?;
            if query.matches(&record.event) {
                found.push(RecordedEvent { seq, event: record.event, mac: record.mac, node: record.node });
            }
        }
        Ok((found, None))
    }

    fn writes_confirmed(&self) -> bool {
        self.0.gate.writes_confirmed()
    }

    fn audit_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.durable.subscribe()
    }

    fn verify_chain(&self, from: u64, to: Option<u64>) -> Result<ChainReport, StoreError> {
        let mut from = from.max(1);
        let mut report = ChainReport::default();
        let mut prev = [0u8; AUDIT_MAC_LEN];
        let start = checkpoint(&self.0.meta)?;
        if let Some((seq, mac)) = start
            && from <= seq + 1
        {
            // The copy starts after the cluster's checkpoint: the chain is checked from there.
            from = seq + 1;
            prev = mac;
        } else if from > 1 {
            match self.0.audit.get((from - 1).to_be_bytes()).map_err(unavailable)? {
                Some(v) => prev = codec::decode_audit(&v)?.mac.unwrap_or_default(),
                None => {
                    report.broken = Some((from - 1, "event missing (deleted?)".into()));
                    return Ok(report);
                }
            }
        }
        let upper = to.map_or(Bound::Unbounded, |t| Bound::Included(t.to_be_bytes().to_vec()));
        let mut expected = from;
        for entry in self.0.audit.range::<Vec<u8>, _>((Bound::Included(from.to_be_bytes().to_vec()), upper)) {
            let (k, v) = entry.map_err(unavailable)?;
            let seq = seq_of(&k)?;
            if report.first == 0 {
                report.first = seq;
            }
            report.last = seq;
            if seq != expected {
                report.broken = Some((expected, "event missing (deleted?)".into()));
                return Ok(report);
            }
            let record = match codec::decode_audit(&v) {
                Ok(r) => r,
                Err(_) => {
                    report.broken = Some((seq, "event unreadable (edited?)".into()));
                    return Ok(report);
                }
            };
            match record.mac {
                None => report.unsealed += 1,
                Some(mac) => {
                    let message = audit::chain_message(&prev, seq, &record.event_bytes);
                    let ok = self.0.sealer.check(&message, &mac).map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    if !ok {
                        let why = "MAC does not match: the event was edited, or an event before it was changed, \
                                   removed or reordered";
                        report.broken = Some((seq, why.into()));
                        return Ok(report);
                    }
                    report.checked += 1;
                    prev = mac;
                }
            }
            expected = seq + 1;
        }
        // A trail cut short at its end leaves no gap: compare with the recorded head.
        if to.is_none_or(|t| t >= expected)
            && let Some(head) = self.0.meta.get(AUDIT_HEAD).map_err(unavailable)?
        {
            let head_seq = seq_of(&head[..8.min(head.len())])?;
            if head_seq >= expected {
                report.broken =
                    Some((expected, format!("events {expected}..={head_seq} missing (the trail was cut short)")));
            }
        }
        Ok(report)
    }
}
