//! Use-case tests of the usage log: a record per verification, KeyUsage and QueryUsage over
//! it, and a full queue's overflow counted and audited.

use crate::domain::testing::*;
use crate::domain::{
    audit::{AuditAction, AuditQuery},
    usage_log::{UsageLogConfig, UsageQuery},
};

fn with_usage_log(usage_log: UsageLogConfig) -> ServicesConfig {
    ServicesConfig { usage_log, ..ServicesConfig::default() }
}

#[tokio::test]
async fn every_verification_is_logged_with_its_key_code_address_and_caller() {
    let f = fixture().await;
    let key = f.create("svc", &["read"]).await;
    let id = key.record.id;
    let secret = key.key.expose().to_owned();
    for ip in ["10.0.0.1", "10.0.0.1", "10.0.0.2"] {
        assert_eq!(f.verify.verify(&f.root, req(&secret, ip, &[])).await.unwrap().code, VerifyCode::Valid);
    }
    let scopes = strings(&["write"]);
    f.verify.verify(&f.root, req(&secret, "10.0.0.2", &scopes)).await.unwrap();
    let wrong = key_format::render("kw", id, &crate::domain::secret::Secret::from_bytes([7; 32]));
    f.verify.verify(&f.root, req(wrong.expose(), "10.6.6.6", &[])).await.unwrap();
    f.verify.verify(&f.root, req("garbage", "10.6.6.6", &[])).await.unwrap();
    let w = f.verify.flush_usage_log().await.unwrap();
    assert_eq!((w.written, w.dropped), (6, 0));

    let usage = f.audit.key_usage(&f.root, id, None, None).unwrap();
    assert_eq!(usage.total, 5, "the wrong-secret try names the key; the garbage one names none");
    assert_eq!(usage.by_code[&VerifyCode::Valid], 3);
    assert_eq!(usage.by_code[&VerifyCode::InsufficientScope], 1);
    assert_eq!(usage.by_code[&VerifyCode::Invalid], 1);
    assert_eq!(usage.by_client_ip[&Some("10.0.0.2".parse().unwrap())], (2, 1));

    let invalid = UsageQuery { code: Some(VerifyCode::Invalid), ..Default::default() };
    let (records, next) = f.audit.query_usage(&f.root, &invalid, 10, "").unwrap();
    assert_eq!(next, None);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.caller == Some(f.root.key_id) && r.at == f.clock.now()));
    assert_eq!(records.iter().map(|r| r.key_id).collect::<Vec<_>>(), vec![Some(id), None]);

    let reader = f.create("reader", &["keyward:verify"]).await;
    let reader = f.auth.authenticate(Some(reader.key.expose()), &RequestContext::default()).await.unwrap();
    assert!(matches!(f.audit.key_usage(&reader, id, None, None), Err(Error::PermissionDenied(_))));
    assert!(matches!(f.audit.query_usage(&reader, &invalid, 10, ""), Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn a_full_queue_drops_counts_and_audits_how_many() {
    let f = fixture_with(with_usage_log(UsageLogConfig { queue_capacity: 3, ..Default::default() })).await;
    let key = f.create("busy", &[]).await;
    for _ in 0..10 {
        f.verify.verify(&f.root, req(key.key.expose(), "", &[])).await.unwrap();
    }
    // The writer was not running: 3 queued, 7 dropped.
    let w = f.verify.write_usage_log().await.unwrap();
    assert_eq!((w.written, w.dropped, w.depth), (3, 7, 0));
    assert_eq!(f.audit.key_usage(&f.root, key.record.id, None, None).unwrap().total, 3);
    let dropped = AuditQuery { action: Some(AuditAction::UsageDropped), ..Default::default() };
    let (events, _) = f.audit.query_events(&f.root, &dropped, 10, "").unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].event.reason.as_deref().unwrap().starts_with("7 usage records dropped"), "{events:?}");
    assert_eq!(f.audit.verify_chain(&f.root, 0, 0).await.unwrap().broken, None);
}

#[tokio::test]
async fn retention_keeps_the_newest_and_prunes_by_age() {
    let config =
        UsageLogConfig { max_records: Some(4), max_age: Some(Duration::from_secs(3600)), ..Default::default() };
    let f = fixture_with(with_usage_log(config)).await;
    let key = f.create("k", &[]).await;
    for _ in 0..6 {
        f.verify.verify(&f.root, req(key.key.expose(), "", &[])).await.unwrap();
    }
    let w = f.verify.flush_usage_log().await.unwrap();
    assert_eq!((w.written, w.pruned), (6, 2));
    assert_eq!(f.audit.key_usage(&f.root, key.record.id, None, None).unwrap().total, 4);
    f.clock.advance(Duration::from_secs(3601));
    f.verify.verify(&f.root, req(key.key.expose(), "", &[])).await.unwrap();
    let w = f.verify.flush_usage_log().await.unwrap();
    assert_eq!((w.written, w.pruned), (1, 4), "the four older than an hour go");
    let usage = f.audit.key_usage(&f.root, key.record.id, None, None).unwrap();
    assert_eq!((usage.total, usage.first_at), (1, Some(f.clock.now())));
}

#[tokio::test]
async fn with_the_log_off_nothing_is_kept() {
    let f = fixture_with(with_usage_log(UsageLogConfig { enabled: false, ..Default::default() })).await;
    let key = f.create("k", &[]).await;
    f.verify.verify(&f.root, req(key.key.expose(), "", &[])).await.unwrap();
    assert_eq!(f.verify.flush_usage_log().await.unwrap().written, 0);
    assert_eq!(f.audit.key_usage(&f.root, key.record.id, None, None).unwrap().total, 0);
}
