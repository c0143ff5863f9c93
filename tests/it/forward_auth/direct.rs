//! `/v1/authorize` asked directly, as a gateway would: every answer, the gateway's own
//! authentication, scopes from the header and the query, the client from X-Forwarded-For, and
//! `[authz]` rules on X-Forwarded-Method and X-Forwarded-Uri.

use keyward::proto;

use super::{Keys, Target, create_metered, keyward_with_http, request, revoke};
use crate::common::Instance;

/// Asks keyward's `/v1/authorize` (with `query`, e.g. `?scope=a`) as the gateway `gateway_key`.
async fn authorize(kw: &Instance, query: &str, gateway_key: Option<&str>, headers: &[(&str, &str)]) -> super::Reply {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(key) = gateway_key {
        all.push(("x-keyward-gateway-key", key));
    }
    request(&Target::Tcp(kw.http_addr()), "GET", &format!("/v1/authorize{query}"), &all).await
}

async fn create(kw: &Instance, request: proto::CreateKeyRequest) -> String {
    kw.root_keys().await.create_key(request).await.expect("CreateKey").into_inner().key
}

#[tokio::test]
async fn forward_auth_answers_verify_keys_decision_and_refuses_gateways_with_codes_of_their_own() {
    let kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let gw = Some(keys.gateway.as_str());
    let target = Target::Tcp(kw.http_addr());

    let health = request(&target, "GET", "/healthz", &[]).await;
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"serving"}"#));
    let elsewhere = request(&target, "GET", "/v1/verify", &[]).await;
    assert_eq!((elsewhere.status, elsewhere.error()), (404, "not_found".into()));

    // The gateway's own credential: missing, wrong, or without keyward:verify.
    let client = ("x-api-key", keys.client.as_str());
    for (what, gateway_key) in [("no gateway key", None), ("a bad gateway key", Some("kw_nope"))] {
        let refused = authorize(&kw, "", gateway_key, &[client]).await;
        assert_eq!((refused.status, refused.error()), (401, "gateway_unauthenticated".into()), "{what}: {refused:?}");
        assert_eq!(refused.header("www-authenticate"), None, "the end client has nothing to fix: {what}");
    }
    let (reader, _) = kw.create_key("not-a-gateway", &["keyward:keys:read"]).await;
    let refused = authorize(&kw, "", Some(&reader), &[client]).await;
    assert_eq!((refused.status, refused.error()), (403, "gateway_forbidden".into()), "{refused:?}");
    assert_eq!(refused.header("x-keyward-error"), Some("gateway_forbidden"));

    // Allowed, with the identity for the upstream; any method is accepted.
    let owned = create(
        &kw,
        proto::CreateKeyRequest {
            name: "team-key".into(),
            scopes: vec!["orders:read".into(), "orders:write".into()],
            owner: "team-a".into(),
            ..Default::default()
        },
    )
    .await;
    let bearer = format!("Bearer {owned}");
    for method in ["GET", "POST", "HEAD"] {
        let allowed = request(
            &target,
            method,
            "/v1/authorize",
            &[("authorization", &bearer), ("x-keyward-gateway-key", &keys.gateway)],
        )
        .await;
        assert_eq!(allowed.status, 200, "{method}: {allowed:?}");
        assert_eq!(allowed.header("x-keyward-key-name"), Some("team-key"));
        assert_eq!(allowed.header("x-keyward-scopes"), Some("orders:read orders:write"));
        assert_eq!(allowed.header("x-keyward-owner"), Some("team-a"));
        assert!(allowed.header("x-keyward-key-id").is_some_and(|id| !id.is_empty()));
    }
    let allowed = authorize(&kw, "", gw, &[client]).await;
    assert_eq!(allowed.header("x-keyward-key-id"), Some(keys.client_id.as_str()));
    assert_eq!(allowed.header("x-keyward-owner"), Some(""), "no owner: an empty header");
    assert_eq!(allowed.header("x-ratelimit-remaining"), None, "no quota, no header");
    let metered = create_metered(&kw, 3).await;
    let allowed = authorize(&kw, "", gw, &[("x-api-key", &metered)]).await;
    assert_eq!(allowed.header("x-ratelimit-remaining"), Some("2"), "{allowed:?}");

    // The client's refusals.
    let refused = authorize(&kw, "", gw, &[]).await;
    assert_eq!((refused.status, refused.error()), (401, "missing_key".into()));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let refused = authorize(&kw, "", gw, &[("x-api-key", "kw_not_a_key")]).await;
    assert_eq!((refused.status, refused.error()), (401, "invalid_key".into()));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));

    // Required scopes from the header and from `scope` parameters.
    let status = |r: super::Reply| (r.status, r.header("x-keyward-error").unwrap_or("").to_owned());
    let needs = |scopes| [client, ("x-keyward-required-scopes", scopes)];
    assert_eq!(status(authorize(&kw, "", gw, &needs("orders:read")).await), (200, String::new()));
    assert_eq!(
        status(authorize(&kw, "", gw, &needs("orders:read orders:write")).await),
        (403, "insufficient_scope".into())
    );
    assert_eq!(status(authorize(&kw, "?scope=orders%3Aread", gw, &[client]).await), (200, String::new()));
    assert_eq!(status(authorize(&kw, "?scope=orders:read&scope=billing", gw, &[client]).await).0, 403);
    assert_eq!(status(authorize(&kw, "?scope=orders:read+billing", gw, &[client]).await).0, 403);
    let bad = authorize(&kw, "?scope=Orders!", gw, &[client]).await;
    assert_eq!((bad.status, bad.error()), (400, "bad_request".into()), "a scope that cannot be one: {bad:?}");

    // Rate-limited: 429 with Retry-After.
    assert_eq!(authorize(&kw, "", gw, &[("x-api-key", &keys.limited)]).await.status, 200);
    let refused = authorize(&kw, "", gw, &[("x-api-key", &keys.limited)]).await;
    assert_eq!((refused.status, refused.error()), (429, "rate_limited".into()));
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    // The client's address: the rightmost X-Forwarded-For entry (no trusted proxies), else the
    // gateway's connection.
    let fenced = create(
        &kw,
        proto::CreateKeyRequest {
            name: "fenced".into(),
            allowed_cidrs: vec!["198.51.100.0/24".into()],
            ..Default::default()
        },
    )
    .await;
    let from = |xff: Option<&'static str>| {
        let mut headers = vec![("x-api-key", fenced.clone())];
        if let Some(xff) = xff {
            headers.push(("x-forwarded-for", xff.to_owned()));
        }
        headers
    };
    for (xff, expected) in [
        (None, 403),
        (Some("198.51.100.7"), 200),
        (Some("10.0.0.1, 198.51.100.7"), 200),
        (Some("198.51.100.7, 10.0.0.1"), 403),
        (Some("not-an-address"), 403),
    ] {
        let headers = from(xff);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = authorize(&kw, "", gw, &headers).await;
        assert_eq!(answer.status, expected, "X-Forwarded-For {xff:?}: {answer:?}");
    }

    revoke(&kw, &keys.client_id).await;
    let refused = authorize(&kw, "", gw, &[client]).await;
    assert_eq!((refused.status, refused.error()), (401, "invalid_key".into()), "revoked: refused on the next request");
}

