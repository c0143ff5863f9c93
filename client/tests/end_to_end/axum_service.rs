//! The axum example service (examples/axum_service.rs) behind `VerifyKeyLayer`, over real HTTP,
//! against a real keyward.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use keyward_client::{Client, proto};
use serde_json::Value;

use crate::{Served, axum_example, keyward::Keyward};

/// What an HTTP client sees.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

async fn get(addr: SocketAddr, path: &str, header: Option<(&str, &str)>) -> Answer {
    let mut request = Request::get(format!("http://{addr}{path}"));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = http.request(request.body(Empty::new()).unwrap()).await.expect("the service answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8(body.to_vec()).unwrap() }
}

fn bearer(key: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {key}")))
}

async fn get_with(addr: SocketAddr, path: &str, header: Option<(&'static str, String)>) -> Answer {
    get(addr, path, header.as_ref().map(|(n, v)| (*n, v.as_str()))).await
}

/// keyward, and the example service asking it with a `keyward:verify` key.
async fn service() -> (Keyward, Served) {
    let kw = Keyward::started().await;
    let client = Client::builder(kw.endpoint()).caller_key(kw.service_key().await).connect().await.unwrap();
    let served = Served::start(|listener| axum_example::serve(listener, client)).await;
    (kw, served)
}

#[tokio::test]
async fn a_valid_key_reaches_the_handler_which_sees_who_called() {
    let (kw, service) = service().await;
    let (key, id) = kw
        .create(proto::CreateKeyRequest {
            name: "billing".into(),
            scopes: vec!["orders:read".into()],
            owner: "team-a".into(),
            metadata: [("plan".to_owned(), "pro".to_owned())].into(),
            ..Default::default()
        })
        .await;

    let whoami = get_with(service.addr, "/whoami", bearer(&key)).await;
    assert_eq!(whoami.status, StatusCode::OK, "{}", whoami.body);
    let who = whoami.json();
    assert_eq!(who["key_id"], id.as_str());
    assert_eq!(who["name"], "billing");
    assert_eq!(who["owner"], "team-a");
    assert_eq!(who["scopes"], serde_json::json!(["orders:read"]));
    assert_eq!(who["metadata"]["plan"], "pro");
    assert!(!whoami.body.contains(&key), "the handler never sees the key");

    // x-api-key works too, and the route's scope is held.
    let orders = get(service.addr, "/orders", Some(("x-api-key", &key))).await;
    assert_eq!(orders.status, StatusCode::OK, "{}", orders.body);
    assert_eq!(orders.json()["for"], "billing");
}

#[tokio::test]
async fn missing_invalid_and_revoked_keys_are_401_and_a_missing_scope_is_403() {
    let (kw, service) = service().await;

    let open = get(service.addr, "/healthz", None).await;
    assert_eq!((open.status, open.body.as_str()), (StatusCode::OK, "ok"), "a route without the layer is open");

    let missing = get(service.addr, "/whoami", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert_eq!(missing.headers["content-type"], "application/json");
    assert_eq!(missing.error(), "missing_key");

    let basic = get(service.addr, "/whoami", Some(("authorization", "Basic dXNlcjpwYXNz"))).await;
    assert_eq!((basic.status, basic.error()), (StatusCode::UNAUTHORIZED, "missing_key".into()));

    let invalid = get_with(service.addr, "/whoami", bearer("kw_notakeyatall")).await;
    assert_eq!(invalid.status, StatusCode::UNAUTHORIZED);
    assert_eq!(invalid.headers["www-authenticate"], "Bearer");
    assert_eq!(invalid.error(), "invalid_key");

    let (unscoped, unscoped_id) = kw.create_key("unscoped", &[]).await;
    assert_eq!(get_with(service.addr, "/whoami", bearer(&unscoped)).await.status, StatusCode::OK);
    let forbidden = get_with(service.addr, "/orders", bearer(&unscoped)).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert!(forbidden.headers.get("www-authenticate").is_none());
    assert_eq!(forbidden.error(), "insufficient_scope");

    kw.revoke(&unscoped_id).await;
    let revoked = get_with(service.addr, "/whoami", bearer(&unscoped)).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED, "a revoked key is refused on the very next request");
    assert_eq!(revoked.error(), "invalid_key", "revoked looks like any unusable key to the client");
}

#[tokio::test]
async fn the_connection_address_reaches_keyward_and_rate_limits_answer_429() {
    let (kw, service) = service().await;
    let allowlisted = |name: &str, cidr: &str| proto::CreateKeyRequest {
        name: name.into(),
        allowed_cidrs: vec![cidr.into()],
        ..Default::default()
    };
    let (loopback_only, _) = kw.create(allowlisted("loopback", "127.0.0.1/32")).await;
    assert_eq!(get_with(service.addr, "/whoami", bearer(&loopback_only)).await.status, StatusCode::OK);
    let (elsewhere_only, _) = kw.create(allowlisted("elsewhere", "192.0.2.0/24")).await;
    let refused = get_with(service.addr, "/whoami", bearer(&elsewhere_only)).await;
    assert_eq!((refused.status, refused.error()), (StatusCode::FORBIDDEN, "ip_not_allowed".into()));

    let (limited, _) = kw
        .create(proto::CreateKeyRequest {
            name: "limited".into(),
            rate_limit: Some(proto::RateLimit {
                limit: 1,
                window: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(get_with(service.addr, "/whoami", bearer(&limited)).await.status, StatusCode::OK);
    let limited_again = get_with(service.addr, "/whoami", bearer(&limited)).await;
    assert_eq!(limited_again.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited_again.error(), "rate_limited");
    let wait: u64 = limited_again.headers["retry-after"].to_str().unwrap().parse().expect("whole seconds");
    assert!((1..=3600).contains(&wait), "retry-after {wait}");
}

#[tokio::test]
async fn with_keyward_stopped_the_service_fails_closed_with_503() {
    let (mut kw, service) = service().await;
    let (key, _) = kw.create_key("k", &[]).await;
    assert_eq!(get_with(service.addr, "/whoami", bearer(&key)).await.status, StatusCode::OK);

    kw.stop().await;
    let down = get_with(service.addr, "/whoami", bearer(&key)).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.error(), "keyward_unavailable");
    // A request without a key needs no verdict: still 401.
    assert_eq!(get(service.addr, "/whoami", None).await.status, StatusCode::UNAUTHORIZED);
}
