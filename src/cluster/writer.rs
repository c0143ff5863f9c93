//! The cluster's write path: one task per node takes queued mutations, runs them against the
//! node's view, seals their audit events into the chain after the head they read, and commits
//! them with the key records in one etcd transaction that compares every revision read. A lost
//! compare re-reads what changed from etcd and runs the batch again; nothing is half-applied.
//! A mutation is answered once etcd committed it and the node's watch delivered it.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};

use super::{
    etcd_error,
    layout::Layout,
    stage::{Abort, Changes, Source, Stage},
    view::{Head, NodeView},
    within,
};
use crate::{
    domain::{
        audit,
        key::{KeyId, KeyRecord},
        ports::{AUDIT_MAC_LEN, AuditSealer, MasterState, StoreError},
    },
    metrics,
    store::{SealedEvent, SledStore, codec},
};

/// etcd's default `--max-txn-ops`: puts and compares per transaction, each.
pub const MAX_TXN_OPS: usize = 128;
/// Mutations taken into one batch, at most.
const MAX_JOBS: usize = 64;
/// Batches run again after lost compares before the mutations are refused.
const MAX_ATTEMPTS: u32 = 24;
/// The longest pause before running a batch again after a lost compare (jittered, growing).
const MAX_BACKOFF_MS: u32 = 64;
/// Mutations waiting for the writer, at most (callers wait beyond).
const QUEUE: usize = 4096;

/// A queued mutation, its output type erased.
trait Queued: Send {
    /// Runs the body; `true` if its changes are to be committed.
    fn run(&self, stage: &mut Stage<'_>) -> bool;
    fn reply(self: Box<Self>, committed: Result<(), StoreError>);
}

type Body<T> = Box<dyn Fn(&mut Stage<'_>) -> Result<T, Abort> + Send>;

struct Job<T> {
    body: Body<T>,
    outcome: RefCell<Option<Result<T, Abort>>>,
    reply: tokio::sync::oneshot::Sender<Result<T, Abort>>,
}

impl<T: Send> Queued for Job<T> {
    fn run(&self, stage: &mut Stage<'_>) -> bool {
        let outcome = (self.body)(stage);
        let ok = outcome.is_ok();
        *self.outcome.borrow_mut() = Some(outcome);
        ok
    }

    fn reply(self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.outcome.into_inner()) {
            (Err(e), _) => Err(Abort::Store(e)),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(Abort::Store(StoreError::Unavailable("the write did not run".into()))),
        };
        let _ = self.reply.send(answer);
    }
}

/// What the writer needs from its node.
pub struct WriterParts {
    pub kv: KvClient,
    pub layout: Layout,
    pub view: Arc<NodeView>,
    pub sealer: Arc<dyn AuditSealer>,
    pub request_timeout: Duration,
    /// This node's id, written into every event it seals.
    pub node_id: String,
    /// The node's own database (serving nodes; not `init`): a batch's events go into its audit
    /// copy before the batch is answered.
    pub local: Option<SledStore>,
}

/// The handle mutations are submitted through.
#[derive(Clone)]
pub struct Writer {
    queue: tokio::sync::mpsc::Sender<Box<dyn Queued>>,
}

impl Writer {
    /// Starts the writer task; it ends when every handle is dropped.
    pub fn start(parts: WriterParts) -> Self {
        let (queue, jobs) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(run(Arc::new(parts), jobs));
        Self { queue }
    }

    /// Queues `body` and waits until its batch committed in etcd (or failed).
    pub async fn submit<T, F>(&self, body: F) -> Result<T, Abort>
    where
        F: Fn(&mut Stage<'_>) -> Result<T, Abort> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Box<dyn Queued> = Box::new(Job { body: Box::new(body), outcome: RefCell::new(None), reply });
        self.queue.send(job).await.map_err(|_| Abort::Store(StoreError::Unavailable("the store is closing".into())))?;
        answer.await.map_err(|_| Abort::Store(StoreError::Unavailable("the write was dropped".into())))?
    }
}

async fn run(parts: Arc<WriterParts>, mut jobs: tokio::sync::mpsc::Receiver<Box<dyn Queued>>) {
    let mut carry: VecDeque<Box<dyn Queued>> = VecDeque::new();
    loop {
        if carry.is_empty() {
            match jobs.recv().await {
                Some(job) => carry.push_back(job),
                None => return,
            }
        }
        while carry.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => carry.push_back(job),
                Err(_) => break,
            }
        }
        commit(&parts, &mut carry).await;
    }
}

