//! Verification, the hot path: parse → secret (HSM) → revoked → disabled → not yet valid →
//! expired → IP allowlist → scopes → rate limit → quota. A key that does not prove its secret is
//! `Invalid`, whatever its id's state; only a proven key learns a later code. Also the periodic
//! work the hot path defers: writing usage facts, and returning quota leases at shutdown.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use super::{
    error::{Error, Result},
    key::{KeyId, KeyRecord, KeyState, Quota},
    key_format,
    policy::{self, RotationNotice, VerifyCode},
    ports::{Hsm, Store, Updated},
    quota::{self, Lease, Spend},
    service::{Caller, Keys, Permission},
    brute_force::Source,
    usage_log::UsageRecord,
    validate,
};

/// A VerifyKey request, before validation.
#[derive(Default)]
pub struct VerifyRequest<'a> {
    /// The presented key: a secret, never shown by `Debug`.
    pub key: &'a str,
    pub client_ip: &'a str,
    pub required_scopes: &'a [String],
    pub cost: Option<u32>,
}

impl std::fmt::Debug for VerifyRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("key", &"<redacted>")
            .field("client_ip", &self.client_ip)
            .field("required_scopes", &self.required_scopes)
            .field("cost", &self.cost)
            .finish()
    }
}

#[derive(Debug)]
pub struct Verification {
    pub code: VerifyCode,
    /// Set whenever the secret verified (every code but `Invalid`).
    pub record: Option<KeyRecord>,
    /// Uses left, for a key with a quota that got this far.
    pub remaining: Option<u64>,
    /// With `RateLimited`: when a call may pass again.
    pub retry_after: Option<Duration>,
    /// For a key still in use: whether it was rotated, or is due for rotation.
    pub rotation: RotationNotice,
}

impl Verification {
    const INVALID: Verification = Verification {
        code: VerifyCode::Invalid,
        record: None,
        remaining: None,
        retry_after: None,
        rotation: RotationNotice { pending: false, due: false, deadline: None },
    };
}

/// What spending from a quota came to.
enum Spent {
    Yes { left: u64 },
    Exceeded { left: u64 },
    Unlimited,
}

impl<H: Hsm, S: Store> Keys<H, S> {
    pub async fn verify(&self, caller: &Caller, req: VerifyRequest<'_>) -> Result<Verification> {
        self.authorize(caller, Permission::Verify)?;
        validate::scopes("required_scopes", req.required_scopes, validate::MAX_SCOPES)?;
        let client_ip = validate::client_ip(req.client_ip)?;
        let cost = validate::cost(req.cost)?;
        // Brute-force defence: the end user when the caller names one, else the caller itself.
        let source = client_ip.map_or(Source::Caller(caller.key_id), Source::Client);
        // One clock reading for the whole verification (the dev clock reads a file).
        let now = self.clock.now();
        if let Err(blocked) = self.brute_force.check(source, now) {
            self.blocked(source, Some(caller.key_id), &blocked.why);
            return Err(Error::Blocked(blocked.retry_after));
        }
        let started = Instant::now();
        let (verification, key_id) = self.check(req.key, now, client_ip, req.required_scopes, cost).await?;
        if verification.code == VerifyCode::Invalid {
            self.brute_force.fail(source, now);
        }
        self.log_usage(UsageRecord {
            at: now,
            key_id,
            code: verification.code,
            client_ip,
            caller: Some(caller.key_id),
            latency: started.elapsed(),
        });
        Ok(verification)
    }

