//! The detector: a capacity-bounded map of key baselines, fed with usage records by the usage
//! log's writer (`observe`), closed once a window (`evaluate`), and rebuilt at start from the
//! usage log (`replay`). One mutex; the VerifyKey path never takes it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use super::{AnomalyConfig, AnomalyKind, baseline::KeyBaseline};
use crate::domain::{key::KeyId, usage_log::UsageRecord};

/// An anomaly the detector found, before it is recorded on the key.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub key: KeyId,
    pub kind: AnomalyKind,
    pub at: SystemTime,
    pub evidence: String,
}

pub struct Detector {
    config: AnomalyConfig,
    /// The EWMA weight of one window: the window over the baseline period (so the baseline
    /// remembers about `min_baseline`), between 1 % and 50 %.
    alpha: f64,
    keys: Mutex<HashMap<KeyId, KeyBaseline>>,
}

impl Detector {
    pub fn new(config: AnomalyConfig) -> Self {
        let alpha = if config.min_baseline.is_zero() {
            0.5
        } else {
            (config.window.as_secs_f64() / config.min_baseline.as_secs_f64()).clamp(0.01, 0.5)
        };
        Self { config, alpha, keys: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// The window `t` falls in.
    fn index(&self, t: SystemTime) -> u64 {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_nanos() / self.config.window.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, KeyBaseline>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `records` into their keys' open windows. `last_use` tells, for a key the detector
    /// does not track yet, when the store last saw it used (or created): the idle check's
    /// starting point. Records of no known key (malformed, unknown id) are skipped.
    pub fn observe(&self, records: &[UsageRecord], last_use: &dyn Fn(KeyId) -> Option<SystemTime>) {
        let mut keys = self.keys();
        for r in records {
            let Some(id) = r.key_id else { continue };
            let index = self.index(r.at);
            self.baseline(&mut keys, id, r.at, last_use).observe(r, index, &self.config);
        }
    }

    /// The baseline of key `id`, made if new (dropping the least recently seen eighth of the
    /// keys when the map is full).
    fn baseline<'a>(
        &self,
        keys: &'a mut HashMap<KeyId, KeyBaseline>,
        id: KeyId,
        at: SystemTime,
        last_use: &dyn Fn(KeyId) -> Option<SystemTime>,
    ) -> &'a mut KeyBaseline {
        if !keys.contains_key(&id) && keys.len() >= self.config.capacity.max(1) {
            evict(keys, (self.config.capacity / 8).max(1));
        }
        keys.entry(id).or_insert_with(|| {
            // A stored last use at or after this record may already count it: unknown then.
            let before = last_use(id).filter(|t| *t < at);
            KeyBaseline::new(at, before)
        })
    }

    /// Closes the window for every key used in it, at `now`; returns what was found.
    pub fn evaluate(&self, now: SystemTime) -> Vec<Finding> {
        let mut found = Vec::new();
        let mut keys = self.keys();
        for (id, baseline) in keys.iter_mut() {
            baseline.close(*id, now, &self.config, self.alpha, &mut found);
        }
        found
    }

    /// Replays `records` (oldest first) into the baselines, closing each key's windows as the
    /// records' times pass them; what the replay would flag is not reported (it was, live).
    /// The last window of each key stays open for the live records.
    pub fn replay(&self, records: &[UsageRecord], last_use: &dyn Fn(KeyId) -> Option<SystemTime>) {
        let mut keys = self.keys();
        let mut discarded = Vec::new();
        for r in records {
            let Some(id) = r.key_id else { continue };
            let index = self.index(r.at);
            let baseline = self.baseline(&mut keys, id, r.at, last_use);
            if let Some(open) = baseline.open_window()
                && open < index
            {
                let end = window_end(open, self.config.window);
                baseline.close(id, end, &self.config, self.alpha, &mut discarded);
                discarded.clear();
            }
            baseline.observe(r, index, &self.config);
        }
    }

    /// Keys tracked.
    pub fn tracked(&self) -> usize {
        self.keys().len()
    }

    #[cfg(test)]
    pub(super) fn with_baseline<T>(&self, id: KeyId, f: impl FnOnce(&KeyBaseline) -> T) -> Option<T> {
        self.keys().get(&id).map(f)
    }
}

/// When window `index` ends.
fn window_end(index: u64, window: Duration) -> SystemTime {
    let nanos = u128::from(index + 1) * window.as_nanos();
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Drops the `n` least recently seen keys.
fn evict(keys: &mut HashMap<KeyId, KeyBaseline>, n: usize) {
    let mut by_age: Vec<(SystemTime, KeyId)> = keys.iter().map(|(id, b)| (b.last_seen, *id)).collect();
    let n = n.min(by_age.len());
    if n == 0 {
        return;
    }
    by_age.select_nth_unstable(n - 1);
    for (_, id) in &by_age[..n] {
        keys.remove(id);
    }
}
