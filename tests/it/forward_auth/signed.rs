//! Signed requests (RFC 9421, signed by PyPI's http-message-signatures) through a real
//! forward-auth gateway (nginx, Caddy): keyward rebuilds the signature base from the
//! `X-Forwarded-*` headers the gateway sets and the client's headers it copies. The gateway
//! sends no body: a body must be covered by a signed Content-Digest, which the upstream checks.

use super::Gateway;
use crate::{
    common::Instance,
    signing::{create_signing_key, signed_headers},
};

const BODY: &[u8] = br#"{"order": 42}"#;

/// The signed request's headers, without `content-length` (set for the body sent).
fn sendable(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().filter(|(name, _)| name != "content-length").map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

/// Valid → 200 with the signer's identity; replayed, a covered header or the target changed, or
/// a body without a covered digest → 401. Requests are sent with `Host: localhost`.
pub async fn signed_requests(kw: &Instance, gateway: &Gateway) {
    let (id, secret) = create_signing_key(kw, "signed-client", &["orders:read"], &[]).await;
    let cover = ["--cover", "@method", "--cover", "@authority", "--cover", "@target-uri", "--cover", "content-type"];
    let sign = |nonce: &str, extra: &[&str]| {
        let options: Vec<&str> =
            ["--url", "http://localhost/orders/1?page=2"].iter().chain(&cover).chain(extra).copied().collect();
        signed_headers(&id, &secret, nonce, &options)
    };
    let refused = |reply: &super::Reply, what: &str| {
        assert_eq!((reply.status, reply.error()), (401, "invalid_key".to_owned()), "{what}: {reply:?}");
    };

    let signed = sign("nonce-1", &[]);
    let reply = gateway.send("POST", "/orders/1?page=2", &sendable(&signed), BODY).await;
    let seen = reply.upstream_saw();
    assert_eq!(seen.get("x-keyward-key-id"), Some(&id), "{seen:?}");
    assert_eq!(seen.get("x-keyward-key-name").map(String::as_str), Some("signed-client"));
    // The upstream gets what it needs to check that the digest matches the body.
    for header in ["content-digest", "signature-input", "signature"] {
        assert!(seen.contains_key(header), "the upstream gets {header}: {seen:?}");
    }

    refused(&gateway.send("POST", "/orders/1?page=2", &sendable(&signed), BODY).await, "replayed");
    let mut changed = sign("nonce-2", &[]);
    changed.iter_mut().filter(|(n, _)| n == "content-type").for_each(|(_, v)| *v = "application/jsom".into());
    refused(&gateway.send("POST", "/orders/1?page=2", &sendable(&changed), BODY).await, "a covered header changed");
    let retargeted = sign("nonce-3", &[]);
    refused(&gateway.send("POST", "/orders/1?page=3", &sendable(&retargeted), BODY).await, "the target changed");
    let uncovered = sign("nonce-4", &["--no-digest"]);
    assert!(!uncovered.iter().any(|(name, _)| name == "content-digest"));
    refused(&gateway.send("POST", "/orders/1?page=2", &sendable(&uncovered), BODY).await, "a body, no digest");

    // A signed GET without a body needs no digest; @request-target and @query-param rebuilt
    // from X-Forwarded-Uri.
    let options = [
        "--method",
        "GET",
        "--no-body",
        "--url",
        "http://localhost/orders/1?page=2&q=a%20b",
        "--cover",
        "@method",
        "--cover",
        "@scheme",
        "--cover",
        "@request-target",
        "--cover",
        r#""@query-param";name="q""#,
    ];
    let signed = signed_headers(&id, &secret, "nonce-5", &options);
    let reply = gateway.get("/orders/1?page=2&q=a%20b", &sendable(&signed)).await;
    assert_eq!(reply.upstream_saw().get("x-keyward-key-id"), Some(&id), "{reply:?}");
}
