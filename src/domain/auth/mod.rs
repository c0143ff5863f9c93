//! The authenticator: who is calling. A bearer credential is proven in the HSM (or found in the
//! memory-only cache of credentials proven lately), an mTLS identity stands for its key, and
//! either way the caller's key must be active, in its validity window and, with an allowlist,
//! called from an allowed address. Failures count against the peer address (`brute_force`).

mod cache;

use std::{net::IpAddr, sync::Arc, time::Duration};

use self::cache::AuthCache;
use super::{
    access::{Access, Caller, RequestContext},
    audit::{Actor, AuditAction, AuditEvent},
    brute_force::{BruteForce, Source},
    deps::Deps,
    error::{Error, Result},
    key::{KeyId, KeyRecord},
    key_format,
    ledger::Ledger,
    master::MasterView,
    policy::{self, RotationRules, VerifyCode},
    ports::{Hsm, Store},
    proof::Prover,
};

/// How the caller's key record is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerRecord {
    /// Proven current (cluster mode: the node fails closed without that proof). Every call but one.
    Current,
    /// As the store last knew it, however stale: only for `GetClusterStatus`, which must answer
    /// while the node fails closed. A revocation the node has not seen yet is not applied then.
    LastKnown,
}

/// A console session's start or end, as the audit trail records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleSession {
    SignedIn,
    SignedOut,
}

/// The authenticator's tunables.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub cache_capacity: usize,
    pub cache_ttl: Duration,
    /// The rotation rules (a key past its `max_age` deadline no longer authenticates).
    pub rules: RotationRules,
}

pub struct Authenticator<H, S> {
    deps: Deps<H, S>,
    config: AuthConfig,
    /// Credentials the HSM proved lately.
    cache: AuthCache,
    // Shared with other services:
    master: Arc<MasterView>,
    prover: Arc<Prover<H, S>>,
    brute_force: Arc<BruteForce>,
    access: Arc<Access>,
    ledger: Arc<Ledger>,
}

impl<H: Hsm, S: Store> Authenticator<H, S> {
    /// Reads the current master key version from `master`, proves credentials with `prover`,
    /// counts failed peers in `brute_force` and refused calls in `access`, and records the
    /// caller key's use in `ledger`.
    pub fn new(
        deps: Deps<H, S>,
        config: AuthConfig,
        master: Arc<MasterView>,
        prover: Arc<Prover<H, S>>,
        brute_force: Arc<BruteForce>,
        access: Arc<Access>,
        ledger: Arc<Ledger>,
    ) -> Self {
        let cache = AuthCache::new(config.cache_capacity, config.cache_ttl);
        Self { deps, config, cache, master, prover, brute_force, access, ledger }
    }

    pub fn is_healthy(&self) -> bool {
        self.deps.hsm.is_healthy()
    }

    /// Whether the store can prove its reads are current (always, on one node; in cluster mode
    /// while the node keeps up with etcd).
    pub fn store_current(&self) -> bool {
        self.deps.store.is_current()
    }

    /// Whether the store still confirms writes: false once one was not confirmed within
    /// `store.write_timeout` (writes are refused until a restart; reads go on).
    pub fn writes_confirmed(&self) -> bool {
        self.deps.store.writes_confirmed()
    }

    /// Every call needs the HSM (no answer is given from memory while it is unreachable):
    /// `Unavailable` at once when it is not healthy.
    fn require_hsm(&self) -> Result<()> {
        if self.deps.hsm.is_healthy() {
            Ok(())
        } else {
            Err(Error::Unavailable("the HSM is unreachable; retry later".into()))
        }
    }

    /// Checks a bearer credential: a genuine key that is active, in its validity window and, if
    /// it has an IP allowlist, called from an allowed peer address. (A caller's rate limit and
    /// quota apply only when its key is checked through `verify`.) Any failure is
    /// `Unauthenticated`, saying no more than that, and counts against the peer address (see
    /// `brute_force`): a blocked address is `Blocked` before any HSM operation or database read,
    /// unless its credential is one the HSM proved lately (in the auth cache), so that proven
    /// callers sharing an address with an attacker (a proxy, a NAT) keep working.
    pub async fn authenticate(&self, bearer: Option<&str>, ctx: &RequestContext) -> Result<Caller> {
        self.authenticate_reading(bearer, ctx, CallerRecord::Current).await
    }

    /// `authenticate`, reading the caller's key record as `read` says.
    pub async fn authenticate_reading(
        &self,
        bearer: Option<&str>,
        ctx: &RequestContext,
        read: CallerRecord,
    ) -> Result<Caller> {
        self.require_hsm()?;
        let source = ctx.client_addr.map(|a| a.ip());
        let peer = source.map(Source::Peer);
        if let Some(peer) = peer
            && let Err(blocked) = self.brute_force.check(peer, self.deps.clock.now())
            && !self.proven_lately(bearer)
        {
            self.access.blocked(peer, None, &blocked.why);
            return Err(Error::Blocked(blocked.retry_after));
        }
        let mut named = None;
        let result = self.check_bearer(bearer, source, read, &mut named).await;
        if let Err(Error::Unauthenticated(why)) = &result {
            self.access.unauthenticated(source, named, why);
            if let Some(peer) = peer {
                self.brute_force.fail(peer, self.deps.clock.now());
            }
        }
        result
    }

