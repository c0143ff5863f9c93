//! The master key as the token holds it: sensitive, never extractable, checked with an
//! independent PKCS#11 client (OpenSC's pkcs11-tool).

use crate::common::{Instance, pkcs11_tool};

#[tokio::test]
async fn the_master_key_value_cannot_be_read_from_the_token() {
    let kw = Instance::init();
    let out = pkcs11_tool(&kw, &["--read-object", "--type", "secrkey", "--label", "keyward-master-v1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the key value was read");
    assert!(out.stdout.is_empty(), "no key bytes on stdout");
    assert!(stderr.contains("CKR_ATTRIBUTE_SENSITIVE"), "{stderr}");
}

#[tokio::test]
async fn the_master_and_audit_keys_are_sensitive_never_extractable_32_byte_secrets() {
    let kw = Instance::init();
    let out = pkcs11_tool(&kw, &["--list-objects", "--type", "secrkey"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Master key v1 and the audit chain key: both made in the token and never out of it.
    assert_eq!(listing.matches("Secret Key Object; Generic secret length 32").count(), 2, "{listing}");
    assert!(listing.contains("label:      keyward-master-v1"), "{listing}");
    assert!(listing.contains("label:      keyward-audit-v1"), "{listing}");
    // With the AES key that wraps signing secrets: 3 keys made in the token, none extractable.
    assert_eq!(listing.matches("sensitive, always sensitive, never extractable, local").count(), 3, "{listing}");
}

#[tokio::test]
async fn the_signing_secret_wrapping_key_is_a_never_extractable_aes_key_that_only_wraps() {
    let kw = Instance::init();
    let out = pkcs11_tool(&kw, &["--list-objects", "--type", "secrkey", "--label", "keyward-wrap-v1"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing.contains("Secret Key Object; AES length 32"), "{listing}");
    assert!(listing.contains("sensitive, always sensitive, never extractable, local"), "{listing}");
    assert!(listing.contains("Usage:      wrap, unwrap"), "{listing}");
    let read = pkcs11_tool(&kw, &["--read-object", "--type", "secrkey", "--label", "keyward-wrap-v1"]);
    assert!(!read.status.success(), "the wrapping key value was read");
    assert!(read.stdout.is_empty(), "no key bytes on stdout");
}

#[tokio::test]
async fn a_token_made_before_signing_keys_gets_its_wrapping_key_when_keyward_serves() {
    let mut kw = Instance::init();
    let out = pkcs11_tool(&kw, &["--delete-object", "--type", "secrkey", "--label", "keyward-wrap-v1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = pkcs11_tool(&kw, &["--list-objects", "--type", "secrkey"]);
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("keyward-wrap-v1"), "deleted");

    kw.start().await;
    let created = kw
        .root_keys()
        .await
        .create_key(keyward::proto::CreateKeyRequest {
            name: "signer".into(),
            kind: keyward::proto::KeyKind::Signing as i32,
            ..Default::default()
        })
        .await
        .expect("a signing key on a token that had no wrapping key")
        .into_inner();
    assert_eq!(created.signing_secret.len(), 32);
    let listing = pkcs11_tool(&kw, &["--list-objects", "--type", "secrkey", "--label", "keyward-wrap-v1"]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains("never extractable"), "made again by serve");
}
