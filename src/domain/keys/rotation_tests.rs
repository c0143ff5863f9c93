//! Tests of client key rotation: the successor, the overlap, and one quota for both keys
//! during it.

use crate::domain::testing::*;

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
