//! The write combiner: one thread takes every queued mutation and commits them together in one
//! sled transaction, so a burst of N writes costs one transaction and one flush ticket. Each
//! mutation stages its writes and is applied only once its body and its audit seals succeeded:
//! a domain error or a failed seal fails that mutation alone, and sequence numbers and the chain
//! MAC advance only over events that are written, so the trail stays gapless. Events sealed by
//! another node of a cluster are appended through the same batches ([`Stage::append_sealed`]), so
//! they and this node's own events share one head.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use sled::{
    IVec, Transactional,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};

use super::{
    codec,
    flusher::{Tickets, join_within},
};
use crate::domain::{
    audit::{self, AuditEvent},
    error::Error,
    key::KeyId,
    key_index::KeyIndex,
    ports::{AUDIT_MAC_LEN, AuditSealer, StoreError},
};

/// The last audit event's sequence number and MAC, written with every batch that appends: a
/// trail cut short at the end is caught by comparing with it.
pub(super) const AUDIT_HEAD: &[u8] = b"audit_head";
/// Cluster mode: where a node's copy of the chain begins when it was started from the cluster's
/// checkpoint (the events before were trimmed from etcd before this node copied them): the
/// checkpoint's sequence number and MAC.
pub(super) const AUDIT_CHECKPOINT: &[u8] = b"audit_checkpoint";
/// Mutations committed in one transaction, at most.
const MAX_BATCH: usize = 512;
/// Mutations waiting for the writer, at most (callers wait beyond).
const QUEUE: usize = 4096;

/// Why a mutation gave up.
pub(super) enum Abort {
    Store(StoreError),
    Domain(Error),
}

impl From<Abort> for StoreError {
    fn from(a: Abort) -> Self {
        match a {
            Abort::Store(e) => e,
            Abort::Domain(e) => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Store(e)
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

/// What a mutation body returns: `Abort` fails this mutation alone; a conflict or storage error
/// fails (or retries) the whole transaction.
pub(super) type BodyResult<T> = Result<T, ConflictableTransactionError<Abort>>;

pub(super) fn abort<T>(a: Abort) -> BodyResult<T> {
    Err(ConflictableTransactionError::Abort(a))
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Where the audit chain stands.
#[derive(Clone, Copy)]
pub(super) struct Head {
    pub next_seq: u64,
    pub last_mac: [u8; AUDIT_MAC_LEN],
}

/// The trees a write may touch.
#[derive(Clone)]
pub(super) struct Trees {
    pub keys: sled::Tree,
    pub audit: sled::Tree,
    pub by_key: sled::Tree,
    pub by_time: sled::Tree,
    pub meta: sled::Tree,
}

/// The trees a mutation body writes directly (audit events go through [`Stage::append_audit`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tree {
    Keys,
    Meta,
}

struct Tx<'a> {
    /// The key records this attempt wrote (id, encoded record), for the key index.
    key_writes: &'a RefCell<KeyWrites>,
    keys: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    by_key: &'a TransactionalTree,
    by_time: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl Tx<'_> {
    fn tree(&self, tree: Tree) -> &TransactionalTree {
        match tree {
            Tree::Keys => self.keys,
            Tree::Meta => self.meta,
        }
    }
}

/// MACs computed in this batch by sequence number, with the message they cover: a transaction
/// retried after a conflict reuses them instead of asking the HSM again.
type Seals = RefCell<HashMap<u64, (Vec<u8>, [u8; AUDIT_MAC_LEN])>>;

/// A staged write: tree, key, value.
type Write = (Tree, Vec<u8>, Vec<u8>);

/// Key records a transaction wrote: id, encoded record.
type KeyWrites = Vec<(Vec<u8>, Vec<u8>)>;

/// A sealed event ready to write: sequence number, stored value, target key, time index key.
type Sealed = (u64, Vec<u8>, Option<KeyId>, [u8; 8]);

/// A body's result kept for the reply: its output and its last audit sequence number.
type Outcome<T> = Option<Result<(T, Option<u64>), Abort>>;

/// One mutation's view of the transaction: reads see the batch's earlier mutations and this
/// one's staged writes; its writes and sealed events are applied only if the body succeeds.
pub(super) struct Stage<'a> {
    tx: &'a Tx<'a>,
    sealer: &'a dyn AuditSealer,
    seals: &'a Seals,
    first_seq: Cell<u64>,
    writes: RefCell<Vec<Write>>,
    events: RefCell<Vec<Sealed>>,
    prev_mac: Cell<[u8; AUDIT_MAC_LEN]>,
}

impl Stage<'_> {
    pub fn get(&self, tree: Tree, key: impl AsRef<[u8]>) -> BodyResult<Option<IVec>> {
        let key = key.as_ref();
        let staged = self.writes.borrow().iter().rev().find(|(t, k, _)| *t == tree && k == key).map(|w| w.2.clone());
        match staged {
            Some(value) => Ok(Some(value.into())),
            None => Ok(self.tx.tree(tree).get(key)?),
        }
    }

