//! `RequestSigner` against independent checks: keyward itself (VerifySignature through
//! `Client::verify_signature`, and its forward-auth endpoint rebuilding the base from the
//! forwarded request) and PyPI's http-message-signatures (another RFC 9421 implementation).

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use keyward_client::{Client, DenyReason, RequestSigner, SigningSecret, Verification, VerifyOptions, proto};

use crate::keyward::Keyward;

/// A signing key made as root: its id and secret.
async fn signing_key(kw: &Keyward, scopes: &[&str]) -> (String, SigningSecret) {
    let created = kw
        .admin()
        .await
        .create_key(proto::CreateKeyRequest {
            name: "signer".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            kind: proto::KeyKind::Signing as i32,
            ..Default::default()
        })
        .await
        .expect("CreateKey")
        .into_inner();
    assert!(created.key.is_empty() && created.signing_secret.len() == 32);
    (created.info.unwrap().key_id, SigningSecret::new(created.signing_secret))
}

fn order(body: &[u8]) -> Request<Vec<u8>> {
    Request::post("https://api.example.com/orders?page=2")
        .header("content-type", "application/json")
        .body(body.to_vec())
        .unwrap()
}

fn scopes(scopes: &[&str]) -> VerifyOptions {
    VerifyOptions { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

#[tokio::test]
async fn keyward_verifies_what_the_signer_signed_once_and_refuses_its_replay() {
    let kw = Keyward::started().await;
    let client = Client::builder(kw.endpoint()).caller_key(kw.service_key().await).connect().await.unwrap();
    let (key_id, secret) = signing_key(&kw, &["orders:write"]).await;
    let signer = RequestSigner::new(&key_id, secret);

    let mut request = order(br#"{"order": 42}"#);
    let signed = signer.sign(&mut request).unwrap();
    let verified = client
        .verify_signature(&signed.signature_base, &signed.signature, scopes(&["orders:write"]))
        .await
        .unwrap()
        .valid()
        .expect("VALID");
    assert_eq!(verified.id, key_id);
    let again = client.verify_signature(&signed.signature_base, &signed.signature, scopes(&["orders:write"])).await;
    assert_eq!(again.unwrap(), Verification::Denied { reason: DenyReason::Replayed, retry_after: None });

    let mut other = order(br#"{"order": 43}"#);
    let signed = signer.sign(&mut other).unwrap();
    let mut tampered = signed.signature_base.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let answer = client.verify_signature(&tampered, &signed.signature, scopes(&[])).await.unwrap();
    assert_eq!(answer, Verification::Denied { reason: DenyReason::Invalid, retry_after: None });
    let answer = client.verify_signature(&signed.signature_base, &signed.signature, scopes(&["users:read"])).await;
    assert_eq!(answer.unwrap(), Verification::Denied { reason: DenyReason::InsufficientScope, retry_after: None });
}

#[tokio::test]
async fn keywards_forward_auth_rebuilds_the_base_from_the_forwarded_request() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut kw = Keyward::started().await;
    kw.stop().await;
    kw.serve_args = vec!["--http-listen".into(), format!("127.0.0.1:{port}")];
    kw.start().await;
    let gateway_key = kw.service_key().await;
    let (key_id, secret) = signing_key(&kw, &[]).await;
    let signer = RequestSigner::new(&key_id, secret);

    // What a client sends through the gateway (a GET: no body to digest).
    let mut request = Request::get("https://api.example.com/orders?page=2").body(Vec::<u8>::new()).unwrap();
    signer.sign(&mut request).unwrap();
    let ask = |request: &Request<Vec<u8>>| {
        // The gateway's subrequest: the original request's headers and the X-Forwarded-* ones.
        let mut ask = Request::get(format!("http://127.0.0.1:{port}/v1/authorize"))
            .header("x-keyward-gateway-key", gateway_key.as_str())
            .header("x-forwarded-method", request.method().as_str())
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .header("x-forwarded-uri", "/orders?page=2");
        for name in ["signature-input", "signature"] {
            ask = ask.header(name, request.headers()[name].clone());
        }
        ask.body(Empty::<Bytes>::new()).unwrap()
    };
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let allowed = http.request(ask(&request)).await.expect("keyward answers");
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()["x-keyward-key-id"], key_id.as_str());
    let replayed = http.request(ask(&request)).await.expect("keyward answers");
    assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED, "the same signed request again");
}

/// Runs tests/python/verify_signature.py on `request`: whether http-message-signatures accepts it,
/// and what it printed.
fn python_verifies(request: &Request<Vec<u8>>, secret_hex: &str) -> (bool, String) {
    let python = which_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/verify_signature.py");
    let headers: Vec<(String, String)> =
        request.headers().iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())).collect();
    let message = serde_json::json!({
        "method": request.method().as_str(),
        "url": request.uri().to_string(),
        "headers": headers,
        "body_b64": STANDARD.encode(request.body()),
    });
    let mut child = Command::new(python)
        .arg(script)
        .arg(secret_hex)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn which_python() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import http_message_signatures, requests"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(ok, "python3 with PyPI's http-message-signatures is needed: run ./scripts/install-deps.sh");
    "python3"
}

#[test]
fn an_independent_rfc_9421_implementation_verifies_the_signature_and_the_body_digest() {
    let secret_hex = "5f".repeat(32);
    let signer =
        RequestSigner::new("01a2095b-a07a-7423-8736-f821a5735572", SigningSecret::from_hex(&secret_hex).unwrap())
            .covering(["@method", "@authority", "@path", "@query", "content-type"]);
    let mut request = order(br#"{"order": 42}"#);
    signer.sign(&mut request).unwrap();
    let (ok, printed) = python_verifies(&request, &secret_hex);
    assert!(ok, "{printed}");
    assert!(printed.contains("verified") && printed.contains("content-digest"), "{printed}");

    let mut body_changed = request.clone();
    *body_changed.body_mut() = br#"{"order": 4200}"#.to_vec();
    let (ok, printed) = python_verifies(&body_changed, &secret_hex);
    assert!(!ok && printed.contains("Content-Digest does not match"), "a changed body must not verify: {printed}");

    let (ok, printed) = python_verifies(&request, &"60".repeat(32));
    assert!(!ok && printed.contains("Signature did not match"), "another secret must not verify: {printed}");
}
