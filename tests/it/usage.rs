//! The usage log through the real server: every verification is a record that KeyUsage counts
//! and QueryUsage finds; a full queue's drops are counted in `/metrics` and audited, and the
//! two agree with what was written; refused calls become `auth.failed` events.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use crate::common::{Instance, scrape};

/// Polls `check` every 50 ms until it returns `Some`, for 10 s at most.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn verify_from(key: &str, ip: &str, required: &[&str]) -> proto::VerifyKeyRequest {
    proto::VerifyKeyRequest {
        key: key.into(),
        client_ip: ip.into(),
        required_scopes: required.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn verifications_are_counted_per_key_by_code_and_address_and_found_by_code() {
    let kw = Instance::started().await;
    let (key, id) = kw.create_key("svc", &["orders:read"]).await;
    let mut verifier = kw.root_verifier().await;
    for (ip, required) in [("10.0.0.1", &[][..]), ("10.0.0.1", &[]), ("10.0.0.2", &["orders:write"])] {
        verifier.verify_key(verify_from(&key, ip, required)).await.unwrap();
    }
    verifier.verify_key(verify_from("kw_garbage", "10.6.6.6", &[])).await.unwrap();

    let mut audit = kw.audit(Some(&kw.root_key)).await;
    let usage = eventually("the usage records", || {
        let mut audit = audit.clone();
        let id = id.clone();
        async move {
            let r = audit
                .key_usage(proto::KeyUsageRequest { key_id: id, ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            (r.total == 3).then_some(r)
        }
    })
    .await;
    let codes: Vec<_> = usage.by_code.iter().map(|c| (c.code(), c.count)).collect();
    assert_eq!(codes, vec![(VerifyCode::Valid, 2), (VerifyCode::InsufficientScope, 1)]);
    let ips: Vec<_> = usage.by_client_ip.iter().map(|c| (c.client_ip.as_str(), c.count, c.valid)).collect();
    assert_eq!(ips, vec![("10.0.0.1", 2, 2), ("10.0.0.2", 1, 0)]);
    assert!(usage.first_at.is_some() && usage.resume_at.is_none());

    let invalid = audit
        .query_usage(proto::QueryUsageRequest { code: VerifyCode::Invalid.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invalid.records.len(), 1);
    let r = &invalid.records[0];
    assert_eq!((r.key_id.as_str(), r.client_ip.as_str()), ("", "10.6.6.6"), "an unknown key names no key");
    assert!(!r.caller.is_empty() && r.latency.is_some());
    let text = format!("{invalid:?}");
    assert!(!text.contains("kw_garbage"), "the presented key is never kept");

    let bad = audit.query_usage(proto::QueryUsageRequest { code: 99, ..Default::default() }).await.unwrap_err();
    assert_eq!((bad.code(), bad.message().contains("code")), (tonic::Code::InvalidArgument, true), "{bad:?}");
    let (reader, _) = kw.create_key("reader", &["keyward:verify"]).await;
    let denied = kw
        .audit(Some(&reader))
        .await
        .key_usage(proto::KeyUsageRequest { key_id: id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    audit = kw.audit(Some(&kw.root_key)).await;
    let missing = audit.key_usage(proto::KeyUsageRequest::default()).await.unwrap_err();
    assert_eq!((missing.code(), missing.message().contains("key_id")), (tonic::Code::InvalidArgument, true));
}

/// The usage records that `usage.dropped` events say were dropped.
async fn audited_drops(kw: &Instance) -> u64 {
    let events = kw
        .audit(Some(&kw.root_key))
        .await
        .query_events(proto::QueryEventsRequest {
            action: "usage.dropped".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events.iter().map(|e| e.reason.split(' ').next().unwrap().parse::<u64>().expect("a count first")).sum()
}

#[tokio::test]
async fn a_full_usage_queue_drops_are_counted_audited_and_add_up() {
    let mut kw = Instance::init();
    kw.metrics = true;
    kw.configure("usage_log", "queue_capacity", "1");
    kw.configure("usage_log", "batch", "1");
    kw.start().await;
    let (key, id) = kw.create_key("busy", &[]).await;
    const CALLS: u64 = 400;
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut v = kw.root_verifier().await;
        let key = key.clone();
        callers.spawn(async move {
            for _ in 0..CALLS / 20 {
                let r = v.verify_key(verify_from(&key, "", &[])).await.unwrap().into_inner();
                assert_eq!(r.code(), VerifyCode::Valid, "verification keeps answering");
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }

    let mut audit = kw.audit(Some(&kw.root_key)).await;
    let (written, dropped, audited) = eventually("the drops to be counted and audited", || {
        let mut audit = audit.clone();
        let (kw, id) = (&kw, id.clone());
        async move {
            let written = audit
                .key_usage(proto::KeyUsageRequest { key_id: id, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .total;
            let metrics = scrape::http(kw.metrics_addr().unwrap(), "GET", "/metrics").await;
            let dropped = scrape::parse(&metrics.body).value("keyward_usage_queue_dropped_total", &[]) as u64;
            let audited = audited_drops(kw).await;
            (written + dropped == CALLS && audited == dropped).then_some((written, dropped, audited))
        }
    })
    .await;
    assert!(dropped > 0, "a queue of one overflows under 20 concurrent callers ({written} written)");
    assert_eq!(audited, dropped);
    audit = kw.audit(Some(&kw.root_key)).await;
    let chain = audit.verify_chain(proto::VerifyChainRequest::default()).await.unwrap().into_inner();
    assert!(chain.ok, "{chain:?}");
}

#[tokio::test]
async fn refused_calls_become_auth_failed_events_by_source_and_code() {
    let kw = Instance::started().await;
    let (weak, weak_id) = kw.create_key("weak", &["keyward:verify"]).await;
    for _ in 0..3 {
        let refused = kw.keys(Some("kw_wrong")).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let refused = kw.keys(Some(&weak)).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let audit = kw.audit(Some(&kw.root_key)).await;
    let find = |code: &'static str| {
        let mut audit = audit.clone();
        async move {
            let request = proto::QueryEventsRequest { code: code.into(), ..Default::default() };
            let events = audit.query_events(request).await.unwrap().into_inner().events;
            (!events.is_empty()).then_some(events)
        }
    };
    let unauth = eventually("auth.failed for UNAUTHENTICATED", || find("UNAUTHENTICATED")).await;
    assert_eq!(unauth.len(), 1, "{unauth:?}");
    let e = &unauth[0];
    assert_eq!((e.action.as_str(), e.client_addr.as_str()), ("auth.failed", "127.0.0.1"));
    assert_eq!(e.reason, "3 calls refused: invalid credential");
    let denied = eventually("auth.failed for PERMISSION_DENIED", || find("PERMISSION_DENIED")).await;
    assert_eq!(denied[0].actor, format!("key:{weak_id}"));
    assert!(denied[0].reason.contains("keyward:keys:read"), "{:?}", denied[0]);
}
