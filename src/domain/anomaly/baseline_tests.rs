//! The baseline math and each kind, on the detector alone: records in, findings out.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::*;
use crate::domain::{key::KeyId, policy::VerifyCode, usage_log::UsageRecord};

const WINDOW: Duration = Duration::from_secs(10);

fn config() -> AnomalyConfig {
    AnomalyConfig {
        window: WINDOW,
        min_baseline: Duration::from_secs(60),
        new_networks: 10,
        rate_min_requests: 20,
        failure_min: 10,
        cooldown: Duration::from_secs(300),
        ..Default::default()
    }
}

/// The start of window `n` (windows of 10 s from a round time).
fn window(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + n * 10)
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

fn rec(key: KeyId, at: SystemTime, code: VerifyCode, client_ip: Option<IpAddr>) -> UsageRecord {
    UsageRecord { at, key_id: Some(key), code, client_ip, caller: None, latency: Duration::ZERO }
}

fn no_history(_: KeyId) -> Option<SystemTime> {
    None
}

/// `n` valid verifications of `key` in window `w`, alternating between two client networks.
fn steady(key: KeyId, w: u64, n: usize) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| {
            let from = if i % 2 == 0 { "198.51.100.7" } else { "2001:db8:1:2::9" };
            rec(key, window(w) + Duration::from_millis(i as u64), VerifyCode::Valid, ip(from))
        })
        .collect()
}

/// Feeds `records` and closes window `w`; returns the kinds found.
fn window_of(d: &Detector, w: u64, records: &[UsageRecord]) -> Vec<Finding> {
    d.observe(records, &no_history);
    d.evaluate(window(w + 1))
}

/// Windows 0..n of steady traffic (4 per window from two networks): a baseline of n windows.
fn baseline(d: &Detector, key: KeyId, n: u64) {
    for w in 0..n {
        assert_eq!(window_of(d, w, &steady(key, w, 4)), vec![], "steady traffic is not an anomaly (window {w})");
    }
}

fn kinds(found: &[Finding]) -> Vec<AnomalyKind> {
    found.iter().map(|f| f.kind).collect()
}

#[test]
fn networks_are_slash_24_for_ipv4_and_slash_48_for_ipv6() {
    let net = |s: &str| Network::of(s.parse().unwrap());
    assert_eq!(net("203.0.113.7"), net("203.0.113.250"));
    assert_ne!(net("203.0.113.7"), net("203.0.114.7"));
    assert_eq!(net("2001:db8:1:ffff::1"), net("2001:db8:1::2"));
    assert_ne!(net("2001:db8:1::1"), net("2001:db8:2::1"));
    assert_eq!(net("::ffff:203.0.113.9"), net("203.0.113.1"), "a mapped IPv4 address is its IPv4 network");
    assert_eq!(net("203.0.113.7").to_string(), "203.0.113.0/24");
    assert_eq!(net("2001:db8:1:ffff::1").to_string(), "2001:db8:1::/48");
}

#[test]
fn a_burst_of_new_networks_after_the_baseline_is_flagged_once() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    baseline(&d, key, 7);
    let burst: Vec<UsageRecord> =
        (0..30u8).map(|n| rec(key, window(7), VerifyCode::Valid, ip(&format!("203.0.{n}.9")))).collect();
    let found = window_of(&d, 7, &burst);
    assert_eq!(kinds(&found), vec![AnomalyKind::NewNetworks]);
    assert!(found[0].evidence.starts_with("30 client networks never seen"), "{}", found[0].evidence);
    assert!(found[0].evidence.contains("203.0.0.0/24"), "{}", found[0].evidence);
    let more: Vec<UsageRecord> =
        (0..30u8).map(|n| rec(key, window(8), VerifyCode::Valid, ip(&format!("192.0.{n}.1")))).collect();
    assert_eq!(window_of(&d, 8, &more), vec![], "within the cool-down: not repeated");
    let after_cooldown: Vec<UsageRecord> =
        (0..30u8).map(|n| rec(key, window(40), VerifyCode::Valid, ip(&format!("100.64.{n}.1")))).collect();
    assert_eq!(kinds(&window_of(&d, 40, &after_cooldown)), vec![AnomalyKind::NewNetworks], "after it");
}

#[test]
fn new_networks_below_the_threshold_or_before_the_baseline_are_learnt_not_flagged() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    let early: Vec<UsageRecord> =
        (0..30u8).map(|n| rec(key, window(0), VerifyCode::Valid, ip(&format!("203.0.{n}.9")))).collect();
    assert_eq!(window_of(&d, 0, &early), vec![], "no baseline yet: learning");
    assert_eq!(d.with_baseline(key, |b| b.known_networks()), Some(30));
    baseline(&d, key, 7);
    let few: Vec<UsageRecord> =
        (0..9u8).map(|n| rec(key, window(7), VerifyCode::Valid, ip(&format!("192.0.{n}.9")))).collect();
    assert_eq!(window_of(&d, 7, &few), vec![], "9 new networks: under the threshold of 10");
    let known_again: Vec<UsageRecord> =
        (0..30u8).map(|n| rec(key, window(8), VerifyCode::Valid, ip(&format!("203.0.{n}.1")))).collect();
    assert_eq!(window_of(&d, 8, &known_again), vec![], "networks seen before are not new");
}

