//! `/metrics`: served when asked for, valid OpenMetrics text, and counters that move with calls.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::{
    Instance,
    scrape::{self, Exposition},
};

async fn metrics_instance() -> Instance {
    let mut kw = Instance::init();
    kw.metrics = true;
    kw.start().await;
    kw
}

async fn scrape(kw: &Instance) -> Exposition {
    let response = scrape::http(kw.metrics_addr().expect("metrics are served"), "GET", "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.headers["content-type"].starts_with("application/openmetrics-text"), "{:?}", response.headers);
    scrape::parse(&response.body)
}

const VERIFY: [(&str, &str); 2] = [("service", "keyward.v1.VerifyService"), ("method", "VerifyKey")];
const CREATE: [(&str, &str); 2] = [("service", "keyward.v1.KeyService"), ("method", "CreateKey")];

fn rpc<'a>(method: &[(&'a str, &'a str); 2], code: &'a str) -> [(&'a str, &'a str); 3] {
    [method[0], method[1], ("code", code)]
}

#[tokio::test]
async fn counters_move_with_the_calls_that_were_made() {
    let kw = metrics_instance().await;
    let before = scrape(&kw).await;
    let (key, _) = kw.create_key("svc", &[]).await;
    for _ in 0..3 {
        assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
    }
    assert_eq!(kw.code("kw_not_a_key", &[]).await, VerifyCode::Invalid);
    let refused = kw
        .root_keys()
        .await
        .create_key(proto::CreateKeyRequest { name: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let after = scrape(&kw).await;

    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    assert_eq!(delta("keyward_verify_outcomes_total", &[("code", "VALID")]), 3.0);
    assert_eq!(delta("keyward_verify_outcomes_total", &[("code", "INVALID")]), 1.0);
    assert_eq!(delta("keyward_rpc_requests_total", &rpc(&VERIFY, "OK")), 4.0);
    assert_eq!(delta("keyward_rpc_requests_total", &rpc(&CREATE, "OK")), 1.0);
    assert_eq!(delta("keyward_rpc_requests_total", &rpc(&CREATE, "INVALID_ARGUMENT")), 1.0);
    assert_eq!(delta("keyward_rpc_duration_seconds_count", &rpc(&VERIFY, "OK")), 4.0);
    assert_eq!(after.types["keyward_rpc_duration_seconds"], "histogram");
    let inf = [VERIFY[0], VERIFY[1], ("code", "OK"), ("le", "+Inf")];
    assert_eq!(
        after.value("keyward_rpc_duration_seconds_bucket", &inf),
        after.value("keyward_rpc_duration_seconds_count", &rpc(&VERIFY, "OK"))
    );

    // Each verification of a well-formed key is one C_Verify; CreateKey is one random and one sign.
    assert!(delta("keyward_hsm_operation_duration_seconds_count", &[("operation", "verify")]) >= 3.0);
    assert_eq!(delta("keyward_hsm_operation_duration_seconds_count", &[("operation", "random")]), 1.0);
    assert_eq!(delta("keyward_hsm_operation_duration_seconds_count", &[("operation", "sign")]), 1.0);
    assert!(delta("keyward_store_flush_duration_seconds_count", &[]) >= 1.0, "CreateKey waits for a flush");
    assert_eq!(after.value("keyward_store_flush_failures_total", &[]), 0.0);
    assert_eq!(after.get("keyward_hsm_healthy", &[]), Some(1.0));
}

#[tokio::test]
async fn an_unauthenticated_call_is_counted_under_its_code() {
    let kw = metrics_instance().await;
    let before = scrape(&kw).await;
    let err = kw.keys(Some("kw_wrong")).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let after = scrape(&kw).await;
    let list = [("service", "keyward.v1.KeyService"), ("method", "ListKeys"), ("code", "UNAUTHENTICATED")];
    assert_eq!(
        after.value("keyward_rpc_requests_total", &list) - before.value("keyward_rpc_requests_total", &list),
        1.0
    );
}

#[tokio::test]
async fn keys_are_counted_by_state_and_nothing_secret_is_labelled() {
    let kw = metrics_instance().await;
    let (key, id) = kw.create_key("svc", &[]).await;
    kw.verify(&key, &[]).await;
    // The root key is counted at startup (the count then repeats every 30 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = scrape(&kw).await;
        if page.get("keyward_keys", &[("state", "active")]).is_some() {
            break page;
        }
        assert!(Instant::now() < deadline, "keyward_keys never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.value("keyward_keys", &[("state", "active")]) >= 1.0);
    assert_eq!(page.get("keyward_keys", &[("state", "revoked")]), Some(0.0));
    let raw = scrape::http(kw.metrics_addr().unwrap(), "GET", "/metrics").await.body;
    let secret_part = &key[key.len() - 20..];
    for needle in [key.as_str(), secret_part, &id, &kw.root_key] {
        assert!(!raw.contains(needle), "/metrics contains {needle:?}");
    }
    for value in page.label_values() {
        assert!(!value.starts_with("kw_") && !value.contains(&id), "label value {value:?}");
    }
}

#[tokio::test]
async fn only_get_metrics_is_served() {
    let kw = metrics_instance().await;
    let addr = kw.metrics_addr().unwrap();
    assert_eq!(scrape::http(addr, "GET", "/").await.status, 404);
    assert_eq!(scrape::http(addr, "GET", "/metrics/x").await.status, 404);
    assert_eq!(scrape::http(addr, "POST", "/metrics").await.status, 405);
}

#[tokio::test]
async fn metrics_are_off_unless_asked_for_and_the_environment_turns_them_on() {
    let mut kw = Instance::started().await;
    assert_eq!(kw.metrics_addr(), None, "no metrics address without --metrics-listen");
    assert_eq!(kw.stop().await.code(), Some(0));
    kw.start_with_env(&[("KEYWARD_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let page = scrape(&kw).await;
    assert_eq!(page.get("keyward_hsm_healthy", &[]), Some(1.0));
}
