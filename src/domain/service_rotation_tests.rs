//! Use-case tests of rotation: RotateKey's successor, and master key rotation with wrapped
//! digests, lazy and batched re-digest, and retirement.

use super::*;
use crate::domain::{
    audit::Actor,
    master::MasterStatus,
    rotation::{MigrationConfig, RotationConfig},
};

fn small_batches() -> KeysConfig {
    KeysConfig { migration: MigrationConfig { batch: 2, concurrency: 2, pause: Duration::ZERO }, ..Default::default() }
}

impl Fixture {
    fn status(&self) -> MasterStatus {
        self.keys.master_status(&self.root, true).unwrap()
    }

    async fn migrate_all(&self) -> usize {
        let mut batches = 1;
        while self.keys.migrate_batch().await.unwrap() {
            batches += 1;
        }
        batches
    }

    /// Waits for the background re-digests a verification starts.
    async fn settle(&self) {
        for _ in 0..200 {
            if self.keys.redigesting_now() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("lazy re-digests did not finish");
    }

    fn actions(&self) -> Vec<AuditAction> {
        self.store.audit_after(0, 1000).unwrap().into_iter().map(|e| e.event.action).collect()
    }
}

const V1: MasterKeyVersion = MasterKeyVersion(1);
const V2: MasterKeyVersion = MasterKeyVersion(2);

#[tokio::test]
async fn a_rotated_successor_copies_the_key_and_the_old_one_overlaps() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let mut new = named("billing", &["billing:*"]);
    new.expires_at = Some(f.clock.now() + Duration::from_secs(1000));
    new.remaining = Some(40);
    new.metadata = [("team".to_string(), "pay".to_string())].into();
    let old = f.keys.create(&f.root, new, &ctx).await.unwrap();
    f.clock.advance(Duration::from_secs(100));
    let rotated =
        f.keys.rotate(&f.root, &old.record.id.to_string(), Some(Duration::from_secs(60)), &ctx).await.unwrap();
    let (new, prev) = (&rotated.record, &rotated.previous);
    assert_ne!(new.id, old.record.id);
    assert_eq!((new.name.as_str(), &new.scopes, &new.metadata), ("billing", &old.record.scopes, &old.record.metadata));
    assert_eq!(new.quota.map(|q| q.remaining), Some(40));
    assert_eq!(new.expires_at, Some(f.clock.now() + Duration::from_secs(1000)), "the same lifetime, from now");
    assert_eq!((new.rotated_from, prev.rotated_to), (Some(old.record.id), Some(new.id)));
    assert_eq!(prev.state, KeyState::Rotated);
    assert_eq!(prev.rotation_deadline, Some(f.clock.now() + Duration::from_secs(60)));

    let v = f.verify_full_rotation(old.key.expose()).await;
    assert_eq!((v.code, v.rotation.pending), (VerifyCode::Valid, true));
    assert!(!f.verify_full_rotation(rotated.key.expose()).await.rotation.pending);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.code(old.key.expose(), &[]).await, VerifyCode::Expired);
    assert_eq!(f.code(rotated.key.expose(), &[]).await, VerifyCode::Valid);
    let actions = f.actions();
    assert_eq!(&actions[actions.len() - 2..], &[AuditAction::KeyRotated, AuditAction::KeyCreated]);
    let again = f.keys.rotate(&f.root, &old.record.id.to_string(), None, &ctx).await.unwrap_err();
    assert!(matches!(again, Error::FailedPrecondition(_)), "{again:?}");
}

impl Fixture {
    async fn verify_full_rotation(&self, key: &str) -> Verification {
        self.keys.verify(&self.root, req(key, "", &[])).await.unwrap()
    }
}

