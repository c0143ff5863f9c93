//! Per-key anomaly detection on a real server, at small timescales (`[anomaly]` windows of one
//! second, a baseline of three): steady traffic is quiet; a burst of new client networks, a rate
//! burst and a failure burst each become one chained `key.anomaly` event, the metric and an entry
//! in KeyInfo.anomalies; ANOMALY_ACTION_DISABLE disables the key; the baselines survive a restart
//! (rebuilt from the usage log). Waits are bounded polls, never timing asserts.

use std::time::{Duration, Instant};

use keyward::proto::{self, AnomalyAction, AnomalyKind, KeyState, VerifyCode};
use prost_types::FieldMask;

use crate::common::{Instance, VerifyClient, scrape};

/// An instance whose detector works in seconds.
fn small_timescales() -> Instance {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.configure("anomaly", "window_seconds", "1");
    kw.configure("anomaly", "min_baseline_seconds", "3");
    kw.configure("anomaly", "new_networks", "10");
    kw.configure("anomaly", "rate_min_requests", "20");
    kw.configure("anomaly", "failure_min", "10");
    kw.configure("anomaly", "cooldown", "\"1h\"");
    kw
}

fn from(key: &str, client_ip: &str, required: &[&str]) -> proto::VerifyKeyRequest {
    proto::VerifyKeyRequest {
        key: key.into(),
        client_ip: client_ip.into(),
        required_scopes: required.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn verify(v: &mut VerifyClient, key: &str, client_ip: &str, required: &[&str]) -> VerifyCode {
    v.verify_key(from(key, client_ip, required)).await.expect("VerifyKey").into_inner().code()
}

/// Four verifications a second for five seconds, from two networks (an IPv4 /24 and an IPv6
/// /48): past the three-second baseline.
async fn steady_traffic(v: &mut VerifyClient, key: &str) {
    for n in 0..20 {
        let ip = if n % 2 == 0 { "198.51.100.7" } else { "2001:db8:1::7" };
        assert_eq!(verify(v, key, ip, &[]).await, VerifyCode::Valid);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One verification from each of 30 networks never seen for the key.
async fn thirty_new_networks(v: &mut VerifyClient, key: &str) -> Vec<VerifyCode> {
    let mut codes = Vec::new();
    for n in 0..30 {
        codes.push(verify(v, key, &format!("203.0.{n}.9"), &[]).await);
    }
    codes
}

async fn anomaly_events(kw: &Instance, key_id: &str) -> Vec<proto::AuditEvent> {
    let request =
        proto::QueryEventsRequest { key_id: key_id.into(), action: "key.anomaly".into(), ..Default::default() };
    kw.audit(Some(&kw.root_key)).await.query_events(request).await.expect("QueryEvents").into_inner().events
}

/// The key's `key.anomaly` events once there is at least one, polling for up to 20 s.
async fn wait_for_anomaly(kw: &Instance, key_id: &str) -> Vec<proto::AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = anomaly_events(kw, key_id).await;
        if !events.is_empty() {
            return events;
        }
        assert!(Instant::now() < deadline, "no key.anomaly event within 20 s; log:\n{}", kw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn key_info(kw: &Instance, key_id: &str) -> proto::KeyInfo {
    kw.root_keys().await.get_key(proto::GetKeyRequest { key_id: key_id.into() }).await.unwrap().into_inner()
}

/// Lets a few evaluation windows pass (so a repeated anomaly would have been written).
async fn a_few_windows() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn steady_traffic_is_quiet_and_thirty_new_networks_make_one_anomaly() {
    let mut kw = small_timescales();
    kw.metrics = true;
    kw.start().await;
    let (key, id) = kw.create_key("orders", &[]).await;
    let mut v = kw.root_verifier().await;
    steady_traffic(&mut v, &key).await;
    a_few_windows().await;
    assert_eq!(anomaly_events(&kw, &id).await.len(), 0, "steady traffic from two networks is not an anomaly");

    assert!(thirty_new_networks(&mut v, &key).await.iter().all(|c| *c == VerifyCode::Valid), "ALERT blocks nothing");
    let events = wait_for_anomaly(&kw, &id).await;
    assert_eq!(events[0].code, "NEW_NETWORKS");
    assert_eq!(events[0].actor, "system:anomaly-detector");
    assert!(events[0].reason.starts_with("NEW_NETWORKS: 30 client networks never seen"), "{}", events[0].reason);
    assert!(!events[0].mac.is_empty(), "chained like every event");
    a_few_windows().await;
    assert_eq!(anomaly_events(&kw, &id).await.len(), 1, "one anomaly, not one per window");

    let info = key_info(&kw, &id).await;
    assert_eq!(info.state(), KeyState::Active);
    assert_eq!(info.anomaly_action(), AnomalyAction::Unspecified, "the default (ALERT), left unset");
    assert_eq!(info.anomalies.len(), 1);
    assert_eq!(info.anomalies[0].kind(), AnomalyKind::NewNetworks);
    assert_eq!(info.anomalies[0].evidence, events[0].reason.trim_start_matches("NEW_NETWORKS: "));
    let metrics = scrape::parse(&scrape::http(kw.metrics_addr().unwrap(), "GET", "/metrics").await.body);
    assert_eq!(metrics.value("keyward_key_anomalies_total", &[("kind", "new_networks")]), 1.0);
}

#[tokio::test]
async fn with_anomaly_action_disable_the_key_is_disabled_and_verifies_disabled() {
    let mut kw = small_timescales();
    kw.start().await;
    let (key, id) = kw.create_key("orders", &[]).await;
    let updated = kw
        .root_keys()
        .await
        .update_key(proto::UpdateKeyRequest {
            key_id: id.clone(),
            anomaly_action: AnomalyAction::Disable as i32,
            update_mask: Some(FieldMask { paths: vec!["anomaly_action".into()] }),
            ..Default::default()
        })
        .await
        .expect("UpdateKey")
        .into_inner();
    assert_eq!(updated.anomaly_action(), AnomalyAction::Disable);
    let mut v = kw.root_verifier().await;
    steady_traffic(&mut v, &key).await;
    thirty_new_networks(&mut v, &key).await;
    let events = wait_for_anomaly(&kw, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].changes.len(), 1);
    assert_eq!((events[0].changes[0].before.as_str(), events[0].changes[0].after.as_str()), ("active", "disabled"));
    assert_eq!(verify(&mut v, &key, "198.51.100.7", &[]).await, VerifyCode::Disabled);
    let info = key_info(&kw, &id).await;
    assert_eq!(info.state(), KeyState::Disabled);
    assert!(info.disable_reason.starts_with("anomaly NEW_NETWORKS:"), "{}", info.disable_reason);
}

#[tokio::test]
async fn a_rate_burst_is_detected() {
    let mut kw = small_timescales();
    kw.start().await;
    let (key, id) = kw.create_key("orders", &[]).await;
    let mut v = kw.root_verifier().await;
    steady_traffic(&mut v, &key).await;
    // Eight callers as fast as they can, from the same two networks, until the anomaly shows
    // (it takes three spiking windows in a row) or 20 s pass.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let (mut v, key, stop) = (kw.root_verifier().await, key.clone(), stop.clone());
        workers.spawn(async move {
            let ip = if n % 2 == 0 { "198.51.100.8" } else { "2001:db8:1::8" };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(verify(&mut v, &key, ip, &[]).await, VerifyCode::Valid);
            }
        });
    }
    let events = wait_for_anomaly(&kw, &id).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    assert_eq!(events.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), vec!["RATE_SPIKE"]);
    assert!(events[0].reason.contains("windows in a row"), "{}", events[0].reason);
    assert_eq!(key_info(&kw, &id).await.anomalies[0].kind(), AnomalyKind::RateSpike);
}

#[tokio::test]
async fn a_failure_burst_is_detected() {
    let mut kw = small_timescales();
    kw.start().await;
    let (key, id) = kw.create_key("orders", &["orders:read"]).await;
    let mut v = kw.root_verifier().await;
    steady_traffic(&mut v, &key).await;
    for _ in 0..30 {
        assert_eq!(verify(&mut v, &key, "198.51.100.7", &["orders:write"]).await, VerifyCode::InsufficientScope);
    }
    let events = wait_for_anomaly(&kw, &id).await;
    assert_eq!(events.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), vec!["FAILURE_SPIKE"]);
    assert!(events[0].reason.contains("INSUFFICIENT_SCOPE"), "{}", events[0].reason);
}

