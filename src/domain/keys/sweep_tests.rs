//! Tests of the sweeper: `max_age` expiry and the reaper, each once.

use crate::domain::{policy, rotation::RotationConfig, testing::*};

#[tokio::test]
async fn the_sweeper_expires_old_keys_and_disables_unused_ones_once() {
    let rotation = RotationConfig {
        default_grace: Duration::from_secs(60),
        default_max_age: None,
        rules: policy::RotationRules { warning: Duration::from_secs(50), grace: Duration::from_secs(20) },
        inactive_after: Some(Duration::from_secs(1000)),
    };
    let f = fixture_with(ServicesConfig { rotation, ..Default::default() }).await;
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
    let reader = f.auth.authenticate(Some(reader.key.expose()), &ctx).await.unwrap();
    assert!(f.keys.sweep_as(&reader, true, &ctx).await.is_ok(), "a dry run only reads");
    let denied = f.keys.sweep_as(&reader, false, &ctx).await.unwrap_err();
    assert!(matches!(denied, Error::PermissionDenied(_)), "{denied:?}");
}
