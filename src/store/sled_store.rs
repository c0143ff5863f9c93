//! `Store` on sled: trees `keys` (key id → record), `audit` (sequence → event) and `meta`.
//! Writers are serialized (a transaction takes microseconds) so audit sequence numbers are
//! gapless; durability comes from the group-commit flusher, awaited outside the lock.

use std::{
    cell::Cell,
    ops::Bound,
    path::Path,
    sync::{Arc, Mutex},
};

use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use super::{codec, flusher::Flusher};
use crate::domain::{
    audit::{AuditEvent, RecordedEvent},
    error::Error,
    key::{KeyId, KeyRecord},
    ports::{DigestSwap, KeyChange, MasterState, Store, StoreError, Updated},
    usage::UsageDelta,
};

const MASTER: &[u8] = b"master";

struct Inner {
    db: sled::Db,
    keys: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    /// Next audit sequence number; held while a write transaction runs.
    next_seq: Mutex<u64>,
    flusher: Flusher,
}

/// The sled-backed store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore(Arc<Inner>);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Why a write transaction gave up.
enum Abort {
    Store(StoreError),
    Domain(Error),
}

impl From<TransactionError<Abort>> for Abort {
    fn from(e: TransactionError<Abort>) -> Self {
        match e {
            TransactionError::Abort(a) => a,
            TransactionError::Storage(e) => Abort::Store(unavailable(e)),
        }
    }
}

impl From<Abort> for StoreError {
    fn from(a: Abort) -> Self {
        match a {
            Abort::Store(e) => e,
            Abort::Domain(e) => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<Abort> for Error {
    fn from(a: Abort) -> Self {
        match a {
            Abort::Store(e) => e.into(),
            Abort::Domain(e) => e,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `path`. Fails if another process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| StoreError::Unavailable(format!("cannot open the database at {}: {e}", path.display())))?;
        let open = |name: &str| db.open_tree(name).map_err(unavailable);
        let (keys, audit, meta) = (open("keys")?, open("audit")?, open("meta")?);
        let last_seq = match audit.last().map_err(unavailable)? {
            Some((k, _)) => {
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Corrupt("audit sequence".into()))?)
            }
            None => 0,
        };
        let flusher = Flusher::start(db.clone());
        Ok(Self(Arc::new(Inner { db, keys, audit, meta, next_seq: Mutex::new(last_seq + 1), flusher })))
    }

    /// Flushes and stops the flush thread. Later writes fail.
    pub fn close(&self) {
        self.0.flusher.stop();
        if let Err(e) = self.0.db.flush() {
            tracing::error!(error = %e, "flushing the database at close failed");
        }
    }

    /// Runs `write` (a sled transaction body over keys, audit, meta) with the next audit
    /// sequence number, then waits until it is durable.
    async fn write<F, T>(&self, write: F) -> Result<T, Abort>
    where
        F: Fn(&Trees<'_>, u64) -> Result<T, ConflictableTransactionError<Abort>> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.0.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut seq = inner.next_seq.lock().unwrap_or_else(|e| e.into_inner());
            let (out, appended) = (&inner.keys, &inner.audit, &inner.meta)
                .transaction(|(keys, audit, meta)| {
                    let trees = Trees { keys, audit, meta, appended: Cell::new(0) };
                    let out = write(&trees, *seq)?;
                    Ok((out, trees.appended.get()))
                })
                .map_err(Abort::from)?;
            *seq += appended;
            Ok::<_, Abort>(out)
        })
        .await
        .map_err(|e| Abort::Store(unavailable(e)))??;
        self.0.flusher.durable().await.map_err(Abort::Store)?;
        Ok(committed)
    }
}

struct Trees<'a> {
    keys: &'a sled::transaction::TransactionalTree,
    audit: &'a sled::transaction::TransactionalTree,
    meta: &'a sled::transaction::TransactionalTree,
    /// Audit events this attempt appended, from the first sequence number on.
    appended: Cell<u64>,
}

impl Trees<'_> {
    /// Appends `event` after those this transaction appended already; `first` is the
    /// transaction's first sequence number.
    fn append_audit(&self, first: u64, event: &AuditEvent) -> Result<(), ConflictableTransactionError<Abort>> {
        let seq = first + self.appended.get();
        self.audit.insert(&seq.to_be_bytes(), codec::encode_event(event))?;
        self.appended.set(self.appended.get() + 1);
        Ok(())
    }
}

