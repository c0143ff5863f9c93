//! Tests of VerifySignature: what a signed request is answered (with the fake HSM; the real
//! HSM and an independent RFC 9421 signer are in the integration tests).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{
    signing::KeyKind,
    testing::*,
    verification::{SignedRequest, Verification},
};

struct Signer {
    id: KeyId,
    secret: Vec<u8>,
}

impl Signer {
    async fn new(f: &Fixture, scopes: &[&str]) -> Self {
        let new = NewKey { kind: KeyKind::Signing, ..named("signer", scopes) };
        let created = f.keys.create(&f.root, new, &RequestContext::default()).await.unwrap();
        assert_eq!(created.record.kind(), KeyKind::Signing);
        Self { id: created.record.id, secret: created.signing_secret.unwrap().expose().to_vec() }
    }

    fn base(&self, created: SystemTime, nonce: &str) -> Vec<u8> {
        let created = created.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        format!(
            "\"@method\": GET\n\"@path\": /orders\n\"@signature-params\": (\"@method\" \"@path\");created={created};keyid=\"{}\";alg=\"hmac-sha256\";nonce=\"{nonce}\"",
            self.id
        )
        .into_bytes()
    }

    fn sign(&self, base: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).unwrap();
        mac.update(base);
        mac.finalize().into_bytes().to_vec()
    }
}

async fn check(f: &Fixture, base: &[u8], signature: &[u8], scopes: &[&str]) -> Verification {
    let scopes = strings(scopes);
    let req = SignedRequest { signature_base: base, signature, required_scopes: &scopes, ..Default::default() };
    f.verify.verify_signature(&f.root, req).await.unwrap()
}

#[tokio::test]
async fn a_signed_request_verifies_once_and_its_replay_is_refused() {
    let f = fixture().await;
    let signer = Signer::new(&f, &["orders:*"]).await;
    let base = signer.base(f.clock.now(), "n-1");
    let v = check(&f, &base, &signer.sign(&base), &["orders:read"]).await;
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.record.unwrap().id, signer.id);
    assert_eq!(check(&f, &base, &signer.sign(&base), &["orders:read"]).await.code, VerifyCode::Replayed);
    let next = signer.base(f.clock.now(), "n-2");
    assert_eq!(check(&f, &next, &signer.sign(&next), &["billing:read"]).await.code, VerifyCode::InsufficientScope);
}

#[tokio::test]
async fn wrong_stale_or_malformed_signatures_get_their_codes() {
    let f = fixture().await;
    let signer = Signer::new(&f, &[]).await;
    let base = signer.base(f.clock.now(), "n-1");
    let mut changed = base.clone();
    changed[3] ^= 1;
    assert_eq!(check(&f, &changed, &signer.sign(&base), &[]).await.code, VerifyCode::Invalid, "one byte changed");
    let old = signer.base(f.clock.now() - Duration::from_secs(600), "n-2");
    let v = check(&f, &old, &signer.sign(&old), &[]).await;
    assert_eq!((v.code, v.record.is_some()), (VerifyCode::SignatureExpired, true));
    let no_nonce = String::from_utf8(base.clone()).unwrap().replace(";nonce=\"n-1\"", "").into_bytes();
    let v = check(&f, &no_nonce, &signer.sign(&no_nonce), &[]).await;
    assert_eq!((v.code, v.record.is_none()), (VerifyCode::BadSignatureParams, true));
    // A stale or invalid signature did not spend the nonce: the genuine request still passes.
    assert_eq!(check(&f, &base, &signer.sign(&base), &[]).await.code, VerifyCode::Valid);
}

#[tokio::test]
async fn a_revoked_signing_key_is_revoked_and_a_bearer_key_cannot_sign() {
    let f = fixture().await;
    let signer = Signer::new(&f, &[]).await;
    f.keys.revoke(&f.root, &signer.id.to_string(), "", &RequestContext::default()).await.unwrap();
    let base = signer.base(f.clock.now(), "n-1");
    assert_eq!(check(&f, &base, &signer.sign(&base), &[]).await.code, VerifyCode::Revoked);

    let bearer = f.create("bearer", &[]).await;
    let forged = Signer { id: bearer.record.id, secret: bearer.key.expose().as_bytes().to_vec() };
    let base = forged.base(f.clock.now(), "n-1");
    assert_eq!(check(&f, &base, &forged.sign(&base), &[]).await.code, VerifyCode::Invalid);
}

#[tokio::test]
async fn a_signing_key_is_never_accepted_as_a_bearer_key() {
    let f = fixture().await;
    let created =
        f.keys.create(&f.root, NewKey { kind: KeyKind::Signing, ..named("s", &[]) }, &RequestContext::default()).await;
    let created = created.unwrap();
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Invalid);
}

