//! Tests of key administration: create, read, list, update, disable, enable and revoke; their
//! permissions, validation and audit events.

use crate::domain::testing::*;

#[tokio::test]
async fn revocation_is_audited_once_and_idempotent() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    let id = created.record.id.to_string();
    let ctx = RequestContext { client_addr: Some("127.0.0.1:5000".parse().unwrap()) };
    let first = f.keys.revoke(&f.root, &id, "leaked in CI logs", &ctx).await.unwrap();
    let second = f.keys.revoke(&f.root, &id, "again", &ctx).await.unwrap();
    assert_eq!(first.state, KeyState::Revoked);
    assert_eq!(second.revoke_reason.as_deref(), Some("leaked in CI logs"));
    assert_eq!(first.revoked_at, second.revoked_at);
    let events = f.store.audit_after(0, 100).unwrap();
    let actions: Vec<_> = events.iter().map(|e| (e.seq, e.event.action)).collect();
    assert_eq!(actions, vec![(1, AuditAction::KeyCreated), (2, AuditAction::KeyCreated), (3, AuditAction::KeyRevoked)]);
    let revoked = &events[2].event;
    assert_eq!(revoked.actor, Actor::Key(f.root.key_id));
    assert_eq!(revoked.client_addr.as_deref(), Some("127.0.0.1:5000"));
    assert_eq!(revoked.reason.as_deref(), Some("leaked in CI logs"));
}

#[tokio::test]
async fn revoking_an_unknown_key_is_not_found() {
    let f = fixture().await;
    let err = f.keys.revoke(&f.root, &KeyId::new_v7().to_string(), "", &RequestContext::default()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(f.store.audit_after(0, 100).unwrap().len(), 1, "only the root key's creation");
}

#[tokio::test]
async fn callers_need_the_permission_for_each_call() {
    let f = fixture().await;
    let verifier_key = f.create("gateway", &["keyward:verify"]).await;
    let verifier = f.auth.authenticate(Some(verifier_key.key.expose()), &RequestContext::default()).await.unwrap();
    let ctx = RequestContext::default();
    let err = f.keys.create(&verifier, named("x", &[]), &ctx).await.unwrap_err();
    assert_eq!(err, Error::PermissionDenied("this call needs the `keyward:keys:create` permission".into()));
    assert!(matches!(f.keys.get(&verifier, &verifier_key.record.id.to_string()), Err(Error::PermissionDenied(_))));
    assert!(f.verify.verify(&verifier, req(verifier_key.key.expose(), "", &[])).await.is_ok());
    let app_key = f.create("app", &["*"]).await;
    let app = f.auth.authenticate(Some(app_key.key.expose()), &RequestContext::default()).await.unwrap();
    assert!(matches!(f.verify.verify(&app, req(app_key.key.expose(), "", &[])).await, Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn a_creator_cannot_grant_keyward_permissions_it_lacks() {
    let f = fixture().await;
    let admin_key = f.create("admin", &["keyward:keys:create", "keyward:verify"]).await;
    let admin = f.auth.authenticate(Some(admin_key.key.expose()), &RequestContext::default()).await.unwrap();
    let ctx = RequestContext::default();
    for escalation in [&["keyward:*"][..], &["keyward:keys:revoke"], &["keyward:keys:*"]] {
        let err = f.keys.create(&admin, named("x", escalation), &ctx).await.unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{escalation:?}: {err:?}");
    }
    let ok = f.keys.create(&admin, named("y", &["keyward:verify", "orders:*", "*"]), &ctx).await.unwrap();
    assert_eq!(ok.record.scopes, strings(&["*", "keyward:verify", "orders:*"]));
}

#[tokio::test]
async fn listing_pages_through_every_key_in_creation_order() {
    let f = fixture().await;
    for i in 0..5 {
        f.create(&format!("k{i}"), &[]).await;
    }
    let (mut names, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = f.keys.list(&f.root, &ListFilter::default(), 2, &token).unwrap();
        assert!(page.len() <= 2);
        names.extend(page.into_iter().map(|k| k.name));
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(names, vec!["root", "k0", "k1", "k2", "k3", "k4"]);
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let err = f.verify.verify(&f.root, req("kw_x", "not-an-ip", &[])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "client_ip", .. }));
    let err = f.verify.verify(&f.root, req("kw_x", "", &strings(&["a::b"]))).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "required_scopes", .. }));
    let mut past = named("x", &[]);
    past.expires_at = Some(f.clock.now());
    assert!(matches!(
        f.keys.create(&f.root, past, &ctx).await,
        Err(Error::InvalidArgument { field: "expires_at", .. })
    ));
    assert!(matches!(f.keys.get(&f.root, "123"), Err(Error::InvalidArgument { field: "key_id", .. })));
    assert!(matches!(
        f.keys.list(&f.root, &ListFilter::default(), 5000, ""),
        Err(Error::InvalidArgument { field: "page_size", .. })
    ));
}

