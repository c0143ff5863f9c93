//! `Client::verify` against a real keyward: the typed verdicts, errors, and the opt-in cache.

use std::time::Duration;

use keyward_client::{CacheConfig, Client, DenyReason, Verification, VerifyOptions, proto};

use crate::keyward::Keyward;

fn scopes(scopes: &[&str]) -> VerifyOptions {
    VerifyOptions { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn denied(reason: DenyReason) -> Verification {
    Verification::Denied { reason, retry_after: None }
}

#[tokio::test]
async fn verdicts_are_typed() {
    let kw = Keyward::started().await;
    let client = Client::builder(kw.endpoint()).caller_key(kw.service_key().await).connect().await.unwrap();
    let (key, id) = kw
        .create(proto::CreateKeyRequest {
            name: "metered".into(),
            scopes: vec!["orders:*".into()],
            owner: "team-b".into(),
            remaining: Some(3),
            allowed_cidrs: vec!["198.51.100.0/24".into()],
            ..Default::default()
        })
        .await;
    let from = |ip: &str| VerifyOptions { client_ip: Some(ip.parse().unwrap()), ..scopes(&["orders:read"]) };

    let verified = client.verify(&key, from("198.51.100.9")).await.unwrap().valid().expect("VALID");
    assert_eq!((verified.id.as_str(), verified.name.as_str()), (id.as_str(), "metered"));
    assert_eq!(verified.owner.as_deref(), Some("team-b"));
    assert_eq!(verified.remaining, Some(2), "one use spent");

    assert_eq!(client.verify(&key, from("203.0.113.1")).await.unwrap(), denied(DenyReason::IpNotAllowed));
    let other_scope = VerifyOptions { client_ip: Some("198.51.100.9".parse().unwrap()), ..scopes(&["users:read"]) };
    assert_eq!(client.verify(&key, other_scope).await.unwrap(), denied(DenyReason::InsufficientScope));
    let too_costly = VerifyOptions { cost: Some(5), ..from("198.51.100.9") };
    assert_eq!(client.verify(&key, too_costly).await.unwrap(), denied(DenyReason::QuotaExceeded));
    assert_eq!(client.verify("kw_nonsense", scopes(&[])).await.unwrap(), denied(DenyReason::Invalid));

    kw.revoke(&id).await;
    assert_eq!(client.verify(&key, from("198.51.100.9")).await.unwrap(), denied(DenyReason::Revoked));
}

#[tokio::test]
async fn a_caller_without_keyward_verify_gets_an_error_not_a_verdict() {
    let mut kw = Keyward::started().await;
    let (not_a_verifier, _) = kw.create_key("no-verify", &["orders:read"]).await;
    let (key, _) = kw.create_key("k", &[]).await;

    let client = Client::builder(kw.endpoint()).caller_key(not_a_verifier).connect().await.unwrap();
    let error = client.verify(&key, scopes(&[])).await.unwrap_err();
    assert_eq!(error.status().map(tonic::Status::code), Some(tonic::Code::PermissionDenied), "{error}");
    assert!(!error.is_unavailable());

    let anonymous = Client::connect(kw.endpoint()).await.unwrap();
    let error = anonymous.verify(&key, scopes(&[])).await.unwrap_err();
    assert_eq!(error.status().map(tonic::Status::code), Some(tonic::Code::Unauthenticated), "{error}");

    let lazy = Client::builder(kw.endpoint()).caller_key(kw.root_key.as_str()).lazy(true).connect().await.unwrap();
    assert!(lazy.verify(&key, scopes(&[])).await.unwrap().is_valid());
    kw.stop().await;
    let error = lazy.verify(&key, scopes(&[])).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
}

#[tokio::test]
async fn the_opt_in_cache_keeps_a_valid_verdict_for_its_ttl_and_never_a_refusal() {
    let kw = Keyward::started().await;
    let service_key = kw.service_key().await;
    let uncached = Client::builder(kw.endpoint()).caller_key(service_key.as_str()).connect().await.unwrap();
    let cached = Client::builder(kw.endpoint())
        .caller_key(service_key)
        .cache(CacheConfig::new(100, Duration::from_secs(3600)))
        .connect()
        .await
        .unwrap();
    let (key, id) = kw.create_key("k", &["a"]).await;
    // A refusal is not cached: once the key is enabled, the same request passes.
    let mut admin = kw.admin().await;
    admin.disable_key(proto::DisableKeyRequest { key_id: id.clone(), reason: String::new() }).await.unwrap();
    assert_eq!(cached.verify(&key, scopes(&["a"])).await.unwrap(), denied(DenyReason::Disabled));
    admin.enable_key(proto::EnableKeyRequest { key_id: id.clone() }).await.unwrap();
    assert!(cached.verify(&key, scopes(&["a"])).await.unwrap().is_valid());

    kw.revoke(&id).await;
    assert_eq!(uncached.verify(&key, scopes(&["a"])).await.unwrap(), denied(DenyReason::Revoked));
    assert!(
        cached.verify(&key, scopes(&["a"])).await.unwrap().is_valid(),
        "the documented cost of a cache: a revoked key passes until its entry's TTL"
    );
    // Other options are another entry, asked of keyward.
    assert_eq!(cached.verify(&key, scopes(&[])).await.unwrap(), denied(DenyReason::Revoked));
}
