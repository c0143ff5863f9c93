//! The translation of a gateway decision into Envoy's answer: what the upstream and the client see.

use std::{collections::HashMap, time::Duration};

use envoy_types::ext_authz::v3::pb::{HttpResponse, HttpStatusCode};

use super::*;

fn allowed(owner: Option<&str>, strip: Option<&str>) -> Allowed {
    Allowed {
        key_id: "01936f6e-0000-7000-8000-000000000001".into(),
        key_name: "billing".into(),
        scopes: vec!["read".into(), "write".into()],
        owner: owner.map(str::to_owned),
        remaining: Some(41),
        strip_header: strip.map(str::to_owned),
    }
}

fn headers(of: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]) -> HashMap<String, String> {
    of.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect()
}

/// The HTTP status, headers and body of a denial.
fn denial_of(response: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not denied: {response:?}")
    };
    (denied.status.as_ref().map_or(0, |s| s.code), headers(&denied.headers), denied.body.clone())
}

#[test]
fn an_allowed_request_passes_with_its_identity_and_without_the_key_header() {
    let response = answer(Decision::Allow(allowed(Some("team-a"), Some("authorization"))));
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!("not OK: {response:?}") };
    let upstream = headers(&ok.headers);
    assert_eq!(upstream["x-keyward-key-id"], "01936f6e-0000-7000-8000-000000000001");
    assert_eq!(upstream["x-keyward-key-name"], "billing");
    assert_eq!(upstream["x-keyward-scopes"], "read write");
    assert_eq!(upstream["x-keyward-owner"], "team-a");
    assert_eq!(ok.headers_to_remove, ["authorization"], "the upstream never sees the key");
    assert_eq!(headers(&ok.response_headers_to_add)["x-ratelimit-remaining"], "41");
    let metadata = response.dynamic_metadata.expect("dynamic metadata");
    assert!(metadata.fields.contains_key("key_id") && metadata.fields.contains_key("key_name"));
}

#[test]
fn without_an_owner_a_forged_owner_header_is_removed_and_stripping_can_be_off() {
    let response = answer(Decision::Allow(allowed(None, None)));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!("not OK: {response:?}") };
    assert!(!headers(&ok.headers).contains_key("x-keyward-owner"));
    assert_eq!(ok.headers_to_remove, ["x-keyward-owner"], "only the owner header: the key header stays");
}

#[test]
fn refusals_are_401_with_a_challenge_403_and_429_with_retry_after() {
    let (status, headers, body) = denial_of(&answer(Decision::Deny(Denial::InvalidKey)));
    assert_eq!(status, HttpStatusCode::Unauthorized as i32);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"error":"invalid_key"}"#);

    let (status, headers, body) = denial_of(&answer(Decision::Deny(Denial::InsufficientScope)));
    assert_eq!((status, body.as_str()), (HttpStatusCode::Forbidden as i32, r#"{"error":"insufficient_scope"}"#));
    assert!(!headers.contains_key("www-authenticate"));

    let limited = answer(Decision::Deny(Denial::RateLimited(Some(Duration::from_millis(1500)))));
    assert_eq!(limited.status.as_ref().map(|s| s.code), Some(tonic::Code::ResourceExhausted as i32));
    let (status, headers, body) = denial_of(&limited);
    assert_eq!(status, HttpStatusCode::TooManyRequests as i32);
    assert_eq!(headers["retry-after"], "2", "rounded up to whole seconds");
    assert_eq!(body, r#"{"error":"rate_limited"}"#);
}

#[test]
fn keyward_sees_the_whole_body_only_when_envoy_sent_all_of_it() {
    let of = |headers: &[(&str, &str)], size: i64, sent: &'static [u8]| {
        let headers: HashMap<String, String> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let header = |name: &str| headers.get(name).map(|v| v.as_str());
        let (has_body, body) = body(&header, size, sent);
        (has_body, body == Body::Whole(sent), body == Body::Incomplete)
    };
    let json = b"{\"order\": 42}";
    // (has a body, keyward sees all of it, keyward sees part of it or none)
    assert_eq!(of(&[], -1, b""), (false, true, false), "no body: an empty one");
    assert_eq!(of(&[("content-length", "0")], 0, b""), (false, true, false));
    assert_eq!(of(&[("content-length", "13")], 13, json), (true, true, false), "with_request_body");
    assert_eq!(of(&[("x-envoy-auth-partial-body", "false")], 13, json), (true, true, false), "chunked, all sent");
    assert_eq!(of(&[("content-length", "13")], -1, b""), (true, false, true), "no with_request_body");
    assert_eq!(of(&[("content-length", "13")], 13, &json[..5]), (true, false, true), "cut short");
    assert_eq!(of(&[("x-envoy-auth-partial-body", "true")], 13, &json[..5]), (true, false, true), "partial");
    assert_eq!(of(&[("transfer-encoding", "chunked")], -1, b""), (true, false, true), "chunked, none sent");
    assert_eq!(of(&[("x-envoy-auth-partial-body", "false"), ("content-length", "13")], 13, b""), (true, false, true));
}
