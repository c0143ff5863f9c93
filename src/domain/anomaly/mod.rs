//! Per-key anomaly detection over the verification stream: the kinds, the per-key policy, the
//! settings, and `AnomalyWatch`, the service that evaluates the baselines every window and
//! records what it finds on the key (one transaction: the record and its `key.anomaly` event).
//!
//! The detector is fed by the usage log's writer (`usage_log`), off the VerifyKey path: a
//! verification only offers its record to the usage queue, as it did before. See
//! docs/anomalies.md for the kinds, thresholds and their cost.

mod baseline;
mod detector;
mod record;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

pub use self::{
    baseline::Network,
    detector::{Detector, Finding},
    record::{MAX_RECENT_ANOMALIES, Recorded, anomaly_change},
};
use super::{
    deps::Deps,
    error::{Error, Result},
    ports::{Hsm, Store},
    usage_log::{UsageQuery, UsageRecord},
};

/// What kind of unusual use was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    /// A burst of client networks never seen for the key, within one window.
    NewNetworks,
    /// The key's rate far above its baseline for several windows in a row.
    RateSpike,
    /// The key's failure ratio (wrong secret, missing scope, address not allowed) jumped.
    FailureSpike,
    /// The key was used after a long idle time.
    IdleKeyUsed,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 4] =
        [AnomalyKind::NewNetworks, AnomalyKind::RateSpike, AnomalyKind::FailureSpike, AnomalyKind::IdleKeyUsed];

    /// The kind's name, as the audit event's `code` and the wire enum's suffix carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::NewNetworks => "NEW_NETWORKS",
            AnomalyKind::RateSpike => "RATE_SPIKE",
            AnomalyKind::FailureSpike => "FAILURE_SPIKE",
            AnomalyKind::IdleKeyUsed => "IDLE_KEY_USED",
        }
    }

    /// The kind's metric label (`keyward_key_anomalies_total{kind}`).
    pub fn label(self) -> &'static str {
        match self {
            AnomalyKind::NewNetworks => "new_networks",
            AnomalyKind::RateSpike => "rate_spike",
            AnomalyKind::FailureSpike => "failure_spike",
            AnomalyKind::IdleKeyUsed => "idle_key_used",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What keyward does when it finds an anomaly on a key (a per-key policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnomalyAction {
    /// Record it (audit event, metric, `KeyInfo.anomalies`); the key keeps working.
    #[default]
    Alert,
    /// Record it and disable the key, the anomaly as the reason.
    Disable,
}

impl fmt::Display for AnomalyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnomalyAction::Alert => "alert",
            AnomalyAction::Disable => "disable",
        })
    }
}

/// An anomaly as the key's record keeps it (the recent ones: `MAX_RECENT_ANOMALIES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAnomaly {
    pub kind: AnomalyKind,
    pub at: SystemTime,
    /// What was seen: counts, networks, times. Never a key or a secret.
    pub evidence: String,
}

/// The detector's settings (`[anomaly]`).
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyConfig {
    pub enabled: bool,
    /// The evaluation window: counts are per window, and the baselines are evaluated once a window.
    pub window: Duration,
    /// A key is flagged for new networks or a rate spike only once its baseline covers this long.
    pub min_baseline: Duration,
    /// Networks never seen for a key, within one window, that make a NEW_NETWORKS anomaly.
    pub new_networks: usize,
    /// Networks remembered per key (least recently seen forgotten first).
    pub networks_per_key: usize,
    /// Caller identities remembered per key (least recently seen forgotten first).
    pub callers_per_key: usize,
    /// A window's count above this many times the baseline rate is a spike ...
    pub rate_factor: f64,
    /// ... and this many spiking windows in a row are a RATE_SPIKE anomaly.
    pub rate_windows: u32,
    /// A window with fewer verifications is never a spike (a key used once an hour that is
    /// used five times is not an incident).
    pub rate_min_requests: u64,
    /// A window's failure ratio at or above this, and at least twice the key's usual ratio ...
    pub failure_ratio: f64,
    /// ... with at least this many failures, is a FAILURE_SPIKE anomaly.
    pub failure_min: u64,
    /// A key used after being idle this long is an IDLE_KEY_USED anomaly; `None`: off.
    pub idle_after: Option<Duration>,
    /// One anomaly of a kind per key at most in this time (in memory and on the key's record).
    pub cooldown: Duration,
    /// Keys whose baselines are kept at once (least recently used dropped first).
    pub capacity: usize,
    /// At start, the usage log's records of this long ago onwards rebuild the baselines ...
    pub rebuild_lookback: Duration,
    /// ... at most this many (the newest).
    pub rebuild_max_records: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            min_baseline: Duration::from_secs(3600),
            new_networks: 10,
            networks_per_key: 32,
            callers_per_key: 8,
            rate_factor: 10.0,
            rate_windows: 3,
            rate_min_requests: 100,
            failure_ratio: 0.5,
            failure_min: 20,
            idle_after: Some(Duration::from_secs(30 * 86_400)),
            cooldown: Duration::from_secs(3600),
            capacity: 100_000,
            rebuild_lookback: Duration::from_secs(86_400),
            rebuild_max_records: 200_000,
        }
    }
}

