//! Tests of the verification policies: allowlists, validity windows, rate limits, quotas and
//! refills, leases at shutdown, and usage facts.

use crate::domain::testing::*;

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
    let err = f.verify.verify(&f.root, VerifyRequest { key, cost: Some(2_000_000), ..Default::default() }).await;
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
    f.verify.shutdown().await.unwrap();
    assert_eq!(stored(&f), 995, "the lease was folded back");
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
    assert_eq!(f.verify.flush_usage().await.unwrap(), 2, "this key's usage, and the root caller's authentication");
    let stored = f.store.get_key(k.record.id).unwrap().unwrap().usage;
    assert_eq!((stored.valid_count, stored.rejected_count), (2, 1));
    assert_eq!(stored.last_used_at, Some(f.clock.now()));
    assert_eq!(f.keys.get(&f.root, &k.record.id.to_string()).unwrap().usage, stored, "not counted twice");
}
