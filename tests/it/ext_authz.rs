//! Envoy's external authorization API (`envoy.service.auth.v3.Authorization/Check`) on a real
//! keyward: the gateway calls with its own key, the end client's key comes from the request's
//! headers, and the answer is VerifyKey's decision as HTTP.

use std::collections::HashMap;

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse,
        attribute_context::{HttpRequest, Peer, Request as HttpRequestWrapper},
        check_response::HttpResponse,
    },
};
use keyward::proto;

use crate::common::Instance;

/// A Check of a request carrying `headers`, from `client` (an address), on a route whose
/// `context_extensions` ask for `scopes`.
fn check(headers: &[(&str, &str)], scopes: Option<&str>, client: &str) -> CheckRequest {
    let headers: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let source = Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: client.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let mut context_extensions = HashMap::new();
    if let Some(scopes) = scopes {
        context_extensions.insert("required_scopes".to_owned(), scopes.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(HttpRequestWrapper {
                http: Some(HttpRequest { method: "GET".into(), path: "/orders".into(), headers, ..Default::default() }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// The HTTP status Envoy would answer (200 for an allowed request), and the upstream headers or
/// the denial's headers.
fn outcome(response: &CheckResponse) -> (i32, HashMap<String, String>) {
    let headers = |of: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        of.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect()
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => (200, headers(&ok.headers)),
        Some(HttpResponse::DeniedResponse(denied)) => {
            (denied.status.as_ref().map_or(0, |s| s.code), headers(&denied.headers))
        }
        other => panic!("no HTTP answer: {other:?}"),
    }
}

#[tokio::test]
async fn the_gateway_gets_verify_keys_decision_as_http() {
    let kw = Instance::started_quiet().await;
    let (gateway, _) = kw.create_key("envoy", &["keyward:verify"]).await;
    let (client_key, client_id) = kw.create_key("orders-client", &["orders:read"]).await;
    let mut authz = kw.ext_authz(Some(&gateway)).await;

    let bearer = format!("Bearer {client_key}");
    let allowed = authz.check(check(&[("authorization", &bearer)], Some("orders:read"), "198.51.100.7")).await.unwrap();
    let (status, upstream) = outcome(allowed.get_ref());
    assert_eq!(status, 200);
    assert_eq!(upstream["x-keyward-key-id"], client_id);
    assert_eq!(upstream["x-keyward-scopes"], "orders:read");
    let Some(HttpResponse::OkResponse(ok)) = &allowed.get_ref().http_response else { unreachable!() };
    // The key never reaches the upstream; nor does an owner header the client made up (this key
    // has no owner).
    assert_eq!(ok.headers_to_remove, ["x-keyward-owner", "authorization"]);

    let (status, _) =
        outcome(authz.check(check(&[("x-api-key", &client_key)], None, "198.51.100.7")).await.unwrap().get_ref());
    assert_eq!(status, 200, "the key in x-api-key");
    let (status, _) = outcome(
        authz
            .check(check(&[("x-api-key", &client_key)], Some("orders:write"), "198.51.100.7"))
            .await
            .unwrap()
            .get_ref(),
    );
    assert_eq!(status, 403, "a scope the key lacks");
    let (status, headers) = outcome(authz.check(check(&[], None, "198.51.100.7")).await.unwrap().get_ref());
    assert_eq!((status, headers["www-authenticate"].as_str()), (401, "Bearer"), "no key");

    kw.root_keys()
        .await
        .revoke_key(proto::RevokeKeyRequest { key_id: client_id, reason: "test".into() })
        .await
        .unwrap();
    let (status, _) =
        outcome(authz.check(check(&[("x-api-key", &client_key)], None, "198.51.100.7")).await.unwrap().get_ref());
    assert_eq!(status, 401, "a revoked key is refused on the next request");

    // The gateway itself must hold keyward:verify.
    let anonymous = kw.ext_authz(None).await.check(check(&[("x-api-key", &client_key)], None, "198.51.100.7")).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (reader, _) = kw.create_key("not-a-gateway", &["keyward:keys:read"]).await;
    let refused =
        kw.ext_authz(Some(&reader)).await.check(check(&[("x-api-key", &gateway)], None, "198.51.100.7")).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn authz_rules_add_route_scopes_read_configured_headers_and_trust_configured_proxies() {
    let mut kw = Instance::init();
    kw.configure("authz", "key_headers", r#"["x-client-key"]"#);
    kw.configure("authz", "strip_key_header", "false");
    kw.configure("authz", "trusted_proxy_hops", "1");
    kw.configure(
        "authz",
        "routes",
        r#"[{ methods = ["GET"], path = "/orders/**", scopes = ["orders:read"] }, { path = "/admin/*", scopes = ["admin"] }]"#,
    );
    kw.start().await;
    let (gateway, _) = kw.create_key("envoy", &["keyward:verify"]).await;
    let (reader, _) = kw.create_key("reader", &["orders:read"]).await;
    let (fenced, _) = kw
        .root_keys()
        .await
        .create_key(proto::CreateKeyRequest {
            name: "fenced".into(),
            scopes: vec!["orders:read".into()],
            allowed_cidrs: vec!["198.51.100.0/24".into()],
            ..Default::default()
        })
        .await
        .map(|r| (r.into_inner().key, ()))
        .unwrap();
    let mut authz = kw.ext_authz(Some(&gateway)).await;
    let at = |path: &str, headers: &[(&str, &str)]| {
        let mut request = check(headers, None, "10.0.0.2");
        request.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().path = path.into();
        request
    };

    // Only the configured header is read, and it stays (stripping is off).
    let bearer = format!("Bearer {reader}");
    let (status, _) = outcome(authz.check(at("/orders/1", &[("authorization", &bearer)])).await.unwrap().get_ref());
    assert_eq!(status, 401, "authorization is not a configured key header");
    let allowed = authz.check(at("/orders/1?x=1", &[("x-client-key", &reader)])).await.unwrap();
    assert_eq!(outcome(allowed.get_ref()).0, 200);
    let Some(HttpResponse::OkResponse(ok)) = &allowed.get_ref().http_response else { unreachable!() };
    assert_eq!(ok.headers_to_remove, ["x-keyward-owner"], "the key header is kept");

    // Route rules: /admin/* needs a scope the key lacks.
    let (status, _) = outcome(authz.check(at("/admin/users", &[("x-client-key", &reader)])).await.unwrap().get_ref());
    assert_eq!(status, 403);

    // One trusted proxy: the client is the entry it added, not what the client wrote before it.
    let from = |xff: &str| at("/orders/1", &[("x-client-key", &fenced), ("x-forwarded-for", xff)]);
    let (status, _) = outcome(authz.check(from("10.9.9.9, 198.51.100.7")).await.unwrap().get_ref());
    assert_eq!(status, 200, "the trusted proxy saw 198.51.100.7");
    let (status, _) = outcome(authz.check(from("198.51.100.7, 10.9.9.9")).await.unwrap().get_ref());
    assert_eq!(status, 403, "a forged entry left of the trusted one is not the client");
}
