//! Brute-force defence on a real server: a source guessing keys is refused with
//! `RESOURCE_EXHAUSTED` after the documented number of failures, without HSM operations, while
//! other sources and proven callers keep being served.

use keyward::{
    domain::{key::KeyId, key_format, secret::Secret},
    proto::{self, VerifyCode},
};
use tonic::Code;

use crate::common::{
    Instance,
    scrape::{self, Exposition},
};

/// `[brute_force] max_failures`, as documented in docs/security.md ("Brute-force defence").
const N: usize = 20;
const GUESSES: usize = 10_000;
/// Concurrent callers; `GUESSES` is a multiple of it.
const WORKERS: usize = 16;

/// A well-formed key (right shape, prefix and checksum) for a random key id and secret.
fn guess() -> String {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    key_format::render("kw", KeyId::new_v7(), &Secret::from_bytes(secret)).expose().to_owned()
}

fn from(key: &str, client_ip: &str) -> proto::VerifyKeyRequest {
    proto::VerifyKeyRequest { key: key.into(), client_ip: client_ip.into(), ..Default::default() }
}

async fn scrape(kw: &Instance) -> Exposition {
    scrape::parse(&scrape::http(kw.metrics_addr().expect("metrics are served"), "GET", "/metrics").await.body)
}

const HSM_VERIFY: [(&str, &str); 1] = [("operation", "verify")];

#[tokio::test]
async fn ten_thousand_guesses_from_one_source_are_throttled_after_n_while_others_verify() {
    let mut kw = Instance::init();
    kw.metrics = true;
    kw.log_filter = "info";
    // One block for the whole run, so that the count of guesses that reached the HSM does not
    // depend on how fast this machine is (each further block would let N more through).
    kw.configure("brute_force", "backoff", "\"10m\"");
    kw.start().await;
    let (key, _) = kw.create_key("legit", &[]).await;
    let mut verifier = kw.root_verifier().await;
    assert_eq!(verifier.verify_key(from(&key, "198.51.100.7")).await.unwrap().into_inner().code(), VerifyCode::Valid);
    let before = scrape(&kw).await;

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let mut v = kw.root_verifier().await;
        workers.spawn(async move {
            let (mut invalid, mut exhausted) = (0, 0);
            for _ in 0..GUESSES / WORKERS {
                match v.verify_key(from(&guess(), "203.0.113.9")).await {
                    Ok(r) => {
                        assert_eq!(r.into_inner().code(), VerifyCode::Invalid);
                        invalid += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        assert!(status.message().contains("retry after"), "{status:?}");
                        exhausted += 1;
                    }
                }
            }
            (invalid, exhausted)
        });
    }
    let (mut invalid, mut exhausted) = (0, 0);
    while let Some(done) = workers.join_next().await {
        let (i, e) = done.unwrap();
        (invalid, exhausted) = (invalid + i, exhausted + e);
    }
    assert_eq!(invalid + exhausted, GUESSES);
    // The N-th failure blocks; calls already past the check when it landed still finish.
    assert!((N..N + WORKERS).contains(&invalid), "{invalid} guesses answered INVALID");

    let legit = verifier.verify_key(from(&key, "198.51.100.7")).await.unwrap().into_inner();
    assert_eq!(legit.code(), VerifyCode::Valid, "another source still verifies");
    let blocked = verifier.verify_key(from(&key, "203.0.113.9")).await.unwrap_err();
    assert_eq!(blocked.code(), Code::ResourceExhausted, "even a genuine key, from the blocked source");

    let after = scrape(&kw).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let hsm = delta("keyward_hsm_operation_duration_seconds_count", &HSM_VERIFY);
    assert_eq!(hsm, (invalid + 1) as f64, "one C_Verify per guess let through and one for the legit key");
    let refused = delta("keyward_brute_force_refused_total", &[("check", "verify")]);
    assert_eq!(refused, (exhausted + 1) as f64);
}

#[tokio::test]
async fn failed_credentials_block_the_address_but_a_proven_caller_keeps_working() {
    let mut kw = Instance::init();
    kw.configure("brute_force", "max_failures", "3");
    kw.start().await;
    let mut root = kw.root_keys().await;
    root.list_keys(proto::ListKeysRequest::default()).await.expect("the root key is proven once");
    let (never_used, _) = kw.create_key("never-used", &["keyward:keys:read"]).await;
    for _ in 0..3 {
        let err = kw.keys(Some(&guess())).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = kw.keys(Some(&guess())).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "too many failed attempts from this source: retry after 1s");
    let err = kw.keys(Some(&never_used)).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "an unproven credential waits like the rest");
    root.list_keys(proto::ListKeysRequest::default()).await.expect("a proven caller from the same address");
}
