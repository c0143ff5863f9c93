//! Quotas (credits): a key's remaining uses, spent by VALID verifications, optionally refilled.
//!
//! Spending must be durable without a disk flush per verification, and must never over-spend
//! after a crash. So a node *leases* uses: one durable write moves a block of uses out of the
//! stored `remaining` into memory, and verifications then spend from the lease. A crash loses
//! the unspent part of each lease (at most `max_lease` uses per key, and at most a tenth of
//! what remained when the lease was taken, plus one); it can never hand out a use twice. A clean
//! shutdown and every admin change to the key fold the lease back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use super::key::{KeyId, Quota};

/// What the default largest lease is: the most a crash can lose per key.
pub const DEFAULT_MAX_LEASE: u64 = 100;

/// `quota` with every refill due by `now` applied: `remaining` set to the refill amount and
/// `refilled_at` moved on by whole intervals, so refills keep their cadence.
pub fn refilled(quota: Quota, now: SystemTime) -> Quota {
    let Some(refill) = quota.refill else { return quota };
    let Ok(since) = now.duration_since(quota.refilled_at) else { return quota };
    if since < refill.interval || refill.interval.is_zero() {
        return quota;
    }
    // The remainder is below the interval (at most 366 days), so it fits in u64 nanoseconds.
    let rest = Duration::from_nanos((since.as_nanos() % refill.interval.as_nanos()) as u64);
    Quota { remaining: refill.amount, refill: Some(refill), refilled_at: quota.refilled_at + (since - rest) }
}

/// Uses leased at a time: a tenth of what remains, at least 1 and at most `max_lease`, and
/// never less than the cost at hand.
fn lease_size(remaining: u64, cost: u64, max_lease: u64) -> u64 {
    (remaining / 10).clamp(1, max_lease.max(1)).max(cost)
}

/// Uses held in memory, and which stored quota they came out of (its `refilled_at`): a lease
/// from before a refill or an admin change is worthless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub uses: u64,
    pub epoch: SystemTime,
}

/// The result of `reserve`: the quota to store, and what the verification gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub stored: Option<Quota>,
    pub outcome: Spend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// `cost` was spent; `lease` is what is left in memory.
    Spent { lease: Lease },
    /// Fewer than `cost` uses remain (any returned lease is folded back in `stored`).
    Exceeded,
    /// The key has no quota (any more).
    Unlimited,
}

/// Folds `returned` back into `stored` if it came from the same epoch, then applies refills.
pub fn settle(stored: Option<Quota>, returned: Option<Lease>, now: SystemTime) -> Option<Quota> {
    let mut quota = stored?;
    if let Some(lease) = returned.filter(|l| l.epoch == quota.refilled_at) {
        quota.remaining = quota.remaining.saturating_add(lease.uses);
    }
    Some(refilled(quota, now))
}

/// Decides a lease for a verification of `cost`: pure, so the store may run it in a transaction
/// and the caller run it again on the record read there to learn the outcome.
pub fn reserve(
    stored: Option<Quota>,
    returned: Option<Lease>,
    now: SystemTime,
    cost: u64,
    max_lease: u64,
) -> Reservation {
    let Some(mut quota) = settle(stored, returned, now) else {
        return Reservation { stored: None, outcome: Spend::Unlimited };
    };
    if quota.remaining < cost {
        return Reservation { stored: Some(quota), outcome: Spend::Exceeded };
    }
    let grant = lease_size(quota.remaining, cost, max_lease).min(quota.remaining);
    quota.remaining -= grant;
    let lease = Lease { uses: grant - cost, epoch: quota.refilled_at };
    Reservation { stored: Some(quota), outcome: Spend::Spent { lease } }
}

/// What this node knows of one key's quota: the lease it holds, and the stored quota as of its
/// own last write (so that an exhausted key is refused without touching the store).
#[derive(Debug, Default)]
pub(crate) struct Account {
    pub lease: Option<Lease>,
    pub stored: Option<Quota>,
}

impl Account {
    /// Spends from memory if this account can decide alone: `Some(Ok(left))` spent, leaving
    /// `left` uses in all; `Some(Err(left))` exceeded, `left` uses remaining; `None` when the
    /// store must be consulted.
    pub fn spend_locally(&mut self, now: SystemTime, cost: u64) -> Option<Result<u64, u64>> {
        let stored = self.stored?;
        let lease = self.lease.filter(|l| l.epoch == stored.refilled_at)?;
        if refilled(stored, now) != stored {
            return None;
        }
        if lease.uses >= cost {
            let lease = Lease { uses: lease.uses - cost, ..lease };
            self.lease = Some(lease);
            Some(Ok(stored.remaining + lease.uses))
        } else if stored.remaining + lease.uses < cost {
            Some(Err(stored.remaining + lease.uses))
        } else {
            None
        }
    }

    /// Uses left as this node sees them: the stored quota (refilled as of `now`) plus its lease.
    pub fn effective(&self, stored: Option<Quota>, now: SystemTime) -> Option<Quota> {
        let lease = self.lease.filter(|l| stored.is_some_and(|q| q.refilled_at == l.epoch));
        settle(stored, lease, now)
    }
}

