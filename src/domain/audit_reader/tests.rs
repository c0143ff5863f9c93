//! Use-case tests of the audit trail: the chain catches any edited, deleted, swapped or cut
//! event; a mutation whose audit event cannot be sealed does not happen; queries page through
//! the indexes.

use crate::domain::audit::{AuditQuery, ChainReport};
use crate::domain::testing::*;

impl Fixture {
    async fn chain(&self) -> ChainReport {
        self.audit.verify_chain(&self.root, 0, 0).await.unwrap()
    }

    /// A trail of `n` events besides init's: creates and revokes.
    async fn trail(&self, n: usize) -> Vec<CreatedKey> {
        let mut made = Vec::new();
        for i in 0..n {
            made.push(self.create(&format!("k{i}"), &[]).await);
        }
        made
    }

    fn audit_tree(&self) -> sled::Tree {
        self.store.inner.raw_tree("audit")
    }
}

#[tokio::test]
async fn an_untouched_chain_verifies_end_to_end_and_in_ranges() {
    let f = fixture().await;
    f.trail(5).await;
    let r = f.chain().await;
    assert_eq!((r.first, r.last, r.checked, r.unsealed, r.broken.clone()), (1, 6, 6, 0, None), "{r:?}");
    let part = f.audit.verify_chain(&f.root, 3, 5).await.unwrap();
    assert_eq!((part.first, part.last, part.checked, part.broken), (3, 5, 3, None));
}

#[tokio::test]
async fn an_edited_event_is_found_by_its_sequence_number() {
    let f = fixture().await;
    f.trail(5).await;
    let tree = f.audit_tree();
    let seq = 4u64.to_be_bytes();
    let mut record = crate::store::codec::decode_audit(&tree.get(seq).unwrap().unwrap()).unwrap();
    record.event.reason = Some("nothing to see".into());
    let forged =
        crate::store::codec::encode_sealed(crate::store::codec::encode_event(&record.event), &record.mac.unwrap());
    tree.insert(seq, forged).unwrap();
    let (at, why) = f.chain().await.broken.unwrap();
    assert_eq!(at, 4, "{why}");
}

#[tokio::test]
async fn deleted_swapped_and_cut_events_are_found() {
    let f = fixture().await;
    f.trail(6).await;
    let tree = f.audit_tree();
    let key = |n: u64| n.to_be_bytes();

    let three = tree.remove(key(3)).unwrap().unwrap();
    assert_eq!(f.chain().await.broken.unwrap().0, 3, "a deleted event");
    tree.insert(key(3), three).unwrap();
    assert_eq!(f.chain().await.broken, None, "put back, the chain holds again");

    let (two, five) = (tree.get(key(2)).unwrap().unwrap(), tree.get(key(5)).unwrap().unwrap());
    tree.insert(key(2), five.clone()).unwrap();
    tree.insert(key(5), two.clone()).unwrap();
    assert_eq!(f.chain().await.broken.unwrap().0, 2, "swapped events");
    tree.insert(key(2), two).unwrap();
    tree.insert(key(5), five).unwrap();

    tree.remove(key(7)).unwrap();
    let (at, why) = f.chain().await.broken.unwrap();
    assert_eq!(at, 7, "the last event removed: {why}");
    assert!(why.contains("cut short"), "{why}");
}

#[tokio::test]
async fn a_mutation_whose_audit_event_cannot_be_sealed_does_not_happen() {
    let f = fixture().await;
    let k = f.create("victim", &[]).await;
    let events = f.store.audit_after(0, 100).unwrap().len();
    f.hsm.seal_fails.store(true, std::sync::atomic::Ordering::SeqCst);
    let ctx = RequestContext::default();
    let err = f.keys.revoke(&f.root, &k.record.id.to_string(), "x", &ctx).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let err = f.keys.create(&f.root, named("never", &[]), &ctx).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    f.hsm.seal_fails.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(f.store.get_key(k.record.id).unwrap().unwrap().state, KeyState::Active, "not revoked");
    assert_eq!(f.store.audit_after(0, 100).unwrap().len(), events, "no event either");
    let names: Vec<_> = f.store.scan_keys(None).map(|r| r.unwrap().name).collect();
    assert!(!names.contains(&"never".to_string()), "no key was created");
    assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::Valid);
    f.keys.revoke(&f.root, &k.record.id.to_string(), "x", &ctx).await.unwrap();
    assert_eq!(f.chain().await.broken, None, "the chain continues where it was");
}

