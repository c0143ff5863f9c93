//! What this node holds about keys and has not written yet: usage gathered since the last flush
//! (`usage`) and quota leases (`quota`). Shared by the services that authenticate, verify and
//! administer keys, so that a key any of them shows includes both, and an admin change folds a
//! lease back before it writes.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use super::{
    error::Result,
    key::{KeyId, KeyRecord},
    ports::Store,
    quota::{self, Accounts, Gate},
    usage::UsageBuffer,
};

pub struct Ledger {
    usage: UsageBuffer,
    accounts: Accounts,
    /// Held by a usage flush from taking the buffer until its write is done.
    usage_flush: tokio::sync::Mutex<()>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self { usage: UsageBuffer::default(), accounts: Accounts::new(), usage_flush: tokio::sync::Mutex::new(()) }
    }
}

impl Ledger {
    /// Counts a use of key `id` (valid or not) at `at` from `ip`.
    pub fn record_use(&self, id: KeyId, valid: bool, at: SystemTime, ip: Option<IpAddr>) {
        self.usage.record(id, valid, at, ip);
    }

    /// The last valid use of key `id` not yet written, if any.
    pub fn pending_use(&self, id: KeyId) -> Option<SystemTime> {
        self.usage.peek(id).and_then(|d| d.last_valid.map(|(at, _)| at))
    }

    /// A record as this node sees it: usage not yet written added, and the quota with this
    /// node's lease and any refill due by `now`.
    pub fn view(&self, mut record: KeyRecord, now: SystemTime) -> KeyRecord {
        if let Some(delta) = self.usage.peek(record.id) {
            record.usage.absorb(&delta);
        }
        if record.quota.is_some() {
            record.quota = match self.accounts.existing(record.id) {
                Some(gate) => gate.account().effective(record.quota, now),
                None => quota::settle(record.quota, None, now),
            };
        }
        record
    }

    /// Key `id`'s quota account, made if it has none.
    pub(crate) fn gate(&self, id: KeyId) -> Arc<Gate> {
        self.accounts.gate(id)
    }

    /// Key `id`'s quota account, if this node has one.
    pub(crate) fn existing_gate(&self, id: KeyId) -> Option<Arc<Gate>> {
        self.accounts.existing(id)
    }

    /// Every key that holds a lease, for returning them at shutdown.
    pub(crate) fn leased(&self) -> Vec<(KeyId, Arc<Gate>)> {
        self.accounts.leased()
    }

    /// Held while deciding on and writing a change that depends on pending usage, so that a
    /// use is either still in memory or already in the record the write reads, never in between.
    pub async fn hold_usage(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.usage_flush.lock().await
    }

    /// Writes the usage gathered since the last call. Run periodically and at shutdown.
    pub async fn flush_usage<S: Store>(&self, store: &S) -> Result<usize> {
        let _flushing = self.usage_flush.lock().await;
        let batch: Vec<_> = self.usage.take().into_iter().collect();
        let n = batch.len();
        if n > 0 {
            store.record_usage(batch).await?;
        }
        Ok(n)
    }
}
