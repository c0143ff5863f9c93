//! Signed requests (RFC 9421, signed by PyPI's http-message-signatures) through a real Envoy
//! running `deploy/envoy/envoy.yaml`: verified by keyward from the Check (ext_authz), the body
//! Envoy sends on `/orders/` (`with_request_body`) checked against the covered Content-Digest.

use serde_json::json;

use super::{curl::Reply, envoy_proxy::Envoy, upstream::Upstream};
use crate::{
    common::Instance,
    signing::{create_signing_key, signed_headers},
};

const BODY: &str = r#"{"order": 42}"#;

/// The signed request's headers, without `content-length` (curl sets it for the body it sends).
fn sendable(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().filter(|(name, _)| name != "content-length").map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

fn assert_refused(reply: &Reply, error: &str) {
    assert_eq!((reply.status, reply.json()), (401, json!({ "error": error })), "{reply:#?}");
}

/// Replaces the value of header `name`.
fn with(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.clone(), if n == name { value.to_owned() } else { v.clone() })).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_verifies_signed_requests_and_checks_their_body_against_the_covered_digest() {
    let kw = Instance::started_quiet().await;
    let upstream = Upstream::start().await;
    let (gateway, _) = kw.create_key("envoy", &["keyward:verify"]).await;
    let envoy = Envoy::start(kw.addr(), upstream.addr, &gateway).await;
    let (id, secret) = create_signing_key(&kw, "signed-client", &["orders:read"], &[]).await;
    let origin = format!("http://{}", envoy.listener);
    let url = format!("{origin}/orders/1?page=2");
    let cover = ["--cover", "@method", "--cover", "@authority", "--cover", "@target-uri", "--cover", "content-type"];
    let sign = |nonce: &str, extra: &[&str]| {
        let options: Vec<&str> = ["--url", url.as_str()].iter().chain(&cover).chain(extra).copied().collect();
        signed_headers(&id, &secret, nonce, &options)
    };

    // Valid: the upstream gets the request, its body and who signed it.
    let signed = sign("nonce-1", &[]);
    let reply = envoy.send("POST", "/orders/1?page=2", &sendable(&signed), Some(BODY)).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-keyward-key-id"], json!([id]));
    assert_eq!(seen["x-keyward-key-name"], json!(["signed-client"]));
    assert_eq!(seen["content-length"], json!(["13"]), "the body went on to the upstream");
    // Chunked (no content-length): Envoy still sends keyward the whole body.
    let chunked = sign("nonce-8", &[]);
    let mut headers = sendable(&chunked);
    headers.push(("transfer-encoding", "chunked"));
    let reply = envoy.send("POST", "/orders/1?page=2", &headers, Some(BODY)).await;
    assert_eq!(reply.json()["headers"]["x-keyward-key-id"], json!([id]), "{reply:#?}");
    let tampered = sign("nonce-9", &[]);
    let mut headers = sendable(&tampered);
    headers.push(("transfer-encoding", "chunked"));
    let reply = envoy.send("POST", "/orders/1?page=2", &headers, Some(r#"{"order": 43}"#)).await;
    assert_refused(&reply, "content_digest_mismatch");
    let reached = upstream.requests();

    // The same request again: a replay.
    let replayed = envoy.send("POST", "/orders/1?page=2", &sendable(&signed), Some(BODY)).await;
    assert_refused(&replayed, "invalid_key");
    // One byte of a covered header changed.
    let changed = with(&sign("nonce-2", &[]), "content-type", "application/jsom");
    assert_refused(&envoy.send("POST", "/orders/1?page=2", &sendable(&changed), Some(BODY)).await, "invalid_key");
    // One byte of the covered target changed.
    let retargeted = sign("nonce-3", &[]);
    assert_refused(&envoy.send("POST", "/orders/1?page=3", &sendable(&retargeted), Some(BODY)).await, "invalid_key");
    // One byte of the body changed: its digest (covered, and signed) no longer matches.
    let tampered = sign("nonce-4", &[]);
    let reply = envoy.send("POST", "/orders/1?page=2", &sendable(&tampered), Some(r#"{"order": 43}"#)).await;
    assert_refused(&reply, "content_digest_mismatch");
    // A body the signature does not cover (no content-digest): refused.
    let uncovered = sign("nonce-5", &["--no-digest"]);
    assert!(!uncovered.iter().any(|(name, _)| name == "content-digest"));
    assert_refused(&envoy.send("POST", "/orders/1?page=2", &sendable(&uncovered), Some(BODY)).await, "invalid_key");
    assert_eq!(upstream.requests(), reached, "no refused request reached the upstream");
    // The genuine request whose tampered copy was refused still passes: the refusal did not
    // spend its nonce.
    let reply = envoy.send("POST", "/orders/1?page=2", &sendable(&tampered), Some(BODY)).await;
    assert_eq!(reply.status, 200, "{reply:#?}");

    // A route where Envoy does not send keyward the body: a covered digest cannot be checked.
    let elsewhere = format!("{origin}/reports");
    let options = ["--url", elsewhere.as_str(), "--cover", "@method", "--cover", "@target-uri"];
    let signed = signed_headers(&id, &secret, "nonce-6", &options);
    assert_refused(&envoy.send("POST", "/reports", &sendable(&signed), Some(BODY)).await, "body_incomplete");

    // A signed GET without a body, covering the derived components keyward rebuilds.
    let query = format!("{origin}/reports?page=2&q=a%20b");
    let options = [
        "--method",
        "GET",
        "--no-body",
        "--url",
        query.as_str(),
        "--cover",
        "@method",
        "--cover",
        "@scheme",
        "--cover",
        "@authority",
        "--cover",
        "@request-target",
        "--cover",
        "@path",
        "--cover",
        "@query",
        "--cover",
        r#""@query-param";name="q""#,
    ];
    let signed = signed_headers(&id, &secret, "nonce-7", &options);
    let reply = envoy.send("GET", "/reports?page=2&q=a%20b", &sendable(&signed), None).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.json()["headers"]["x-keyward-key-id"], json!([id]));
    let reply = envoy.send("GET", "/reports?page=2&q=a%20c", &sendable(&signed), None).await;
    assert_refused(&reply, "invalid_key");
}