    pub fn insert(&self, tree: Tree, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.writes.borrow_mut().push((tree, key.as_ref().to_vec(), value.into()));
    }

    /// Seals `event` into the chain after those this mutation (and the batch before it) appended.
    /// If the HSM cannot seal it, this mutation is abandoned: no change without its audit event.
    pub fn append_audit(&self, event: &AuditEvent) -> BodyResult<()> {
        let seq = self.first_seq.get() + self.events.borrow().len() as u64;
        let bytes = codec::encode_event(event);
        let message = audit::chain_message(&self.prev_mac.get(), seq, &bytes);
        let memo = self.seals.borrow().get(&seq).filter(|(m, _)| *m == message).map(|(_, mac)| *mac);
        let mac = match memo {
            Some(mac) => mac,
            None => match self.sealer.seal(&message) {
                Ok(mac) => {
                    self.seals.borrow_mut().insert(seq, (message, mac));
                    mac
                }
                Err(e) => return abort(Abort::Store(StoreError::Unavailable(format!("sealing the audit event: {e}")))),
            },
        };
        let time = time_key(event.at);
        self.events.borrow_mut().push((seq, codec::encode_sealed(bytes, &mac), event.target, time));
        self.prev_mac.set(mac);
        Ok(())
    }

    /// Appends an event another node sealed (`value`: `codec::encode_sealed`'s output) at `seq`,
    /// after those this mutation (and the batch before it) appended. An event this copy already
    /// holds is skipped when `value` is the same and `Corrupt` when it differs; a gap, and a value
    /// that does not decode or is not sealed, are `Corrupt`: the copy never forks or has holes.
    pub fn append_sealed(&self, seq: u64, value: &[u8]) -> BodyResult<()> {
        let corrupt = |why: String| abort(Abort::Store(StoreError::Corrupt(why)));
        let next = self.first_seq.get() + self.events.borrow().len() as u64;
        if seq < next {
            let staged = seq.checked_sub(self.first_seq.get()).map(|i| self.events.borrow()[i as usize].1.clone());
            let held = match staged {
                Some(value) => Some(value),
                None => self.tx.audit.get(seq.to_be_bytes())?.map(|v| v.to_vec()),
            };
            return match held {
                Some(held) if held == value => Ok(()),
                Some(_) => corrupt(format!("replicated audit event {seq} differs from the one this copy holds")),
                None => corrupt(format!("replicated audit event {seq} is missing from this copy")),
            };
        }
        if seq > next {
            return corrupt(format!("replicated audit events skip from {next} to {seq}: the chain has a gap"));
        }
        let record = match codec::decode_audit(value) {
            Ok(record) => record,
            Err(e) => return corrupt(format!("replicated audit event {seq}: {e}")),
        };
        let Some(mac) = record.mac else {
            return corrupt(format!("replicated audit event {seq} is not sealed"));
        };
        let time = time_key(record.event.at);
        self.events.borrow_mut().push((seq, value.to_vec(), record.event.target, time));
        self.prev_mac.set(mac);
        Ok(())
    }

    /// Starts an empty copy of the chain after the cluster's checkpoint: event `seq` with `mac`
    /// is the last one before this copy's first. `Corrupt` unless the copy is empty.
    pub fn start_after_checkpoint(&self, seq: u64, mac: [u8; AUDIT_MAC_LEN]) -> BodyResult<()> {
        if self.first_seq.get() != 1
            || !self.events.borrow().is_empty()
            || self.tx.audit.get(1u64.to_be_bytes())?.is_some()
        {
            return abort(Abort::Store(StoreError::Corrupt(
                "only an empty audit copy can start at a checkpoint".into(),
            )));
        }
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(&mac);
        self.writes.borrow_mut().push((Tree::Meta, AUDIT_CHECKPOINT.to_vec(), value));
        self.first_seq.set(seq + 1);
        self.prev_mac.set(mac);
        Ok(())
    }

