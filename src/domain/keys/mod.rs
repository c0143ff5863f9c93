//! Key administration: create, read, list, update, disable, enable and revoke keys; rotation,
//! leak reports and the sweeper are in the modules below. Every change is written with its
//! audit event in one transaction; what the caller may touch follows its permissions and, for
//! team-scoped ones, the keys' owners (`ownership`).

mod browse;
mod catch_up;
mod leak;
mod rotation;
mod sweep;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

pub use self::{
    browse::{KeyPage, MAX_BROWSE_PAGE, Window},
    leak::LeakReport,
    rotation::RotatedKey,
    sweep::SweepReport,
};
use super::{
    access::{self, Access, Caller, Permission, RequestContext},
    anomaly::AnomalyAction,
    audit::{Actor, AuditAction, AuditEvent},
    deps::Deps,
    error::{Error, Result},
    key::{KeyId, KeyRecord, KeyState, Quota, RateLimit, Refill},
    key_format,
    key_index::KeySummary,
    ledger::Ledger,
    listing::ListFilter,
    master::MasterView,
    ownership::{self, Reach},
    ports::{Hsm, Store},
    proof::{Prover, key_digest_input},
    quota,
    rotation::RotationConfig,
    secret::{KeyString, Secret},
    signing::KeyKind,
    update::{self, KeyPatch},
    validate,
};

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
    /// What the anomaly detector does on unusual use of the key.
    pub anomaly_action: AnomalyAction,
    pub kind: KeyKind,
}

#[derive(Debug)]
pub struct CreatedKey {
    /// The full key: returned to the creator once, kept nowhere.
    pub key: KeyString,
    pub record: KeyRecord,
    /// A signing key's secret: returned to the creator once, kept only wrapped by the HSM.
    pub signing_secret: Option<Secret>,
}

pub struct KeyAdmin<H, S> {
    deps: Deps<H, S>,
    rotation: RotationConfig,
    // Shared with other services:
    master: Arc<MasterView>,
    prover: Arc<Prover<H, S>>,
    ledger: Arc<Ledger>,
    access: Arc<Access>,
}

impl<H: Hsm, S: Store> KeyAdmin<H, S> {
    /// Makes digests under `master`'s current version, proves leaked keys with `prover`, shows
    /// and folds back what `ledger` holds, and checks permissions with `access`.
    pub fn new(
        deps: Deps<H, S>,
        rotation: RotationConfig,
        master: Arc<MasterView>,
        prover: Arc<Prover<H, S>>,
        ledger: Arc<Ledger>,
        access: Arc<Access>,
    ) -> Self {
        Self { deps, rotation, master, prover, ledger, access }
    }

    pub async fn create(&self, caller: &Caller, new: NewKey, ctx: &RequestContext) -> Result<CreatedKey> {
        let reach = self.access.reach(caller, Permission::KeysCreate)?;
        let now = self.deps.clock.now();
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
            None => self.rotation.default_max_age,
            Some(age) => validate::max_age(Some(age))?,
        };
        access::check_escalation(caller, &scopes)?;
        reach.check_owner(owner.as_deref())?;