/// The node's view as a source: the first attempt of every batch reads it.
struct ViewSource<'a>(&'a NodeView);

impl Source for ViewSource<'_> {
    fn key(&self, id: KeyId) -> Result<Option<(KeyRecord, i64)>, StoreError> {
        Ok(self.0.key_with_rev(id))
    }
    fn master(&self) -> Result<Option<(MasterState, i64)>, StoreError> {
        Ok(self.0.master())
    }
    fn cluster(&self) -> i64 {
        self.0.cluster_rev()
    }
    fn head(&self) -> Head {
        self.0.head()
    }
}

/// Values read from etcd after a lost compare (the names a batch compared, the head, the master
/// state and the marker); other reads fall back to the view.
struct Fresh<'a> {
    values: HashMap<Vec<u8>, (Vec<u8>, i64)>,
    layout: &'a Layout,
    view: &'a NodeView,
    fetched: HashSet<Vec<u8>>,
}

impl Fresh<'_> {
    fn get(&self, name: &[u8]) -> Option<Option<&(Vec<u8>, i64)>> {
        self.fetched.contains(name).then(|| self.values.get(name))
    }
}

impl Source for Fresh<'_> {
    fn key(&self, id: KeyId) -> Result<Option<(KeyRecord, i64)>, StoreError> {
        match self.get(&self.layout.key(id)) {
            None => Ok(self.view.key_with_rev(id)),
            Some(None) => Ok(None),
            Some(Some((value, rev))) => Ok(Some((codec::decode_key(value)?, *rev))),
        }
    }
    fn master(&self) -> Result<Option<(MasterState, i64)>, StoreError> {
        match self.get(&self.layout.master()) {
            None => Ok(self.view.master()),
            Some(None) => Ok(None),
            Some(Some((value, rev))) => Ok(Some((codec::decode_master(value)?, *rev))),
        }
    }
    fn cluster(&self) -> i64 {
        match self.get(&self.layout.cluster()) {
            None => self.view.cluster_rev(),
            Some(found) => found.map_or(0, |(_, rev)| *rev),
        }
    }
    fn head(&self) -> Head {
        match self.get(&self.layout.audit_head()) {
            None => self.view.head(),
            Some(None) => Head::EMPTY,
            Some(Some((value, rev))) => Head::decode(value, *rev).unwrap_or(Head::EMPTY),
        }
    }
}

/// Commits the jobs at the front of `carry` that fit in one transaction, and answers them.
async fn commit(parts: &Arc<WriterParts>, carry: &mut VecDeque<Box<dyn Queued>>) {
    let mut fresh: Option<Fresh<'_>> = None;
    for attempt in 0..MAX_ATTEMPTS {
        let view_source = ViewSource(&parts.view);
        let source: &dyn Source = match &fresh {
            Some(f) => f,
            None => &view_source,
        };
        let (changes, taken, failed) = run_jobs(parts, source, carry);
        if let Some(job) = failed {
            job.reply(Err(StoreError::Unavailable("the change is too large for one etcd transaction".into())));
            return;
        }
        if changes.puts() == 0 && changes.compares.is_empty() {
            return answer(parts, carry.drain(..taken).collect(), Ok(()), 0); // Every job was refused.
        }
        let head = source.head();
        let sealed = match seal(parts, head, &changes).await {
            Ok(sealed) => sealed,
            Err(e) => return answer(parts, carry.drain(..taken).collect(), Err(e), 0),
        };
        let txn = transaction(parts, &changes, head, &sealed);
        let names: Vec<Vec<u8>> = changes.compares.keys().cloned().collect();
        match tokio::time::timeout(parts.request_timeout, parts.kv.clone().txn(txn)).await {
            Ok(Ok(response)) if response.succeeded() => {
                let rev = response.header().map_or(0, |h| h.revision());
                note_committed(parts, changes, sealed.last().map(|(seq, mac, _)| (*seq, *mac)), rev);
                let copied = copy_own_events(parts, sealed).await;
                return answer(parts, carry.drain(..taken).collect(), Ok(()), if copied { 0 } else { rev });
            }
            Ok(Ok(_lost_compare)) => {
                metrics::get().cluster().write_conflicts.inc();
                // Nodes writing the same records back off by different amounts, so that one wins.
                let ceiling = (1u32 << attempt.min(6)).min(MAX_BACKOFF_MS);
                let pause = getrandom::u32().unwrap_or(0) % (ceiling + 1);
                tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
                match fetch(parts, names).await {
                    Ok(values) => fresh = Some(values),
                    Err(e) => return answer(parts, carry.drain(..taken).collect(), Err(e), 0),
                }
            }
            Ok(Err(e)) => return answer(parts, carry.drain(..taken).collect(), Err(etcd_error(e)), 0),
            Err(_) => {
                let e = StoreError::Unavailable(format!(
                    "etcd did not commit the write within {} ms (no quorum?)",
                    parts.request_timeout.as_millis()
                ));
                return answer(parts, carry.drain(..taken).collect(), Err(e), 0);
            }
        }
    }
    let e = StoreError::Unavailable("too many concurrent writes to the same records; retry".into());
    let taken = carry.len().min(MAX_JOBS);
    answer(parts, carry.drain(..taken).collect(), Err(e), 0);
}