#[tokio::test]
async fn master_rotation_wraps_old_digests_then_each_verification_makes_it_plain() {
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(f.create(&format!("svc{i}"), &[]).await);
    }
    let state = f.keys.rotate_master(&f.root, &ctx).await.unwrap();
    assert_eq!(state.current, V2);
    assert!(f.hsm.has(V2));
    let fresh = f.create("fresh", &[]).await;
    assert!(fresh.record.digest.is_plain_under(V2), "new digests use the new version at once");
    let busy = f.keys.rotate_master(&f.root, &ctx).await.unwrap_err();
    assert!(matches!(busy, Error::FailedPrecondition(_)), "one rotation at a time: {busy:?}");

    // One batch: a checkpoint is recorded with the progress.
    assert!(f.keys.migrate_batch().await.unwrap());
    let checkpoint = f.store.master().unwrap().unwrap().migration.unwrap();
    assert_eq!(checkpoint.to, V2);
    assert!(checkpoint.after.is_some());
    // The rest (7 keys with root and fresh, batches of 2).
    f.migrate_all().await;
    let status = f.status();
    assert!(status.state.migration.is_none());
    assert_eq!(status.keys_pending, 0, "every key now needs v2");
    assert_eq!(status.keys_using[&V1], 6, "five old keys and root are wrapped: they still need v1");
    for k in &old {
        let stored = f.store.get_key(k.record.id).unwrap().unwrap().digest;
        assert_eq!((stored.version, stored.wrapped.clone()), (V2, vec![V1]));
    }
    assert_eq!(*f.actions().last().unwrap(), AuditAction::MasterMigrated);

    // Wrapped digests verify; the first success replaces them with plain v2 ones.
    for k in &old {
        assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::Valid);
    }
    f.settle().await;
    for k in &old {
        assert!(f.store.get_key(k.record.id).unwrap().unwrap().digest.is_plain_under(V2));
        assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::Valid);
    }
    let key = old[0].key.expose();
    let (head, last) = key.split_at(key.len() - 1);
    let wrong = format!("{head}{}", if last == "x" { "y" } else { "x" });
    assert_eq!(f.code(&wrong, &[]).await, VerifyCode::Invalid);
}

#[tokio::test]
async fn retiring_is_refused_while_a_live_key_needs_the_version() {
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    let used = f.create("used", &[]).await;
    let idle = f.create("idle", &[]).await;
    let gone = f.create("gone", &[]).await;
    f.keys.revoke(&f.root, &gone.record.id.to_string(), "", &ctx).await.unwrap();
    let replaced = f.create("replaced", &[]).await;
    let zero = Some(Duration::ZERO);
    let successor = f.keys.rotate(&f.root, &replaced.record.id.to_string(), zero, &ctx).await.unwrap();
    f.keys.rotate_master(&f.root, &ctx).await.unwrap();
    let current = f.keys.retire_master(&f.root, V2, &ctx).await.unwrap_err();
    assert!(matches!(current, Error::FailedPrecondition(_)), "the current version: {current:?}");
    f.migrate_all().await;
    assert_eq!(f.code(used.key.expose(), &[]).await, VerifyCode::Valid);
    assert_eq!(f.code(successor.key.expose(), &[]).await, VerifyCode::Valid);
    // A cached caller whose digest is not plain under v2 is proven again, and so migrated.
    f.keys.authenticate(Some(&f.root_key), &ctx).await.unwrap();
    f.settle().await;
    let refused = f.keys.retire_master(&f.root, V1, &ctx).await.unwrap_err();
    let Error::FailedPrecondition(why) = &refused else { panic!("{refused:?}") };
    assert!(
        why.starts_with("1 keys still need master key v1"),
        "only the idle key: not the revoked one, nor the rotated one past its overlap: {why}"
    );
    assert!(f.hsm.has(V1));

    f.keys.revoke(&f.root, &idle.record.id.to_string(), "", &ctx).await.unwrap();
    let state = f.keys.retire_master(&f.root, V1, &ctx).await.unwrap();
    assert!(state.version(V1).unwrap().retired_at.is_some());
    assert!(!f.hsm.has(V1), "destroyed in the HSM");
    assert_eq!(*f.actions().last().unwrap(), AuditAction::MasterRetired);
    // A revoked key whose digest needed v1 is just invalid now: no HSM error.
    assert_eq!(f.code(gone.key.expose(), &[]).await, VerifyCode::Invalid);
    assert_eq!(f.code(used.key.expose(), &[]).await, VerifyCode::Valid);
    f.keys.self_test().await.expect("the self-test skips retired versions");
    f.keys.retire_master(&f.root, V1, &ctx).await.expect("retiring again is harmless");
    let unknown = f.keys.retire_master(&f.root, MasterKeyVersion(9), &ctx).await.unwrap_err();
    assert!(matches!(unknown, Error::NotFound(_)));
}

