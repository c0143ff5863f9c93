//! Use-case tests of leak reports.

use crate::domain::keys::LeakReport;
use crate::domain::testing::*;

impl Fixture {
    async fn scanner(&self) -> Caller {
        let key = self.create("scanner", &["keyward:leaks:report"]).await;
        self.auth.authenticate(Some(key.key.expose()), &RequestContext::default()).await.unwrap()
    }

    async fn report(&self, caller: &Caller, key: &str, url: &str) -> Result<LeakReport> {
        self.keys.report_leak(caller, key, url, &RequestContext::default()).await
    }

    fn events_of(&self, action: AuditAction) -> Vec<AuditEvent> {
        let all = self.store.audit_after(0, 1000).unwrap();
        all.into_iter().map(|e| e.event).filter(|e| e.action == action).collect()
    }
}

#[tokio::test]
async fn a_reported_key_is_revoked_once_and_audited_with_its_source() {
    let f = fixture().await;
    let scanner = f.scanner().await;
    let leaked = f.create("leaky", &["orders:*"]).await;
    let url = "https://github.com/acme/app/blob/main/.env#L3";

    let first = f.report(&scanner, leaked.key.expose(), url).await.unwrap();
    assert_eq!((first.key_id, first.already_revoked), (leaked.record.id, false));
    assert_eq!(f.code(leaked.key.expose(), &[]).await, VerifyCode::Revoked);
    let record = f.keys.get(&f.root, &leaked.record.id.to_string()).unwrap();
    assert_eq!(record.revoke_reason.as_deref(), Some(format!("leaked: {url}").as_str()));

    let again = f.report(&scanner, leaked.key.expose(), "https://elsewhere.example/paste").await.unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.revoked_at, first.revoked_at);
    let events = f.events_of(AuditAction::KeyLeaked);
    assert_eq!(events.len(), 1, "a repeat report writes nothing");
    assert_eq!(events[0].target, Some(leaked.record.id));
    assert_eq!(events[0].actor, Actor::Key(scanner.key_id));
    assert_eq!(events[0].reason.as_deref(), Some(url));
}

#[tokio::test]
async fn keys_that_are_not_genuine_are_not_found_and_change_nothing() {
    let f = fixture().await;
    let scanner = f.scanner().await;
    let real = f.create("real", &[]).await;
    let other = f.create("other", &[]).await;
    // Right shape and checksum, but another key's secret under this id: rendered, not typo'd.
    let parsed_other = key_format::parse(other.key.expose()).unwrap();
    let wrong_secret = key_format::render("kw", real.record.id, &parsed_other.secret);
    let unknown = key_format::render("kw", KeyId::new_v7(), &parsed_other.secret);
    let url = "https://example.com/x";
    for key in ["kw_nonsense", wrong_secret.expose(), unknown.expose()] {
        let err = f.report(&scanner, key, url).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(!err.to_string().contains(key), "the error never repeats the key");
    }
    assert_eq!(f.code(real.key.expose(), &[]).await, VerifyCode::Valid);
    assert!(f.events_of(AuditAction::KeyLeaked).is_empty());
}

#[tokio::test]
async fn rotated_disabled_and_expired_keys_are_revoked_and_the_successor_is_left_alone() {
    let f = fixture().await;
    let scanner = f.scanner().await;
    let old = f.create("old", &[]).await;
    let rotated = f.keys.rotate(&f.root, &old.record.id.to_string(), None, &RequestContext::default()).await.unwrap();
    let disabled = f.create("paused", &[]).await;
    f.keys.disable(&f.root, &disabled.record.id.to_string(), "", &RequestContext::default()).await.unwrap();
    let expiring = NewKey { expires_at: Some(f.clock.now() + Duration::from_secs(60)), ..named("short", &[]) };
    let expired = f.keys.create(&f.root, expiring, &RequestContext::default()).await.unwrap();
    f.clock.advance(Duration::from_secs(120));
    assert_eq!(f.code(expired.key.expose(), &[]).await, VerifyCode::Expired);

    for key in [old.key.expose(), disabled.key.expose(), expired.key.expose()] {
        assert!(!f.report(&scanner, key, "https://example.com/leak").await.unwrap().already_revoked);
        assert_eq!(f.code(key, &[]).await, VerifyCode::Revoked);
    }
    assert_eq!(f.code(rotated.key.expose(), &[]).await, VerifyCode::Valid, "the successor still works");
}

#[tokio::test]
async fn the_report_permission_grants_nothing_else_and_nothing_else_grants_it() {
    let f = fixture().await;
    let scanner = f.scanner().await;
    let target = f.create("target", &[]).await;
    let id = target.record.id.to_string();
    assert!(matches!(f.keys.get(&scanner, &id), Err(Error::PermissionDenied(_))));
    assert!(matches!(
        f.keys.revoke(&scanner, &id, "", &RequestContext::default()).await,
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        f.verify.verify(&scanner, req(target.key.expose(), "", &[])).await,
        Err(Error::PermissionDenied(_))
    ));

    let revoker = f.create("revoker", &["keyward:keys:revoke", "keyward:verify"]).await;
    let revoker = f.auth.authenticate(Some(revoker.key.expose()), &RequestContext::default()).await.unwrap();
    let err = f.report(&revoker, target.key.expose(), "https://example.com/x").await.unwrap_err();
    assert_eq!(err, Error::PermissionDenied("this call needs the `keyward:leaks:report` permission".into()));
    // Checked before anything about the key: a caller without the permission learns nothing.
    let err = f.report(&revoker, "kw_nonsense", "").await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
}

#[tokio::test]
async fn bad_reports_name_the_field() {
    let f = fixture().await;
    let scanner = f.scanner().await;
    let target = f.create("target", &[]).await;
    let key = target.key.expose();
    let cases = [("", "https://x/", "key"), (key, "", "source_url"), (key, "https://x/\u{7}", "source_url")];
    for (key, url, field) in cases {
        let err = f.report(&scanner, key, url).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field: f, .. } if f == field), "{field}: {err:?}");
    }
    let with_key = format!("https://x/?leaked={key}");
    let err = f.report(&scanner, key, &with_key).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "source_url", .. }), "{err:?}");
    assert!(!err.to_string().contains(key));
    assert_eq!(f.code(key, &[]).await, VerifyCode::Valid, "a refused report revokes nothing");
}
