//! The verifier: VerifyKey, the hot path: parse → secret (HSM) → revoked → disabled → not yet valid →
//! expired → IP allowlist → scopes → rate limit → quota. A key that does not prove its secret is
//! `Invalid`, whatever its id's state; only a proven key learns a later code. Also the periodic
//! work the hot path defers: writing usage facts and the usage log, and returning quota leases at
//! shutdown.

mod signed;
mod spending;

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

pub use self::signed::SignedRequest;
use self::{signed::Proof, spending::Spent};
use super::{
    access::{Access, Caller, Permission},
    anomaly::Detector,
    brute_force::{BruteForce, Source},
    deps::Deps,
    error::{Error, Result},
    key::{KeyId, KeyRecord, KeyState},
    key_format,
    ledger::Ledger,
    policy::{self, RotationNotice, RotationRules, VerifyCode},
    ports::{Hsm, Store},
    proof::Prover,
    ratelimit::RateLimits,
    signing::{SigningConfig, replay::ReplayCache},
    usage_log::{UsageLog, UsageLogConfig, UsageRecord},
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

/// The verifier's tunables.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub rules: RotationRules,
    /// Keys whose rate-limit state is kept in memory at once.
    pub rate_limiter_capacity: usize,
    /// The most quota uses leased at a time per key: the most a crash can lose per key.
    pub quota_max_lease: u64,
    pub usage_log: UsageLogConfig,
    pub signing: SigningConfig,
}

