//! Use-case tests of the verification policies: allowlists, validity windows, rate limits,
//! quotas and refills, updates, disable/enable, usage facts and list filters.

use super::*;

fn with(name: &str, f: impl FnOnce(&mut NewKey)) -> NewKey {
    let mut new = named(name, &[]);
    f(&mut new);
    new
}

impl Fixture {
    async fn create_with(&self, new: NewKey) -> CreatedKey {
        self.keys.create(&self.root, new, &RequestContext::default()).await.unwrap()
    }

    async fn verify_full(&self, key: &str, client_ip: &str, cost: Option<u32>) -> Verification {
        let request = VerifyRequest { key, client_ip, required_scopes: &[], cost };
        self.keys.verify(&self.root, request).await.unwrap()
    }

    async fn patch(&self, id: KeyId, mask: &[&str], f: impl FnOnce(&mut KeyPatch)) -> Result<KeyRecord> {
        let mut patch = KeyPatch { mask: strings(mask), ..Default::default() };
        f(&mut patch);
        self.keys.update(&self.root, &id.to_string(), patch, &RequestContext::default()).await
    }

    fn remaining(&self, id: KeyId) -> Option<u64> {
        self.keys.get(&self.root, &id.to_string()).unwrap().quota.map(|q| q.remaining)
    }
}

#[tokio::test]
async fn allowlists_gate_on_the_client_ip() {
    let f = fixture().await;
    let k = f.create_with(with("fenced", |n| n.allowed_cidrs = strings(&["10.0.0.0/8", "2001:db8::/32"]))).await;
    let key = k.key.expose();
    assert_eq!(f.verify_full(key, "10.2.3.4", None).await.code, VerifyCode::Valid);
    assert_eq!(f.verify_full(key, "2001:db8::7", None).await.code, VerifyCode::Valid);
    assert_eq!(f.verify_full(key, "::ffff:10.0.0.9", None).await.code, VerifyCode::Valid);
    assert_eq!(f.verify_full(key, "192.0.2.1", None).await.code, VerifyCode::IpNotAllowed);
    assert_eq!(f.verify_full(key, "", None).await.code, VerifyCode::IpNotAllowed);
}

#[tokio::test]
async fn a_caller_key_with_an_allowlist_is_checked_against_the_peer_address() {
    let f = fixture().await;
    let mut new = named("admin", &["keyward:*"]);
    new.allowed_cidrs = strings(&["10.0.0.0/8"]);
    let admin = f.create_with(new).await;
    let from = |addr: &str| RequestContext { client_addr: Some(addr.parse().unwrap()) };
    assert!(f.keys.authenticate(Some(admin.key.expose()), &from("10.1.1.1:4000")).await.is_ok());
    let err = f.keys.authenticate(Some(admin.key.expose()), &from("127.0.0.1:4000")).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
}

#[tokio::test]
async fn not_before_holds_a_key_back_until_its_time() {
    let f = fixture().await;
    let start = f.clock.now() + Duration::from_secs(30);
    let k = f.create_with(with("later", |n| n.not_before = Some(start))).await;
    assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::NotYetValid);
    f.clock.advance(Duration::from_secs(30));
    assert_eq!(f.code(k.key.expose(), &[]).await, VerifyCode::Valid);
}

#[tokio::test]
async fn rate_limits_come_after_scopes_and_say_when_to_retry() {
    let f = fixture().await;
    let limit = RateLimit { limit: 3, window: Duration::from_secs(60) };
    let mut new = named("limited", &["orders:read"]);
    new.rate_limit = Some(limit);
    let k = f.create_with(new).await;
    // Refused calls earlier in the order do not use the allowance.
    for _ in 0..5 {
        assert_eq!(f.code(k.key.expose(), &["orders:write"]).await, VerifyCode::InsufficientScope);
    }
    let codes: Vec<_> = futures_codes(&f, k.key.expose(), 5).await;
    assert_eq!(codes.iter().filter(|c| **c == VerifyCode::Valid).count(), 3);
    let v = f.verify_full(k.key.expose(), "", None).await;
    assert_eq!(v.code, VerifyCode::RateLimited);
    assert!(v.retry_after.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(20)), "{v:?}");
}

