//! Signing keys end to end: requests signed by an independent RFC 9421 implementation (PyPI's
//! http-message-signatures, driven by tests/signing/sign_request.py) checked by a real keyward
//! on a real SoftHSM2 token; and the signing secret found nowhere keyward writes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use keyward::proto::{self, KeyKind, VerifyCode};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse,
    attribute_context::{HttpRequest, Request as HttpRequestWrapper},
    check_response::HttpResponse,
};

use crate::common::{Instance, MasterClient, pkcs11_tool, require_tool};

/// A request signed by the Python library: the signature base and the signature.
pub(crate) struct Signed {
    base: Vec<u8>,
    signature: Vec<u8>,
    /// The request's headers the library set: Signature-Input, Signature, Content-Digest.
    headers: Vec<(String, String)>,
}

fn python() -> PathBuf {
    let python = require_tool("python3", "sudo apt-get install python3");
    let ok = Command::new(&python).args(["-c", "import http_message_signatures, requests"]).status().unwrap();
    assert!(
        ok.success(),
        "PyPI's http-message-signatures is not installed: run ./scripts/install-deps.sh \
         (or `pip install http-message-signatures`)"
    );
    python
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// What sign_request.py printed for a request signed by `key_id` with `secret` at `created`,
/// with its `options` (`--url`, `--method`, `--cover`, …).
fn run_signer(key_id: &str, secret: &[u8], created: u64, nonce: &str, options: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signing/sign_request.py");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new(python())
        .arg(script)
        .args([key_id, &hex, &created.to_string(), nonce])
        .args(options)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The headers of a request the Python library signed now with `options` (sign_request.py's),
/// lower-case names: what a client sends a gateway, besides the body.
pub fn signed_headers(key_id: &str, secret: &[u8], nonce: &str, options: &[&str]) -> Vec<(String, String)> {
    let printed = run_signer(key_id, secret, now(), nonce, options);
    let headers = printed["headers"].as_object().expect("the signed request's headers");
    headers.iter().map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned())).collect()
}

pub(crate) fn sign(key_id: &str, secret: &[u8], created: u64, nonce: &str) -> Signed {
    let printed = run_signer(key_id, secret, created, nonce, &[]);
    let field = |name: &str| STANDARD.decode(printed[name].as_str().unwrap()).unwrap();
    let text = |name: &str| printed[name].as_str().unwrap().to_owned();
    let headers = vec![
        ("signature-input".into(), text("signature_input")),
        ("signature".into(), text("signature_header")),
        ("content-digest".into(), text("content_digest")),
        ("content-length".into(), "13".into()),
    ];
    Signed { base: field("signature_base"), signature: field("signature"), headers }
}

async fn check(kw: &Instance, signed: &Signed, scopes: &[&str], client_ip: &str) -> proto::VerifyKeyResponse {
    kw.root_verifier()
        .await
        .verify_signature(signed.request(scopes, client_ip))
        .await
        .expect("VerifySignature")
        .into_inner()
}

impl Signed {
    pub(crate) fn request(&self, scopes: &[&str], client_ip: &str) -> proto::VerifySignatureRequest {
        proto::VerifySignatureRequest {
            signature_base: self.base.clone(),
            signature: self.signature.clone(),
            required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            client_ip: client_ip.into(),
            cost: None,
        }
    }
}

pub async fn create_signing_key(kw: &Instance, name: &str, scopes: &[&str], cidrs: &[&str]) -> (String, Vec<u8>) {
    let created = kw
        .root_keys()
        .await
        .create_key(proto::CreateKeyRequest {
            name: name.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            allowed_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            kind: KeyKind::Signing as i32,
            ..Default::default()
        })
        .await
        .expect("CreateKey")
        .into_inner();
    let info = created.info.unwrap();
    assert_eq!(info.kind(), KeyKind::Signing);
    assert_eq!(created.signing_secret.len(), 32);
    assert!(created.key.is_empty(), "a signing key hands out no bearer key string");
    (info.key_id, created.signing_secret)
}

#[tokio::test]
async fn requests_signed_by_an_independent_rfc_9421_library_verify_once_and_policies_apply() {
    let mut kw = Instance::started().await;
    let (id, secret) = create_signing_key(&kw, "orders-client", &["orders:*"], &[]).await;

    let signed = sign(&id, &secret, now(), "nonce-1");
    let text = String::from_utf8(signed.base.clone()).unwrap();
    assert!(text.contains("\"content-digest\": sha-256=:"), "the library covered the body: {text}");
    let valid = check(&kw, &signed, &["orders:read"], "203.0.113.5").await;
    assert_eq!((valid.code(), valid.valid, valid.key_id.as_str()), (VerifyCode::Valid, true, id.as_str()));
    assert_eq!(valid.scopes, ["orders:*"]);

    assert_eq!(check(&kw, &signed, &["orders:read"], "203.0.113.5").await.code(), VerifyCode::Replayed);
    let stale = sign(&id, &secret, now() - 600, "nonce-2");
    assert_eq!(check(&kw, &stale, &[], "").await.code(), VerifyCode::SignatureExpired);
    let mut changed = sign(&id, &secret, now(), "nonce-3");
    let last = changed.base.len() - 3;
    changed.base[last] ^= 1;
    assert_eq!(check(&kw, &changed, &[], "").await.code(), VerifyCode::Invalid, "one byte of the base changed");
    let scoped = sign(&id, &secret, now(), "nonce-4");
    assert_eq!(check(&kw, &scoped, &["billing:read"], "").await.code(), VerifyCode::InsufficientScope);

    let (fenced, fenced_secret) = create_signing_key(&kw, "fenced", &[], &["10.0.0.0/8"]).await;
    let outside = sign(&fenced, &fenced_secret, now(), "nonce-1");
    assert_eq!(check(&kw, &outside, &[], "203.0.113.5").await.code(), VerifyCode::IpNotAllowed);
    let inside = sign(&fenced, &fenced_secret, now(), "nonce-2");
    assert_eq!(check(&kw, &inside, &[], "10.1.2.3").await.code(), VerifyCode::Valid);

    let keys = kw.root_keys().await;
    let revoke = proto::RevokeKeyRequest { key_id: id.clone(), ..Default::default() };
    keys.clone().revoke_key(revoke).await.unwrap();
    let after_revoke = sign(&id, &secret, now(), "nonce-5");
    assert_eq!(check(&kw, &after_revoke, &[], "").await.code(), VerifyCode::Revoked);

    // A master key rotation re-wraps signing secrets under a new wrapping key: they keep working.
    kw.master(Some(&kw.root_key)).await.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap();
    let rotated = sign(&fenced, &fenced_secret, now(), "nonce-3");
    assert_eq!(check(&kw, &rotated, &[], "10.1.2.3").await.code(), VerifyCode::Valid);

    // The secret is nowhere keyward writes: trace-level logs, the database, the token files.
    assert!(kw.stop().await.success());
    let logs = kw.logs();
    for secret in [&secret, &fenced_secret] {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!logs.contains(&hex) && !logs.contains(&STANDARD.encode(secret)), "a signing secret in the logs");
        assert!(!logs.contains(&format!("{secret:?}")), "a signing secret in the logs");
        assert!(!any_file_contains(&kw.data_dir, secret), "a signing secret in the data directory");
    }
}