#[tokio::test]
async fn signing_keys_keep_verifying_across_a_master_key_rotation() {
    let f = fixture().await;
    let signer = Signer::new(&f, &[]).await;
    f.master.rotate_master(&f.root, &RequestContext::default()).await.unwrap();
    f.migrate_all().await;
    let base = signer.base(f.clock.now(), "n-1");
    assert_eq!(check(&f, &base, &signer.sign(&base), &[]).await.code, VerifyCode::Valid);
    let after = Signer::new(&f, &[]).await;
    let base = after.base(f.clock.now(), "n-1");
    assert_eq!(check(&f, &base, &after.sign(&base), &[]).await.code, VerifyCode::Valid);
}

#[tokio::test]
async fn a_rotated_signing_key_hands_its_successor_a_new_secret_and_both_verify_during_the_grace() {
    let f = fixture().await;
    let old = Signer::new(&f, &[]).await;
    let ctx = RequestContext::default();
    let rotated = f.keys.rotate(&f.root, &old.id.to_string(), None, &ctx).await.unwrap();
    assert_eq!(rotated.record.kind(), KeyKind::Signing);
    let new = Signer { id: rotated.record.id, secret: rotated.signing_secret.unwrap().expose().to_vec() };
    assert_ne!(new.secret, old.secret);
    for (signer, nonce) in [(&old, "n-1"), (&new, "n-1")] {
        let base = signer.base(f.clock.now(), nonce);
        assert_eq!(check(&f, &base, &signer.sign(&base), &[]).await.code, VerifyCode::Valid);
    }
    let base = new.base(f.clock.now(), "n-2");
    assert_eq!(check(&f, &base, &old.sign(&base), &[]).await.code, VerifyCode::Invalid, "the old secret");
}

#[tokio::test]
async fn master_rotation_rewraps_signing_secrets_and_retirement_destroys_the_old_wrapping_key() {
    use crate::domain::signing::WrapKeyVersion;
    let (w1, w2) = (WrapKeyVersion(1), WrapKeyVersion(2));
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    let signers = [Signer::new(&f, &[]).await, Signer::new(&f, &[]).await, Signer::new(&f, &[]).await];
    let revoked = Signer::new(&f, &[]).await;
    f.keys.revoke(&f.root, &revoked.id.to_string(), "", &ctx).await.unwrap();
    let before: Vec<_> = signers.iter().map(|s| (s.base(f.clock.now(), "before"), s)).collect();

    let state = f.master.rotate_master(&f.root, &ctx).await.unwrap();
    assert_eq!(state.wrap_current(), w2);
    assert!(f.hsm.has_wrap_key(w2), "made with master key v2");
    let fresh = Signer::new(&f, &[]).await;
    let wrapped = |id| f.store.get_key(id).unwrap().unwrap().signing.unwrap();
    assert_eq!(wrapped(fresh.id).version, w2, "new secrets use the new wrapping key at once");
    assert_eq!(f.status().secrets_pending, 3);
    // The root key moves to v2 on its next use; the signing keys' secrets hold v1 back.
    f.auth.authenticate(Some(&f.root_key), &ctx).await.unwrap();
    f.settle().await;
    let early = f.master.retire_master(&f.root, V1, &ctx).await.unwrap_err();
    let Error::FailedPrecondition(why) = &early else { panic!("{early:?}") };
    assert!(why.contains("3 signing keys' secrets are still wrapped under wrapping key v1"), "{why}");

    // One batch, then the rest: signatures verify all along, under either wrapping key.
    assert!(f.master.migrate_batch().await.unwrap());
    for (s, nonce) in signers.iter().zip(["during-0", "during-1", "during-2"]) {
        let base = s.base(f.clock.now(), nonce);
        assert_eq!(check(&f, &base, &s.sign(&base), &[]).await.code, VerifyCode::Valid);
    }
    f.migrate_all().await;
    for s in &signers {
        assert_eq!(wrapped(s.id).version, w2);
    }
    assert_eq!(wrapped(revoked.id).version, w1, "a revoked key's secret is left as it was");
    let status = f.status();
    assert_eq!((status.secrets_pending, status.secrets_using[&w1], status.secrets_using[&w2]), (0, 0, 4));
    let migrated =
        f.store.audit_after(0, 1000).unwrap().into_iter().rev().find(|e| e.event.action == AuditAction::MasterMigrated);
    let reason = migrated.unwrap().event.reason.unwrap();
    assert!(reason.contains("3 signing secrets re-wrapped under wrapping key v2"), "{reason}");

    // Signing keys' digests (of a bearer secret nobody has) do not hold master key v1 back.
    let state = f.master.retire_master(&f.root, V1, &ctx).await.unwrap();
    assert!(state.wrap_key(w1).unwrap().retired_at.is_some());
    assert!(!f.hsm.has_wrap_key(w1) && !f.hsm.has(V1), "both destroyed in the HSM");
    for (base, s) in &before {
        assert_eq!(check(&f, base, &s.sign(base), &[]).await.code, VerifyCode::Valid, "signed before the rotation");
    }
    let base = fresh.base(f.clock.now(), "after");
    assert_eq!(check(&f, &base, &fresh.sign(&base), &[]).await.code, VerifyCode::Valid);
    // The revoked key's secret can no longer be unwrapped: invalid, not an HSM error.
    let base = revoked.base(f.clock.now(), "after");
    assert_eq!(check(&f, &base, &revoked.sign(&base), &[]).await.code, VerifyCode::Invalid);
}

