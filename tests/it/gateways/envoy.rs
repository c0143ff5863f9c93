//! Envoy's external authorization against a real keyward: a real Envoy running
//! `deploy/envoy/envoy.yaml`, an echo upstream, and curl as the end client. What the client gets
//! back and what the upstream receives, for every decision; and Envoy failing closed when it
//! cannot ask keyward.

use std::{fs, time::SystemTime};

use keyward::proto;
use serde_json::{Value, json};

use super::{
    envoy_proxy::{self, Envoy},
    upstream::Upstream,
};
use crate::common::Instance;

/// Creates a key as root from `request` (its name set); returns (key, key id).
async fn create(kw: &Instance, name: &str, request: proto::CreateKeyRequest) -> (String, String) {
    let request = proto::CreateKeyRequest { name: name.into(), ..request };
    let created = kw.root_keys().await.create_key(request).await.expect("CreateKey").into_inner();
    (created.key, created.info.unwrap().key_id)
}

fn in_seconds(secs: i64) -> prost_types::Timestamp {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    prost_types::Timestamp { seconds: now + secs, nanos: 0 }
}

/// The headers the upstream echoed (each a list of values), from a 200 reply.
fn upstream_saw(reply: &super::curl::Reply) -> Value {
    assert_eq!(reply.status, 200, "{reply:#?}");
    reply.json()["headers"].clone()
}