#[tokio::test]
async fn authz_rules_see_the_forwarded_method_and_uri_and_trusted_proxy_hops_apply() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.http_listen = Some("127.0.0.1:0".into());
    kw.configure("authz", "key_headers", r#"["x-client-key"]"#);
    kw.configure("authz", "trusted_proxy_hops", "1");
    kw.configure(
        "authz",
        "routes",
        r#"[{ methods = ["GET"], path = "/orders/**", scopes = ["orders:read"] }, { path = "/admin/*", scopes = ["admin"] }]"#,
    );
    kw.start().await;
    let (gateway, _) = kw.create_key("gateway", &["keyward:verify"]).await;
    let (other, _) = kw.create_key("other", &["billing"]).await;
    let (reader, _) = kw.create_key("reader", &["orders:read"]).await;
    let gw = Some(gateway.as_str());
    let asking = |method: &'static str, uri: &'static str, key: &str| {
        vec![
            ("x-client-key", key.to_owned()),
            ("x-forwarded-method", method.to_owned()),
            ("x-forwarded-uri", uri.to_owned()),
        ]
    };
    for (method, uri, key, expected) in [
        ("GET", "/orders/1?page=2", &reader, 200),
        ("GET", "/orders/1", &other, 403),
        ("POST", "/orders/1", &other, 200),
        ("GET", "/admin/users", &reader, 403),
        ("DELETE", "/admin/users", &other, 403),
        ("GET", "/billing", &other, 200),
    ] {
        let headers = asking(method, uri, key);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = authorize(&kw, "", gw, &headers).await;
        assert_eq!(answer.status, expected, "{method} {uri}: {answer:?}");
    }
    let bearer = format!("Bearer {reader}");
    let refused = authorize(&kw, "", gw, &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, 401, "authorization is not a configured key header");

    // One trusted proxy in front of the gateway: the client is the entry it added.
    let fenced = create(
        &kw,
        proto::CreateKeyRequest {
            name: "fenced".into(),
            allowed_cidrs: vec!["198.51.100.0/24".into()],
            ..Default::default()
        },
    )
    .await;
    let from = |xff: &'static str| [("x-client-key", fenced.as_str()), ("x-forwarded-for", xff)];
    assert_eq!(authorize(&kw, "", gw, &from("10.9.9.9, 198.51.100.7, 10.0.0.2")).await.status, 200);
    assert_eq!(authorize(&kw, "", gw, &from("198.51.100.7, 10.9.9.9, 10.0.0.2")).await.status, 403, "a forged entry");
}

/// Polls `/healthz` until it answers `status`, for up to 10 s.
async fn health_becomes(kw: &Instance, status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let health = request(&Target::Tcp(kw.http_addr()), "GET", "/healthz", &[]).await;
        if health.status == status {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "/healthz did not turn {status}: {health:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_the_hsm_gone_forward_auth_answers_503_and_health_says_so_until_it_returns() {
    let kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let gw = Some(keys.gateway.as_str());
    let client = [("x-api-key", keys.client.as_str())];
    assert_eq!(authorize(&kw, "", gw, &client).await.status, 200);

    let tokens = kw.data_dir.join("softhsm/tokens");
    let away = tokens.with_extension("away");
    std::fs::rename(&tokens, &away).unwrap();
    health_becomes(&kw, 503).await;
    let health = request(&Target::Tcp(kw.http_addr()), "GET", "/healthz", &[]).await;
    assert_eq!(health.body, r#"{"status":"not_serving"}"#);
    let refused = authorize(&kw, "", gw, &client).await;
    assert_eq!((refused.status, refused.error()), (503, "unavailable".into()), "{refused:?}");

    std::fs::rename(&away, &tokens).unwrap();
    health_becomes(&kw, 200).await;
    assert_eq!(authorize(&kw, "", gw, &client).await.status, 200, "serving again in the same process");
}
