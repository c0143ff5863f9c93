//! A copy of the chain built from events another store sealed: same head, same answers, and no
//! fork or hole accepted.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::SealedEvent;
use crate::{
    domain::{
        audit::{Actor, AuditAction, AuditEvent, AuditQuery},
        key::{Digest, KeyId, KeyRecord, MasterKeyVersion},
        ports::{AuditSealer, Store, StoreError},
    },
    hsm::fake::FakeHsm,
    store::{SledStore, codec},
};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn record(name: &str) -> KeyRecord {
    KeyRecord::new(
        KeyId::new_v7(),
        name.into(),
        "kw".into(),
        vec![],
        at(0),
        Digest::plain(MasterKeyVersion(1), [7; 32]),
    )
}

fn event(action: AuditAction, target: KeyId, secs: u64) -> AuditEvent {
    AuditEvent {
        at: at(secs),
        actor: Actor::System("test".into()),
        action,
        target: Some(target),
        client_addr: None,
        reason: None,
        changes: Vec::new(),
        code: None,
    }
}

/// A store that seals its own events (the node that wrote them) and an empty copy checking with
/// the same audit key; the original holds five events about keys `a` and `b`, one per second.
struct Pair {
    _dir: tempfile::TempDir,
    sealer: Arc<dyn AuditSealer>,
    original: SledStore,
    copy: SledStore,
    copy_path: std::path::PathBuf,
    a: KeyId,
    b: KeyId,
}

async fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let sealer: Arc<dyn AuditSealer> = Arc::new(FakeHsm::new());
    let original = SledStore::open(&dir.path().join("original"), sealer.clone()).unwrap();
    let copy_path = dir.path().join("copy");
    let copy = SledStore::open(&copy_path, sealer.clone()).unwrap();
    let (a, b) = (record("a"), record("b"));
    let (a_id, b_id) = (a.id, b.id);
    original.insert_key(a, event(AuditAction::KeyCreated, a_id, 1)).await.unwrap();
    original.insert_key(b, event(AuditAction::KeyCreated, b_id, 2)).await.unwrap();
    original
        .append_events(vec![event(AuditAction::KeyUpdated, a_id, 3), event(AuditAction::KeyUpdated, b_id, 4)])
        .await
        .unwrap();
    original.append_events(vec![event(AuditAction::KeyRevoked, a_id, 5)]).await.unwrap();
    Pair { _dir: dir, sealer, original, copy, copy_path, a: a_id, b: b_id }
}

/// The events `store` holds, as it stores them.
fn sealed(store: &SledStore) -> Vec<SealedEvent> {
    store
        .raw_tree("audit")
        .iter()
        .map(|entry| {
            let (k, v) = entry.unwrap();
            SealedEvent { seq: u64::from_be_bytes(k.as_ref().try_into().unwrap()), value: v.to_vec() }
        })
        .collect()
}

fn seqs(query: AuditQuery, store: &SledStore) -> Vec<u64> {
    let (found, _) = store.query_audit(&query, None, 100, 1000).unwrap();
    found.into_iter().map(|e| e.seq).collect()
}

fn chain_of(store: &SledStore) -> (u64, u64, u64, Option<(u64, String)>) {
    let report = store.verify_chain(1, None).unwrap();
    (report.first, report.last, report.checked, report.broken)
}

#[tokio::test]
async fn events_replicated_in_batches_make_the_same_chain_found_by_key_and_by_time() {
    let p = pair().await;
    let events = sealed(&p.original);
    assert_eq!(events.len(), 5);
    assert_eq!(p.copy.audit_head(), (0, [0; 32]), "an empty copy");

    p.copy.append_replicated(events[..3].to_vec()).await.unwrap();
    assert_eq!(*p.copy.audit_durable().borrow(), 3);
    p.copy.append_replicated(events[..3].to_vec()).await.unwrap(); // the same batch again
    p.copy.append_replicated(events[1..].to_vec()).await.unwrap(); // overlapping the first
    assert_eq!(*p.copy.audit_durable().borrow(), 5);

    assert_eq!(chain_of(&p.copy), (1, 5, 5, None));
    assert_eq!(p.copy.audit_head(), p.original.audit_head());
    assert_eq!(p.copy.audit_head().0, 5);
    assert_eq!(sealed(&p.copy), events, "the copy stores the very same bytes");
    assert_eq!(p.copy.audit_after(0, 100).unwrap(), p.original.audit_after(0, 100).unwrap());
    assert_eq!(p.copy.audit_after(3, 100).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);

    let by_key = |key| AuditQuery { key: Some(key), ..AuditQuery::default() };
    assert_eq!(seqs(by_key(p.a), &p.copy), [1, 3, 5]);
    assert_eq!(seqs(by_key(p.b), &p.copy), [2, 4]);
    let by_time = AuditQuery { since: Some(at(2)), until: Some(at(4)), ..AuditQuery::default() };
    assert_eq!(seqs(by_time.clone(), &p.copy), [2, 3]);
    assert_eq!(seqs(AuditQuery { newest_first: true, ..by_time }, &p.copy), [3, 2]);
}