#[tokio::test]
async fn updating_the_quota_folds_the_lease_back_first() {
    let f = fixture().await;
    let k = f.create_with(with("metered", |n| n.remaining = Some(500))).await;
    f.verify_full(k.key.expose(), "", None).await;
    let refill = Refill { amount: 50, interval: Duration::from_secs(60) };
    let updated = f.patch(k.record.id, &["refill"], |p| p.refill = Some(refill)).await.unwrap();
    assert_eq!(updated.quota.unwrap().remaining, 499, "no uses lost to the lease");
    let events = f.store.audit_after(0, 100).unwrap();
    let last = &events.last().unwrap().event;
    assert_eq!(last.action, AuditAction::KeyUpdated);
    assert_eq!(last.changes.len(), 1);
    assert_eq!((last.changes[0].before.as_str(), last.changes[0].after.as_str()), ("none", "50 every 60s"));
    // A refused update keeps the lease: no uses are lost.
    f.verify_full(k.key.expose(), "", None).await;
    let err = f.patch(k.record.id, &["remaining"], |p| p.remaining = None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "remaining", .. }), "{err:?}");
    assert_eq!(f.remaining(k.record.id), Some(498));
    f.verify_full(k.key.expose(), "", None).await;
    assert_eq!(f.remaining(k.record.id), Some(497));
    let updated = f.patch(k.record.id, &["remaining"], |p| p.remaining = Some(2)).await.unwrap();
    assert_eq!(updated.quota.unwrap().remaining, 2);
    let codes = futures_codes(&f, k.key.expose(), 3).await;
    assert_eq!(codes, vec![VerifyCode::Valid, VerifyCode::Valid, VerifyCode::QuotaExceeded]);
}

#[tokio::test]
async fn updates_change_only_masked_fields_and_audit_before_and_after() {
    let f = fixture().await;
    let k = f.create_with(with("svc", |n| n.metadata = [("team".to_string(), "a".to_string())].into())).await;
    let id = k.record.id;
    let updated = f
        .patch(id, &["name", "allowed_cidrs", "rate_limit"], |p| {
            p.name = "svc-2".into();
            p.allowed_cidrs = strings(&["192.0.2.0/24"]);
            p.rate_limit = Some(RateLimit { limit: 10, window: Duration::from_secs(1) });
            p.metadata = Default::default();
        })
        .await
        .unwrap();
    assert_eq!(updated.name, "svc-2");
    assert_eq!(updated.metadata.len(), 1, "metadata was not in the mask");
    assert_eq!(updated.updated_at, Some(f.clock.now()));
    let event = f.store.audit_after(0, 100).unwrap().pop().unwrap().event;
    let changes: Vec<_> =
        event.changes.iter().map(|c| (c.field.as_str(), c.before.as_str(), c.after.as_str())).collect();
    assert_eq!(
        changes,
        vec![("name", "svc", "svc-2"), ("allowed_cidrs", "[]", "[192.0.2.0/24]"), ("rate_limit", "none", "10 per 1s")]
    );
    assert_eq!(f.verify_full(k.key.expose(), "198.51.100.1", None).await.code, VerifyCode::IpNotAllowed);
    // An update that changes nothing writes nothing.
    let n = f.store.audit_after(0, 100).unwrap().len();
    f.patch(id, &["name"], |p| p.name = "svc-2".into()).await.unwrap();
    assert_eq!(f.store.audit_after(0, 100).unwrap().len(), n);
}