#[test]
fn wrong_secrets_from_many_networks_are_not_new_networks_of_the_key() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    baseline(&d, key, 7);
    let guesses: Vec<UsageRecord> =
        (0..5u8).map(|n| rec(key, window(7), VerifyCode::Invalid, ip(&format!("203.0.{n}.9")))).collect();
    assert_eq!(window_of(&d, 7, &guesses), vec![]);
    assert_eq!(d.with_baseline(key, |b| b.known_networks()), Some(2));
}

#[test]
fn a_rate_spike_needs_rate_windows_spiking_windows_in_a_row() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    baseline(&d, key, 7);
    let rate = d.with_baseline(key, |b| b.rate()).unwrap();
    assert!((rate - 4.0).abs() < 1e-9, "a steady 4 per window: {rate}");
    assert_eq!(window_of(&d, 7, &steady(key, 7, 100)), vec![], "one spiking window");
    assert_eq!(window_of(&d, 8, &steady(key, 8, 4)), vec![], "back to normal: the streak ends");
    assert_eq!(window_of(&d, 9, &steady(key, 9, 100)), vec![]);
    assert_eq!(window_of(&d, 10, &steady(key, 10, 100)), vec![], "two in a row");
    let found = window_of(&d, 11, &steady(key, 11, 100));
    assert_eq!(kinds(&found), vec![AnomalyKind::RateSpike], "the third in a row");
    assert!(found[0].evidence.starts_with("100 verifications in the last 10s window"), "{}", found[0].evidence);
    let rebased = d.with_baseline(key, |b| b.rate()).unwrap();
    assert_eq!(rebased, 100.0, "the new level becomes the baseline");
}

#[test]
fn a_spike_under_rate_min_requests_or_before_the_baseline_is_not_flagged() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    for w in 0..3 {
        assert_eq!(window_of(&d, w, &steady(key, w, 1)), vec![]);
    }
    for w in 3..6 {
        assert_eq!(window_of(&d, w, &steady(key, w, 100)), vec![], "baseline not established (window {w})");
    }
    let quiet = KeyId::new_v7();
    for w in 0..7 {
        window_of(&d, w, &steady(quiet, w, 1));
    }
    for w in 7..12 {
        assert_eq!(window_of(&d, w, &steady(quiet, w, 15)), vec![], "15x, but under 20 per window");
    }
}

#[test]
fn empty_windows_decay_the_baseline_rate() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    baseline(&d, key, 7);
    // Alpha: 10 s windows over a 60 s baseline = 1/6. Ten empty windows, then one.
    window_of(&d, 17, &steady(key, 17, 4));
    let rate = d.with_baseline(key, |b| b.rate()).unwrap();
    let decayed = 4.0 * (5.0f64 / 6.0).powi(10);
    let expected = decayed + (4.0 - decayed) / 6.0;
    assert!((rate - expected).abs() < 1e-9, "{rate} vs {expected}");
}

#[test]
fn a_failure_ratio_jump_with_enough_failures_is_flagged() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    baseline(&d, key, 3);
    let mut burst = steady(key, 3, 4);
    burst.extend((0..8).map(|_| rec(key, window(3), VerifyCode::InsufficientScope, ip("198.51.100.7"))));
    burst.extend((0..6).map(|_| rec(key, window(3), VerifyCode::Invalid, ip("203.0.113.1"))));
    burst.extend((0..2).map(|_| rec(key, window(3), VerifyCode::IpNotAllowed, ip("203.0.113.1"))));
    let found = window_of(&d, 3, &burst);
    assert_eq!(kinds(&found), vec![AnomalyKind::FailureSpike]);
    assert_eq!(
        found[0].evidence,
        "16 of 20 verifications failed in one 10s window (80%, usually 0%): 6 INVALID, 8 INSUFFICIENT_SCOPE, 2 IP_NOT_ALLOWED"
    );
    let d = Detector::new(config());
    let few = KeyId::new_v7();
    let burst: Vec<UsageRecord> =
        (0..9).map(|_| rec(few, window(0), VerifyCode::InsufficientScope, ip("198.51.100.7"))).collect();
    assert_eq!(window_of(&d, 0, &burst), vec![], "9 failures: under failure_min");
}

#[test]
fn a_key_that_usually_fails_this_much_is_not_a_jump() {
    let d = Detector::new(AnomalyConfig { cooldown: Duration::ZERO, ..config() });
    let key = KeyId::new_v7();
    let half = |w: u64| -> Vec<UsageRecord> {
        let mut r = steady(key, w, 20);
        r.extend((0..20).map(|_| rec(key, window(w), VerifyCode::InsufficientScope, ip("198.51.100.7"))));
        r
    };
    assert_eq!(kinds(&window_of(&d, 0, &half(0))), vec![AnomalyKind::FailureSpike], "the first window: no history");
    for w in 1..5 {
        assert_eq!(window_of(&d, w, &half(w)), vec![], "50% is this key's usual ratio (window {w})");
    }
}