#[tokio::test]
async fn a_database_rotated_before_wrapping_keys_rotated_keeps_v1_until_its_next_rotation() {
    use crate::domain::signing::WrapKeyVersion;
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    f.migrate_all().await;
    // As an older keyward would have left it: master key v2 current, only wrapping key v1.
    let mut state = f.store.master().unwrap().unwrap();
    state.wrap_keys.retain(|w| w.version == WrapKeyVersion(1));
    let f = f.reopened_with(state).await;
    let signer = Signer::new(&f, &[]).await;
    f.auth.authenticate(Some(&f.root_key), &ctx).await.unwrap();
    f.settle().await;
    f.master.retire_master(&f.root, V1, &ctx).await.expect("master key v1 goes");
    assert!(f.hsm.has_wrap_key(WrapKeyVersion(1)), "the only wrapping key stays");
    let base = signer.base(f.clock.now(), "a");
    assert_eq!(check(&f, &base, &signer.sign(&base), &[]).await.code, VerifyCode::Valid);

    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    f.migrate_all().await;
    assert_eq!(f.store.get_key(signer.id).unwrap().unwrap().signing.unwrap().version, WrapKeyVersion(3));
    f.master.retire_master(&f.root, V1, &ctx).await.expect("retiring again retires wrapping key v1");
    assert!(!f.hsm.has_wrap_key(WrapKeyVersion(1)));
    let base = signer.base(f.clock.now(), "b");
    assert_eq!(check(&f, &base, &signer.sign(&base), &[]).await.code, VerifyCode::Valid);
}

#[tokio::test]
async fn a_signing_secret_the_hsm_cannot_rewrap_is_left_and_holds_its_wrapping_key_until_revoked() {
    use crate::domain::signing::WrapKeyVersion;
    let f = fixture_with(small_batches()).await;
    let ctx = RequestContext::default();
    let good = Signer::new(&f, &[]).await;
    let damaged = Signer::new(&f, &[]).await;
    f.store
        .update_key(damaged.id, |r| {
            let mut r = r.clone();
            r.signing.as_mut().unwrap().blob[0] ^= 1;
            Ok(Some((r, None)))
        })
        .await
        .unwrap();
    f.master.rotate_master(&f.root, &ctx).await.unwrap();
    f.migrate_all().await;
    assert!(f.status().state.migration.is_none(), "one bad record does not stall the job");
    assert_eq!(f.store.get_key(good.id).unwrap().unwrap().signing.unwrap().version, WrapKeyVersion(2));
    assert_eq!(f.store.get_key(damaged.id).unwrap().unwrap().signing.unwrap().version, WrapKeyVersion(1));
    f.auth.authenticate(Some(&f.root_key), &ctx).await.unwrap();
    f.settle().await;
    let refused = f.master.retire_master(&f.root, V1, &ctx).await.unwrap_err();
    let Error::FailedPrecondition(why) = &refused else { panic!("{refused:?}") };
    assert!(why.starts_with("1 signing keys' secrets are still wrapped under wrapping key v1"), "{why}");
    assert!(why.contains("revoke them"), "{why}");
    f.keys.revoke(&f.root, &damaged.id.to_string(), "", &ctx).await.unwrap();
    f.master.retire_master(&f.root, V1, &ctx).await.unwrap();
    assert!(!f.hsm.has_wrap_key(WrapKeyVersion(1)));
    let base = good.base(f.clock.now(), "n");
    assert_eq!(check(&f, &base, &good.sign(&base), &[]).await.code, VerifyCode::Valid);
}

#[tokio::test]
async fn a_signature_naming_an_unknown_or_bearer_key_costs_one_hsm_call_and_says_only_invalid() {
    let f = fixture().await;
    let signer = Signer::new(&f, &[]).await;
    let bearer = f.create("bearer", &[]).await;
    let unknown = Signer { id: KeyId::new_v7(), secret: signer.secret.clone() };
    let as_bearer = Signer { id: bearer.record.id, secret: signer.secret.clone() };
    let wrong = Signer { id: signer.id, secret: vec![9; 32] };
    for (n, s) in [unknown, as_bearer, wrong].iter().enumerate() {
        let base = s.base(f.clock.now(), &format!("n-{n}"));
        let before = f.hsm.calls();
        let v = check(&f, &base, &s.sign(&base), &[]).await;
        assert_eq!((v.code, v.record.is_none()), (VerifyCode::Invalid, true), "case {n}");
        assert_eq!(f.hsm.calls(), before + 1, "case {n}: one HSM operation, whether or not the key exists");
    }
}
