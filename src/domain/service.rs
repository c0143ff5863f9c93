//! The admin use cases: authenticate callers, create, read, list, update, disable, enable and
//! revoke keys, and set up a new installation. Verification is in `verify`. Works through the
//! `Hsm` and `Store` ports only.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use super::{
    audit::{Actor, AuditAction, AuditEvent},
    auth_cache::AuthCache,
    auth_failures::AuthFailures,
    clock::Clock,
    error::{Error, Result},
    key::{Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion, Quota, RateLimit, Refill},
    key_format::{self, ParsedKey},
    listing::{self, ListFilter},
    ownership,
    policy::{self, VerifyCode},
    ports::{DigestSwap, Hsm, MasterState, Store},
    quota::{self, Accounts},
    ratelimit::RateLimits,
    rotation::{MigrationConfig, RotationConfig},
    scope,
    secret::{KeyString, Secret, SensitiveBytes},
    throttle::{Source, Throttle, ThrottleConfig},
    update::{self, KeyPatch},
    usage::UsageBuffer,
    usage_log::{UsageLogConfig, UsageQueue},
    validate,
};

/// Domain separation for key digests: an HMAC made for one purpose never stands for another.
const KEY_DIGEST_CONTEXT: &[u8] = b"keyward/v1/key-digest\0";
/// The fixed message whose digest, made at init, startup verifies (the HSM self-test).
const SELF_TEST_MESSAGE: &[u8] = b"keyward/v1/self-test\0";
/// The scopes of the root key that `keyward init` makes.
pub const ROOT_SCOPE: &str = "keyward:*";

/// What the HSM signs for a key: context ‖ key id ‖ secret.
pub fn key_digest_input(id: KeyId, secret: &Secret) -> SensitiveBytes {
    let mut input = Vec::with_capacity(KEY_DIGEST_CONTEXT.len() + 16 + 32);
    input.extend_from_slice(KEY_DIGEST_CONTEXT);
    input.extend_from_slice(id.as_bytes());
    input.extend_from_slice(secret.expose());
    SensitiveBytes::new(input)
}

pub fn self_test_input() -> SensitiveBytes {
    SensitiveBytes::new(SELF_TEST_MESSAGE.to_vec())
}

/// A permission on keyward itself: a scope in the reserved `keyward:` namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Verify,
    KeysCreate,
    KeysRead,
    KeysUpdate,
    KeysRevoke,
    KeysRotate,
    /// Rotate the caller's own key.
    SelfRotate,
    MasterRead,
    MasterRotate,
    AuditRead,
    /// Report a leaked key (`ReportLeak`): revokes the key presented, nothing else.
    LeaksReport,
}

impl Permission {
    pub fn scope(self) -> &'static str {
        match self {
            Permission::Verify => "keyward:verify",
            Permission::KeysCreate => "keyward:keys:create",
            Permission::KeysRead => "keyward:keys:read",
            Permission::KeysUpdate => "keyward:keys:update",
            Permission::KeysRevoke => "keyward:keys:revoke",
            Permission::KeysRotate => "keyward:keys:rotate",
            Permission::SelfRotate => "keyward:self:rotate",
            Permission::MasterRead => "keyward:master:read",
            Permission::MasterRotate => "keyward:master:rotate",
            Permission::AuditRead => "keyward:audit:read",
            Permission::LeaksReport => "keyward:leaks:report",
        }
    }
}

/// An authenticated caller: a key that proved its secret and is active.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: KeyId,
    pub scopes: Vec<String>,
    /// The peer's address, for the audit of a refused call.
    pub source: Option<std::net::IpAddr>,
}

/// Facts about the request that go into the audit trail.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The peer's socket address.
    pub client_addr: Option<std::net::SocketAddr>,
}

/// A request to create a key, before validation.
#[derive(Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub metadata: BTreeMap<String, String>,
    pub allowed_cidrs: Vec<String>,
    pub not_before: Option<SystemTime>,
    pub rate_limit: Option<RateLimit>,
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
    /// `None`: the configured default; zero: no limit.
    pub max_age: Option<Duration>,
    /// A team name; empty: none. A team-scoped creator must name one of its teams.
    pub owner: String,
}

