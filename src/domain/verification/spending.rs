//! Spending quota: from this node's lease, or by taking a new lease from the store; and
//! what the hot path defers: writing usage facts and the usage log, and returning leases at
//! shutdown.

use std::time::SystemTime;

use super::Verifier;
use crate::domain::{
    error::Result,
    key::{KeyId, KeyRecord, Quota},
    ports::{Hsm, Store, Updated},
    quota::{self, Lease, Spend},
    usage_log::UsageWrite,
};

/// What spending from a quota came to.
pub(super) enum Spent {
    Yes { left: u64 },
    Exceeded { left: u64 },
    Unlimited,
}

impl<H: Hsm, S: Store> Verifier<H, S> {
    /// Spends `cost` uses of key `id`'s quota: from this node's lease when it can, else by
    /// taking a new lease from the store (one durable write per lease).
    pub(super) async fn spend(&self, id: KeyId, now: SystemTime, cost: u64) -> Result<Spent> {
        let gate = self.ledger.gate(id);
        let local = |gate: &quota::Gate| {
            gate.account().spend_locally(now, cost).map(|r| match r {
                Ok(left) => Spent::Yes { left },
                Err(left) => Spent::Exceeded { left },
            })
        };
        if let Some(spent) = local(&gate) {
            return Ok(spent);
        }
        let _reserving = gate.reserving.lock().await;
        if let Some(spent) = local(&gate) {
            return Ok(spent);
        }
        let returned = gate.account().lease.take();
        let max_lease = self.config.quota_max_lease;
        let updated =
            self.write_quota(id, move |stored| quota::reserve(stored, returned, now, cost, max_lease).stored).await;
        let mut account = gate.account();
        let updated = match updated {
            Ok(updated) => updated,
            Err(e) => {
                // The write may or may not have landed: give the lease up rather than risk
                // spending it twice.
                *account = Default::default();
                return Err(e);
            }
        };
        let reservation = quota::reserve(updated.before.quota, returned, now, cost, max_lease);
        account.stored = reservation.stored;
        let Some(stored) = reservation.stored else {
            *account = Default::default();
            return Ok(Spent::Unlimited);
        };
        Ok(match reservation.outcome {
            Spend::Spent { lease } => {
                account.lease = Some(lease);
                Spent::Yes { left: stored.remaining + lease.uses }
            }
            Spend::Exceeded | Spend::Unlimited => {
                account.lease = Some(Lease { uses: 0, epoch: stored.refilled_at });
                Spent::Exceeded { left: stored.remaining }
            }
        })
    }

    /// Stores key `id`'s quota as `next` derives it from the stored one (bookkeeping: no audit
    /// event); writes nothing if it is unchanged.
    async fn write_quota<F>(&self, id: KeyId, next: F) -> Result<Updated>
    where
        F: Fn(Option<Quota>) -> Option<Quota> + Send + 'static,
    {
        self.deps
            .store
            .update_key(id, move |current| {
                let quota = next(current.quota);
                if quota == current.quota {
                    return Ok(None);
                }
                Ok(Some((KeyRecord { quota, ..current.clone() }, None)))
            })
            .await
    }

    /// Lazy re-digests under way (tests wait for them).
    #[cfg(test)]
    pub(crate) fn redigesting_now(&self) -> usize {
        self.prover.redigesting_now()
    }

    /// Writes the usage gathered since the last call. Run periodically and at shutdown.
    pub async fn flush_usage(&self) -> Result<usize> {
        self.ledger.flush_usage(&*self.deps.store).await
    }

    /// The usage log writer's pass (see `UsageLog::write`), which also feeds the anomaly
    /// detector. Run in a loop by a task; with both the log and the detector off it never returns.
    pub async fn write_usage_log(&self) -> Result<UsageWrite> {
        match &self.usage_log {
            Some(log) => log.write().await,
            None => std::future::pending().await,
        }
    }

    /// Writes what the usage log has queued and reports drops at once (shutdown).
    pub async fn flush_usage_log(&self) -> Result<UsageWrite> {
        match &self.usage_log {
            Some(log) => log.flush().await,
            None => Ok(UsageWrite::default()),
        }
    }

    /// Folds every quota lease this node holds back into the store, so a clean shutdown loses
    /// no uses, and writes pending usage.
    pub async fn shutdown(&self) -> Result<()> {
        let now = self.deps.clock.now();
        for (id, gate) in self.ledger.leased() {
            let _reserving = gate.reserving.lock().await;
            let returned = gate.account().lease.take();
            let result = self.write_quota(id, move |stored| quota::settle(stored, returned, now)).await;
            *gate.account() = Default::default();
            if let Err(e) = result {
                tracing::warn!(key_id = %id, error = %e, "could not return a quota lease; its unspent uses are lost");
            }
        }
        self.flush_usage().await.map(|_| ())
    }
}