/// Records read per page while rebuilding.
const REBUILD_PAGE: usize = 10_000;

/// The anomaly service: evaluates the detector's baselines and records what it finds on the
/// keys through the store (the key's record and its `key.anomaly` event in one transaction).
pub struct AnomalyWatch<H, S> {
    deps: Deps<H, S>,
    detector: Arc<Detector>,
}

impl<H: Hsm, S: Store> AnomalyWatch<H, S> {
    pub fn new(deps: Deps<H, S>, detector: Arc<Detector>) -> Self {
        Self { deps, detector }
    }

    pub fn window(&self) -> Duration {
        self.detector.config().window
    }

    /// Rebuilds the baselines from the usage log's recent records (the newest
    /// `rebuild_max_records` of the last `rebuild_lookback`), without flagging anything.
    /// Returns how many records were replayed.
    pub fn rebuild(&self) -> Result<usize> {
        let config = self.detector.config();
        let now = self.deps.clock.now();
        let query = UsageQuery {
            since: now.checked_sub(config.rebuild_lookback),
            until: Some(now),
            newest_first: true,
            ..Default::default()
        };
        let mut records: Vec<UsageRecord> = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let want = config.rebuild_max_records.saturating_sub(records.len()).min(REBUILD_PAGE);
            if want == 0 {
                break;
            }
            let (page, next) = self.deps.store.query_usage(&query, cursor.as_deref(), want, REBUILD_PAGE * 4)?;
            records.extend(page);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        records.reverse();
        let store = &self.deps.store;
        self.detector.replay(&records, &|id| {
            store.get_key(id).ok().flatten().map(|r| r.usage.last_used_at.unwrap_or(r.created_at))
        });
        Ok(records.len())
    }

    /// Closes the window: evaluates every key that was used in it and records each anomaly
    /// found. Returns what was recorded (findings within a key's cool-down are not).
    pub async fn evaluate(&self) -> Vec<Recorded> {
        let now = self.deps.clock.now();
        let findings = self.detector.evaluate(now);
        let mut recorded = Vec::new();
        for finding in findings {
            match self.record(finding).await {
                Ok(Some(r)) => recorded.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "recording an anomaly failed; it is dropped"),
            }
        }
        recorded
    }

    /// Records one finding on its key; `None` when the key is gone or already carries an
    /// anomaly of that kind within the cool-down.
    async fn record(&self, finding: Finding) -> Result<Option<Recorded>> {
        let cooldown = self.detector.config().cooldown;
        let (id, kind) = (finding.key, finding.kind);
        let updated =
            match self.deps.store.update_key(id, move |current| anomaly_change(current, &finding, cooldown)).await {
                Ok(updated) => updated,
                Err(Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
        if updated.after.anomalies == updated.before.anomalies {
            return Ok(None);
        }
        let disabled = updated.before.state != updated.after.state;
        Ok(Some(Recorded { key: id, kind, disabled }))
    }
}

#[cfg(test)]
mod baseline_tests;

#[cfg(test)]
mod tests;