#[tokio::test]
async fn queries_page_through_one_keys_events_newest_first() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let made = f.trail(3).await;
    let id = made[1].record.id;
    for i in 0..4 {
        let mut patch = KeyPatch { mask: strings(&["name"]), ..Default::default() };
        patch.name = format!("renamed {i}");
        f.keys.update(&f.root, &id.to_string(), patch, &ctx).await.unwrap();
    }
    let q = AuditQuery { key: Some(id), newest_first: true, ..Default::default() };
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = f.audit.query_events(&f.root, &q, 2, &token).unwrap();
        seen.extend(page);
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    let actions: Vec<_> = seen.iter().map(|e| e.event.action).collect();
    assert_eq!(actions, [vec![AuditAction::KeyUpdated; 4], vec![AuditAction::KeyCreated]].concat());
    assert!(seen.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert!(seen.iter().all(|e| e.event.target == Some(id)));
    let updates = AuditQuery { action: Some(AuditAction::KeyUpdated), ..Default::default() };
    assert_eq!(f.audit.query_events(&f.root, &updates, 100, "").unwrap().0.len(), 4);
    let later = AuditQuery { since: Some(f.clock.now() + Duration::from_secs(1)), ..Default::default() };
    assert!(f.audit.query_events(&f.root, &later, 100, "").unwrap().0.is_empty());
    let nobody = f.create("nobody", &[]).await;
    let nobody = f.auth.authenticate(Some(nobody.key.expose()), &ctx).await.unwrap();
    assert!(matches!(f.audit.query_events(&nobody, &q, 10, ""), Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn refused_calls_are_audited_grouped_by_source_and_code() {
    let f = fixture().await;
    let from = |ip: &str| RequestContext { client_addr: Some(format!("{ip}:4000").parse().unwrap()) };
    let weak = f.create("weak", &["keyward:verify"]).await;
    let wrong = key_format::render("kw", weak.record.id, &crate::domain::secret::Secret::from_bytes([9; 32]));
    for _ in 0..3 {
        assert!(f.auth.authenticate(Some(wrong.expose()), &from("10.0.0.66")).await.is_err());
    }
    assert!(f.auth.authenticate(None, &from("10.0.0.67")).await.is_err());
    let caller = f.auth.authenticate(Some(weak.key.expose()), &from("10.0.0.68")).await.unwrap();
    assert!(f.keys.get(&caller, &weak.record.id.to_string()).is_err());
    assert_eq!(f.auth.flush_auth_failures().await.unwrap(), 3);
    assert_eq!(f.auth.flush_auth_failures().await.unwrap(), 0, "written once");

    let query = |code: &str| AuditQuery { code: Some(code.into()), ..Default::default() };
    let (unauth, _) = f.audit.query_events(&f.root, &query("UNAUTHENTICATED"), 10, "").unwrap();
    let summary: Vec<_> = unauth
        .iter()
        .map(|e| (e.event.client_addr.clone().unwrap(), e.event.target, e.event.reason.clone().unwrap()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("10.0.0.66".into(), Some(weak.record.id), "3 calls refused: invalid credential".into()),
            ("10.0.0.67".into(), None, "1 call refused: missing credential: send `authorization: Bearer <key>`".into()),
        ]
    );
    let (denied, _) = f.audit.query_events(&f.root, &query("PERMISSION_DENIED"), 10, "").unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].event.actor, crate::domain::audit::Actor::Key(weak.record.id));
    assert_eq!(denied[0].event.reason.as_deref(), Some("1 call refused: needs the `keyward:keys:read` permission"));
    assert_eq!(f.chain().await.broken, None);
}
