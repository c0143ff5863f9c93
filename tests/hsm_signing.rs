//! Signing secrets with the real SoftHSM2 module: a new secret verifies HMACs made with it in
//! software (the client's side), a changed message or signature does not, the stored blob is
//! not the secret, the cache of unwrapped secrets stays within its bound, and a secret moved
//! to a newer wrapping key inside the HSM (as master key rotation does) verifies the same
//! signatures once the old wrapping key is destroyed.
//! (Its own test binary: SoftHSM2 reads `SOFTHSM2_CONF` once per process.)

use hmac::{Hmac, Mac};
use keyward::{
    domain::{
        ports::{Hsm, HsmError},
        secret::Pin,
        signing::{FIRST_WRAP_KEY, WrapKeyVersion, WrappedSecret},
    },
    hsm::{Pkcs11Config, Pkcs11Hsm, UNWRAPPED_CACHE},
};
use sha2::Sha256;

fn hmac_sha256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn changed_message(message: &[u8]) -> Vec<u8> {
    let mut changed = message.to_vec();
    changed[2] ^= 1;
    changed
}

#[tokio::test]
async fn signing_secrets_wrapped_by_the_token_verify_client_hmacs_inside_the_hsm() {
    let module = keyward::config::find_softhsm_module().expect("SoftHSM2 is installed (./scripts/install-deps.sh)");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["init", "--dev", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: set before the module is loaded, the only SoftHSM2 use of this test binary.
    unsafe { std::env::set_var("SOFTHSM2_CONF", data.join("softhsm/softhsm2.conf")) };
    let pin = std::fs::read_to_string(data.join("softhsm/user.pin")).unwrap().trim().to_owned();
    let config =
        Pkcs11Config { module, token_label: "keyward-dev".into(), pin: Pin::new(pin), pin_file: None, sessions: 2 };
    let hsm = Pkcs11Hsm::open(config).unwrap();
    hsm.ensure_token_keys().unwrap();

    let (secret, wrapped) = hsm.new_signing_secret(FIRST_WRAP_KEY).await.unwrap();
    assert_eq!(wrapped.version, FIRST_WRAP_KEY);
    assert_eq!(wrapped.blob.len(), 40, "RFC 3394 wrap of 32 bytes");
    assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    assert_eq!(format!("{wrapped:?}"), "WrappedSecret(v1, 40 bytes)");
    assert!(!wrapped.blob.windows(8).any(|w| secret.expose().windows(8).any(|s| s == w)), "the blob is not the secret");

    let message = b"\"@method\": GET\n\"@signature-params\": (\"@method\");created=1;keyid=\"k\"".to_vec();
    let signature = hmac_sha256(secret.expose(), &message);
    assert!(hsm.verify_signature(&wrapped, message.clone(), signature.clone()).await.unwrap());
    // Again: the cached handle answers the same.
    assert!(hsm.verify_signature(&wrapped, message.clone(), signature.clone()).await.unwrap());
    let mut changed = message.clone();
    changed[2] ^= 1;
    assert!(!hsm.verify_signature(&wrapped, changed, signature.clone()).await.unwrap(), "one byte changed");
    let mut forged = signature.clone();
    forged[0] ^= 1;
    assert!(!hsm.verify_signature(&wrapped, message.clone(), forged).await.unwrap(), "signature changed");
    assert!(!hsm.verify_signature(&wrapped, message.clone(), signature[..16].to_vec()).await.unwrap(), "truncated");

    // Another secret does not verify the first one's signatures.
    let (other, other_wrapped) = hsm.new_signing_secret(FIRST_WRAP_KEY).await.unwrap();
    assert_ne!(other.expose(), secret.expose());
    assert!(!hsm.verify_signature(&other_wrapped, message.clone(), signature.clone()).await.unwrap());

    // A damaged blob or an unknown wrapping key version is a failure, never "valid".
    let mut damaged = wrapped.clone();
    damaged.blob[5] ^= 1;
    let answer = hsm.verify_signature(&damaged, message.clone(), signature.clone()).await;
    assert!(matches!(answer, Err(HsmError::Failed(_))), "{answer:?}");
    let unknown = WrappedSecret { version: WrapKeyVersion(9), blob: wrapped.blob.clone() };
    assert!(matches!(
        hsm.verify_signature(&unknown, message.clone(), signature.clone()).await,
        Err(HsmError::Failed(_))
    ));
    assert!(hsm.is_healthy(), "a bad blob does not look like token loss");

    // More secrets in use than the cache holds: every one still verifies, the cache stays bounded.
    let mut keys = Vec::new();
    for _ in 0..UNWRAPPED_CACHE + 20 {
        let (secret, wrapped) = hsm.new_signing_secret(FIRST_WRAP_KEY).await.unwrap();
        keys.push((hmac_sha256(secret.expose(), &message), wrapped));
    }
    for (signature, wrapped) in &keys {
        assert!(hsm.verify_signature(wrapped, message.clone(), signature.clone()).await.unwrap());
    }
    assert_eq!(hsm.unwrapped_cached(), UNWRAPPED_CACHE);
    // The first ones were evicted; they unwrap again.
    assert!(hsm.verify_signature(&keys[0].1, message.clone(), keys[0].0.clone()).await.unwrap());
    assert!(hsm.is_healthy());

    // Wrapping key rotation: the secret unwrapped into a sensitive session object, wrapped again
    // under v2, never in clear outside the HSM.
    let v2 = WrapKeyVersion(2);
    assert!(matches!(hsm.rewrap(&wrapped, v2).await, Err(HsmError::Failed(_))), "no v2 yet");
    hsm.create_wrap_key(v2).await.unwrap();
    hsm.create_wrap_key(v2).await.expect("one an unfinished rotation left is adopted");
    let moved = hsm.rewrap(&wrapped, v2).await.unwrap();
    assert_eq!((moved.version, moved.blob.len()), (v2, 40));
    assert_ne!(moved.blob, wrapped.blob, "another key wraps it");
    assert!(!moved.blob.windows(8).any(|w| secret.expose().windows(8).any(|s| s == w)), "the blob is not the secret");
    assert!(hsm.verify_signature(&moved, message.clone(), signature.clone()).await.unwrap(), "the same secret");
    assert!(!hsm.verify_signature(&moved, changed_message(&message), signature.clone()).await.unwrap());
    let (newer, newer_wrapped) = hsm.new_signing_secret(v2).await.unwrap();
    assert_eq!(newer_wrapped.version, v2);
    let newer_signature = hmac_sha256(newer.expose(), &message);
    assert!(hsm.verify_signature(&newer_wrapped, message.clone(), newer_signature).await.unwrap());
    let answer = hsm.rewrap(&damaged, v2).await;
    assert!(matches!(answer, Err(HsmError::Failed(_))), "a damaged blob: {answer:?}");
    assert!(hsm.is_healthy(), "a bad blob does not look like token loss");

    // Every secret moved (what the migration does, one call per key), timed for the record.
    let started = std::time::Instant::now();
    let mut moved_keys = Vec::new();
    for (signature, wrapped) in &keys {
        moved_keys.push((signature, hsm.rewrap(wrapped, v2).await.unwrap()));
    }
    let took = started.elapsed();
    eprintln!(
        "re-wrapped {} signing secrets (C_UnwrapKey + C_WrapKey + C_DestroyObject) in {took:.2?}: {:.0}/s on one task",
        keys.len(),
        keys.len() as f64 / took.as_secs_f64()
    );
    assert!(hsm.unwrapped_cached() > 0);

    // v1 destroyed: the moved secrets still verify, the old blobs unwrap no more, and the
    // secrets unwrapped with v1 are gone from the cache.
    hsm.destroy_wrap_key(FIRST_WRAP_KEY).await.unwrap();
    assert_eq!(hsm.unwrapped_cached(), 2, "only the two unwrapped with v2");
    for (signature, wrapped) in &moved_keys {
        assert!(hsm.verify_signature(wrapped, message.clone(), (*signature).clone()).await.unwrap());
    }
    hsm.destroy_wrap_key(FIRST_WRAP_KEY).await.expect("destroying again is harmless");
    assert!(hsm.verify_signature(&moved, message.clone(), signature.clone()).await.unwrap());
    let (old_signature, old) = (&keys[1].0, &keys[1].1);
    let answer = hsm.verify_signature(old, message.clone(), old_signature.clone()).await;
    assert!(matches!(answer, Err(HsmError::Failed(_))), "{answer:?}");
    assert!(matches!(hsm.rewrap(old, v2).await, Err(HsmError::Failed(_))));
    assert!(hsm.is_healthy());
    hsm.close();
}