#[tokio::test]
async fn updates_refuse_bad_input_escalation_and_revoked_keys() {
    let f = fixture().await;
    let k = f.create("svc", &[]).await;
    let id = k.record.id;
    let field = |r: Result<KeyRecord>| match r {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(f.patch(id, &[], |_| {}).await), "update_mask");
    assert_eq!(field(f.patch(id, &["digest"], |_| {}).await), "update_mask");
    assert_eq!(field(f.patch(id, &["scopes"], |p| p.scopes = strings(&["a::b"])).await), "scopes");
    let past = f.clock.now() - Duration::from_secs(1);
    assert_eq!(field(f.patch(id, &["expires_at"], |p| p.expires_at = Some(past)).await), "expires_at");
    let admin_key = f.create("admin", &["keyward:keys:update"]).await;
    let admin = f.auth.authenticate(Some(admin_key.key.expose()), &RequestContext::default()).await.unwrap();
    let patch = KeyPatch { mask: strings(&["scopes"]), scopes: strings(&["keyward:*"]), ..Default::default() };
    let err = f.keys.update(&admin, &id.to_string(), patch, &RequestContext::default()).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    f.keys.revoke(&f.root, &id.to_string(), "", &RequestContext::default()).await.unwrap();
    let err = f.patch(id, &["name"], |p| p.name = "x".into()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let err = f.patch(KeyId::new_v7(), &["name"], |p| p.name = "x".into()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn disabling_pauses_a_key_and_enabling_resumes_it() {
    let f = fixture().await;
    let k = f.create("svc", &["keyward:verify"]).await;
    let (id, ctx) = (k.record.id.to_string(), RequestContext::default());
    let disabled = f.keys.disable(&f.root, &id, "investigating", &ctx).await.unwrap();
    assert_eq!(disabled.state, KeyState::Disabled);
    assert_eq!(disabled.disable_reason.as_deref(), Some("investigating"));
    assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::Disabled);
    assert!(f.auth.authenticate(Some(k.key.expose()), &ctx).await.is_err(), "a disabled caller is refused");
    let again = f.keys.disable(&f.root, &id, "", &ctx).await.unwrap();
    assert_eq!(again.disabled_at, disabled.disabled_at, "idempotent");
    let enabled = f.keys.enable(&f.root, &id, &ctx).await.unwrap();
    assert_eq!((enabled.state, enabled.disabled_at), (KeyState::Active, None));
    assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::Valid);
    let actions: Vec<_> = f.store.audit_after(0, 100).unwrap().into_iter().map(|e| e.event.action).collect();
    assert_eq!(&actions[actions.len() - 2..], &[AuditAction::KeyDisabled, AuditAction::KeyEnabled]);
    f.keys.revoke(&f.root, &id, "", &ctx).await.unwrap();
    assert!(matches!(f.keys.enable(&f.root, &id, &ctx).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(f.keys.disable(&f.root, &id, "", &ctx).await, Err(Error::FailedPrecondition(_))));
}

#[tokio::test]
async fn listing_filters_and_pages_stably() {
    let f = fixture().await;
    for i in 0..6 {
        let scopes: &[&str] = if i % 2 == 0 { &["orders:*"] } else { &["billing:read"] };
        let mut new = named(&format!("Worker {i}"), scopes);
        new.prefix = if i < 3 { "ord".into() } else { "kw".into() };
        f.create_with(new).await;
    }
    let filter = ListFilter::new(None, "", "worker", "orders:read").unwrap();
    let (mut names, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = f.keys.list(&f.root, &filter, 1, &token).unwrap();
        names.extend(page.into_iter().map(|k| k.name));
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(names, vec!["Worker 0", "Worker 2", "Worker 4"]);
    let by_prefix = ListFilter::new(Some(KeyState::Active), "ord", "", "").unwrap();
    assert_eq!(f.keys.list(&f.root, &by_prefix, 10, "").unwrap().0.len(), 3);
    let (_, token) = f.keys.list(&f.root, &by_prefix, 1, "").unwrap();
    let err = f.keys.list(&f.root, &ListFilter::default(), 1, &token.unwrap()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "page_token", .. }));
}

/// Keys whose create read the master versions just before a rotation landed, written after
/// the rotation's re-digest had passed: they move under the new versions themselves.
#[tokio::test]
async fn a_key_made_as_a_rotation_lands_moves_under_the_new_versions() {
    use crate::domain::{
        ports::Hsm as _,
        proof::key_digest_input,
        signing::{FIRST_WRAP_KEY, WrapKeyVersion},
    };
    let f = fixture().await;
    let ctx = RequestContext::default();
    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    f.migrate_all().await;
    assert_eq!(f.status().keys_pending, 0);

    // The records as creates that began under v1 write them, after the migration finished:
    // a bearer key, and a signing key (its secret wrapped under wrapping key v1).
    let mut late = Vec::new();
    for signing in [false, true] {
        let id = KeyId::new_v7();
        let secret = f.hsm.random_secret().await.unwrap();
        let digest = f.hsm.digest(V1, key_digest_input(id, &secret)).await.unwrap();
        let mut record = KeyRecord::new(id, "late".into(), "kw".into(), vec![], f.clock.now(), digest);
        if signing {
            record.signing = Some(f.hsm.new_signing_secret(FIRST_WRAP_KEY).await.unwrap().1);
        }
        let event = AuditEvent {
            at: f.clock.now(),
            actor: Actor::System("test".into()),
            action: AuditAction::KeyCreated,
            target: Some(id),
            client_addr: None,
            reason: None,
            changes: Vec::new(),
            code: None,
        };
        f.store.insert_key(record.clone(), event).await.unwrap();
        late.push((record, secret));
    }
    let status = f.status();
    assert_eq!((status.keys_pending, status.secrets_pending), (2, 1), "the migration passed them by");

    for (record, secret) in &mut late {
        f.keys.catch_up_with_rotation(record, secret).await;
        let stored = f.store.get_key(record.id).unwrap().unwrap();
        assert!(stored.digest.is_plain_under(MasterKeyVersion(2)), "{:?}", stored.digest);
        assert_eq!((&record.digest, &record.signing), (&stored.digest, &stored.signing), "what was written");
    }
    assert_eq!(late[1].0.signing.as_ref().map(|w| w.version), Some(WrapKeyVersion(2)));
    let status = f.status();
    assert_eq!((status.keys_pending, status.secrets_pending), (0, 0), "nothing holds version 1 back");
    let (bearer, secret) = &late[0];
    let key = key_format::render("kw", bearer.id, secret);
    assert_eq!(f.code(key.expose(), &[]).await, VerifyCode::Valid);
}

/// Two services over one store, as two cluster nodes are: the first rotates the master key; the
/// second, whose copy of the master state has not caught up, makes a bearer and a signing key
/// under the old versions. Each moves under the store's new versions once written.
#[tokio::test]
async fn a_key_made_by_a_node_that_missed_a_rotation_moves_under_the_stores_versions() {
    use crate::domain::signing::{KeyKind, WrapKeyVersion};
    let f = fixture().await;
    let ctx = RequestContext::default();
    let stale = Services::new(
        f.hsm.clone(),
        f.store.clone(),
        f.clock.clone(),
        f.master.master_state(),
        ServicesConfig::default(),
    );
    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    f.migrate_all().await;
    assert_eq!(stale.keys.master_current_for_tests(), V1, "the second node still makes keys under v1");

    let bearer = stale.keys.create(&f.root, named("late-bearer", &[]), &ctx).await.unwrap();
    let signing = NewKey { kind: KeyKind::Signing, ..named("late-signer", &[]) };
    let signer = stale.keys.create(&f.root, signing, &ctx).await.unwrap();
    for created in [&bearer, &signer] {
        let stored = f.store.get_key(created.record.id).unwrap().unwrap();
        assert!(stored.digest.is_plain_under(MasterKeyVersion(2)), "{:?}", stored.digest);
        assert_eq!(created.record.digest, stored.digest, "the answer shows what was written");
    }
    let stored = f.store.get_key(signer.record.id).unwrap().unwrap();
    assert_eq!(stored.signing.map(|w| w.version), Some(WrapKeyVersion(2)));
    let status = f.status();
    assert_eq!((status.keys_pending, status.secrets_pending), (0, 0), "nothing holds version 1 back");
    assert_eq!(f.code(bearer.key.expose(), &[]).await, VerifyCode::Valid);
}
