//! `[anomaly]`: the per-key anomaly detector's windows, thresholds and bounds (see
//! docs/anomalies.md), and their validation; each refusal names its field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, human};
use crate::domain::anomaly::AnomalyConfig;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalySection {
    pub enabled: bool,
    /// The evaluation window, in seconds: counts are per window, evaluated once a window.
    pub window_seconds: u64,
    /// How long a key's baseline must cover before NEW_NETWORKS and RATE_SPIKE apply, in seconds.
    pub min_baseline_seconds: u64,
    /// Networks never seen for a key, within one window, that make a NEW_NETWORKS anomaly.
    pub new_networks: usize,
    /// Networks remembered per key (/24 IPv4, /48 IPv6).
    pub networks_per_key: usize,
    /// Caller identities remembered per key.
    pub callers_per_key: usize,
    /// A window above this many times the baseline rate is spiking ...
    pub rate_factor: f64,
    /// ... and this many spiking windows in a row make a RATE_SPIKE anomaly.
    pub rate_windows: u32,
    /// A window with fewer verifications never spikes.
    pub rate_min_requests: u64,
    /// A window's failure ratio at or above this (and at least twice the key's usual one) ...
    pub failure_ratio: f64,
    /// ... with at least this many failures, makes a FAILURE_SPIKE anomaly.
    pub failure_min: u64,
    /// A key used after this long idle is an IDLE_KEY_USED anomaly (`"off"`: never).
    #[serde(with = "human::off")]
    pub idle_after: Option<Duration>,
    /// One anomaly of a kind per key at most this often.
    #[serde(with = "human")]
    pub cooldown: Duration,
    /// Keys whose baselines are kept in memory at once.
    pub capacity: usize,
    /// At start, the baselines are rebuilt from the usage log's records this far back ...
    #[serde(with = "human")]
    pub rebuild_lookback: Duration,
    /// ... the newest this many at most (0: no rebuild).
    pub rebuild_max_records: usize,
}

impl Default for AnomalySection {
    fn default() -> Self {
        let d = AnomalyConfig::default();
        Self {
            enabled: d.enabled,
            window_seconds: d.window.as_secs(),
            min_baseline_seconds: d.min_baseline.as_secs(),
            new_networks: d.new_networks,
            networks_per_key: d.networks_per_key,
            callers_per_key: d.callers_per_key,
            rate_factor: d.rate_factor,
            rate_windows: d.rate_windows,
            rate_min_requests: d.rate_min_requests,
            failure_ratio: d.failure_ratio,
            failure_min: d.failure_min,
            idle_after: d.idle_after,
            cooldown: d.cooldown,
            capacity: d.capacity,
            rebuild_lookback: d.rebuild_lookback,
            rebuild_max_records: d.rebuild_max_records,
        }
    }
}

/// The most networks or callers remembered per key.
const MAX_PER_KEY: usize = 1024;

impl AnomalySection {
    pub fn domain(&self) -> Result<AnomalyConfig, ConfigError> {
        let invalid = |field: &str, why: &str| Err(ConfigError::Invalid(format!("anomaly.{field} {why}")));
        if !(1..=86_400).contains(&self.window_seconds) {
            return invalid("window_seconds", "must be between 1 and 86400");
        }
        if self.min_baseline_seconds > 365 * 86_400 {
            return invalid("min_baseline_seconds", "must be at most a year (31536000)");
        }
        if !(1..=MAX_PER_KEY).contains(&self.networks_per_key) {
            return invalid("networks_per_key", "must be between 1 and 1024");
        }
        if !(1..=MAX_PER_KEY).contains(&self.callers_per_key) {
            return invalid("callers_per_key", "must be between 1 and 1024");
        }
        if self.new_networks == 0 || self.new_networks > self.networks_per_key {
            return invalid("new_networks", "must be between 1 and networks_per_key");
        }
        if !self.rate_factor.is_finite() || self.rate_factor <= 1.0 {
            return invalid("rate_factor", "must be a number above 1");
        }
        if self.rate_windows == 0 {
            return invalid("rate_windows", "must be at least 1");
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return invalid("failure_ratio", "must be above 0 and at most 1");
        }
        if self.failure_min == 0 {
            return invalid("failure_min", "must be at least 1");
        }
        if self.capacity == 0 {
            return invalid("capacity", "must be at least 1");
        }
        Ok(AnomalyConfig {
            enabled: self.enabled,
            window: Duration::from_secs(self.window_seconds),
            min_baseline: Duration::from_secs(self.min_baseline_seconds),
            new_networks: self.new_networks,
            networks_per_key: self.networks_per_key,
            callers_per_key: self.callers_per_key,
            rate_factor: self.rate_factor,
            rate_windows: self.rate_windows,
            rate_min_requests: self.rate_min_requests,
            failure_ratio: self.failure_ratio,
            failure_min: self.failure_min,
            idle_after: self.idle_after,
            cooldown: self.cooldown,
            capacity: self.capacity,
            rebuild_lookback: self.rebuild_lookback,
            rebuild_max_records: self.rebuild_max_records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(f: impl FnOnce(&mut AnomalySection)) -> String {
        let mut s = AnomalySection::default();
        f(&mut s);
        match s.domain() {
            Err(ConfigError::Invalid(why)) => why,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn the_defaults_are_the_documented_ones_and_valid() {
        let d = AnomalySection::default().domain().unwrap();
        assert_eq!(d, AnomalyConfig::default());
        assert_eq!((d.window, d.min_baseline), (Duration::from_secs(60), Duration::from_secs(3600)));
        assert_eq!((d.rate_factor, d.rate_windows), (10.0, 3));
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_field() {
        assert!(refused(|s| s.window_seconds = 0).starts_with("anomaly.window_seconds"));
        assert!(refused(|s| s.rate_factor = 1.0).starts_with("anomaly.rate_factor"));
        assert!(refused(|s| s.rate_factor = f64::NAN).starts_with("anomaly.rate_factor"));
        assert!(refused(|s| s.rate_windows = 0).starts_with("anomaly.rate_windows"));
        assert!(refused(|s| s.failure_ratio = 1.5).starts_with("anomaly.failure_ratio"));
        assert!(refused(|s| s.failure_min = 0).starts_with("anomaly.failure_min"));
        assert!(refused(|s| s.new_networks = 40).starts_with("anomaly.new_networks"), "above networks_per_key");
        assert!(refused(|s| s.capacity = 0).starts_with("anomaly.capacity"));
        assert!(refused(|s| s.networks_per_key = 0).starts_with("anomaly.networks_per_key"));
    }

    #[test]
    fn small_timescales_for_tests_parse_from_toml() {
        let s: AnomalySection =
            toml::from_str("window_seconds = 1\nmin_baseline_seconds = 3\nidle_after = \"off\"\ncooldown = \"1m\"")
                .unwrap();
        let d = s.domain().unwrap();
        assert_eq!((d.window, d.min_baseline, d.idle_after), (Duration::from_secs(1), Duration::from_secs(3), None));
        assert!(toml::from_str::<AnomalySection>("windows = 1").is_err(), "unknown keys are refused");
    }
}