/// What the client presented: a bearer key, or a signed request.
enum Presented<'a> {
    Key(&'a str),
    Signed(SignedRequest<'a>),
}

pub struct Verifier<H, S> {
    deps: Deps<H, S>,
    config: VerifyConfig,
    rate_limits: RateLimits,
    /// The nonces of accepted signatures (this node's).
    replays: ReplayCache,
    /// The usage log's queue and writer; `None` with the log and the anomaly detector off.
    usage_log: Option<UsageLog<S>>,
    // Shared with other services:
    prover: Arc<Prover<H, S>>,
    ledger: Arc<Ledger>,
    brute_force: Arc<BruteForce>,
    access: Arc<Access>,
}

impl<H: Hsm, S: Store> Verifier<H, S> {
    /// Proves presented keys with `prover`, counts uses and spends quota leases in `ledger`,
    /// counts failed sources in `brute_force` and refused calls in `access`; the usage log's
    /// writer feeds `detector`, if given.
    pub fn new(
        deps: Deps<H, S>,
        config: VerifyConfig,
        prover: Arc<Prover<H, S>>,
        ledger: Arc<Ledger>,
        brute_force: Arc<BruteForce>,
        access: Arc<Access>,
        detector: Option<Arc<Detector>>,
    ) -> Self {
        let usage_log = UsageLog::new(config.usage_log.clone(), deps.store.clone(), deps.clock.clone(), detector);
        let rate_limits = RateLimits::new(config.rate_limiter_capacity);
        let replays = ReplayCache::new(config.signing.replay_cache_capacity);
        Self { deps, config, rate_limits, replays, usage_log, prover, ledger, brute_force, access }
    }

    pub async fn verify(&self, caller: &Caller, req: VerifyRequest<'_>) -> Result<Verification> {
        self.verify_presented(caller, Presented::Key(req.key), req.client_ip, req.required_scopes, req.cost).await
    }

    /// VerifySignature: an RFC 9421 signature made with a signing key's secret, then every
    /// check VerifyKey makes (see `signed`).
    pub async fn verify_signature(&self, caller: &Caller, req: SignedRequest<'_>) -> Result<Verification> {
        let (client_ip, scopes, cost) = (req.client_ip, req.required_scopes, req.cost);
        self.verify_presented(caller, Presented::Signed(req), client_ip, scopes, cost).await
    }

    async fn verify_presented(
        &self,
        caller: &Caller,
        presented: Presented<'_>,
        client_ip: &str,
        required_scopes: &[String],
        cost: Option<u32>,
    ) -> Result<Verification> {
        self.access.authorize(caller, Permission::Verify)?;
        validate::scopes("required_scopes", required_scopes, validate::MAX_SCOPES)?;
        let client_ip = validate::client_ip(client_ip)?;
        let cost = validate::cost(cost)?;
        // Brute-force defence: the end user when the caller names one, else the caller itself.
        let source = client_ip.map_or(Source::Caller(caller.key_id), Source::Client);
        // One clock reading for the whole verification (the dev clock reads a file).
        let now = self.deps.clock.now();
        if let Err(blocked) = self.brute_force.check(source, now) {
            self.access.blocked(source, Some(caller.key_id), &blocked.why);
            return Err(Error::Blocked(blocked.retry_after));
        }
        let started = Instant::now();
        let (verification, key_id) = self.check(presented, now, client_ip, required_scopes, cost).await?;
        if verification.code == VerifyCode::Invalid {
            self.brute_force.fail(source, now);
        }
        if let Some(log) = &self.usage_log {
            log.offer(UsageRecord {
                at: now,
                key_id,
                code: verification.code,
                client_ip,
                caller: Some(caller.key_id),
                latency: started.elapsed(),
            });
        }
        Ok(verification)
    }

    /// The checks, in order; with the verification, the id of the existing key the presented
    /// one named (for the usage log), if any.
    async fn check(
        &self,
        presented: Presented<'_>,
        now: SystemTime,
        client_ip: Option<IpAddr>,
        required_scopes: &[String],
        cost: u64,
    ) -> Result<(Verification, Option<KeyId>)> {
        let proof = match presented {
            Presented::Key(key) => self.prove_key(key).await?,
            Presented::Signed(signed) => self.prove_signature(&signed, now).await?,
        };
        let (record, refused) = match proof {
            Proof::Proven(record) => (record, None),
            Proof::Refused(record, code) => (record, Some(code)),
            Proof::Unproven(code, id) => return Ok((Verification { code, ..Verification::INVALID }, id)),
        };
        let rules = &self.config.rules;
        let code = refused.unwrap_or_else(|| policy::evaluate(&record, now, client_ip, required_scopes, rules));
        let rotation = match code {
            VerifyCode::Revoked
            | VerifyCode::Expired
            | VerifyCode::Replayed
            | VerifyCode::SignatureExpired
            | VerifyCode::BadSignatureParams => RotationNotice::default(),
            _ => policy::rotation_notice(&record, now, rules),
        };
        let mut verification = Verification { code, record: None, remaining: None, retry_after: None, rotation };
        if verification.code == VerifyCode::Valid {
            let successor = self.limits_holder(&record)?;
            self.check_limits(successor.as_ref().unwrap_or(&record), now, cost, &mut verification).await?;
        }
        self.ledger.record_use(record.id, verification.code == VerifyCode::Valid, now, client_ip);
        let id = record.id;
        verification.record = Some(record);
        Ok((verification, Some(id)))
    }

    /// A bearer key: parsed, found, and its secret proved in the HSM. A signing key is never
    /// accepted as a bearer key.
    async fn prove_key(&self, key: &str) -> Result<Proof> {
        let Some(parsed) = key_format::parse(key) else {
            return Ok(Proof::Unproven(VerifyCode::Invalid, None));
        };
        let Some(record) = self.deps.store.get_key(parsed.key_id)? else {
            self.prover.unknown_key(&parsed).await?;
            return Ok(Proof::Unproven(VerifyCode::Invalid, None));
        };
        if record.signing.is_some() || !self.prover.prove(&parsed, &record).await? {
            return Ok(Proof::Unproven(VerifyCode::Invalid, Some(record.id)));
        }
        Ok(Proof::Proven(record))
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
            let Some(successor) = self.deps.store.get_key(id)? else { break };
            next = if successor.state == KeyState::Rotated { successor.rotated_to } else { None };
            holder = Some(successor);
        }
        Ok(holder)
    }

    /// The stateful checks, after every other one passed: rate limit, then quota.
    async fn check_limits(&self, record: &KeyRecord, now: SystemTime, cost: u64, v: &mut Verification) -> Result<()> {
        if let Some(limit) = record.rate_limit
            && let Err(wait) = self.rate_limits.check(record.id, limit, self.deps.store.nodes_sharing())
        {
            v.code = VerifyCode::RateLimited;
            v.retry_after = Some(wait);
            return Ok(());
        }
        if record.quota.is_none() {
            return Ok(());
        }
        if cost == 0 {
            v.remaining = self.ledger.view(record.clone(), now).quota.map(|q| q.remaining);
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
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod usage_log_tests;

#[cfg(test)]
mod brute_force_tests;

#[cfg(test)]
mod signed_tests;