async fn master_status(m: &mut MasterClient) -> proto::MasterKeyStatus {
    let request = proto::GetMasterKeyStatusRequest { skip_counts: false };
    m.get_master_key_status(request).await.expect("GetMasterKeyStatus").into_inner()
}

fn version(s: &proto::MasterKeyStatus, v: u32) -> proto::MasterKeyVersionInfo {
    s.versions.iter().find(|x| x.version == v).cloned().unwrap_or_else(|| panic!("no v{v}: {s:?}"))
}

/// The token's secret keys as pkcs11-tool (OpenSC, an independent PKCS#11 client) lists them.
fn token_keys(kw: &Instance, label: Option<&str>) -> String {
    let mut args = vec!["--list-objects", "--type", "secrkey"];
    if let Some(label) = label {
        args.extend(["--label", label]);
    }
    let out = pkcs11_tool(kw, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn master_rotation_rewraps_signing_secrets_in_the_hsm_and_retiring_destroys_the_old_wrapping_key() {
    let kw = Instance::started().await;
    let (id, secret) = create_signing_key(&kw, "client", &[], &[]).await;
    let (revoked, revoked_secret) = create_signing_key(&kw, "gone", &[], &[]).await;
    let revoke = proto::RevokeKeyRequest { key_id: revoked.clone(), ..Default::default() };
    kw.root_keys().await.revoke_key(revoke).await.unwrap();
    let before = [sign(&id, &secret, now(), "before-1"), sign(&id, &secret, now(), "before-2")];
    let mut master = kw.master(Some(&kw.root_key)).await;
    assert_eq!(master_status(&mut master).await.current_wrap_version, 1);

    let rotated = master.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap().into_inner();
    assert_eq!((rotated.current_version, rotated.current_wrap_version), (2, 2));
    let listing = token_keys(&kw, Some("keyward-wrap-v2"));
    assert!(listing.contains("Secret Key Object; AES length 32"), "{listing}");
    assert!(listing.contains("sensitive, always sensitive, never extractable, local"), "{listing}");
    assert!(listing.contains("Usage:      wrap, unwrap"), "{listing}");
    let read = pkcs11_tool(&kw, &["--read-object", "--type", "secrkey", "--label", "keyward-wrap-v2"]);
    assert!(!read.status.success() && read.stdout.is_empty(), "the wrapping key value was read");
    let (fresh, fresh_secret) = create_signing_key(&kw, "fresh", &[], &[]).await;

    // The background job re-wraps the live key's secret under v2 (the revoked one's stays).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let migrated = loop {
        let s = master_status(&mut master).await;
        if s.migration.is_none() && s.signing_keys_pending == 0 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the re-wrap did not finish in 60 s: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (v1, v2) = (version(&migrated, 1), version(&migrated, 2));
    assert_eq!((v1.signing_keys_using, v2.signing_keys_using), (0, 2), "{migrated:?}");
    assert!(v1.wrap_key_live && v2.wrap_key_live, "both until v1 is retired");
    assert_eq!(check(&kw, &before[0], &[], "").await.code(), VerifyCode::Valid, "signed before the rotation");
    let during = sign(&id, &secret, now(), "after-1");
    assert_eq!(check(&kw, &during, &[], "").await.code(), VerifyCode::Valid);

    // The root key's digest moves to v2 with its use; then v1 can go, wrapping key included.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let retired = loop {
        match master.retire_master_key(proto::RetireMasterKeyRequest { version: 1 }).await {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                assert!(!e.message().contains("signing"), "the secrets were re-wrapped: {}", e.message());
                assert!(std::time::Instant::now() < deadline, "v1 still needed after 60 s: {}", e.message());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("RetireMasterKey: {e:?}"),
        }
    };
    assert!(!version(&retired, 1).wrap_key_live);
    let listing = token_keys(&kw, None);
    assert!(!listing.contains("keyward-wrap-v1") && !listing.contains("keyward-master-v1"), "{listing}");
    assert!(listing.contains("keyward-wrap-v2"), "{listing}");

    assert_eq!(check(&kw, &before[1], &[], "").await.code(), VerifyCode::Valid, "signed before the rotation");
    let after = sign(&id, &secret, now(), "after-2");
    assert_eq!(check(&kw, &after, &[], "").await.code(), VerifyCode::Valid);
    let fresh = sign(&fresh, &fresh_secret, now(), "after-1");
    assert_eq!(check(&kw, &fresh, &[], "").await.code(), VerifyCode::Valid);
    // The revoked key's secret stayed under v1: it can no longer be unwrapped, so it is invalid.
    let gone = sign(&revoked, &revoked_secret, now(), "after-1");
    assert_eq!(check(&kw, &gone, &[], "").await.code(), VerifyCode::Invalid);
}

fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            any_file_contains(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[tokio::test]
async fn bad_signature_parameters_and_unknown_keys_get_their_codes() {
    let kw = Instance::started().await;
    let (id, secret) = create_signing_key(&kw, "client", &[], &[]).await;
    let signed = sign(&id, &secret, now(), "nonce-1");
    let text = String::from_utf8(signed.base.clone()).unwrap();
    let without_nonce = text.replace(";nonce=\"nonce-1\"", "");
    let rsa = text.replace("alg=\"hmac-sha256\"", "alg=\"rsa-pss-sha512\"");
    for base in [without_nonce, rsa, "\"@method\": GET".to_string()] {
        let bad = Signed { base: base.into_bytes(), signature: signed.signature.clone(), headers: vec![] };
        assert_eq!(check(&kw, &bad, &[], "").await.code(), VerifyCode::BadSignatureParams);
    }
    let unknown = text.replace(&id, "0190f0f0-0000-7000-8000-000000000000");
    let unknown = Signed { base: unknown.into_bytes(), signature: signed.signature.clone(), headers: vec![] };
    assert_eq!(check(&kw, &unknown, &[], "").await.code(), VerifyCode::Invalid);
    // The genuine request still verifies: refused ones did not spend its nonce.
    assert_eq!(check(&kw, &signed, &[], "").await.code(), VerifyCode::Valid);
}

#[tokio::test]
async fn rotating_a_signing_key_hands_out_a_new_secret_once() {
    let kw = Instance::started().await;
    let (id, secret) = create_signing_key(&kw, "client", &[], &[]).await;
    let request = proto::RotateKeyRequest { key_id: id.clone(), grace_period: None };
    let rotated = kw.root_keys().await.rotate_key(request).await.expect("RotateKey").into_inner();
    assert!(rotated.key.is_empty(), "no bearer form");
    assert_eq!(rotated.signing_secret.len(), 32);
    assert_ne!(rotated.signing_secret, secret);
    let successor = rotated.info.unwrap();
    assert_eq!(successor.kind(), KeyKind::Signing);
    let signed = sign(&successor.key_id, &rotated.signing_secret, now(), "nonce-1");
    assert_eq!(check(&kw, &signed, &[], "").await.code(), VerifyCode::Valid);
    let old = sign(&id, &secret, now(), "nonce-1");
    assert_eq!(check(&kw, &old, &[], "").await.code(), VerifyCode::Valid, "during the grace period");
    let wrong = sign(&successor.key_id, &secret, now(), "nonce-2");
    assert_eq!(check(&kw, &wrong, &[], "").await.code(), VerifyCode::Invalid, "the old secret");
}

/// Envoy's Check of the signed request (POST https://api.example.com/orders?page=1), with the
/// body Envoy sends (`with_request_body`, `pack_as_bytes`).
fn ext_authz_check(signed: &Signed, drop_header: Option<&str>, body: &[u8]) -> CheckRequest {
    let headers = signed.headers.iter().filter(|(name, _)| Some(name.as_str()) != drop_header).cloned().collect();
    let http = HttpRequest {
        method: "POST".into(),
        path: "/orders?page=1".into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        headers,
        size: body.len() as i64,
        raw_body: body.to_vec(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(HttpRequestWrapper { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    }
}

fn allowed_key(response: &CheckResponse) -> Option<String> {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-keyward-key-id")
            .map(|h| h.value.clone()),
        _ => None,
    }
}

/// What Envoy's client is told: the key id it was allowed as, or the error code of its refusal.
fn outcome(response: &CheckResponse) -> Result<String, String> {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
            Err(body["error"].as_str().unwrap().to_owned())
        }
        _ => allowed_key(response).ok_or_else(|| format!("{response:?}")),
    }
}

#[tokio::test]
async fn the_gateway_verifies_signed_requests_from_their_headers_and_body() {
    let kw = Instance::started().await;
    let (gateway, _) = kw.create_key("envoy", &["keyward:verify"]).await;
    let (id, secret) = create_signing_key(&kw, "signed-client", &[], &[]).await;
    let mut authz = kw.ext_authz(Some(&gateway)).await;
    const BODY: &[u8] = br#"{"order": 42}"#;
    let mut check = async |signed: &Signed, drop_header: Option<&str>, body: &[u8]| {
        outcome(&authz.check(ext_authz_check(signed, drop_header, body)).await.unwrap().into_inner())
    };

    let signed = sign(&id, &secret, now(), "nonce-1");
    assert_eq!(check(&signed, None, BODY).await, Ok(id.clone()));
    assert_eq!(check(&signed, None, BODY).await, Err("invalid_key".into()), "a replay is refused");

    // A body whose digest the signature does not cover cannot be checked: refused.
    let fresh = sign(&id, &secret, now(), "nonce-2");
    let mut uncovered = fresh.headers.clone();
    for (name, value) in &mut uncovered {
        if name == "signature-input" {
            *value = value.replace(r#" "content-digest""#, "");
        }
    }
    let uncovered = Signed { headers: uncovered, base: vec![], signature: vec![] };
    assert_eq!(check(&uncovered, None, BODY).await, Err("invalid_key".into()));
    // The covered content-digest header missing: refused.
    assert_eq!(check(&fresh, Some("content-digest"), BODY).await, Err("invalid_key".into()));
    // A body that is not the one signed, a body Envoy did not send (or cut short): refused.
    assert_eq!(check(&fresh, None, br#"{"order": 43}"#).await, Err("content_digest_mismatch".into()));
    assert_eq!(check(&fresh, None, b"").await, Err("body_incomplete".into()));
    assert_eq!(check(&fresh, None, &BODY[..12]).await, Err("body_incomplete".into()));
    // None of these spent the nonce: the intact request passes.
    assert_eq!(check(&fresh, None, BODY).await, Ok(id));
}

#[tokio::test]
async fn forward_auth_verifies_signed_requests_from_the_forwarded_headers() {
    use crate::forward_auth::{Target, keyward_with_http, request};
    let kw = keyward_with_http().await;
    let (gateway, _) = kw.create_key("nginx", &["keyward:verify"]).await;
    let (id, secret) = create_signing_key(&kw, "signed-client", &[], &[]).await;
    let signed = sign(&id, &secret, now(), "nonce-1");
    let mut headers: Vec<(&str, &str)> = vec![
        ("x-keyward-gateway-key", gateway.as_str()),
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/orders?page=1"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-content-length", "13"),
    ];
    // The original request's length comes as X-Forwarded-Content-Length (this request has no body).
    headers.extend(signed.headers.iter().filter(|(n, _)| n != "content-length").map(|(n, v)| (n.as_str(), v.as_str())));
    let target = Target::Tcp(kw.http_addr());
    let allowed = request(&target, "GET", "/v1/authorize", &headers).await;
    assert_eq!((allowed.status, allowed.header("x-keyward-key-id")), (200, Some(id.as_str())), "{allowed:?}");
    let replayed = request(&target, "GET", "/v1/authorize", &headers).await;
    assert_eq!((replayed.status, replayed.error()), (401, "invalid_key".into()), "{replayed:?}");
}