#[derive(Debug)]
pub struct CreatedKey {
    /// The full key: returned to the creator once, kept nowhere.
    pub key: KeyString,
    pub record: KeyRecord,
}

/// Tunables of the use cases.
#[derive(Clone, Debug)]
pub struct KeysConfig {
    pub auth_cache_capacity: usize,
    pub auth_cache_ttl: Duration,
    /// Keys whose rate-limit state is kept in memory at once.
    pub rate_limiter_capacity: usize,
    /// The most quota uses leased at a time per key: the most a crash can lose per key.
    pub quota_max_lease: u64,
    pub rotation: RotationConfig,
    pub migration: MigrationConfig,
    pub usage_log: UsageLogConfig,
    /// Brute-force defence: per-source failure counters and back-off.
    pub brute_force: ThrottleConfig,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            auth_cache_capacity: 10_000,
            auth_cache_ttl: Duration::from_secs(300),
            rate_limiter_capacity: 100_000,
            quota_max_lease: quota::DEFAULT_MAX_LEASE,
            rotation: RotationConfig::default(),
            migration: MigrationConfig::default(),
            usage_log: UsageLogConfig::default(),
            brute_force: ThrottleConfig::default(),
        }
    }
}

pub struct Keys<H, S> {
    pub(super) hsm: Arc<H>,
    pub(super) store: Arc<S>,
    pub(super) clock: Arc<dyn Clock>,
    /// The master key state as last written; changed only under `master_ops`.
    pub(super) master: RwLock<MasterState>,
    /// `master.current`, read on every create and verify without the lock.
    current: AtomicU32,
    /// Serializes master key rotation, retirement and migration batches.
    pub(super) master_ops: tokio::sync::Mutex<()>,
    /// Wakes the migration task after a rotation.
    pub(super) migration_wake: tokio::sync::Notify,
    /// Keys being re-digested after a verification, so a burst re-digests once.
    redigesting: Arc<Mutex<HashSet<KeyId>>>,
    auth_cache: AuthCache,
    /// Verified against for unknown key ids, so that they cost what a wrong secret costs.
    decoy_mac: [u8; 32],
    pub(super) rate_limits: RateLimits,
    pub(super) accounts: Accounts,
    pub(super) usage: UsageBuffer,
    /// Held by a usage flush from taking the buffer until its write is done.
    pub(super) usage_flush: tokio::sync::Mutex<()>,
    /// The usage log's queue; `None` with the log off.
    pub(super) usage_log: Option<UsageQueue>,
    /// Refused calls counted for the audit trail.
    pub(super) auth_failures: AuthFailures,
    /// Failed verifications and authentications per source, and the blocks they earned.
    pub(super) throttle: Throttle,
    pub(super) config: KeysConfig,
}

impl<H: Hsm, S: Store> Keys<H, S> {
    pub fn new(hsm: Arc<H>, store: Arc<S>, clock: Arc<dyn Clock>, master: MasterState, config: KeysConfig) -> Self {
        let mut decoy_mac = [0u8; 32];
        getrandom::fill(&mut decoy_mac).expect("the OS random number generator works");
        Self {
            hsm,
            store,
            clock,
            current: AtomicU32::new(master.current.0),
            master: RwLock::new(master),
            master_ops: tokio::sync::Mutex::new(()),
            migration_wake: tokio::sync::Notify::new(),
            redigesting: Arc::default(),
            auth_cache: AuthCache::new(config.auth_cache_capacity, config.auth_cache_ttl),
            decoy_mac,
            rate_limits: RateLimits::new(config.rate_limiter_capacity),
            accounts: Accounts::new(),
            usage: UsageBuffer::default(),
            usage_flush: tokio::sync::Mutex::new(()),
            usage_log: config.usage_log.enabled.then(|| UsageQueue::new(config.usage_log.queue_capacity)),
            auth_failures: AuthFailures::default(),
            throttle: Throttle::new(config.brute_force.clone()),
            config,
        }
    }