async fn futures_codes(f: &Fixture, key: &str, n: usize) -> Vec<VerifyCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(f.verify_full(key, "", None).await.code);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_spend_exactly_under_concurrency_with_few_writes() {
    let f = Arc::new(fixture().await);
    let k = f.create_with(with("metered", |n| n.remaining = Some(1000))).await;
    let key = Arc::new(k.key.expose().to_owned());
    let updates_before = f.store.updates.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (f, key) = (f.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut valid = 0;
            for _ in 0..20 {
                match f.verify_full(&key, "", None).await.code {
                    VerifyCode::Valid => valid += 1,
                    VerifyCode::QuotaExceeded => {}
                    other => panic!("{other:?}"),
                }
            }
            valid
        }));
    }
    let mut valid = 0;
    for t in tasks {
        valid += t.await.unwrap();
    }
    assert_eq!(valid, 1000, "64 × 20 calls on 1000 uses");
    assert_eq!(f.remaining(k.record.id), Some(0));
    let writes = f.store.updates.load(Ordering::SeqCst) - updates_before;
    assert!(writes < 100, "leases batch the writes: {writes} for 1000 uses");
    // Exhausted keys are refused from memory.
    let before = f.store.updates.load(Ordering::SeqCst);
    assert_eq!(f.verify_full(&key, "", None).await.code, VerifyCode::QuotaExceeded);
    assert_eq!(f.store.updates.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn costs_spend_several_uses_and_zero_spends_none() {
    let f = fixture().await;
    let k = f.create_with(with("metered", |n| n.remaining = Some(10))).await;
    let key = k.key.expose();
    let v = f.verify_full(key, "", Some(4)).await;
    assert_eq!((v.code, v.remaining), (VerifyCode::Valid, Some(6)));
    let v = f.verify_full(key, "", Some(0)).await;
    assert_eq!((v.code, v.remaining), (VerifyCode::Valid, Some(6)));
    let v = f.verify_full(key, "", Some(7)).await;
    assert_eq!((v.code, v.remaining), (VerifyCode::QuotaExceeded, Some(6)), "nothing is spent");
    let v = f.verify_full(key, "", Some(6)).await;
    assert_eq!((v.code, v.remaining), (VerifyCode::Valid, Some(0)));
    let err = f.keys.verify(&f.root, VerifyRequest { key, cost: Some(2_000_000), ..Default::default() }).await;
    assert!(matches!(err, Err(Error::InvalidArgument { field: "cost", .. })));
}

#[tokio::test]
async fn refills_restore_the_quota_on_their_cadence() {
    let f = fixture().await;
    let refill = Refill { amount: 3, interval: Duration::from_secs(3600) };
    let k = f.create_with(with("daily", |n| n.refill = Some(refill))).await;
    assert_eq!(f.remaining(k.record.id), Some(3), "a refill with no remaining starts full");
    let key = k.key.expose();
    let codes = futures_codes(&f, key, 4).await;
    assert_eq!(codes, vec![VerifyCode::Valid, VerifyCode::Valid, VerifyCode::Valid, VerifyCode::QuotaExceeded]);
    f.clock.advance(Duration::from_secs(3599));
    assert_eq!(f.verify_full(key, "", None).await.code, VerifyCode::QuotaExceeded);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.remaining(k.record.id), Some(3), "GetKey shows the refill as soon as it is due");
    let v = f.verify_full(key, "", None).await;
    assert_eq!((v.code, v.remaining), (VerifyCode::Valid, Some(2)));
    // Unused uses do not carry over: three intervals later it is 3 again, not 3 + 2.
    f.clock.advance(Duration::from_secs(3 * 3600 + 10));
    assert_eq!(f.remaining(k.record.id), Some(3));
    let got = f.keys.get(&f.root, &k.record.id.to_string()).unwrap();
    let cadence = got.quota.unwrap().refilled_at.duration_since(k.record.created_at).unwrap();
    assert_eq!(cadence, Duration::from_secs(4 * 3600), "refills keep their cadence");
}

#[tokio::test]
async fn a_clean_shutdown_returns_leases_and_a_crash_never_over_spends() {
    let f = fixture().await;
    let k = f.create_with(with("metered", |n| n.remaining = Some(1000))).await;
    for _ in 0..5 {
        assert_eq!(f.verify_full(k.key.expose(), "", None).await.code, VerifyCode::Valid);
    }
    let stored = |f: &Fixture| f.store.get_key(k.record.id).unwrap().unwrap().quota.unwrap().remaining;
    // As if crashed now: the store holds less than the truth (the lease is lost), never more.
    assert!(stored(&f) <= 995 && stored(&f) >= 995 - 100, "{}", stored(&f));
    assert_eq!(f.remaining(k.record.id), Some(995));
    f.keys.shutdown().await.unwrap();
    assert_eq!(stored(&f), 995, "the lease was folded back");
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
    let admin = f.keys.authenticate(Some(admin_key.key.expose()), &RequestContext::default()).await.unwrap();
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
    assert!(f.keys.authenticate(Some(k.key.expose()), &ctx).await.is_err(), "a disabled caller is refused");
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
async fn usage_is_counted_and_written_in_batches() {
    let f = fixture().await;
    let k = f.create_with(with("svc", |n| n.allowed_cidrs = strings(&["10.0.0.0/8"]))).await;
    f.verify_full(k.key.expose(), "10.0.0.1", None).await;
    f.verify_full(k.key.expose(), "10.0.0.2", None).await;
    f.verify_full(k.key.expose(), "192.0.2.1", None).await;
    let seen = f.keys.get(&f.root, &k.record.id.to_string()).unwrap().usage;
    assert_eq!((seen.valid_count, seen.rejected_count), (2, 1), "pending usage is shown");
    assert_eq!(seen.last_used_ip, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(f.store.get_key(k.record.id).unwrap().unwrap().usage.valid_count, 0, "not written yet");
    assert_eq!(f.keys.flush_usage().await.unwrap(), 2, "this key's usage, and the root caller's authentication");
    let stored = f.store.get_key(k.record.id).unwrap().unwrap().usage;
    assert_eq!((stored.valid_count, stored.rejected_count), (2, 1));
    assert_eq!(stored.last_used_at, Some(f.clock.now()));
    assert_eq!(f.keys.get(&f.root, &k.record.id.to_string()).unwrap().usage, stored, "not counted twice");
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
