//! Usage facts (last use, counts), gathered in memory on the hot path and written to the store
//! in batches by a periodic flush: a verification costs a map update, not a disk write. A crash
//! loses at most the facts gathered since the last flush.

use std::{collections::HashMap, mem, net::IpAddr, sync::Mutex, time::SystemTime};

use super::key::{KeyId, Usage};

/// Usage gathered since the last flush, for one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub last_valid: Option<(SystemTime, Option<IpAddr>)>,
    pub valid: u64,
    pub rejected: u64,
}

impl UsageDelta {
    fn record(&mut self, valid: bool, at: SystemTime, ip: Option<IpAddr>) {
        if valid {
            self.valid += 1;
            if self.last_valid.is_none_or(|(t, _)| at >= t) {
                self.last_valid = Some((at, ip));
            }
        } else {
            self.rejected += 1;
        }
    }
}

impl Usage {
    /// Adds what a delta counted.
    pub fn absorb(&mut self, delta: &UsageDelta) {
        self.valid_count = self.valid_count.saturating_add(delta.valid);
        self.rejected_count = self.rejected_count.saturating_add(delta.rejected);
        if let Some((at, ip)) = delta.last_valid
            && self.last_used_at.is_none_or(|t| at >= t)
        {
            self.last_used_at = Some(at);
            self.last_used_ip = ip;
        }
    }
}

#[derive(Default)]
pub(crate) struct UsageBuffer {
    pending: Mutex<HashMap<KeyId, UsageDelta>>,
}

impl UsageBuffer {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, UsageDelta>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, id: KeyId, valid: bool, at: SystemTime, ip: Option<IpAddr>) {
        self.pending().entry(id).or_default().record(valid, at, ip);
    }

    /// What is gathered for `id` and not yet written.
    pub fn peek(&self, id: KeyId) -> Option<UsageDelta> {
        self.pending().get(&id).cloned()
    }

    /// Takes everything gathered, for a flush.
    pub fn take(&self) -> HashMap<KeyId, UsageDelta> {
        mem::take(&mut *self.pending())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn deltas_count_and_keep_the_latest_valid_use() {
        let buf = UsageBuffer::default();
        let id = KeyId::new_v7();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        buf.record(id, true, t, Some(ip));
        buf.record(id, false, t + Duration::from_secs(5), None);
        buf.record(id, true, t - Duration::from_secs(1), None);
        let batch = buf.take();
        assert!(buf.peek(id).is_none());
        let delta = &batch[&id];
        assert_eq!((delta.valid, delta.rejected), (2, 1));
        assert_eq!(delta.last_valid, Some((t, Some(ip))));

        let mut usage = Usage::default();
        usage.absorb(delta);
        usage.absorb(delta);
        assert_eq!((usage.valid_count, usage.rejected_count), (4, 2));
        assert_eq!((usage.last_used_at, usage.last_used_ip), (Some(t), Some(ip)));
    }
}
