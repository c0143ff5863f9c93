//! Tests of the authenticator: bearer credentials, mTLS identities, the auth cache and the
//! caller's allowlist.

use crate::domain::{auth::ConsoleSession, testing::*};

#[tokio::test]
async fn authentication_rejects_missing_bad_revoked_and_expired_credentials() {
    let f = fixture().await;
    assert!(matches!(f.auth.authenticate(None, &RequestContext::default()).await, Err(Error::Unauthenticated(_))));
    assert!(matches!(
        f.auth.authenticate(Some("kw_nope"), &RequestContext::default()).await,
        Err(Error::Unauthenticated(_))
    ));
    let admin = f.create("admin", &["keyward:*"]).await;
    assert!(f.auth.authenticate(Some(admin.key.expose()), &RequestContext::default()).await.is_ok());
    f.keys.revoke(&f.root, &admin.record.id.to_string(), "", &RequestContext::default()).await.unwrap();
    assert!(matches!(
        f.auth.authenticate(Some(admin.key.expose()), &RequestContext::default()).await,
        Err(Error::Unauthenticated(_))
    ));

    let mut new = named("temp", &["keyward:*"]);
    new.expires_at = Some(f.clock.now() + Duration::from_secs(5));
    let temp = f.keys.create(&f.root, new, &RequestContext::default()).await.unwrap();
    assert!(f.auth.authenticate(Some(temp.key.expose()), &RequestContext::default()).await.is_ok());
    f.clock.advance(Duration::from_secs(5));
    assert!(matches!(
        f.auth.authenticate(Some(temp.key.expose()), &RequestContext::default()).await,
        Err(Error::Unauthenticated(_))
    ));
}

#[tokio::test]
async fn an_identity_stands_for_its_key_with_no_hsm_call_and_the_same_checks() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let svc = f.create("payments", &["keyward:verify"]).await;
    let before = f.hsm.calls();
    let caller = f.auth.authenticate_identity(svc.record.id, &ctx).await.unwrap();
    assert_eq!((caller.key_id, caller.scopes), (svc.record.id, strings(&["keyward:verify"])));
    assert_eq!(f.hsm.calls(), before, "the certificate was the proof: no HSM operation");
    assert!(matches!(
        f.auth.authenticate_identity(KeyId::new_v7(), &ctx).await,
        Err(Error::Unauthenticated(m)) if m.contains("does not exist")
    ));

    f.keys.disable(&f.root, &svc.record.id.to_string(), "", &ctx).await.unwrap();
    assert!(matches!(f.auth.authenticate_identity(svc.record.id, &ctx).await, Err(Error::Unauthenticated(_))));
    f.keys.enable(&f.root, &svc.record.id.to_string(), &ctx).await.unwrap();
    assert!(f.auth.authenticate_identity(svc.record.id, &ctx).await.is_ok());

    let mut new = named("office", &["keyward:verify"]);
    new.allowed_cidrs = vec!["10.0.0.0/8".into()];
    let office = f.keys.create(&f.root, new, &ctx).await.unwrap();
    let inside = RequestContext { client_addr: Some("10.1.2.3:5000".parse().unwrap()) };
    let outside = RequestContext { client_addr: Some("192.0.2.1:5000".parse().unwrap()) };
    assert!(f.auth.authenticate_identity(office.record.id, &inside).await.is_ok());
    assert!(matches!(
        f.auth.authenticate_identity(office.record.id, &outside).await,
        Err(Error::Unauthenticated(m)) if m.contains("address")
    ));

    f.keys.revoke(&f.root, &svc.record.id.to_string(), "", &ctx).await.unwrap();
    assert!(matches!(f.auth.authenticate_identity(svc.record.id, &ctx).await, Err(Error::Unauthenticated(_))));
}

#[tokio::test]
async fn a_known_caller_costs_no_hsm_call_but_a_forged_one_still_does() {
    let f = fixture().await;
    let svc = f.create("svc", &["keyward:verify"]).await;
    f.auth.authenticate(Some(svc.key.expose()), &RequestContext::default()).await.unwrap();
    let before = f.hsm.calls();
    f.auth.authenticate(Some(svc.key.expose()), &RequestContext::default()).await.unwrap();
    assert_eq!(f.hsm.calls(), before, "cached");
    let forged = key_format::render("kw", svc.record.id, &Secret::from_bytes([4; 32]));
    assert!(f.auth.authenticate(Some(forged.expose()), &RequestContext::default()).await.is_err());
    assert_eq!(f.hsm.calls(), before + 1, "a different secret for the same id goes to the HSM");
}

#[tokio::test]
async fn a_caller_key_with_an_allowlist_is_checked_against_the_peer_address() {
    let f = fixture().await;
    let mut new = named("admin", &["keyward:*"]);
    new.allowed_cidrs = strings(&["10.0.0.0/8"]);
    let admin = f.create_with(new).await;
    let from = |addr: &str| RequestContext { client_addr: Some(addr.parse().unwrap()) };
    assert!(f.auth.authenticate(Some(admin.key.expose()), &from("10.1.1.1:4000")).await.is_ok());
    let err = f.auth.authenticate(Some(admin.key.expose()), &from("127.0.0.1:4000")).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
}

#[tokio::test]
async fn console_sessions_are_chained_events_with_the_key_as_actor_and_its_address() {
    let f = fixture().await;
    let admin = f.create("admin", &["keyward:keys:read"]).await;
    let ctx = RequestContext { client_addr: Some("192.0.2.7:41000".parse().unwrap()) };
    let caller = f.auth.authenticate(Some(admin.key.expose()), &ctx).await.unwrap();
    f.auth.record_console_session(&caller, ConsoleSession::SignedIn, &ctx).await.unwrap();
    f.auth.record_console_session(&caller, ConsoleSession::SignedOut, &ctx).await.unwrap();

    let events: Vec<AuditEvent> = f.store.audit_after(0, 1000).unwrap().into_iter().map(|e| e.event).collect();
    let console: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| matches!(e.action, AuditAction::ConsoleSignIn | AuditAction::ConsoleSignOut))
        .collect();
    assert_eq!(console.len(), 2, "{events:?}");
    assert_eq!(console[0].action, AuditAction::ConsoleSignIn);
    assert_eq!(console[1].action, AuditAction::ConsoleSignOut);
    for e in console {
        assert_eq!(e.actor, Actor::Key(admin.record.id));
        assert_eq!(e.target, Some(admin.record.id));
        assert_eq!(e.client_addr.as_deref(), Some("192.0.2.7:41000"));
    }
}