#[tokio::test]
async fn a_gap_a_changed_event_or_an_undecodable_one_is_refused_and_writes_nothing() {
    let p = pair().await;
    let events = sealed(&p.original);
    p.copy.append_replicated(events[..2].to_vec()).await.unwrap();
    let head = p.copy.audit_head();

    let gap = p.copy.append_replicated(events[3..].to_vec()).await;
    assert!(matches!(&gap, Err(StoreError::Corrupt(why)) if why.contains("gap")), "{gap:?}");

    // Event 2 again, but with another event's content and MAC, behind a valid event 3.
    let changed = SealedEvent { seq: 2, value: events[0].value.clone() };
    let forked = p.copy.append_replicated(vec![events[2].clone(), changed]).await;
    assert!(matches!(&forked, Err(StoreError::Corrupt(why)) if why.contains("differs")), "{forked:?}");

    let garbage = p.copy.append_replicated(vec![SealedEvent { seq: 3, value: vec![2, 0xff, 0xff] }]).await;
    assert!(matches!(&garbage, Err(StoreError::Corrupt(_))), "{garbage:?}");
    let unsealed = codec::decode_audit(&events[2].value).unwrap().event_bytes;
    let not_sealed = p.copy.append_replicated(vec![SealedEvent { seq: 3, value: unsealed }]).await;
    assert!(matches!(&not_sealed, Err(StoreError::Corrupt(why)) if why.contains("not sealed")), "{not_sealed:?}");

    assert_eq!(p.copy.audit_head(), head, "nothing of a refused batch is written");
    assert_eq!(sealed(&p.copy), events[..2]);
    assert_eq!(*p.copy.audit_durable().borrow(), 2);
    assert_eq!(chain_of(&p.copy), (1, 2, 2, None));
    p.copy.append_replicated(events[2..].to_vec()).await.unwrap();
    assert_eq!(chain_of(&p.copy), (1, 5, 5, None));
}

#[tokio::test]
async fn a_reopened_copy_keeps_its_head_and_chains_on_from_it() {
    let p = pair().await;
    let events = sealed(&p.original);
    p.copy.append_replicated(events[..4].to_vec()).await.unwrap();
    let head = p.copy.audit_head();
    p.copy.close();
    drop(p.copy);

    let copy = SledStore::open(&p.copy_path, p.sealer.clone()).unwrap();
    assert_eq!(copy.audit_head(), head);
    assert_eq!(*copy.audit_durable().borrow(), 4);
    copy.append_replicated(events[3..].to_vec()).await.unwrap();
    assert_eq!(copy.audit_head(), p.original.audit_head());
    // An event sealed by the copy itself chains on from the replicated head.
    copy.append_events(vec![event(AuditAction::KeyUpdated, p.b, 6)]).await.unwrap();
    assert_eq!(copy.audit_head().0, 6);
    assert_eq!(chain_of(&copy), (1, 6, 6, None));
}

#[tokio::test]
async fn a_copy_started_at_a_checkpoint_checks_the_chain_from_there_and_keeps_it_after_reopening() {
    let p = pair().await;
    let events = sealed(&p.original);
    let mac_of_2 = codec::decode_audit(&events[1].value).unwrap().mac.unwrap();
    p.copy.start_after_checkpoint(2, mac_of_2).await.unwrap();
    assert_eq!(p.copy.audit_head(), (2, mac_of_2));
    let gap = p.copy.append_replicated(vec![events[3].clone()]).await.unwrap_err();
    assert!(matches!(gap, StoreError::Corrupt(_)), "{gap}");
    p.copy.append_replicated(events[2..].to_vec()).await.unwrap();
    assert_eq!(chain_of(&p.copy), (3, 5, 3, None));
    assert_eq!(p.copy.audit_head(), p.original.audit_head());

    // A wrong checkpoint MAC breaks the first event after it.
    let dir = tempfile::tempdir().unwrap();
    let forged = SledStore::open(&dir.path().join("forged"), p.sealer.clone()).unwrap();
    forged.start_after_checkpoint(2, [9; 32]).await.unwrap();
    forged.append_replicated(events[2..].to_vec()).await.unwrap();
    assert_eq!(chain_of(&forged).3.map(|(seq, _)| seq), Some(3));

    // Only an empty copy starts at a checkpoint; a reopened one keeps where it began.
    let refused = p.copy.start_after_checkpoint(4, [0; 32]).await.unwrap_err();
    assert!(matches!(refused, StoreError::Corrupt(_)), "{refused}");
    drop(p.copy);
    let reopened = SledStore::open(&p.copy_path, p.sealer.clone()).unwrap();
    assert_eq!(reopened.audit_checkpoint().unwrap(), Some((2, mac_of_2)));
    assert_eq!(chain_of(&reopened), (3, 5, 3, None));
}