        let id = KeyId::new_v7();
        let secret = self.deps.hsm.random_secret().await?;
        let digest = self.deps.hsm.digest(self.master.current(), key_digest_input(id, &secret)).await?;
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
        record.anomaly_action = new.anomaly_action;
        let signing_secret = match new.kind {
            KeyKind::Bearer => None,
            KeyKind::Signing => {
                let (secret, wrapped) = self.deps.hsm.new_signing_secret(self.master.wrap_current()).await?;
                record.signing = Some(wrapped);
                Some(secret)
            }
        };
        let event = key_event(now, Actor::Key(caller.key_id), AuditAction::KeyCreated, id, ctx, None);
        self.deps.store.insert_key(record.clone(), event).await?;
        self.catch_up_with_rotation(&mut record, &secret).await;
        let key = key_format::render(&record.prefix, id, &secret);
        Ok(CreatedKey { key, record, signing_secret })
    }

    /// The master key version new digests use, as this service last saw it.
    #[cfg(test)]
    pub(crate) fn master_current_for_tests(&self) -> super::key::MasterKeyVersion {
        self.master.current()
    }

    pub fn get(&self, caller: &Caller, key_id: &str) -> Result<KeyRecord> {
        let reach = self.access.reach(caller, Permission::KeysRead)?;
        let id = validate::key_id("key_id", key_id)?;
        let record = self.deps.store.get_key(id)?.ok_or_else(|| ownership::not_found(id))?;
        self.check_reach_of(caller, &reach, Permission::KeysRead, &record)?;
        Ok(self.view(record))
    }

    /// One page of keys matching `filter`, oldest first, and the token for the next page if
    /// there are more. The matches are found in the key index (memory), so a page is full
    /// whatever the filters, but for a key changed between the index and the read of its record
    /// (then checked again). A team-scoped reader sees only its teams' keys.
    pub fn list(
        &self,
        caller: &Caller,
        filter: &ListFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<KeyRecord>, Option<String>)> {
        let reach = self.access.reach(caller, Permission::KeysRead)?;
        let size = validate::page_size(page_size)?;
        let after = filter.resume_after(page_token)?;
        let keep = |k: &KeySummary| filter.matches_summary(k) && reach.covers(k.owner.as_deref());
        let (ids, more) = self.deps.store.key_index()?.ids_after(after, keep, size);
        let mut keys = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(record) = self.deps.store.get_key(*id)?
                && filter.matches(&record)
                && reach.covers(record.owner.as_deref())
            {
                keys.push(self.view(record));
            }
        }
        let next = ids.last().filter(|_| more).map(|last| filter.token(*last));
        Ok((keys, next))
    }

    /// Changes the fields `patch.mask` names, audited with each change before and after.
    pub async fn update(
        &self,
        caller: &Caller,
        key_id: &str,
        patch: KeyPatch,
        ctx: &RequestContext,
    ) -> Result<KeyRecord> {
        let reach = self.access.reach(caller, Permission::KeysUpdate)?;
        let id = validate::key_id("key_id", key_id)?;
        let now = self.deps.clock.now();
        let patch = update::validate(patch, now)?;
        if let Some(scopes) = patch.scopes() {
            access::check_escalation(caller, scopes)?;
        }
        if let Some(owner) = patch.owner() {
            // Moving a key needs the permission for the new owner too (the old one is below).
            reach.check_owner(owner)?;
        }
        self.check_reach(caller, &reach, Permission::KeysUpdate, id)?;
        let base = key_event(now, Actor::Key(caller.key_id), AuditAction::KeyUpdated, id, ctx, None);
        // A quota change folds this node's lease back into the stored count first.
        let gate = patch.touches_quota().then(|| self.ledger.gate(id));
        let _reserving = match &gate {
            Some(g) => Some(g.reserving.lock().await),
            None => None,
        };
        let returned = gate.as_ref().and_then(|g| g.account().lease.take());
        let updated = self
            .deps
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
        let reach = self.access.reach(caller, Permission::KeysUpdate)?;
        let id = validate::key_id("key_id", key_id)?;
        let reason = validate::reason(reason)?;
        self.check_reach(caller, &reach, Permission::KeysUpdate, id)?;
        let now = self.deps.clock.now();
        let event = key_event(now, Actor::Key(caller.key_id), AuditAction::KeyDisabled, id, ctx, reason.clone());
        let updated = self
            .deps
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
        let reach = self.access.reach(caller, Permission::KeysUpdate)?;
        let id = validate::key_id("key_id", key_id)?;
        self.check_reach(caller, &reach, Permission::KeysUpdate, id)?;
        let now = self.deps.clock.now();
        let event = key_event(now, Actor::Key(caller.key_id), AuditAction::KeyEnabled, id, ctx, None);
        let updated = self
            .deps
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
        let reach = self.access.reach(caller, Permission::KeysRevoke)?;
        let id = validate::key_id("key_id", key_id)?;
        let reason = validate::reason(reason)?;
        self.check_reach(caller, &reach, Permission::KeysRevoke, id)?;
        let now = self.deps.clock.now();
        let event = key_event(now, Actor::Key(caller.key_id), AuditAction::KeyRevoked, id, ctx, reason.clone());
        let updated = self
            .deps
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
    fn view(&self, record: KeyRecord) -> KeyRecord {
        self.ledger.view(record, self.deps.clock.now())
    }

    /// `NOT_FOUND` for a key that exists but lies outside `reach`, counted in the audit trail
    /// as a refused call (a team admin probing other teams' ids). Checked before a mutation's
    /// transaction, which checks again in case the owner changed in between.
    fn check_reach(&self, caller: &Caller, reach: &Reach, permission: Permission, id: KeyId) -> Result<()> {
        if *reach == Reach::All {
            return Ok(());
        }
        match self.deps.store.get_key(id)? {
            Some(record) => self.check_reach_of(caller, reach, permission, &record),
            None => Err(ownership::not_found(id)),
        }
    }

    /// `check_reach` of a record already read.
    fn check_reach_of(&self, caller: &Caller, reach: &Reach, permission: Permission, record: &KeyRecord) -> Result<()> {
        let checked = reach.check_key(record);
        if checked.is_err() {
            self.access.outside_teams(caller, permission.scope());
        }
        checked
    }
}

/// An audit event of `actor` acting on key `target`.
pub(crate) fn key_event(
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod leak_tests;

#[cfg(test)]
mod ownership_tests;

#[cfg(test)]
mod rotation_tests;

#[cfg(test)]
mod sweep_tests;