#[tokio::test]
async fn master_key_operations_need_their_permissions() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let reader = f.create("reader", &["keyward:master:read"]).await;
    let reader = f.keys.authenticate(Some(reader.key.expose()), &ctx).await.unwrap();
    assert!(f.keys.master_status(&reader, true).is_ok());
    assert!(matches!(f.keys.rotate_master(&reader, &ctx).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(f.keys.retire_master(&reader, V1, &ctx).await, Err(Error::PermissionDenied(_))));
    let nobody = f.create("nobody", &["orders:read"]).await;
    let nobody = f.keys.authenticate(Some(nobody.key.expose()), &ctx).await.unwrap();
    assert!(matches!(f.keys.master_status(&nobody, false), Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn the_sweeper_expires_old_keys_and_disables_unused_ones_once() {
    let rotation = RotationConfig {
        default_grace: Duration::from_secs(60),
        default_max_age: None,
        rules: policy::RotationRules { warning: Duration::from_secs(50), grace: Duration::from_secs(20) },
        inactive_after: Some(Duration::from_secs(1000)),
    };
    let f = fixture_with(KeysConfig { rotation, ..Default::default() }).await;
    let ctx = RequestContext::default();
    let mut aging = named("aging", &[]);
    aging.max_age = Some(Duration::from_secs(100));
    let aging = f.keys.create(&f.root, aging, &ctx).await.unwrap();
    let busy = f.create("busy", &[]).await;
    let idle = f.create("idle", &[]).await;
    let sweep = |dry| f.keys.sweep(Actor::System("sweeper".into()), dry, &ctx);

    f.clock.advance(Duration::from_secs(110));
    let r = sweep(false).await.unwrap();
    assert!(r.expired.is_empty() && r.disabled.is_empty(), "within the grace, and used recently");
    f.clock.advance(Duration::from_secs(900));
    assert_eq!(f.code(busy.key.expose(), &[]).await, VerifyCode::Valid, "a use, not yet flushed");
    f.clock.advance(Duration::from_secs(100));
    let dry = sweep(true).await.unwrap();
    let ids = |v: &[KeyRecord]| v.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&dry.expired), vec![aging.record.id]);
    assert_eq!(ids(&dry.disabled), vec![idle.record.id], "not busy (used 100 s ago), not root (exempt)");
    assert_eq!(f.store.get_key(idle.record.id).unwrap().unwrap().state, KeyState::Active, "a dry run changes nothing");

    let done = sweep(false).await.unwrap();
    assert_eq!((ids(&done.expired), ids(&done.disabled)), (vec![aging.record.id], vec![idle.record.id]));
    let aged = f.store.get_key(aging.record.id).unwrap().unwrap();
    assert_eq!(aged.expires_at, Some(aging.record.created_at + Duration::from_secs(120)));
    let reaped = f.store.get_key(idle.record.id).unwrap().unwrap();
    assert_eq!((reaped.state, reaped.disable_reason.as_deref()), (KeyState::Disabled, Some("unused for 1000s")));
    assert_eq!(f.code(idle.key.expose(), &[]).await, VerifyCode::Disabled);
    let again = sweep(false).await.unwrap();
    assert!(again.expired.is_empty() && again.disabled.is_empty(), "idempotent");
    let actions = f.actions();
    assert_eq!(&actions[actions.len() - 2..], &[AuditAction::KeyExpired, AuditAction::KeyDisabled]);

    f.keys.enable(&f.root, &idle.record.id.to_string(), &ctx).await.unwrap();
    assert!(sweep(false).await.unwrap().disabled.is_empty(), "enabling counts as activity");

    let reader = f.create("reader", &["keyward:keys:read"]).await;
    let reader = f.keys.authenticate(Some(reader.key.expose()), &ctx).await.unwrap();
    assert!(f.keys.sweep_as(&reader, true, &ctx).await.is_ok(), "a dry run only reads");
    let denied = f.keys.sweep_as(&reader, false, &ctx).await.unwrap_err();
    assert!(matches!(denied, Error::PermissionDenied(_)), "{denied:?}");
}

#[tokio::test]
async fn during_the_overlap_both_keys_draw_on_one_quota() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let mut new = named("metered", &[]);
    new.remaining = Some(10);
    let old = f.keys.create(&f.root, new, &ctx).await.unwrap();
    assert_eq!(f.verify_full_rotation(old.key.expose()).await.remaining, Some(9), "a lease is held");
    let rotated = f.keys.rotate(&f.root, &old.record.id.to_string(), None, &ctx).await.unwrap();
    assert_eq!(rotated.record.quota.map(|q| q.remaining), Some(9), "the lease was folded back first");
    for left in [8, 7, 6] {
        let v = f.verify_full_rotation(old.key.expose()).await;
        assert_eq!((v.code, v.remaining), (VerifyCode::Valid, Some(left)), "the old key spends the successor's uses");
    }
    for left in (0..6).rev() {
        assert_eq!(f.verify_full_rotation(rotated.key.expose()).await.remaining, Some(left));
    }
    assert_eq!(f.code(old.key.expose(), &[]).await, VerifyCode::QuotaExceeded);
    assert_eq!(f.code(rotated.key.expose(), &[]).await, VerifyCode::QuotaExceeded);
}
