//! AnomalyWatch over the services: verifications through the usage log's writer into the
//! detector, anomalies recorded on the key with their `key.anomaly` event in one transaction,
//! the DISABLE policy, the durable cool-down and the rebuild from the usage log.

use super::*;
use crate::domain::{
    anomaly::record::DETECTOR_ACTOR,
    key::KeyState,
    keys::NewKey,
    testing::{
        Actor, AuditAction, AuditEvent, Clock, Fixture, ServicesConfig, VerifyCode, fixture_with, req, strings, with,
    },
};

const WINDOW: Duration = Duration::from_secs(1);

fn small_timescales() -> ServicesConfig {
    ServicesConfig {
        anomaly: AnomalyConfig {
            window: WINDOW,
            min_baseline: Duration::from_secs(3),
            new_networks: 10,
            rate_min_requests: 10,
            failure_min: 5,
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Fixture {
    fn watch(&self) -> &AnomalyWatch<crate::hsm::fake::FakeHsm, crate::domain::testing::CountingStore> {
        self.anomaly.as_deref().expect("the detector is on")
    }

    /// Verifies `key` from each address, hands the records to the detector, lets a window pass
    /// and evaluates it.
    async fn window_from(&self, key: &str, ips: &[String], required: &[&str]) -> Vec<Recorded> {
        for ip in ips {
            self.verify.verify(&self.root, req(key, ip, &strings(required))).await.unwrap();
        }
        self.verify.flush_usage_log().await.unwrap();
        self.clock.advance(WINDOW);
        self.watch().evaluate().await
    }

    fn anomaly_events(&self) -> Vec<AuditEvent> {
        let all = self.store.audit_after(0, 10_000).unwrap();
        all.into_iter().map(|e| e.event).filter(|e| e.action == AuditAction::KeyAnomaly).collect()
    }

    /// Four windows of steady traffic from two networks: past the 3 s baseline.
    async fn baseline(&self, key: &str) {
        let two = strings(&["198.51.100.7", "2001:db8:1::7"]);
        for _ in 0..4 {
            assert_eq!(self.window_from(key, &two, &[]).await, vec![], "steady traffic");
        }
    }
}

fn networks(third: &str, n: u8) -> Vec<String> {
    (0..n).map(|i| format!("203.{third}.{i}.9")).collect()
}

fn disabling(name: &str) -> NewKey {
    with(name, |k| k.anomaly_action = AnomalyAction::Disable)
}

#[tokio::test]
async fn new_networks_are_recorded_on_the_key_with_one_chained_event() {
    let f = fixture_with(small_timescales()).await;
    let created = f.create_with(with("svc", |_| {})).await;
    let key = created.key.expose();
    f.baseline(key).await;
    assert!(f.anomaly_events().is_empty());
    let recorded = f.window_from(key, &networks("0", 30), &[]).await;
    assert_eq!(recorded, vec![Recorded { key: created.record.id, kind: AnomalyKind::NewNetworks, disabled: false }]);
    let events = f.anomaly_events();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.target, Some(created.record.id));
    assert_eq!(event.actor, Actor::System(DETECTOR_ACTOR.into()));
    assert_eq!(event.code.as_deref(), Some("NEW_NETWORKS"));
    assert!(event.reason.as_deref().unwrap().starts_with("NEW_NETWORKS: 30 client networks never seen"));
    let info = f.keys.get(&f.root, &created.record.id.to_string()).unwrap();
    assert_eq!(info.state, KeyState::Active, "ALERT leaves the key working");
    assert_eq!(info.anomalies.len(), 1);
    assert_eq!(info.anomalies[0].kind, AnomalyKind::NewNetworks);
    assert_eq!(f.code(key, &[]).await, VerifyCode::Valid);
    assert_eq!(f.window_from(key, &networks("1", 30), &[]).await, vec![], "cool-down: not repeated");
    assert_eq!(f.anomaly_events().len(), 1);
}

#[tokio::test]
async fn the_disable_policy_disables_the_key_in_the_same_transaction() {
    let f = fixture_with(small_timescales()).await;
    let created = f.create_with(disabling("svc")).await;
    let key = created.key.expose();
    f.baseline(key).await;
    let recorded = f.window_from(key, &networks("0", 30), &[]).await;
    assert_eq!(recorded, vec![Recorded { key: created.record.id, kind: AnomalyKind::NewNetworks, disabled: true }]);
    let event = &f.anomaly_events()[0];
    assert_eq!(
        (event.changes[0].field.as_str(), event.changes[0].before.as_str(), event.changes[0].after.as_str()),
        ("state", "active", "disabled")
    );
    assert!(event.reason.as_deref().unwrap().ends_with("the key is disabled (anomaly_action DISABLE)"));
    let info = f.keys.get(&f.root, &created.record.id.to_string()).unwrap();
    assert_eq!(info.state, KeyState::Disabled);
    assert!(info.disable_reason.as_deref().unwrap().starts_with("anomaly NEW_NETWORKS: 30 client networks"));
    assert_eq!(f.code(key, &[]).await, VerifyCode::Disabled);
}

#[tokio::test]
async fn a_failure_burst_on_a_known_key_is_recorded() {
    let f = fixture_with(small_timescales()).await;
    let created = f.create_with(with("svc", |k| k.scopes = strings(&["orders:read"]))).await;
    let key = created.key.expose();
    f.baseline(key).await;
    let same = vec!["198.51.100.7".to_string(); 12];
    let recorded = f.window_from(key, &same, &["orders:write"]).await;
    assert_eq!(recorded.iter().map(|r| r.kind).collect::<Vec<_>>(), vec![AnomalyKind::FailureSpike]);
    assert!(f.anomaly_events()[0].reason.as_deref().unwrap().contains("12 INSUFFICIENT_SCOPE"));
}

#[tokio::test]
async fn the_cool_down_holds_across_a_restart_through_the_key_record() {
    let f = fixture_with(small_timescales()).await;
    let created = f.create_with(with("svc", |_| {})).await;
    let finding =
        Finding { key: created.record.id, kind: AnomalyKind::RateSpike, at: f.clock.now(), evidence: "x".into() };
    let record = f.keys.get(&f.root, &created.record.id.to_string()).unwrap();
    let hour = Duration::from_secs(3600);
    let (once, _) = anomaly_change(&record, &finding, hour).unwrap().unwrap();
    assert_eq!(once.anomalies.len(), 1);
    let later = Finding { at: finding.at + Duration::from_secs(60), ..finding.clone() };
    assert!(anomaly_change(&once, &later, hour).unwrap().is_none(), "the record's own anomaly: cooling down");
    let other = Finding { kind: AnomalyKind::NewNetworks, ..later.clone() };
    assert!(anomaly_change(&once, &other, hour).unwrap().is_some(), "another kind is not");
    let much_later = Finding { at: finding.at + hour, ..finding.clone() };
    assert!(anomaly_change(&once, &much_later, hour).unwrap().is_some());
    let mut revoked = once.clone();
    revoked.state = KeyState::Revoked;
    assert!(anomaly_change(&revoked, &other, hour).unwrap().is_none(), "a revoked key is left alone");
    let mut many = once;
    for n in 1..=7u64 {
        let f = Finding { at: finding.at + hour * n as u32, ..finding.clone() };
        many = anomaly_change(&many, &f, hour).unwrap().unwrap().0;
    }
    assert_eq!(many.anomalies.len(), MAX_RECENT_ANOMALIES, "only the recent ones are kept");
    assert_eq!(many.anomalies.last().unwrap().at, finding.at + hour * 7);
}

#[tokio::test]
async fn the_baselines_are_rebuilt_from_the_usage_log() {
    let config = small_timescales();
    let f = fixture_with(config.clone()).await;
    let created = f.create_with(with("svc", |_| {})).await;
    let key = created.key.expose();
    f.baseline(key).await;
    // A detector with nothing in memory, as after a restart, rebuilt from what the log holds.
    let fresh = AnomalyWatch::new(
        crate::domain::deps::Deps::new(f.hsm.clone(), f.store.clone(), f.clock.clone()),
        Arc::new(Detector::new(config.anomaly.clone())),
    );
    assert_eq!(fresh.rebuild().unwrap(), 8, "four windows of two verifications");
    assert_eq!(fresh.detector.tracked(), 1);
    for ip in networks("0", 30) {
        f.verify.verify(&f.root, req(key, &ip, &[])).await.unwrap();
    }
    let records: Vec<UsageRecord> = {
        f.verify.flush_usage_log().await.unwrap();
        let q = UsageQuery { since: Some(f.clock.now()), ..Default::default() };
        f.store.query_usage(&q, None, 100, 1000).unwrap().0
    };
    fresh.detector.observe(&records, &|_| None);
    f.clock.advance(WINDOW);
    let found = fresh.evaluate().await;
    assert_eq!(found.iter().map(|r| r.kind).collect::<Vec<_>>(), vec![AnomalyKind::NewNetworks]);
}

#[tokio::test]
async fn with_the_usage_log_off_the_detector_still_gets_the_records() {
    let mut config = small_timescales();
    config.usage_log.enabled = false;
    let f = fixture_with(config).await;
    let created = f.create_with(with("svc", |_| {})).await;
    let key = created.key.expose();
    f.baseline(key).await;
    assert_eq!(f.window_from(key, &networks("0", 30), &[]).await.len(), 1);
    let all = f.store.query_usage(&UsageQuery::default(), None, 10, 100).unwrap().0;
    assert!(all.is_empty(), "nothing is written to the usage log");
}

#[tokio::test]
async fn with_the_detector_off_there_is_no_watch() {
    let mut config = small_timescales();
    config.anomaly.enabled = false;
    let f = fixture_with(config).await;
    assert!(f.anomaly.is_none());
}