/// Every key's account on this node, each behind a gate so one reservation at a time goes to
/// the store per key.
pub(crate) struct Accounts {
    accounts: Mutex<HashMap<KeyId, Arc<Gate>>>,
}

pub(crate) struct Gate {
    /// Held across a reservation's store write.
    pub reserving: tokio::sync::Mutex<()>,
    account: Mutex<Account>,
}

impl Gate {
    pub fn account(&self) -> MutexGuard<'_, Account> {
        self.account.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Accounts {
    pub fn new() -> Self {
        Self { accounts: Mutex::new(HashMap::new()) }
    }

    pub fn gate(&self, id: KeyId) -> Arc<Gate> {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id)
            .or_insert_with(|| {
                Arc::new(Gate { reserving: tokio::sync::Mutex::new(()), account: Mutex::new(Account::default()) })
            })
            .clone()
    }

    pub fn existing(&self, id: KeyId) -> Option<Arc<Gate>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// Every key that holds a lease, for returning them at shutdown.
    pub fn leased(&self) -> Vec<(KeyId, Arc<Gate>)> {
        let map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, g)| g.account().lease.is_some_and(|l| l.uses > 0))
            .map(|(k, g)| (*k, g.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::Refill;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn quota(remaining: u64, refill: Option<Refill>) -> Quota {
        Quota { remaining, refill, refilled_at: T0 }
    }

    #[test]
    fn refills_set_the_amount_and_keep_their_cadence() {
        let q = quota(3, Some(Refill { amount: 10, interval: secs(60) }));
        assert_eq!(refilled(q, T0 + secs(59)), q);
        let r = refilled(q, T0 + secs(150));
        assert_eq!(r.remaining, 10);
        assert_eq!(r.refilled_at, T0 + secs(120));
        assert_eq!(refilled(quota(3, None), T0 + secs(10_000)).remaining, 3);
        // A clock before the last refill changes nothing.
        let later = Quota { refilled_at: T0 + secs(100), ..q };
        assert_eq!(refilled(later, T0), later);
    }

    #[test]
    fn leases_are_a_tenth_bounded_and_cover_the_cost() {
        assert_eq!(lease_size(1000, 1, 100), 100);
        assert_eq!(lease_size(500, 1, 100), 50);
        assert_eq!(lease_size(5, 1, 100), 1);
        assert_eq!(lease_size(5, 3, 100), 3);
        assert_eq!(lease_size(10_000, 1, 0), 1);
    }

    #[test]
    fn reserving_spends_exactly_and_refuses_what_is_not_there() {
        let r = reserve(Some(quota(1000, None)), None, T0, 1, 100);
        assert_eq!(r.stored.unwrap().remaining, 900);
        assert_eq!(r.outcome, Spend::Spent { lease: Lease { uses: 99, epoch: T0 } });
        let r = reserve(Some(quota(2, None)), None, T0, 5, 100);
        assert_eq!(r.outcome, Spend::Exceeded);
        assert_eq!(r.stored.unwrap().remaining, 2, "nothing is spent when the cost does not fit");
        assert_eq!(reserve(None, None, T0, 1, 100).outcome, Spend::Unlimited);
        // The last uses go one lease at a time, to the last one.
        let r = reserve(Some(quota(3, None)), None, T0, 3, 100);
        assert_eq!(r.stored.unwrap().remaining, 0);
        assert_eq!(r.outcome, Spend::Spent { lease: Lease { uses: 0, epoch: T0 } });
    }

    #[test]
    fn a_returned_lease_is_folded_back_only_into_its_own_epoch() {
        let lease = Lease { uses: 7, epoch: T0 };
        assert_eq!(settle(Some(quota(10, None)), Some(lease), T0).unwrap().remaining, 17);
        let refill = Some(Refill { amount: 50, interval: secs(10) });
        // After a refill the old lease is worthless: remaining is the refill amount.
        assert_eq!(settle(Some(quota(10, refill)), Some(lease), T0 + secs(10)).unwrap().remaining, 50);
        let other = Lease { uses: 7, epoch: T0 + secs(1) };
        assert_eq!(settle(Some(quota(10, None)), Some(other), T0).unwrap().remaining, 10);
    }

    #[test]
    fn an_account_decides_alone_only_when_it_knows_enough() {
        let mut a = Account::default();
        assert_eq!(a.spend_locally(T0, 1), None, "a fresh account asks the store");
        a.stored = Some(quota(0, None));
        a.lease = Some(Lease { uses: 2, epoch: T0 });
        assert_eq!(a.spend_locally(T0, 1), Some(Ok(1)));
        assert_eq!(a.spend_locally(T0, 1), Some(Ok(0)));
        assert_eq!(a.spend_locally(T0, 1), Some(Err(0)));
        a.stored = Some(quota(5, None));
        assert_eq!(a.spend_locally(T0, 1), None, "uses remain in the store: take a new lease");
        a.stored = Some(quota(5, Some(Refill { amount: 9, interval: secs(1) })));
        a.lease = Some(Lease { uses: 4, epoch: T0 });
        assert_eq!(a.spend_locally(T0 + secs(1), 1), None, "a refill is due: the store decides");
        assert_eq!(a.effective(a.stored, T0).unwrap().remaining, 9);
    }
}