/// A refusal: status, JSON error code, and no trace of the upstream.
fn assert_refused(reply: &super::curl::Reply, status: u16, error: &str) {
    assert_eq!((reply.status, reply.json()), (status, json!({ "error": error })), "{reply:#?}");
    assert_eq!(reply.header("content-type"), "application/json");
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_gives_clients_keywards_decision_and_the_upstream_only_the_identity() {
    let kw = Instance::started_quiet().await;
    let upstream = Upstream::start().await;
    let (gateway, _) = kw.create_key("envoy", &["keyward:verify"]).await;
    let envoy = Envoy::start(kw.addr(), upstream.addr, &gateway).await;
    let (key, id) = kw.create_key("orders-client", &["orders:read"]).await;
    let bearer = format!("Bearer {key}");

    // Allowed, the key as a bearer token; identity headers the client made up are replaced.
    let reply = envoy
        .get("/orders/42", &[("authorization", &bearer), ("x-keyward-key-id", "forged"), ("x-keyward-owner", "forged")])
        .await;
    let seen = upstream_saw(&reply);
    assert_eq!(seen["x-keyward-key-id"], json!([id]));
    assert_eq!(seen["x-keyward-key-name"], json!(["orders-client"]));
    assert_eq!(seen["x-keyward-scopes"], json!(["orders:read"]));
    assert_eq!(seen.get("x-keyward-owner"), None, "this key has no owner: the client's header is dropped");
    assert_eq!(seen.get("authorization"), None, "the upstream never sees the key");
    assert_eq!(reply.json()["path"], "/orders/42");

    // Allowed, the key in x-api-key (another header the client sends is left alone).
    let reply = envoy.get("/anything", &[("x-api-key", &key), ("authorization", "Basic dXNlcjpwdw==")]).await;
    let seen = upstream_saw(&reply);
    assert_eq!(seen["x-keyward-key-id"], json!([id]));
    assert_eq!(seen.get("x-api-key"), None, "the upstream never sees the key");
    assert_eq!(seen["authorization"], json!(["Basic dXNlcjpwdw=="]));

    // A route with ext_authz off: no key needed, and no made-up identity passes.
    let seen = upstream_saw(&envoy.get("/public/status", &[("x-keyward-key-id", "forged")]).await);
    assert_eq!(seen.get("x-keyward-key-id"), None);

    // No key, a bad key: 401 with a bearer challenge; the upstream is not reached.
    let before = upstream.requests();
    let reply = envoy.get("/orders/42", &[]).await;
    assert_refused(&reply, 401, "missing_key");
    assert_eq!(reply.header("www-authenticate"), "Bearer");
    let reply = envoy.get("/orders/42", &[("authorization", "Bearer kw_not-a-key")]).await;
    assert_refused(&reply, 401, "invalid_key");
    assert_eq!(reply.header("www-authenticate"), "Bearer");

    // A valid key without the route's required scope: 403; the same key elsewhere passes.
    let (reader, _) = kw.create_key("reports", &["reports:read"]).await;
    assert_refused(&envoy.get("/orders/42", &[("x-api-key", &reader)]).await, 403, "insufficient_scope");
    assert_eq!(upstream.requests(), before, "no refused request reached the upstream");
    assert_eq!(envoy.get("/reports", &[("x-api-key", &reader)]).await.status, 200);

    // The client address keyward checks is the one Envoy saw (curl on 127.0.0.1), not one the
    // client claims in x-forwarded-for.
    let from = |cidr: &str| proto::CreateKeyRequest { allowed_cidrs: vec![cidr.into()], ..Default::default() };
    let (loopback_only, _) = create(&kw, "loopback-only", from("127.0.0.1/32")).await;
    let (elsewhere_only, _) = create(&kw, "elsewhere-only", from("198.51.100.0/24")).await;
    assert_eq!(envoy.get("/", &[("x-api-key", &loopback_only)]).await.status, 200);
    let claimed = [("x-api-key", elsewhere_only.as_str()), ("x-forwarded-for", "198.51.100.7")];
    assert_refused(&envoy.get("/", &claimed).await, 403, "ip_not_allowed");

    // Rate limited: 429 with retry-after.
    let limited = proto::CreateKeyRequest {
        rate_limit: Some(proto::RateLimit {
            limit: 1,
            window: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        }),
        ..Default::default()
    };
    let (limited, _) = create(&kw, "limited", limited).await;
    assert_eq!(envoy.get("/", &[("x-api-key", &limited)]).await.status, 200);
    let reply = envoy.get("/", &[("x-api-key", &limited)]).await;
    assert_refused(&reply, 429, "rate_limited");
    let wait: u64 = reply.header("retry-after").parse().expect("retry-after in seconds");
    assert!((1..=3600).contains(&wait), "retry-after {wait}");

    // A quota: the client sees what is left; when nothing is, 429.
    let (metered, _) =
        create(&kw, "metered", proto::CreateKeyRequest { remaining: Some(2), ..Default::default() }).await;
    for left in ["1", "0"] {
        let reply = envoy.get("/", &[("x-api-key", &metered)]).await;
        assert_eq!((reply.status, reply.header("x-ratelimit-remaining")), (200, left));
    }
    assert_refused(&envoy.get("/", &[("x-api-key", &metered)]).await, 429, "quota_exceeded");

    // Revoked: refused on the very next request.
    let (revoked, revoked_id) = kw.create_key("to-revoke", &[]).await;
    assert_eq!(envoy.get("/", &[("x-api-key", &revoked)]).await.status, 200);
    let revoke = proto::RevokeKeyRequest { key_id: revoked_id, reason: "test".into() };
    kw.root_keys().await.revoke_key(revoke).await.unwrap();
    assert_refused(&envoy.get("/", &[("x-api-key", &revoked)]).await, 401, "invalid_key");

    // Expired: valid until the server's clock passes expires_at, then 401 like any bad key.
    let expiring = proto::CreateKeyRequest { expires_at: Some(in_seconds(60)), ..Default::default() };
    let (expiring, _) = create(&kw, "expiring", expiring).await;
    assert_eq!(envoy.get("/", &[("authorization", &format!("Bearer {expiring}"))]).await.status, 200);
    kw.advance_clock(120);
    let reply = envoy.get("/", &[("authorization", &format!("Bearer {expiring}"))]).await;
    assert_refused(&reply, 401, "invalid_key");
    assert_eq!(reply.header("www-authenticate"), "Bearer");

    // The access log names the key of each allowed request (ext_authz dynamic metadata), and
    // flags keyward's refusals UAEX.
    let log = envoy.access_log().await;
    let first = &log[0];
    assert_eq!((first["status"].as_u64(), first["key_id"].as_str()), (Some(200), Some(id.as_str())), "{first}");
    assert_eq!(first["key_name"], "orders-client");
    let refusals: Vec<&Value> = log.iter().filter(|l| l["status"] == 401).collect();
    assert!(!refusals.is_empty() && refusals.iter().all(|l| l["flags"] == "UAEX" && l["key_id"].is_null()), "{log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_fails_closed_with_503_when_it_cannot_ask_keyward() {
    let mut kw = Instance::started_quiet().await;
    let upstream = Upstream::start().await;
    let (gateway, _) = kw.create_key("envoy", &["keyward:verify"]).await;
    let (key, _) = kw.create_key("client", &[]).await;

    // A gateway key without keyward:verify: every Check is refused, so every request is.
    let (not_a_gateway, _) = kw.create_key("not-a-gateway", &["keyward:keys:read"]).await;
    let misconfigured = Envoy::start(kw.addr(), upstream.addr, &not_a_gateway).await;
    assert_refused(&misconfigured.get("/", &[("x-api-key", &key)]).await, 503, "keyward_unavailable");
    drop(misconfigured);

    let envoy = Envoy::start(kw.addr(), upstream.addr, &gateway).await;
    assert_eq!(envoy.get("/", &[("x-api-key", &key)]).await.status, 200);
    let reached = upstream.requests();
    kw.stop().await;
    for _ in 0..3 {
        let reply = envoy.get("/", &[("x-api-key", &key)]).await;
        assert_refused(&reply, 503, "keyward_unavailable");
    }
    assert_eq!(upstream.requests(), reached, "nothing reached the upstream while keyward was down");
    // Routes that do not ask keyward still work.
    assert_eq!(envoy.get("/public/status", &[]).await.status, 200);
}

#[test]
fn the_envoy_doc_shows_the_deploy_file_as_it_is() {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gateways/envoy.md")).unwrap();
    let file = fs::read_to_string(envoy_proxy::CONFIG).unwrap();
    assert!(
        doc.contains(&file),
        "docs/gateways/envoy.md must show deploy/envoy/envoy.yaml as it is (copy it in again)"
    );
}