    /// Whether `bearer` is a credential the HSM verified within the auth cache's TTL (memory only).
    fn proven_lately(&self, bearer: Option<&str>) -> bool {
        bearer.and_then(key_format::parse).is_some_and(|p| self.cache.contains(p.key_id, &p.secret))
    }

    /// `authenticate`'s checks; `named` is set to the key the credential names once it is
    /// known to exist.
    async fn check_bearer(
        &self,
        bearer: Option<&str>,
        source: Option<IpAddr>,
        read: CallerRecord,
        named: &mut Option<KeyId>,
    ) -> Result<Caller> {
        const INVALID: Error = Error::Unauthenticated("invalid credential");
        let bearer = bearer.ok_or(Error::Unauthenticated("missing credential: send `authorization: Bearer <key>`"))?;
        let parsed = key_format::parse(bearer).ok_or(INVALID)?;
        let record = match self.caller_record(parsed.key_id, read)? {
            // A digest not plain under the current master key skips the cache, so that proving
            // it again migrates it.
            Some(record)
                if record.digest.is_plain_under(self.master.current())
                    && self.cache.contains(record.id, &parsed.secret) =>
            {
                record
            }
            Some(record) => {
                *named = Some(record.id);
                if !self.prover.prove(&parsed, &record).await? {
                    return Err(INVALID);
                }
                self.cache.insert(record.id, &parsed.secret);
                record
            }
            None => {
                self.prover.unknown_key(&parsed).await?;
                return Err(INVALID);
            }
        };
        *named = Some(record.id);
        self.admit(record, source)
    }

    /// Authenticates a caller as the key `key_id` without its secret, because something the
    /// edge verified stands for it (an mTLS client certificate mapped to the key). The key must
    /// exist and pass the same checks as a bearer key: state, validity window, allowlist.
    pub async fn authenticate_identity(&self, key_id: KeyId, ctx: &RequestContext) -> Result<Caller> {
        self.authenticate_identity_reading(key_id, ctx, CallerRecord::Current).await
    }

    /// `authenticate_identity`, reading the caller's key record as `read` says.
    pub async fn authenticate_identity_reading(
        &self,
        key_id: KeyId,
        ctx: &RequestContext,
        read: CallerRecord,
    ) -> Result<Caller> {
        self.require_hsm()?;
        let source = ctx.client_addr.map(|a| a.ip());
        let result = match self.caller_record(key_id, read)? {
            Some(record) => self.admit(record, source),
            None => Err(Error::Unauthenticated("the client certificate is mapped to a key that does not exist")),
        };
        if let Err(Error::Unauthenticated(why)) = &result {
            self.access.unauthenticated(source, Some(key_id), why);
        }
        result
    }

    fn caller_record(&self, id: KeyId, read: CallerRecord) -> Result<Option<KeyRecord>> {
        Ok(match read {
            CallerRecord::Current => self.deps.store.get_key(id)?,
            CallerRecord::LastKnown => self.deps.store.get_key_last_known(id)?,
        })
    }

    /// The checks every caller's key passes once its holder is proven.
    fn admit(&self, record: KeyRecord, source: Option<IpAddr>) -> Result<Caller> {
        let now = self.deps.clock.now();
        match policy::evaluate(&record, now, source, &[], &self.config.rules) {
            VerifyCode::Valid => {
                // Calls made with a key are uses of it (the reaper looks at the last one).
                self.ledger.record_use(record.id, true, now, source);
                Ok(Caller { key_id: record.id, scopes: record.scopes, source })
            }
            VerifyCode::IpNotAllowed => Err(Error::Unauthenticated("credential is not allowed from this address")),
            _ => Err(Error::Unauthenticated("credential is revoked, disabled, expired or not yet valid")),
        }
    }

    /// Records a console session of `caller` beginning or ending as one chained audit event
    /// (`console.sign_in`, `console.sign_out`): the key as actor and target, the browser's
    /// address as the client. Refused sign-ins are not recorded here: `authenticate` and the
    /// permission check count them as refused calls (`auth.failed`, grouped per source).
    pub async fn record_console_session(
        &self,
        caller: &Caller,
        session: ConsoleSession,
        ctx: &RequestContext,
    ) -> Result<()> {
        let action = match session {
            ConsoleSession::SignedIn => AuditAction::ConsoleSignIn,
            ConsoleSession::SignedOut => AuditAction::ConsoleSignOut,
        };
        let event = AuditEvent {
            at: self.deps.clock.now(),
            actor: Actor::Key(caller.key_id),
            action,
            target: Some(caller.key_id),
            client_addr: ctx.client_addr.map(|a| a.to_string()),
            reason: None,
            changes: Vec::new(),
            code: None,
        };
        Ok(self.deps.store.append_events(vec![event]).await?)
    }

    /// Writes the refused calls counted since the last call, by any service, as `auth.failed`
    /// events (run about once a second and at shutdown). Returns how many events were written.
    pub async fn flush_auth_failures(&self) -> Result<usize> {
        self.access.flush_refusals(&*self.deps.store).await
    }
}

#[cfg(test)]
mod tests;
