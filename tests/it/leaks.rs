//! ReportLeak: a secret scanner's key revokes a leaked key on sight, audited with the source.

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::Instance;

fn report(key: &str, source_url: &str) -> proto::ReportLeakRequest {
    proto::ReportLeakRequest { key: key.into(), source_url: source_url.into() }
}

#[tokio::test]
async fn a_scanner_revokes_a_leaked_key_once_and_the_audit_trail_says_where_it_was_found() {
    let kw = Instance::started().await;
    let (scanner, scanner_id) = kw.create_key("scanner", &["keyward:leaks:report"]).await;
    let (leaked, leaked_id) = kw.create_key("payments", &["payments:*"]).await;
    let url = "https://github.com/acme/shop/blob/3f2a/.env#L7";
    let mut client = kw.keys(Some(&scanner)).await;

    let first = client.report_leak(report(&leaked, url)).await.unwrap().into_inner();
    assert_eq!((first.key_id.as_str(), first.already_revoked), (leaked_id.as_str(), false));
    assert!(first.revoked_at.is_some());
    assert_eq!(kw.code(&leaked, &[]).await, VerifyCode::Revoked);
    let info = kw.root_keys().await.get_key(proto::GetKeyRequest { key_id: leaked_id.clone() }).await.unwrap();
    assert_eq!(info.into_inner().revoke_reason, format!("leaked: {url}"));

    let again = client.report_leak(report(&leaked, "https://pastebin.example/x")).await.unwrap().into_inner();
    assert!(again.already_revoked);
    assert_eq!(again.revoked_at, first.revoked_at);

    let events = kw
        .audit(Some(&kw.root_key))
        .await
        .query_events(proto::QueryEventsRequest { action: "key.leaked".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "a repeat report writes nothing: {events:?}");
    assert_eq!(events[0].key_id, leaked_id);
    assert_eq!(events[0].actor, format!("key:{scanner_id}"));
    assert_eq!(events[0].reason, url);
    assert!(!kw.logs().contains(&leaked), "the leaked key is never logged");
}

#[tokio::test]
async fn reports_of_keys_that_are_not_genuine_or_badly_formed_are_refused_and_revoke_nothing() {
    let kw = Instance::started().await;
    let (scanner, _) = kw.create_key("scanner", &["keyward:leaks:report"]).await;
    let (live, _) = kw.create_key("live", &[]).await;
    let mut client = kw.keys(Some(&scanner)).await;

    // A typo'd copy (checksum fails), and one with a changed secret character and a fixed-up
    // checksum are indistinguishable from an unknown key.
    let mut typo = live.clone().into_bytes();
    typo[10] = if typo[10] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    let parsed = keyward::domain::key_format::parse(&kw.root_key).unwrap();
    let live_id = keyward::domain::key_format::parse(&live).unwrap().key_id;
    let wrong_secret = keyward::domain::key_format::render("kw", live_id, &parsed.secret).expose().to_owned();
    for key in [typo.as_str(), "kw_short", wrong_secret.as_str()] {
        let status = client.report_leak(report(key, "https://example.com/a")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(!status.message().contains(key));
    }

    let long = format!("https://example.com/{}", "a".repeat(2048));
    let with_key = format!("https://example.com/?token={live}");
    for (key, url, field) in [
        ("", "https://example.com/a", "key"),
        (live.as_str(), "", "source_url"),
        (live.as_str(), "https://example.com/\nline two", "source_url"),
        (live.as_str(), long.as_str(), "source_url"),
        (live.as_str(), with_key.as_str(), "source_url"),
    ] {
        let status = client.report_leak(report(key, url)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(&format!("invalid {field}:")), "{}", status.message());
        assert!(!status.message().contains(&live));
    }
    assert_eq!(kw.code(&live, &[]).await, VerifyCode::Valid, "nothing was revoked");
}

#[tokio::test]
async fn a_leaked_rotated_key_is_revoked_and_its_successor_keeps_working() {
    let kw = Instance::started().await;
    let (scanner, _) = kw.create_key("scanner", &["keyward:leaks:report"]).await;
    let (old, old_id) = kw.create_key("svc", &[]).await;
    let rotated = kw
        .root_keys()
        .await
        .rotate_key(proto::RotateKeyRequest { key_id: old_id, grace_period: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kw.code(&old, &[]).await, VerifyCode::Valid, "in its grace period");
    let leak = kw.keys(Some(&scanner)).await.report_leak(report(&old, "https://example.com/log")).await.unwrap();
    assert!(!leak.into_inner().already_revoked);
    assert_eq!(kw.code(&old, &[]).await, VerifyCode::Revoked);
    assert_eq!(kw.code(&rotated.key, &[]).await, VerifyCode::Valid);
}

#[tokio::test]
async fn a_leaked_admin_key_is_locked_out_on_its_next_call() {
    let kw = Instance::started().await;
    let (scanner, _) = kw.create_key("scanner", &["keyward:leaks:report"]).await;
    let (admin, _) = kw.create_key("admin", &["keyward:keys:read"]).await;
    let mut admin_client = kw.keys(Some(&admin)).await;
    admin_client.list_keys(proto::ListKeysRequest::default()).await.expect("the admin works (and is now cached)");
    kw.keys(Some(&scanner)).await.report_leak(report(&admin, "https://example.com/ci-log/42")).await.unwrap();
    let status = admin_client.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}
