//! The write combiner through the store's port: batched writes are each durable and audited,
//! and one mutation's failure never touches its neighbours in the same batch.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::{
    domain::{
        audit::{Actor, AuditAction, AuditEvent},
        error::Error,
        key::{Digest, KeyId, KeyRecord, MasterKeyVersion},
        ports::{AUDIT_MAC_LEN, AuditSealer, HsmError, Store, StoreError},
    },
    hsm::fake::FakeHsm,
    store::SledStore,
};

/// Seals with a fake HSM; can hold the writer inside a seal (so the next writes queue into one
/// batch) and refuse to seal any event about one key.
struct TestSealer {
    hsm: FakeHsm,
    hold: Mutex<bool>,
    held: std::sync::Condvar,
    holding: AtomicBool,
    refuse: Mutex<Option<KeyId>>,
}

impl TestSealer {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            hsm: FakeHsm::new(),
            hold: Mutex::new(false),
            held: std::sync::Condvar::new(),
            holding: AtomicBool::new(false),
            refuse: Mutex::new(None),
        })
    }

    fn release(&self) {
        *self.hold.lock().unwrap() = false;
        self.held.notify_all();
    }
}

impl AuditSealer for TestSealer {
    fn seal(&self, message: &[u8]) -> Result<[u8; AUDIT_MAC_LEN], HsmError> {
        let mut hold = self.hold.lock().unwrap();
        self.holding.store(*hold, Ordering::SeqCst);
        while *hold {
            hold = self.held.wait(hold).unwrap();
        }
        drop(hold);
        let refused = *self.refuse.lock().unwrap();
        if refused.is_some_and(|id| message.windows(16).any(|w| w == id.as_bytes().as_slice())) {
            return Err(HsmError::Unavailable("test token refuses this event".into()));
        }
        self.hsm.seal(message)
    }

    fn check(&self, message: &[u8], mac: &[u8; AUDIT_MAC_LEN]) -> Result<bool, HsmError> {
        self.hsm.check(message, mac)
    }
}

fn record(name: &str) -> KeyRecord {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    KeyRecord::new(KeyId::new_v7(), name.into(), "kw".into(), vec![], at, Digest::plain(MasterKeyVersion(1), [7; 32]))
}

fn event(action: AuditAction, target: KeyId) -> AuditEvent {
    AuditEvent {
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        actor: Actor::System("test".into()),
        action,
        target: Some(target),
        client_addr: None,
        reason: None,
        changes: Vec::new(),
        code: None,
    }
}

async fn answers<T: Send + 'static>(writes: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for w in writes {
        out.push(w.await.unwrap());
    }
    out
}

/// Holds the writer inside the seal of a first write, so that the next writes queue into one batch.
async fn hold_writer(store: &SledStore, sealer: &Arc<TestSealer>) -> tokio::task::JoinHandle<()> {
    *sealer.hold.lock().unwrap() = true;
    let first = record("first");
    let (s, ev) = (store.clone(), event(AuditAction::KeyCreated, first.id));
    let handle = tokio::spawn(async move { s.insert_key(first, ev).await.unwrap() });
    while !sealer.holding.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle
}