/// Runs the jobs at the front of `carry` while their changes fit in one transaction. Returns
/// the changes, how many jobs they cover, and a job that does not fit even alone.
fn run_jobs(
    parts: &WriterParts,
    source: &dyn Source,
    carry: &mut VecDeque<Box<dyn Queued>>,
) -> (Changes, usize, Option<Box<dyn Queued>>) {
    let mut batch = Changes::default();
    let mut taken = 0;
    for job in carry.iter() {
        let mut stage = Stage::new(source, &parts.layout, &batch);
        let ok = job.run(&mut stage);
        let mut own = stage.into_changes();
        if !ok {
            // A refusal stands on what it read (say, a key that does not exist): the transaction
            // compares those reads too, so a refusal from a view behind etcd is run again.
            own = Changes { compares: own.compares, ..Changes::default() };
        }
        if !batch.fits_with(&own, MAX_TXN_OPS - 1) {
            if taken == 0 {
                return (batch, 0, carry.pop_front());
            }
            break;
        }
        batch.absorb(own);
        taken += 1;
    }
    (batch, taken, None)
}

/// Sealed events: sequence number, MAC, stored value.
type Sealed = Vec<(u64, [u8; AUDIT_MAC_LEN], Vec<u8>)>;

/// Seals `changes.events` into the chain after `head`, in the HSM.
async fn seal(parts: &WriterParts, head: Head, changes: &Changes) -> Result<Sealed, StoreError> {
    if changes.events.is_empty() {
        return Ok(Vec::new());
    }
    let sealer = parts.sealer.clone();
    let node = Some(parts.node_id.as_str());
    let events: Vec<Vec<u8>> = changes.events.iter().map(|e| codec::encode_event_by(e, node)).collect();
    tokio::task::spawn_blocking(move || {
        let mut prev = head.mac;
        let mut sealed = Vec::with_capacity(events.len());
        for (i, bytes) in events.into_iter().enumerate() {
            let seq = head.seq + 1 + i as u64;
            let message = audit::chain_message(&prev, seq, &bytes);
            let mac =
                sealer.seal(&message).map_err(|e| StoreError::Unavailable(format!("sealing the audit event: {e}")))?;
            sealed.push((seq, mac, codec::encode_sealed(bytes, &mac)));
            prev = mac;
        }
        Ok(sealed)
    })
    .await
    .map_err(etcd_error)?
}