    /// Writes what was staged; returns the next sequence number and the last MAC after it.
    fn apply(self) -> BodyResult<(u64, [u8; AUDIT_MAC_LEN])> {
        for (tree, key, value) in self.writes.into_inner() {
            if tree == Tree::Keys {
                self.tx.key_writes.borrow_mut().push((key.clone(), value.clone()));
            }
            self.tx.tree(tree).insert(key, value)?;
        }
        let events = self.events.into_inner();
        for (seq, value, target, time) in &events {
            let seq_key = seq.to_be_bytes();
            self.tx.audit.insert(&seq_key, value.as_slice())?;
            if let Some(target) = target {
                self.tx.by_key.insert([target.as_bytes().as_slice(), &seq_key].concat(), &[])?;
            }
            self.tx.by_time.insert([time.as_slice(), &seq_key].concat(), &[])?;
        }
        Ok((self.first_seq.get() + events.len() as u64, self.prev_mac.get()))
    }
}

/// Index order for a time: big-endian nanoseconds, sign bit flipped so that order holds.
pub(super) fn time_key(t: std::time::SystemTime) -> [u8; 8] {
    ((codec::nanos(t) as u64) ^ (1 << 63)).to_be_bytes()
}

/// A committed mutation: its output, its last audit sequence number, and the flush ticket to
/// wait for before acknowledging it.
pub(super) struct Done<T> {
    pub out: T,
    pub last_seq: Option<u64>,
    pub ticket: u64,
}

