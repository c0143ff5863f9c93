//! Tests of the master key service: bootstrap, the self-test, rotation with wrapped digests,
//! lazy and batched re-digest, retirement, and their permissions.

use crate::domain::testing::*;

#[tokio::test]
async fn master_rotation_wraps_old_digests_then_each_verification_makes_it_plain() {
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(f.create(&format!("svc{i}"), &[]).await);
    }
    let state = f.master.rotate_master(&f.root, &ctx).await.unwrap();
    assert_eq!(state.current, V2);
    assert!(f.hsm.has(V2));
    let fresh = f.create("fresh", &[]).await;
    assert!(fresh.record.digest.is_plain_under(V2), "new digests use the new version at once");
    let busy = f.master.rotate_master(&f.root, &ctx).await.unwrap_err();
    assert!(matches!(busy, Error::FailedPrecondition(_)), "one rotation at a time: {busy:?}");

    // One batch: a checkpoint is recorded with the progress.
    assert!(f.master.migrate_batch().await.unwrap());
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
    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    let current = f.master.retire_master(&f.root, V2, &ctx).await.unwrap_err();
    assert!(matches!(current, Error::FailedPrecondition(_)), "the current version: {current:?}");
    f.migrate_all().await;
    assert_eq!(f.code(used.key.expose(), &[]).await, VerifyCode::Valid);
    assert_eq!(f.code(successor.key.expose(), &[]).await, VerifyCode::Valid);
    // A cached caller whose digest is not plain under v2 is proven again, and so migrated.
    f.auth.authenticate(Some(&f.root_key), &ctx).await.unwrap();
    f.settle().await;
    let refused = f.master.retire_master(&f.root, V1, &ctx).await.unwrap_err();
    let Error::FailedPrecondition(why) = &refused else { panic!("{refused:?}") };
    assert!(
        why.starts_with("1 keys still need master key v1"),
        "only the idle key: not the revoked one, nor the rotated one past its overlap: {why}"
    );
    assert!(f.hsm.has(V1));

    f.keys.revoke(&f.root, &idle.record.id.to_string(), "", &ctx).await.unwrap();
    let state = f.master.retire_master(&f.root, V1, &ctx).await.unwrap();
    assert!(state.version(V1).unwrap().retired_at.is_some());
    assert!(!f.hsm.has(V1), "destroyed in the HSM");
    assert_eq!(*f.actions().last().unwrap(), AuditAction::MasterRetired);
    // A revoked key whose digest needed v1 is just invalid now: no HSM error.
    assert_eq!(f.code(gone.key.expose(), &[]).await, VerifyCode::Invalid);
    assert_eq!(f.code(used.key.expose(), &[]).await, VerifyCode::Valid);
    f.master.self_test().await.expect("the self-test skips retired versions");
    f.master.retire_master(&f.root, V1, &ctx).await.expect("retiring again is harmless");
    let unknown = f.master.retire_master(&f.root, MasterKeyVersion(9), &ctx).await.unwrap_err();
    assert!(matches!(unknown, Error::NotFound(_)));
}

#[tokio::test]
async fn master_key_operations_need_their_permissions() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let reader = f.create("reader", &["keyward:master:read"]).await;
    let reader = f.auth.authenticate(Some(reader.key.expose()), &ctx).await.unwrap();
    assert!(f.master.master_status(&reader, true).is_ok());
    assert!(matches!(f.master.rotate_master(&reader, &ctx).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(f.master.retire_master(&reader, V1, &ctx).await, Err(Error::PermissionDenied(_))));
    let nobody = f.create("nobody", &["orders:read"]).await;
    let nobody = f.auth.authenticate(Some(nobody.key.expose()), &ctx).await.unwrap();
    assert!(matches!(f.master.master_status(&nobody, false), Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn bootstrapping_twice_is_refused() {
    let f = fixture().await;
    let err = bootstrap(&*f.hsm, &*f.store, &*f.clock, MasterKeyVersion(1)).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
}

#[tokio::test]
async fn a_self_test_against_another_master_key_fails() {
    let f = fixture().await;
    let other = Arc::new(FakeHsm::new());
    let master = f.store.master().unwrap().unwrap();
    let services = Services::new(other, f.store.clone(), f.clock.clone(), master, ServicesConfig::default());
    assert!(matches!(services.master.self_test().await, Err(Error::FailedPrecondition(_))));
}

#[tokio::test]
async fn counts_from_the_key_index_match_a_scan_through_rotation_revocation_and_overlaps() {
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    let kept = f.create("kept", &[]).await;
    let revoked = f.create("revoked", &[]).await;
    let rotated = f.create("rotated", &[]).await;
    let signer = NewKey { kind: crate::domain::signing::KeyKind::Signing, ..named("signer", &[]) };
    f.keys.create(&f.root, signer, &ctx).await.unwrap();
    f.keys.revoke(&f.root, &revoked.record.id.to_string(), "gone", &ctx).await.unwrap();
    let grace = Some(Duration::from_secs(60));
    f.keys.rotate(&f.root, &rotated.record.id.to_string(), grace, &ctx).await.unwrap();
    let before = f.status();
    // root, kept, the rotated key (inside its overlap) and its successor; the signer's digest
    // holds no master version, its secret holds wrapping key v1.
    assert_eq!(before.keys_using[&V1], 4);
    assert_eq!(before.secrets_using.values().sum::<u64>(), 1);

    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    assert_eq!(f.status().keys_pending, 5, "every live key, the signer included, waits for the re-digest");
    f.migrate_all().await;
    assert_eq!(f.code(kept.key.expose(), &[]).await, VerifyCode::Valid);
    f.settle().await;
    let after = f.status();
    assert_eq!(after.keys_pending, 0);
    assert_eq!(after.keys_not_plain, 3, "root, the rotated key and its successor are still wrapped");

    // Past the overlap the rotated key needs nothing: the index's counts follow the clock.
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.status().keys_not_plain, 2);

    // A store opened again loads its index from the records.
    let state = f.master.master_state();
    let f = f.reopened_with(state).await;
    assert_eq!(f.status().keys_not_plain, 2);
}