async fn wait_queued(store: &SledStore, n: usize) {
    while store.queued_writes() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_creates_are_all_durable_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = TestSealer::new();
    let store = SledStore::open(&dir.path().join("db"), sealer.clone()).unwrap();
    let records: Vec<KeyRecord> = (0..300).map(|i| record(&format!("k{i}"))).collect();
    let writes: Vec<_> = records
        .iter()
        .map(|r| {
            let (s, r) = (store.clone(), r.clone());
            tokio::spawn(async move { s.insert_key(r.clone(), event(AuditAction::KeyCreated, r.id)).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert_eq!(*store.audit_durable().borrow(), 300);
    store.close();
    drop(store);

    let store = SledStore::open(&dir.path().join("db"), sealer.clone()).unwrap();
    for r in &records {
        assert_eq!(store.get_key(r.id).unwrap().unwrap().name, r.name);
    }
    let report = store.verify_chain(1, None).unwrap();
    assert_eq!((report.first, report.last, report.checked, report.broken), (1, 300, 300, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_error_in_a_batch_fails_only_its_own_mutation() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = TestSealer::new();
    let store = SledStore::open(&dir.path().join("db"), sealer.clone()).unwrap();
    let existing = record("existing");
    store.insert_key(existing.clone(), event(AuditAction::KeyCreated, existing.id)).await.unwrap();

    let first = hold_writer(&store, &sealer).await;
    let (a, b) = (record("a"), record("b"));
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    let (ra, rb, id) = (a.clone(), b.clone(), existing.id);
    let insert_a = tokio::spawn(async move { s1.insert_key(ra.clone(), event(AuditAction::KeyCreated, ra.id)).await });
    wait_queued(&store, 1).await;
    let refused = tokio::spawn(async move {
        s2.update_key(id, |_| Err(Error::FailedPrecondition("refused by the domain".into()))).await.map(|_| ())
    });
    wait_queued(&store, 2).await;
    let missing =
        tokio::spawn(async move { s3.update_key(KeyId::new_v7(), |r| Ok(Some((r.clone(), None)))).await.map(|_| ()) });
    wait_queued(&store, 3).await;
    let insert_b = tokio::spawn(async move { s4.insert_key(rb.clone(), event(AuditAction::KeyCreated, rb.id)).await });
    wait_queued(&store, 4).await;
    sealer.release();
    first.await.unwrap();

    insert_a.await.unwrap().unwrap();
    assert_eq!(refused.await.unwrap().unwrap_err(), Error::FailedPrecondition("refused by the domain".into()));
    assert!(matches!(missing.await.unwrap().unwrap_err(), Error::NotFound(_)));
    insert_b.await.unwrap().unwrap();
    assert!(store.get_key(a.id).unwrap().is_some() && store.get_key(b.id).unwrap().is_some());
    let report = store.verify_chain(1, None).unwrap();
    assert_eq!((report.last, report.checked, report.broken), (4, 4, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_seal_fails_only_the_mutations_it_concerns_and_writes_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = TestSealer::new();
    let store = SledStore::open(&dir.path().join("db"), sealer.clone()).unwrap();
    let existing = record("existing");
    store.insert_key(existing.clone(), event(AuditAction::KeyCreated, existing.id)).await.unwrap();
    let (doomed, a, b) = (record("doomed"), record("a"), record("b"));
    *sealer.refuse.lock().unwrap() = Some(doomed.id);

    let first = hold_writer(&store, &sealer).await;
    let mut writes = Vec::new();
    for r in [a.clone(), doomed.clone(), b.clone()] {
        let s = store.clone();
        writes.push(tokio::spawn(async move { s.insert_key(r.clone(), event(AuditAction::KeyCreated, r.id)).await }));
        wait_queued(&store, writes.len()).await;
    }
    // An update of an existing key whose audit event cannot be sealed: the key stays as it was.
    let (s, id, target) = (store.clone(), existing.id, doomed.id);
    let renamed = tokio::spawn(async move {
        s.update_key(id, move |r| {
            let mut after = r.clone();
            after.name = "renamed".into();
            Ok(Some((after, Some(event(AuditAction::KeyUpdated, target)))))
        })
        .await
        .map(|_| ())
    });
    wait_queued(&store, 4).await;
    sealer.release();
    first.await.unwrap();

    let answers: Vec<Result<(), StoreError>> = answers(writes).await;
    assert!(answers[0].is_ok() && answers[2].is_ok(), "neighbours of the failed seal are written");
    assert!(matches!(answers[1], Err(StoreError::Unavailable(_))));
    assert!(matches!(renamed.await.unwrap().unwrap_err(), Error::Unavailable(_)));
    assert!(store.get_key(doomed.id).unwrap().is_none(), "no key without its audit event");
    assert_eq!(store.get_key(existing.id).unwrap().unwrap().name, "existing");
    assert!(store.get_key(a.id).unwrap().is_some() && store.get_key(b.id).unwrap().is_some());
    let report = store.verify_chain(1, None).unwrap();
    assert_eq!((report.last, report.checked, report.broken), (4, 4, None));
}

/// A flush that does not return while `stalled` is set (as sled 0.34's can after ENOSPC). It
/// writes nothing: these tests are about answers, not durability.
fn stallable_flush() -> (crate::store::flusher::FlushFn, Arc<AtomicBool>) {
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let flush = Box::new(move || {
        while flag.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(0)
    });
    (flush, stalled)
}

fn limits(write_timeout: Duration) -> crate::store::StoreLimits {
    crate::store::StoreLimits { min_free_bytes: 0, write_timeout }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_never_returns_answers_unavailable_within_the_write_timeout_and_reads_go_on() {
    // Long enough that the first, unstalled write is confirmed in time even on a loaded machine.
    const WRITE_TIMEOUT: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let (flush, stalled) = stallable_flush();
    let store =
        SledStore::open_with_flush(&dir.path().join("db"), TestSealer::new(), limits(WRITE_TIMEOUT), Some(flush))
            .unwrap();
    let existing = record("existing");
    store.insert_key(existing.clone(), event(AuditAction::KeyCreated, existing.id)).await.unwrap();
    assert!(store.writes_confirmed());

    stalled.store(true, Ordering::SeqCst);
    let doomed = record("doomed");
    let started = std::time::Instant::now();
    let answer = store.insert_key(doomed.clone(), event(AuditAction::KeyCreated, doomed.id)).await;
    let waited = started.elapsed();
    match answer {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("did not confirm the write in time"), "{why}"),
        other => panic!("a write whose flush never returned answered {other:?}"),
    }
    assert!(waited >= WRITE_TIMEOUT && waited < WRITE_TIMEOUT * 4, "answered after {waited:?}");
    assert!(!store.writes_confirmed(), "the store says it needs a restart");

    // Later writes are refused at once, not after another timeout; reads go on.
    let started = std::time::Instant::now();
    let later = record("later");
    let answer = store.insert_key(later.clone(), event(AuditAction::KeyCreated, later.id)).await;
    assert!(matches!(&answer, Err(StoreError::Unavailable(why)) if why.contains("restarted")), "{answer:?}");
    // "At once": well inside one more timeout, which a busy CI machine still leaves room for.
    assert!(started.elapsed() < WRITE_TIMEOUT / 2, "refused after {:?}", started.elapsed());
    assert_eq!(store.get_key(existing.id).unwrap().unwrap().name, "existing");
    stalled.store(false, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_stuck_in_its_transaction_answers_unavailable_within_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = TestSealer::new();
    let store =
        SledStore::open_with_flush(&dir.path().join("db"), sealer.clone(), limits(Duration::from_millis(300)), None)
            .unwrap();
    *sealer.hold.lock().unwrap() = true;
    let stuck = record("stuck");
    let started = std::time::Instant::now();
    let answer = store.insert_key(stuck.clone(), event(AuditAction::KeyCreated, stuck.id)).await;
    assert!(matches!(&answer, Err(StoreError::Unavailable(_))), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    assert!(!store.writes_confirmed());
    sealer.release();
}

/// The key index holds what the records hold: summaries of `store`'s records, by id.
fn index_matches_records(store: &SledStore) -> usize {
    let index = store.key_index().unwrap();
    let records: Vec<KeyRecord> = store.scan_keys(None).map(Result::unwrap).collect();
    assert_eq!(index.len(), records.len());
    for r in &records {
        assert_eq!(*index.get(r.id).unwrap(), crate::domain::key_index::KeySummary::of(r));
    }
    records.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_key_index_follows_committed_batches_only_and_reloads_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = TestSealer::new();
    let store = SledStore::open(&dir.path().join("db"), sealer.clone()).unwrap();
    let refused = record("refused");
    *sealer.refuse.lock().unwrap() = Some(refused.id);
    let held = hold_writer(&store, &sealer).await;
    let mut writes = Vec::new();
    for r in [record("a"), record("b"), refused.clone()] {
        let s = store.clone();
        writes.push(tokio::spawn(async move { s.insert_key(r.clone(), event(AuditAction::KeyCreated, r.id)).await }));
    }
    wait_queued(&store, 3).await;
    sealer.release();
    held.await.unwrap();
    let results = answers(writes).await;
    assert!(results[2].is_err(), "the write whose event cannot be sealed fails");
    assert!(store.key_index().unwrap().get(refused.id).is_none(), "a write that failed is not indexed");
    assert_eq!(index_matches_records(&store), 3);

    let renamed = store.scan_keys(None).next().unwrap().unwrap().id;
    store
        .update_key(renamed, |r| {
            let after = KeyRecord { name: "Renamed".into(), ..r.clone() };
            Ok(Some((after, Some(event(AuditAction::KeyUpdated, r.id)))))
        })
        .await
        .unwrap();
    assert_eq!(&*store.key_index().unwrap().get(renamed).unwrap().name_lower, "renamed");
    index_matches_records(&store);
    store.close();
    drop(store);

    let store = SledStore::open(&dir.path().join("db"), sealer).unwrap();
    assert_eq!(index_matches_records(&store), 3);
}