/// A queued mutation, its output type erased.
trait Queued: Send {
    /// Runs the body on `stage`; `Ok(true)` if its writes are to be applied. An abort is kept
    /// for the reply.
    fn run(&self, stage: &Stage<'_>) -> BodyResult<bool>;
    /// Records the sequence number of this mutation's last event, once applied.
    fn applied(&self, last_seq: Option<u64>);
    /// Answers the caller: the batch committed with `ticket`, or failed.
    fn reply(self: Box<Self>, batch: Result<u64, StoreError>);
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<Done<T>, Abort>>;

struct Job<T, F> {
    body: F,
    outcome: RefCell<Outcome<T>>,
    reply: Reply<T>,
}

impl<T, F> Queued for Job<T, F>
where
    T: Send,
    F: Fn(&Stage<'_>) -> BodyResult<T> + Send,
{
    fn run(&self, stage: &Stage<'_>) -> BodyResult<bool> {
        let (outcome, ok) = match (self.body)(stage) {
            Ok(out) => (Ok((out, None)), true),
            Err(ConflictableTransactionError::Abort(a)) => (Err(a), false),
            Err(e) => return Err(e),
        };
        *self.outcome.borrow_mut() = Some(outcome);
        Ok(ok)
    }

    fn applied(&self, last_seq: Option<u64>) {
        if let Some(Ok((_, seq))) = self.outcome.borrow_mut().as_mut() {
            *seq = last_seq;
        }
    }

    fn reply(self: Box<Self>, batch: Result<u64, StoreError>) {
        let answer = match (batch, self.outcome.into_inner()) {
            (Err(e), _) => Err(Abort::Store(e)),
            (Ok(_), Some(Err(a))) => Err(a),
            (Ok(ticket), Some(Ok((out, last_seq)))) => Ok(Done { out, last_seq, ticket }),
            (Ok(_), None) => Err(Abort::Store(StoreError::Unavailable("the write did not run".into()))),
        };
        let _ = self.reply.send(answer);
    }
}

/// The handle callers submit through; dropping it stops the writer thread (after the queue
/// drains) and waits for it, so the database can be reopened right after.
pub(super) struct Writer {
    queue: Option<flume::Sender<Box<dyn Queued>>>,
    thread: Option<JoinHandle<()>>,
    /// The longest `drop` waits for the thread (a transaction sled never finishes is left behind).
    stop_within: Duration,
    /// The chain head the thread last committed.
    published: Arc<Mutex<Head>>,
}

struct State {
    trees: Trees,
    head: Head,
    /// `head` as of the last commit, for readers outside the write thread.
    published: Arc<Mutex<Head>>,
    sealer: Arc<dyn AuditSealer>,
    tickets: Tickets,
    /// Told of every key record a committed batch wrote.
    index: Arc<KeyIndex>,
}

impl Writer {
    pub fn start(
        trees: Trees,
        head: Head,
        sealer: Arc<dyn AuditSealer>,
        tickets: Tickets,
        stop_within: Duration,
        index: Arc<KeyIndex>,
    ) -> Self {
        let (queue, jobs) = flume::bounded(QUEUE);
        let published = Arc::new(Mutex::new(head));
        let mut state = State { trees, head, published: published.clone(), sealer, tickets, index };
        let thread = std::thread::Builder::new()
            .name("keyward-write".into())
            .spawn(move || {
                while let Ok(first) = jobs.recv() {
                    let mut batch = vec![first];
                    batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
                    state.commit(batch);
                }
            })
            .expect("spawning the write thread");
        Self { queue: Some(queue), thread: Some(thread), stop_within, published }
    }

    /// The chain head as of the last committed batch (durable once that batch's writes resolved).
    pub fn head(&self) -> Head {
        *self.published.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `body` for the next batch and waits until that batch committed (not until it is
    /// durable: wait for the returned ticket).
    pub async fn submit<T, F>(&self, body: F) -> Result<Done<T>, Abort>
    where
        F: Fn(&Stage<'_>) -> BodyResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let closed = || Abort::Store(StoreError::Unavailable("the store is closing".into()));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Box<dyn Queued> = Box::new(Job { body, outcome: RefCell::new(None), reply });
        self.queue.as_ref().ok_or_else(closed)?.send_async(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| Abort::Store(StoreError::Unavailable("the write was dropped".into())))?
    }

    /// Mutations waiting for the writer.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            join_within(t, self.stop_within, "the write thread");
        }
    }
}

impl State {
    /// Commits `batch` in one transaction and answers every mutation in it. A panic in a body
    /// drops the batch (its callers see UNAVAILABLE) and leaves the chain head as it was.
    fn commit(&mut self, batch: Vec<Box<dyn Queued>>) {
        let committed = std::panic::catch_unwind(AssertUnwindSafe(|| self.transaction(&batch)));
        match committed {
            Ok(Ok((head, key_writes))) => {
                self.index_keys(key_writes);
                self.head = head;
                *self.published.lock().unwrap_or_else(PoisonError::into_inner) = head;
                let ticket = self.tickets.issue();
                batch.into_iter().for_each(|job| job.reply(Ok(ticket)));
            }
            Ok(Err(e)) => batch.into_iter().for_each(|job| job.reply(Err(e.clone()))),
            Err(_) => tracing::error!("a store write panicked; its batch was not written"),
        }
    }

    /// Tells the key index of the records a committed batch wrote, in the order written.
    fn index_keys(&self, writes: KeyWrites) {
        for (id, value) in writes {
            match codec::decode_key(&value) {
                Ok(record) => self.index.put(&record),
                Err(e) => {
                    tracing::error!(error = %e, "a key record just written does not decode; the key index lacks it");
                    if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                        self.index.remove(KeyId::from_bytes(id));
                    }
                }
            }
        }
    }

    /// Commits `batch`; returns the new head and the key records written (id, encoded record).
    fn transaction(&self, batch: &[Box<dyn Queued>]) -> Result<(Head, KeyWrites), StoreError> {
        let seals = Seals::default();
        let key_writes = RefCell::new(KeyWrites::new());
        let t = &self.trees;
        (&t.keys, &t.audit, &t.by_key, &t.by_time, &t.meta)
            .transaction(|(keys, audit, by_key, by_time, meta)| {
                key_writes.borrow_mut().clear();
                let tx = Tx { key_writes: &key_writes, keys, audit, by_key, by_time, meta };
                let mut head = self.head;
                for job in batch {
                    let stage = Stage {
                        tx: &tx,
                        sealer: self.sealer.as_ref(),
                        seals: &seals,
                        first_seq: Cell::new(head.next_seq),
                        writes: RefCell::default(),
                        events: RefCell::default(),
                        prev_mac: Cell::new(head.last_mac),
                    };
                    if job.run(&stage)? {
                        let (next_seq, last_mac) = stage.apply()?;
                        let appended = next_seq != head.next_seq;
                        head = Head { next_seq, last_mac };
                        job.applied(appended.then_some(head.next_seq - 1));
                    }
                }
                if head.next_seq != self.head.next_seq {
                    let mut value = (head.next_seq - 1).to_be_bytes().to_vec();
                    value.extend_from_slice(&head.last_mac);
                    meta.insert(AUDIT_HEAD, value)?;
                }
                Ok(head)
            })
            .map(|head| (head, key_writes.take()))
            .map_err(|e: TransactionError<Abort>| match e {
                TransactionError::Storage(e) => unavailable(e),
                TransactionError::Abort(Abort::Store(e)) => e,
                TransactionError::Abort(Abort::Domain(e)) => unavailable(e),
            })
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