    /// Verifies each live master key version's self-test digest: proves the token holds this
    /// database's master keys.
    pub async fn self_test(&self) -> Result<()> {
        let tests: Vec<Digest> = self.master_state().live().map(|v| v.self_test.clone()).collect();
        for digest in tests {
            if !self.hsm.verify(self_test_input(), &digest).await? {
                return Err(Error::FailedPrecondition(format!(
                    "HSM self-test failed: master key {} on the token does not match this database",
                    digest.version
                )));
            }
        }
        Ok(())
    }

    /// The master key version new digests use.
    pub fn current_version(&self) -> MasterKeyVersion {
        MasterKeyVersion(self.current.load(Ordering::Acquire))
    }

    pub fn master_state(&self) -> MasterState {
        self.master.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the in-memory master state (after it was written).
    pub(super) fn set_master_state(&self, state: MasterState) {
        self.current.store(state.current.0, Ordering::Release);
        *self.master.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub(super) fn decoy(&self) -> Digest {
        Digest::plain(self.current_version(), self.decoy_mac)
    }

    pub fn is_healthy(&self) -> bool {
        self.hsm.is_healthy()
    }

    /// Whether the store still confirms writes: false once one was not confirmed within
    /// `store.write_timeout` (writes are refused until a restart; reads go on).
    pub fn writes_confirmed(&self) -> bool {
        self.store.writes_confirmed()
    }

    /// Every call needs the HSM (no answer is given from memory while it is unreachable):
    /// `Unavailable` at once when it is not healthy.
    fn require_hsm(&self) -> Result<()> {
        if self.hsm.is_healthy() {
            Ok(())
        } else {
            Err(Error::Unavailable("the HSM is unreachable; retry later".into()))
        }
    }

    /// Checks a bearer credential: a genuine key that is active, in its validity window and, if
    /// it has an IP allowlist, called from an allowed peer address. (A caller's rate limit and
    /// quota apply only when its key is checked through `verify`.) Any failure is
    /// `Unauthenticated`, saying no more than that, and counts against the peer address (see
    /// `throttle`): a blocked address is `Throttled` before any HSM operation or database read,
    /// unless its credential is one the HSM proved lately (in the auth cache), so that proven
    /// callers sharing an address with an attacker (a proxy, a NAT) keep working.
    pub async fn authenticate(&self, bearer: Option<&str>, ctx: &RequestContext) -> Result<Caller> {
        self.require_hsm()?;
        let source = ctx.client_addr.map(|a| a.ip());
        let peer = source.map(Source::Peer);
        if let Some(peer) = peer
            && let Err(blocked) = self.throttle.check(peer, self.clock.now())
            && !self.proven_lately(bearer)
        {
            self.throttled(peer, None, &blocked.why);
            return Err(Error::Throttled(blocked.retry_after));
        }
        let mut named = None;
        let result = self.check_bearer(bearer, source, &mut named).await;
        if let Err(Error::Unauthenticated(why)) = &result {
            self.unauthenticated(source, named, why);
            if let Some(peer) = peer {
                self.throttle.fail(peer, self.clock.now());
            }
        }
        result
    }

    /// Whether `bearer` is a credential the HSM verified within the auth cache's TTL (memory only).
    fn proven_lately(&self, bearer: Option<&str>) -> bool {
        bearer.and_then(key_format::parse).is_some_and(|p| self.auth_cache.contains(p.key_id, &p.secret))
    }

    /// `authenticate`'s checks; `named` is set to the key the credential names once it is
    /// known to exist.
    async fn check_bearer(
        &self,
        bearer: Option<&str>,
        source: Option<std::net::IpAddr>,
        named: &mut Option<KeyId>,
    ) -> Result<Caller> {
        const INVALID: Error = Error::Unauthenticated("invalid credential");
        let bearer = bearer.ok_or(Error::Unauthenticated("missing credential: send `authorization: Bearer <key>`"))?;
        let parsed = key_format::parse(bearer).ok_or(INVALID)?;
        let record = match self.store.get_key(parsed.key_id)? {
            // A digest not plain under the current master key skips the cache, so that proving
            // it again migrates it.
            Some(record)
                if record.digest.is_plain_under(self.current_version())
                    && self.auth_cache.contains(record.id, &parsed.secret) =>
            {
                record
            }
            Some(record) => {
                *named = Some(record.id);
                if !self.prove(&parsed, &record).await? {
                    return Err(INVALID);
                }
                self.auth_cache.insert(record.id, &parsed.secret);
                record
            }
            None => {
                self.secret_matches(&parsed, &self.decoy()).await?;
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
        self.require_hsm()?;
        let source = ctx.client_addr.map(|a| a.ip());
        let result = match self.store.get_key(key_id)? {
            Some(record) => self.admit(record, source),
            None => Err(Error::Unauthenticated("the client certificate is mapped to a key that does not exist")),
        };
        if let Err(Error::Unauthenticated(why)) = &result {
            self.unauthenticated(source, Some(key_id), why);
        }
        result
    }

    /// The checks every caller's key passes once its holder is proven.
    fn admit(&self, record: KeyRecord, source: Option<std::net::IpAddr>) -> Result<Caller> {
        let now = self.clock.now();
        match policy::evaluate(&record, now, source, &[], &self.config.rotation.rules) {
            VerifyCode::Valid => {
                // Calls made with a key are uses of it (the reaper looks at the last one).
                self.usage.record(record.id, true, now, source);
                Ok(Caller { key_id: record.id, scopes: record.scopes, source })
            }
            VerifyCode::IpNotAllowed => Err(Error::Unauthenticated("credential is not allowed from this address")),
            _ => Err(Error::Unauthenticated("credential is revoked, disabled, expired or not yet valid")),
        }
    }

    pub fn authorize(&self, caller: &Caller, permission: Permission) -> Result<()> {
        if scope::any_grants(&caller.scopes, permission.scope()) {
            Ok(())
        } else {
            self.denied(caller.source, caller.key_id, permission.scope());
            Err(Error::PermissionDenied(format!("this call needs the `{}` permission", permission.scope())))
        }
    }

    /// A creator may only grant `keyward:` scopes it holds itself.
    pub(super) fn check_escalation(caller: &Caller, scopes: &[String]) -> Result<()> {
        match scopes.iter().find(|s| scope::is_permission(s) && !scope::any_grants(&caller.scopes, s)) {
            Some(escalation) => Err(Error::PermissionDenied(format!(
                "cannot grant `{escalation}`: a key may only grant keyward permissions its caller holds"
            ))),
            None => Ok(()),
        }
    }

    pub async fn create(&self, caller: &Caller, new: NewKey, ctx: &RequestContext) -> Result<CreatedKey> {
        let reach = self.reach(caller, Permission::KeysCreate)?;
        let now = self.clock.now();
        let name = validate::name(&new.name)?;
        let owner = validate::owner("owner", &new.owner)?;
        let prefix = validate::prefix(&new.prefix)?;
        let scopes = validate::scopes("scopes", &new.scopes, validate::MAX_SCOPES)?;
        let expires_at = validate::expires_at(new.expires_at, now)?;
        validate::validity_window(new.not_before, expires_at)?;
        let metadata = validate::metadata(new.metadata)?;
        let allowed_cidrs = validate::allowed_cidrs(&new.allowed_cidrs)?;
        let rate_limit = validate::rate_limit(new.rate_limit)?;
        let refill = validate::refill(new.refill)?;
        let remaining = validate::remaining(new.remaining)?.or(refill.map(|r| r.amount));
        let max_age = match new.max_age {
            None => self.config.rotation.default_max_age,
            Some(age) => validate::max_age(Some(age))?,
        };
        Self::check_escalation(caller, &scopes)?;
        reach.check_owner(owner.as_deref())?;

        let id = KeyId::new_v7();
        let secret = self.hsm.random_secret().await?;
        let digest = self.hsm.digest(self.current_version(), key_digest_input(id, &secret)).await?;
        let mut record = KeyRecord::new(id, name, prefix, scopes, now, digest);
        record.expires_at = expires_at;
        record.metadata = metadata;
        record.created_by = Some(caller.key_id);
        record.allowed_cidrs = allowed_cidrs;
        record.not_before = new.not_before;
        record.rate_limit = rate_limit;
        record.quota = remaining.map(|remaining| Quota { remaining, refill, refilled_at: now });
        record.max_age = max_age;
        record.owner = owner;
        let event = audit(now, Actor::Key(caller.key_id), AuditAction::KeyCreated, id, ctx, None);
        self.store.insert_key(record.clone(), event).await?;
        let key = key_format::render(&record.prefix, id, &secret);
        Ok(CreatedKey { key, record })
    }

    pub fn get(&self, caller: &Caller, key_id: &str) -> Result<KeyRecord> {
        let reach = self.reach(caller, Permission::KeysRead)?;
        let id = validate::key_id("key_id", key_id)?;
        let record = self.store.get_key(id)?.ok_or_else(|| ownership::not_found(id))?;
        self.check_reach_of(caller, &reach, Permission::KeysRead, &record)?;
        Ok(self.view(record))
    }

    /// One page of keys matching `filter`, oldest first, and the token for the next page if
    /// there may be more. A page reads at most `listing::MAX_SCAN` records, so with narrow
    /// filters it may come back short, or empty, with a token. A team-scoped reader sees only
    /// its teams' keys.
    pub fn list(
        &self,
        caller: &Caller,
        filter: &ListFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<KeyRecord>, Option<String>)> {
        let reach = self.reach(caller, Permission::KeysRead)?;
        let size = validate::page_size(page_size)?;
        let after = filter.resume_after(page_token)?;
        let mut keys = Vec::with_capacity(size);
        let mut last = None;
        for (scanned, record) in self.store.scan_keys(after).enumerate() {
            let record = record?;
            if keys.len() == size || scanned == listing::MAX_SCAN {
                // There is at least one more record: resume after the last one looked at.
                return Ok((keys, last.map(|id| filter.token(id))));
            }
            last = Some(record.id);
            if filter.matches(&record) && reach.covers(record.owner.as_deref()) {
                keys.push(self.view(record));
            }
        }
        Ok((keys, None))
    }

    /// Changes the fields `patch.mask` names, audited with each change before and after.
    pub async fn update(
        &self,
        caller: &Caller,
        key_id: &str,
        patch: KeyPatch,
        ctx: &RequestContext,
    ) -> Result<KeyRecord> {
        let reach = self.reach(caller, Permission::KeysUpdate)?;
        let id = validate::key_id("key_id", key_id)?;
        let now = self.clock.now();
        let patch = update::validate(patch, now)?;
        if let Some(scopes) = patch.scopes() {
            Self::check_escalation(caller, scopes)?;
        }
        if let Some(owner) = patch.owner() {
            // Moving a key needs the permission for the new owner too (the old one is below).
            reach.check_owner(owner)?;
        }
        self.check_reach(caller, &reach, Permission::KeysUpdate, id)?;
        let base = audit(now, Actor::Key(caller.key_id), AuditAction::KeyUpdated, id, ctx, None);
        // A quota change folds this node's lease back into the stored count first.
        let gate = patch.touches_quota().then(|| self.accounts.gate(id));
        let _reserving = match &gate {
            Some(g) => Some(g.reserving.lock().await),
            None => None,
        };
        let returned = gate.as_ref().and_then(|g| g.account().lease.take());
        let updated = self
            .store
            .update_key(id, move |current| {
                reach.check_key(current)?;
                if current.state == KeyState::Revoked {
                    return Err(Error::FailedPrecondition(format!("key {id} is revoked and cannot change")));
                }
                let mut settled = current.clone();
                if patch.touches_quota() {
                    settled.quota = quota::settle(current.quota, returned, now);
                }
                let (mut next, changes) = update::apply(&settled, &patch, now)?;
                if changes.is_empty() && settled == *current {
                    return Ok(None);
                }
                next.updated_at = Some(now);
                let event = (!changes.is_empty()).then(|| AuditEvent { changes, ..base.clone() });
                Ok(Some((next, event)))
            })
            .await;
        if let Some(g) = &gate {
            let mut account = g.account();
            match &updated {
                // Refused inside the transaction: nothing was written, the lease still holds.
                Err(e) if !matches!(e, Error::Unavailable(_)) => account.lease = returned,
                // Folded back, or the write's fate is unknown: give it up, never spend it twice.
                _ => *account = Default::default(),
            }
        }
        Ok(self.view(updated?.after))
    }

    /// Pauses a key; disabling a disabled key changes nothing.
    pub async fn disable(
        &self,
        caller: &Caller,
        key_id: &str,
        reason: &str,
        ctx: &RequestContext,
    ) -> Result<KeyRecord> {
        let reach = self.reach(caller, Permission::KeysUpdate)?;
        let id = validate::key_id("key_id", key_id)?;
        let reason = validate::reason(reason)?;
        self.check_reach(caller, &reach, Permission::KeysUpdate, id)?;
        let now = self.clock.now();
        let event = audit(now, Actor::Key(caller.key_id), AuditAction::KeyDisabled, id, ctx, reason.clone());
        let updated = self
            .store
            .update_key(id, move |current| match current.state {
                _ if !reach.covers(current.owner.as_deref()) => Err(ownership::not_found(id)),
                KeyState::Revoked => Err(Error::FailedPrecondition(format!("key {id} is revoked"))),
                KeyState::Disabled => Ok(None),
                KeyState::Rotated => Err(Error::FailedPrecondition(format!(
                    "key {id} was rotated; revoke it to end its overlap at once"
                ))),
                KeyState::Active => {
                    let mut next = current.clone();
                    next.state = KeyState::Disabled;
                    next.disabled_at = Some(now);
                    next.disable_reason = reason.clone();
                    next.updated_at = Some(now);
                    Ok(Some((next, Some(event.clone()))))
                }
            })
            .await?;
        Ok(self.view(updated.after))
    }

    /// Resumes a disabled key; enabling an active key changes nothing.
    pub async fn enable(&self, caller: &Caller, key_id: &str, ctx: &RequestContext) -> Result<KeyRecord> {
        let reach = self.reach(caller, Permission::KeysUpdate)?;
        let id = validate::key_id("key_id", key_id)?;
        self.check_reach(caller, &reach, Permission::KeysUpdate, id)?;
        let now = self.clock.now();
        let event = audit(now, Actor::Key(caller.key_id), AuditAction::KeyEnabled, id, ctx, None);
        let updated = self
            .store
            .update_key(id, move |current| match current.state {
                _ if !reach.covers(current.owner.as_deref()) => Err(ownership::not_found(id)),
                KeyState::Revoked => Err(Error::FailedPrecondition(format!("key {id} is revoked for good"))),
                KeyState::Active | KeyState::Rotated => Ok(None),
                KeyState::Disabled => {
                    let mut next = current.clone();
                    next.state = KeyState::Active;
                    next.disabled_at = None;
                    next.disable_reason = None;
                    next.updated_at = Some(now);
                    Ok(Some((next, Some(event.clone()))))
                }
            })
            .await?;
        Ok(self.view(updated.after))
    }

    /// Revokes a key for good; revoking a revoked key changes nothing and succeeds.
    pub async fn revoke(&self, caller: &Caller, key_id: &str, reason: &str, ctx: &RequestContext) -> Result<KeyRecord> {
        let reach = self.reach(caller, Permission::KeysRevoke)?;
        let id = validate::key_id("key_id", key_id)?;
        let reason = validate::reason(reason)?;
        self.check_reach(caller, &reach, Permission::KeysRevoke, id)?;
        let now = self.clock.now();
        let event = audit(now, Actor::Key(caller.key_id), AuditAction::KeyRevoked, id, ctx, reason.clone());
        let updated = self
            .store
            .update_key(id, move |current| {
                reach.check_key(current)?;
                if current.state == KeyState::Revoked {
                    return Ok(None);
                }
                let mut revoked = current.clone();
                revoked.state = KeyState::Revoked;
                revoked.revoked_at = Some(now);
                revoked.revoke_reason = reason.clone();
                revoked.updated_at = Some(now);
                Ok(Some((revoked, Some(event.clone()))))
            })
            .await?;
        Ok(self.view(updated.after))
    }

    /// A record as this node sees it: usage not yet written added, and the quota with this
    /// node's lease and any due refill.
    pub(super) fn view(&self, mut record: KeyRecord) -> KeyRecord {
        if let Some(delta) = self.usage.peek(record.id) {
            record.usage.absorb(&delta);
        }
        if record.quota.is_some() {
            let now = self.clock.now();
            record.quota = match self.accounts.existing(record.id) {
                Some(gate) => gate.account().effective(record.quota, now),
                None => quota::settle(record.quota, None, now),
            };
        }
        record
    }

    pub(super) async fn secret_matches(&self, parsed: &ParsedKey, digest: &Digest) -> Result<bool> {
        Ok(self.hsm.verify(key_digest_input(parsed.key_id, &parsed.secret), digest).await?)
    }

    /// Whether the presented secret is `record`'s, checked in the HSM. A digest that needs a
    /// retired master key can no longer be checked: it costs and answers what an unknown key
    /// does. A proven key whose digest is not plain under the current master key is re-digested
    /// in the background (lazy migration: one HSM operation, once).
    pub(super) async fn prove(&self, parsed: &ParsedKey, record: &KeyRecord) -> Result<bool> {
        let current = self.current_version();
        if record.digest.is_plain_under(current) {
            return self.secret_matches(parsed, &record.digest).await;
        }
        let checkable = {
            let master = self.master.read().unwrap_or_else(|e| e.into_inner());
            record.digest.versions().all(|v| master.is_live(v))
        };
        if !checkable {
            self.secret_matches(parsed, &self.decoy()).await?;
            return Ok(false);
        }
        if !self.secret_matches(parsed, &record.digest).await? {
            return Ok(false);
        }
        if record.state != KeyState::Revoked {
            self.redigest_later(parsed, record, current);
        }
        Ok(true)
    }

    /// Lazy re-digests under way (tests wait for them).
    #[cfg(test)]
    pub(super) fn redigesting_now(&self) -> usize {
        self.redigesting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn redigest_later(&self, parsed: &ParsedKey, record: &KeyRecord, current: MasterKeyVersion) {
        let id = record.id;
        if !self.redigesting.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return;
        }
        let (hsm, store, redigesting) = (self.hsm.clone(), self.store.clone(), self.redigesting.clone());
        let input = key_digest_input(parsed.key_id, &parsed.secret);
        let expected = record.digest.clone();
        tokio::spawn(async move {
            let result = async {
                let new = hsm.digest(current, input).await?;
                store.replace_digests(vec![DigestSwap { id, expected, new }], None).await?;
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(key_id = %id, error = %e, "re-digesting a key under the current master key failed; its next verification retries");
            }
            redigesting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }
}

pub(super) fn audit(
    at: SystemTime,
    actor: Actor,
    action: AuditAction,
    target: KeyId,
    ctx: &RequestContext,
    reason: Option<String>,
) -> AuditEvent {
    let client_addr = ctx.client_addr.map(|a| a.to_string());
    AuditEvent { at, actor, action, target: Some(target), client_addr, reason, changes: Vec::new(), code: None }
}

/// Sets up a new installation once the master key exists in the HSM: records the master state
/// with its self-test digest, and creates the root key (scope `keyward:*`), returned once.
pub async fn bootstrap<H: Hsm, S: Store>(
    hsm: &H,
    store: &S,
    clock: &dyn Clock,
    version: MasterKeyVersion,
) -> Result<CreatedKey> {
    let self_test = hsm.digest(version, self_test_input()).await?;
    let now = clock.now();
    let id = KeyId::new_v7();
    let secret = hsm.random_secret().await?;
    let digest = hsm.digest(version, key_digest_input(id, &secret)).await?;
    let record =
        KeyRecord::new(id, "root".into(), key_format::DEFAULT_PREFIX.into(), vec![ROOT_SCOPE.into()], now, digest);
    // The root key has no max_age and is never reaped: losing it could lock the installation out.
    let event = audit(now, Actor::System("init".into()), AuditAction::KeyCreated, id, &RequestContext::default(), None);
    store.initialize(MasterState::first(version, self_test, now), record.clone(), event).await.map_err(
        |e| match e {
            super::ports::StoreError::AlreadyInitialized => {
                Error::AlreadyExists("the database is already initialized".into())
            }
            other => other.into(),
        },
    )?;
    let key = key_format::render(&record.prefix, id, &secret);
    Ok(CreatedKey { key, record })
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
