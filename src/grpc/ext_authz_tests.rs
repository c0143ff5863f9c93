//! The mapping from a verification to Envoy's answer: what the upstream and the client see.

use std::{collections::HashMap, time::Duration};

use envoy_types::ext_authz::v3::pb::{HttpResponse, HttpStatusCode};

use super::*;
use crate::domain::{
    key::{Digest, KeyId, KeyRecord, MasterKeyVersion},
    verification::Verification,
};

fn record() -> KeyRecord {
    let mut r = KeyRecord::new(
        KeyId::new_v7(),
        "billing".into(),
        "kw".into(),
        vec!["read".into(), "write".into()],
        std::time::SystemTime::UNIX_EPOCH,
        Digest::plain(MasterKeyVersion(1), [7; 32]),
    );
    r.owner = Some("team-a".into());
    r
}

fn verification(code: VerifyCode, record: Option<KeyRecord>) -> Verification {
    Verification { code, record, remaining: None, retry_after: None, rotation: Default::default() }
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
fn a_valid_key_passes_with_its_identity_and_without_the_key_header() {
    let record = record();
    let response = decide(&verification(VerifyCode::Valid, Some(record.clone())), "authorization");
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!("not OK: {response:?}") };
    let upstream = headers(&ok.headers);
    assert_eq!(upstream["x-keyward-key-id"], record.id.to_string());
    assert_eq!(upstream["x-keyward-key-name"], "billing");
    assert_eq!(upstream["x-keyward-scopes"], "read write");
    assert_eq!(upstream["x-keyward-owner"], "team-a");
    assert_eq!(ok.headers_to_remove, ["authorization"], "the upstream never sees the key");
    let metadata = response.dynamic_metadata.expect("dynamic metadata");
    assert!(metadata.fields.contains_key("key_id") && metadata.fields.contains_key("key_name"));
}

#[test]
fn every_way_a_key_is_not_good_looks_the_same_to_the_client() {
    for code in
        [VerifyCode::Invalid, VerifyCode::Revoked, VerifyCode::Disabled, VerifyCode::NotYetValid, VerifyCode::Expired]
    {
        let (status, headers, body) = denial_of(&decide(&verification(code, Some(record())), "x-api-key"));
        assert_eq!(status, HttpStatusCode::Unauthorized as i32, "{code:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(body, r#"{"error":"invalid_key"}"#, "{code:?}");
    }
}

#[test]
fn scope_and_address_refusals_are_403_and_limits_429_with_retry_after() {
    let (status, _, body) =
        denial_of(&decide(&verification(VerifyCode::InsufficientScope, Some(record())), "x-api-key"));
    assert_eq!((status, body.as_str()), (HttpStatusCode::Forbidden as i32, r#"{"error":"insufficient_scope"}"#));
    let (status, _, _) = denial_of(&decide(&verification(VerifyCode::IpNotAllowed, Some(record())), "x-api-key"));
    assert_eq!(status, HttpStatusCode::Forbidden as i32);
    let mut limited = verification(VerifyCode::RateLimited, Some(record()));
    limited.retry_after = Some(Duration::from_millis(1500));
    let (status, headers, body) = denial_of(&decide(&limited, "x-api-key"));
    assert_eq!(status, HttpStatusCode::TooManyRequests as i32);
    assert_eq!(headers["retry-after"], "2", "rounded up to whole seconds");
    assert_eq!(body, r#"{"error":"rate_limited"}"#);
}

#[test]
fn the_key_comes_from_the_first_header_present_bearer_or_plain() {
    let mut h = HashMap::new();
    assert_eq!(presented_key(&h), None);
    h.insert("x-api-key".to_owned(), " kw_plain ".to_owned());
    assert_eq!(presented_key(&h), Some(("kw_plain", "x-api-key")));
    h.insert("authorization".to_owned(), "Bearer kw_bearer".to_owned());
    assert_eq!(presented_key(&h), Some(("kw_bearer", "authorization")), "authorization comes first");
    h.insert("authorization".to_owned(), "Basic dXNlcjpwdw==".to_owned());
    assert_eq!(presented_key(&h), Some(("kw_plain", "x-api-key")), "not a bearer: the next header");
}