#[tokio::test]
async fn the_baselines_survive_a_restart_rebuilt_from_the_usage_log() {
    let mut kw = small_timescales();
    kw.start().await;
    let (key, id) = kw.create_key("orders", &[]).await;
    steady_traffic(&mut kw.root_verifier().await, &key).await;
    kw.stop().await;
    kw.start().await;
    assert!(kw.logs().contains("anomaly baselines rebuilt from the usage log"));
    // Right after the restart: a detector starting empty would see a brand-new key, whose
    // baseline is not established, and flag nothing.
    thirty_new_networks(&mut kw.root_verifier().await, &key).await;
    let events = wait_for_anomaly(&kw, &id).await;
    assert_eq!(events.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), vec!["NEW_NETWORKS"]);
    assert!(events[0].reason.contains("(2 known)"), "the networks seen before the restart: {}", events[0].reason);
}

#[tokio::test]
async fn a_key_used_after_idle_after_is_flagged_once() {
    let mut kw = small_timescales();
    kw.configure("anomaly", "idle_after", "\"3s\"");
    kw.start().await;
    let (key, id) = kw.create_key("orders", &[]).await;
    let mut v = kw.root_verifier().await;
    // Used right after its creation, then every half second: never idle for 3 s.
    for _ in 0..6 {
        assert_eq!(verify(&mut v, &key, "198.51.100.7", &[]).await, VerifyCode::Valid);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    a_few_windows().await;
    assert_eq!(anomaly_events(&kw, &id).await.len(), 0, "a key in steady use is not idle");

    tokio::time::sleep(Duration::from_secs(2)).await; // idle for 5 s in all, past idle_after
    assert_eq!(verify(&mut v, &key, "198.51.100.7", &[]).await, VerifyCode::Valid, "ALERT blocks nothing");
    let events = wait_for_anomaly(&kw, &id).await;
    assert_eq!(events.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), vec!["IDLE_KEY_USED"]);
    assert!(events[0].reason.starts_with("IDLE_KEY_USED: used after "), "{}", events[0].reason);
    assert!(events[0].reason.contains("198.51.100.0/24"), "names the network it came from: {}", events[0].reason);
    assert_eq!(key_info(&kw, &id).await.anomalies[0].kind(), AnomalyKind::IdleKeyUsed);

    // Used again at once: not idle any more, no second event.
    assert_eq!(verify(&mut v, &key, "198.51.100.7", &[]).await, VerifyCode::Valid);
    a_few_windows().await;
    assert_eq!(anomaly_events(&kw, &id).await.len(), 1);
}