fn compare(name: Vec<u8>, rev: i64) -> Compare {
    if rev == 0 {
        Compare::create_revision(name, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(name, CompareOp::Equal, rev)
    }
}

fn transaction(parts: &WriterParts, changes: &Changes, head: Head, sealed: &Sealed) -> Txn {
    let layout = &parts.layout;
    let mut compares: Vec<Compare> = changes.compares.iter().map(|(name, rev)| compare(name.clone(), *rev)).collect();
    let mut puts = Vec::with_capacity(changes.puts().max(1));
    for record in changes.keys.values() {
        puts.push(TxnOp::put(layout.key(record.id), codec::encode_key(record), None));
    }
    if let Some(master) = &changes.master {
        puts.push(TxnOp::put(layout.master(), codec::encode_master(master), None));
    }
    if let Some(marker) = &changes.marker {
        puts.push(TxnOp::put(layout.cluster(), marker.clone(), None));
    }
    if let Some((last, mac, _)) = sealed.last() {
        compares.push(compare(layout.audit_head(), head.rev));
        for (seq, _, value) in sealed {
            puts.push(TxnOp::put(layout.audit_event(*seq), value.clone(), None));
        }
        let new_head = Head { seq: *last, mac: *mac, rev: 0 };
        puts.push(TxnOp::put(layout.audit_head(), new_head.encode(), None));
    }
    if puts.is_empty() {
        // Only refusals: the compares are the whole point, and etcd serves a transaction without
        // operations as a *serializable* read, from whichever member answers, possibly behind the
        // leader (`isTxnSerializable` holds for empty operation lists). One linearizable read
        // makes etcd evaluate the compares on current state.
        puts.push(TxnOp::get(layout.cluster(), Some(GetOptions::new().with_count_only())));
    }
    Txn::new().when(compares).and_then(puts)
}

/// Puts what was committed at `rev` into the node's view at once (its own next batch reads it).
fn note_committed(parts: &WriterParts, changes: Changes, last: Option<(u64, [u8; AUDIT_MAC_LEN])>, rev: i64) {
    for record in changes.keys.into_values() {
        parts.view.put_key(record, rev);
    }
    if let Some(master) = changes.master {
        parts.view.put_master(master, rev);
    }
    if changes.marker.is_some() {
        parts.view.set_cluster_rev(rev);
    }
    if let Some((seq, mac)) = last {
        parts.view.put_head(Head { seq, mac, rev });
    }
}

/// Appends a committed batch's events to the node's own audit copy when they come next in it
/// (the watch delivers them again later: identical events are skipped). `false` when they do
/// not (events of another node come first, still on their way): the watch brings them all.
async fn copy_own_events(parts: &WriterParts, sealed: Sealed) -> bool {
    let Some(local) = &parts.local else { return true };
    let Some(first) = sealed.first().map(|(seq, _, _)| *seq) else { return true };
    if local.audit_head().0 + 1 != first {
        return false;
    }
    let events = sealed.into_iter().map(|(seq, _, value)| SealedEvent { seq, value }).collect();
    local.append_replicated(events).await.is_ok()
}

/// Answers `jobs`; after a commit at `rev` (0: nothing to wait for), once the node's watch
/// delivered it (so the node's own reads, the audit trail's included, show the change), for at
/// most the request timeout.
fn answer(parts: &Arc<WriterParts>, jobs: Vec<Box<dyn Queued>>, result: Result<(), StoreError>, rev: i64) {
    if result.is_err() || parts.local.is_none() || parts.view.applied() >= rev {
        jobs.into_iter().for_each(|job| job.reply(result.clone()));
        return;
    }
    let parts = parts.clone();
    tokio::spawn(async move {
        if !parts.view.wait_applied(rev, parts.request_timeout).await {
            tracing::warn!(revision = rev, "the watch did not deliver a committed write in time; answering anyway");
        }
        jobs.into_iter().for_each(|job| job.reply(Ok(())));
    });
}

/// Reads `names`, the audit head, the master state and the marker from etcd (linearizable).
async fn fetch<'a>(parts: &'a WriterParts, mut names: Vec<Vec<u8>>) -> Result<Fresh<'a>, StoreError> {
    let layout = &parts.layout;
    names.extend([layout.audit_head(), layout.master(), layout.cluster()]);
    names.sort();
    names.dedup();
    let mut values = HashMap::new();
    for chunk in names.chunks(MAX_TXN_OPS) {
        let gets: Vec<TxnOp> = chunk.iter().map(|name| TxnOp::get(name.clone(), None)).collect();
        let response = within(parts.request_timeout, "a read", parts.kv.clone().txn(Txn::new().and_then(gets))).await?;
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                for kv in get.kvs() {
                    values.insert(kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision()));
                }
            }
        }
    }
    let fetched = names.into_iter().collect();
    Ok(Fresh { values, layout, view: &parts.view, fetched })
}