    /// The checks, in order; with the verification, the id of the existing key the presented
    /// one named (for the usage log), if any.
    async fn check(
        &self,
        key: &str,
        now: SystemTime,
        client_ip: Option<IpAddr>,
        required_scopes: &[String],
        cost: u64,
    ) -> Result<(Verification, Option<KeyId>)> {
        let Some(parsed) = key_format::parse(key) else {
            return Ok((Verification::INVALID, None));
        };
        let Some(record) = self.store.get_key(parsed.key_id)? else {
            self.secret_matches(&parsed, &self.decoy()).await?;
            return Ok((Verification::INVALID, None));
        };
        if !self.prove(&parsed, &record).await? {
            return Ok((Verification::INVALID, Some(record.id)));
        }
        let rules = &self.config.rotation.rules;
        let code = policy::evaluate(&record, now, client_ip, required_scopes, rules);
        let rotation = match code {
            VerifyCode::Revoked | VerifyCode::Expired => RotationNotice::default(),
            _ => policy::rotation_notice(&record, now, rules),
        };
        let mut verification = Verification { code, record: None, remaining: None, retry_after: None, rotation };
        if verification.code == VerifyCode::Valid {
            let successor = self.limits_holder(&record)?;
            self.check_limits(successor.as_ref().unwrap_or(&record), now, cost, &mut verification).await?;
        }
        self.usage.record(record.id, verification.code == VerifyCode::Valid, now, client_ip);
        let id = record.id;
        verification.record = Some(record);
        Ok((verification, Some(id)))
    }

    /// The key whose rate limit and quota a rotated key's verifications count against during
    /// its overlap: its successor (the last in a chain of rotations, up to a few hops), so that a
    /// rotation never doubles a limit. `None`: the key's own.
    fn limits_holder(&self, record: &KeyRecord) -> Result<Option<KeyRecord>> {
        const MAX_HOPS: usize = 4;
        let mut holder: Option<KeyRecord> = None;
        let mut next = if record.state == KeyState::Rotated { record.rotated_to } else { None };
        for _ in 0..MAX_HOPS {
            let Some(id) = next else { break };
            let Some(successor) = self.store.get_key(id)? else { break };
            next = if successor.state == KeyState::Rotated { successor.rotated_to } else { None };
            holder = Some(successor);
        }
        Ok(holder)
    }

    /// The stateful checks, after every other one passed: rate limit, then quota.
    async fn check_limits(&self, record: &KeyRecord, now: SystemTime, cost: u64, v: &mut Verification) -> Result<()> {
        if let Some(limit) = record.rate_limit
            && let Err(wait) = self.rate_limits.check(record.id, limit)
        {
            v.code = VerifyCode::RateLimited;
            v.retry_after = Some(wait);
            return Ok(());
        }
        if record.quota.is_none() {
            return Ok(());
        }
        if cost == 0 {
            v.remaining = self.view(record.clone()).quota.map(|q| q.remaining);
            return Ok(());
        }
        match self.spend(record.id, now, cost).await? {
            Spent::Yes { left } => v.remaining = Some(left),
            Spent::Exceeded { left } => {
                v.code = VerifyCode::QuotaExceeded;
                v.remaining = Some(left);
            }
            Spent::Unlimited => {}
        }
        Ok(())
    }

    /// Spends `cost` uses of key `id`'s quota: from this node's lease when it can, else by
    /// taking a new lease from the store (one durable write per lease).
    async fn spend(&self, id: KeyId, now: SystemTime, cost: u64) -> Result<Spent> {
        let gate = self.accounts.gate(id);
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
        self.store
            .update_key(id, move |current| {
                let quota = next(current.quota);
                if quota == current.quota {
                    return Ok(None);
                }
                Ok(Some((KeyRecord { quota, ..current.clone() }, None)))
            })
            .await
    }

    /// Writes the usage gathered since the last call. Run periodically and at shutdown.
    pub async fn flush_usage(&self) -> Result<usize> {
        let _flushing = self.usage_flush.lock().await;
        let batch: Vec<_> = self.usage.take().into_iter().collect();
        let n = batch.len();
        if n > 0 {
            self.store.record_usage(batch).await?;
        }
        Ok(n)
    }

    /// Folds every quota lease this node holds back into the store, so a clean shutdown loses
    /// no uses, and writes pending usage.
    pub async fn shutdown(&self) -> Result<()> {
        let now = self.clock.now();
        for (id, gate) in self.accounts.leased() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_presented_key() {
        let request = VerifyRequest { key: "kw_SECRETSECRET", client_ip: "10.0.0.1", ..Default::default() };
        let shown = format!("{request:?}");
        assert!(!shown.contains("SECRET") && shown.contains("<redacted>") && shown.contains("10.0.0.1"), "{shown}");
    }
}
