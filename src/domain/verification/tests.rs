//! Tests of the verifier: what a presented key is answered, and what it costs (HSM calls,
//! database reads) to find out.

use crate::domain::testing::*;

#[tokio::test]
async fn a_created_key_verifies_and_its_scopes_are_enforced() {
    let f = fixture().await;
    let created = f.create("orders", &["orders:*"]).await;
    assert!(created.key.expose().starts_with("kw_"));
    let v =
        f.verify.verify(&f.root, req(created.key.expose(), "203.0.113.9", &strings(&["orders:read"]))).await.unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.record.unwrap().id, created.record.id);
    assert_eq!(f.code(created.key.expose(), &["billing:read"]).await, VerifyCode::InsufficientScope);
}

#[tokio::test]
async fn malformed_keys_are_invalid_without_touching_the_hsm_or_the_database() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    let key = created.key.expose();
    let mut typo = key.to_string().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let (hsm_before, reads_before) = (f.hsm.calls(), f.store.reads.load(Ordering::SeqCst));
    for bad in ["", "garbage", &key[..key.len() - 1], &typo, &key.replace("kw_", "sk_"), &format!("{key}x")] {
        assert_eq!(f.code(bad, &[]).await, VerifyCode::Invalid, "{bad:?}");
    }
    assert_eq!(f.hsm.calls(), hsm_before, "parsing failures must not reach the HSM");
    assert_eq!(f.store.reads.load(Ordering::SeqCst), reads_before, "nor the database");
}

#[tokio::test]
async fn unknown_ids_and_wrong_secrets_cost_one_hsm_call_and_say_only_invalid() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    let unknown = key_format::render("kw", KeyId::new_v7(), &Secret::from_bytes([1; 32]));
    let wrong_secret = key_format::render("kw", created.record.id, &Secret::from_bytes([2; 32]));
    for key in [unknown, wrong_secret] {
        let before = f.hsm.calls();
        let v = f.verify.verify(&f.root, req(key.expose(), "", &[])).await.unwrap();
        assert_eq!((v.code, v.record.is_none()), (VerifyCode::Invalid, true));
        assert_eq!(f.hsm.calls(), before + 1);
    }
}

#[tokio::test]
async fn a_wrong_secret_is_invalid_even_for_a_revoked_key() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    f.keys.revoke(&f.root, &created.record.id.to_string(), "", &RequestContext::default()).await.unwrap();
    let forged = key_format::render("kw", created.record.id, &Secret::from_bytes([3; 32]));
    assert_eq!(f.code(forged.expose(), &[]).await, VerifyCode::Invalid);
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Revoked);
}

#[tokio::test]
async fn keys_expire_at_their_deadline() {
    let f = fixture().await;
    let mut new = named("short", &[]);
    new.expires_at = Some(f.clock.now() + Duration::from_secs(60));
    let created = f.keys.create(&f.root, new, &RequestContext::default()).await.unwrap();
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Valid);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Expired);
}

#[tokio::test]
async fn an_unreachable_hsm_makes_calls_unavailable_not_invalid() {
    let f = fixture().await;
    let svc = f.create("svc", &[]).await;
    f.hsm.down.store(true, Ordering::SeqCst);
    let err = f.verify.verify(&f.root, req(svc.key.expose(), "", &[])).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(matches!(
        f.keys.create(&f.root, named("x", &[]), &RequestContext::default()).await,
        Err(Error::Unavailable(_))
    ));
    assert!(!f.auth.is_healthy());
}

#[test]
fn debug_never_shows_the_presented_key() {
    let request = VerifyRequest { key: "kw_SECRETSECRET", client_ip: "10.0.0.1", ..Default::default() };
    let shown = format!("{request:?}");
    assert!(!shown.contains("SECRET") && shown.contains("<redacted>") && shown.contains("10.0.0.1"), "{shown}");
}