fn abort<T>(a: Abort) -> Result<T, ConflictableTransactionError<Abort>> {
    Err(ConflictableTransactionError::Abort(a))
}

impl Store for SledStore {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        match self.0.keys.get(id.as_bytes()).map_err(unavailable)? {
            Some(bytes) => codec::decode_key(&bytes).map(Some),
            None => Ok(None),
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
        self.write(move |t, seq| {
            t.keys.insert(record.id.as_bytes(), value.as_slice())?;
            t.append_audit(seq, &event)
        })
        .await
        .map_err(StoreError::from)
    }

    async fn update_key<F>(&self, id: KeyId, change: F) -> Result<Updated, Error>
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static,
    {
        Ok(self
            .write(move |t, seq| {
                let Some(bytes) = t.keys.get(id.as_bytes())? else {
                    return abort(Abort::Domain(Error::NotFound(format!("key {id}"))));
                };
                let before = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                match change(&before) {
                    Err(e) => abort(Abort::Domain(e)),
                    Ok(None) => Ok(Updated { after: before.clone(), before }),
                    Ok(Some((after, event))) => {
                        t.keys.insert(id.as_bytes(), codec::encode_key(&after))?;
                        if let Some(event) = event {
                            t.append_audit(seq, &event)?;
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
            .write(move |t, seq| {
                let Some(bytes) = t.keys.get(id.as_bytes())? else {
                    return abort(Abort::Domain(Error::NotFound(format!("key {id}"))));
                };
                let before = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                let (after, successor, events) = change(&before).or_else(|e| abort(Abort::Domain(e)))?;
                if t.keys.get(successor.id.as_bytes())?.is_some() {
                    return abort(Abort::Domain(Error::AlreadyExists(format!("key {}", successor.id))));
                }
                t.keys.insert(id.as_bytes(), codec::encode_key(&after))?;
                t.keys.insert(successor.id.as_bytes(), codec::encode_key(&successor))?;
                for event in &events {
                    t.append_audit(seq, event)?;
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
        self.write(move |t, seq| {
            let mut replaced = 0;
            for swap in &swaps {
                let Some(bytes) = t.keys.get(swap.id.as_bytes())? else { continue };
                let mut record = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                if record.digest != swap.expected {
                    continue;
                }
                record.digest = swap.new.clone();
                t.keys.insert(swap.id.as_bytes(), codec::encode_key(&record))?;
                replaced += 1;
            }
            if let Some((state, event)) = &master {
                t.meta.insert(MASTER, state.as_slice())?;
                if let Some(event) = event {
                    t.append_audit(seq, event)?;
                }
            }
            Ok(replaced)
        })
        .await
        .map_err(StoreError::from)
    }

    async fn set_master(&self, master: MasterState, event: AuditEvent) -> Result<(), StoreError> {
        let state = codec::encode_master(&master);
        self.write(move |t, seq| {
            t.meta.insert(MASTER, state.as_slice())?;
            t.append_audit(seq, &event)
        })
        .await
        .map_err(StoreError::from)
    }

    async fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> Result<(), StoreError> {
        self.write(move |t, _| {
            for (id, delta) in &batch {
                let Some(bytes) = t.keys.get(id.as_bytes())? else { continue };
                let mut record = codec::decode_key(&bytes).or_else(|e| abort(Abort::Store(e)))?;
                record.usage.absorb(delta);
                t.keys.insert(id.as_bytes(), codec::encode_key(&record))?;
            }
            Ok(())
        })
        .await
        .map_err(StoreError::from)
    }

    fn master(&self) -> Result<Option<MasterState>, StoreError> {
        match self.0.meta.get(MASTER).map_err(unavailable)? {
            Some(bytes) => codec::decode_master(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn initialize(&self, master: MasterState, root: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        let (master, root_value) = (codec::encode_master(&master), codec::encode_key(&root));
        self.write(move |t, seq| {
            if t.meta.get(MASTER)?.is_some() {
                return abort(Abort::Store(StoreError::AlreadyInitialized));
            }
            t.meta.insert(MASTER, master.as_slice())?;
            t.keys.insert(root.id.as_bytes(), root_value.as_slice())?;
            t.append_audit(seq, &event)
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
                Ok(RecordedEvent { seq, event: codec::decode_event(&v)? })
            })
            .collect()
    }
}