#[test]
fn a_use_after_idle_after_is_flagged_even_for_a_key_new_to_the_detector() {
    let d = Detector::new(AnomalyConfig { idle_after: Some(Duration::from_secs(30 * 86_400)), ..config() });
    let key = KeyId::new_v7();
    let long_ago = window(0) - Duration::from_secs(45 * 86_400);
    d.observe(&[rec(key, window(0), VerifyCode::Valid, ip("198.51.100.7"))], &|_| Some(long_ago));
    let found = d.evaluate(window(1));
    assert_eq!(kinds(&found), vec![AnomalyKind::IdleKeyUsed]);
    assert!(found[0].evidence.starts_with("used after 45d 0h idle (previous use "), "{}", found[0].evidence);
    assert!(found[0].evidence.ends_with("from 198.51.100.0/24"), "{}", found[0].evidence);

    let recent = KeyId::new_v7();
    let yesterday = window(0) - Duration::from_secs(86_400);
    d.observe(&[rec(recent, window(0), VerifyCode::Valid, None)], &|_| Some(yesterday));
    assert_eq!(d.evaluate(window(1)), vec![]);
    let counted = KeyId::new_v7();
    d.observe(&[rec(counted, window(0), VerifyCode::Valid, None)], &|_| Some(window(0)));
    assert_eq!(d.evaluate(window(1)), vec![], "a stored last use that may be this one tells nothing");
    let tracked = KeyId::new_v7();
    window_of(&d, 0, &steady(tracked, 0, 2));
    let later = window(0) + Duration::from_secs(31 * 86_400);
    d.observe(&[rec(tracked, later, VerifyCode::Valid, None)], &no_history);
    assert_eq!(kinds(&d.evaluate(later + WINDOW)), vec![AnomalyKind::IdleKeyUsed], "a tracked key's own last use");
}

#[test]
fn a_replayed_usage_log_rebuilds_the_baseline_without_flagging() {
    let d = Detector::new(config());
    let key = KeyId::new_v7();
    let mut history: Vec<UsageRecord> = (0..7).flat_map(|w| steady(key, w, 4)).collect();
    history.extend((0..30u8).map(|n| rec(key, window(2), VerifyCode::Valid, ip(&format!("192.0.{n}.1")))));
    history.sort_by_key(|r| r.at);
    d.replay(&history, &no_history);
    assert_eq!(d.evaluate(window(7)), vec![], "what the history held was flagged live, if at all");
    assert_eq!(d.with_baseline(key, |b| b.known_networks()), Some(32));
    let burst: Vec<UsageRecord> =
        (0..30u8).map(|n| rec(key, window(8), VerifyCode::Valid, ip(&format!("203.0.{n}.9")))).collect();
    assert_eq!(kinds(&window_of(&d, 8, &burst)), vec![AnomalyKind::NewNetworks], "the baseline's age came back");
}

#[test]
fn the_map_of_keys_is_bounded_by_capacity() {
    let d = Detector::new(AnomalyConfig { capacity: 16, ..config() });
    for n in 0..100u64 {
        let at = window(0) + Duration::from_millis(n);
        d.observe(&[rec(KeyId::new_v7(), at, VerifyCode::Valid, None)], &no_history);
        assert!(d.tracked() <= 16);
    }
    let records: Vec<UsageRecord> =
        (0..10).map(|_| rec(KeyId::new_v7(), window(0), VerifyCode::Invalid, None)).collect();
    d.observe(&records, &no_history);
    assert!(d.tracked() <= 16);
}

#[test]
fn records_of_no_known_key_are_skipped() {
    let d = Detector::new(config());
    let unknown = UsageRecord { key_id: None, ..rec(KeyId::new_v7(), window(0), VerifyCode::Invalid, None) };
    d.observe(&[unknown], &no_history);
    assert_eq!(d.tracked(), 0);
}

/// docs/anomalies.md: at most about 1.6 KB per key with the default sets full (and an open window
/// full of new ones), so about 160 MB for the default 100,000 keys.
#[test]
fn a_key_with_full_sets_stays_within_the_documented_memory() {
    use std::mem::size_of;
    let c = AnomalyConfig::default();
    // The baseline, its key in the map, the map's control bytes and spare room.
    let fixed = size_of::<super::baseline::KeyBaseline>() + size_of::<KeyId>() + 16;
    // Known entries with their last-seen time, and the open window's new ones.
    let networks = c.networks_per_key * (size_of::<(Network, u64)>() + size_of::<Network>());
    let callers = c.callers_per_key * (size_of::<(KeyId, u64)>() + size_of::<KeyId>());
    let idle_evidence = 128;
    let most = fixed + networks + callers + idle_evidence;
    assert!(most <= 1600, "{most} bytes per key");
}
