//! Master key rotation. `rotate_master` makes version N+1 in the HSM and makes it current: new
//! digests use it at once. keyward never holds a key's secret, so it cannot recompute an old
//! digest under N+1; instead a background job *wraps* every old digest under N+1 (one HSM
//! operation per key, resumable from a checkpoint after a crash), and each key's next successful
//! verification replaces its digest with a plain one under N+1 (lazy migration). A version is
//! retired (destroyed in the HSM) only once no live key's digest needs it.
//!
//! Signing secrets move with it: rotating to version N also makes wrapping key vN (see
//! `WrapKeyVersion`), new secrets are wrapped under it at once, and the same background job
//! re-wraps every live signing key's secret under vN inside the HSM (never in clear outside
//! it). Retiring version N also destroys wrapping key vN, once no live signing key's secret is
//! wrapped under it.

mod migration;
mod view;

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

pub use self::view::MasterView;
use super::{
    access::{Access, Caller, Permission, RequestContext},
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    deps::Deps,
    error::{Error, Result},
    key::{Digest, KeyRecord, MasterKeyVersion},
    key_index::{self, Custody},
    ports::{Hsm, MasterState, MasterVersion, Migration, Store, WrapKey},
    proof::self_test_input,
    rotation::MigrationConfig,
    scope,
    signing::WrapKeyVersion,
};

/// The master key state with what the keys need of it.
#[derive(Clone, Debug, PartialEq)]
pub struct MasterStatus {
    pub state: MasterState,
    /// For each version: keys that can still verify (not revoked, not rotated past their
    /// overlap) whose digest needs it.
    pub keys_using: BTreeMap<MasterKeyVersion, u64>,
    /// Live keys whose digest is not yet plain under the current version (wrapped ones
    /// included): they move on their next successful verification.
    pub keys_not_plain: u64,
    /// Live keys not yet under the current version at all (the background job's work left).
    pub keys_pending: u64,
    /// For each live wrapping key version: signing keys that can still verify whose secret is
    /// wrapped under it.
    pub secrets_using: BTreeMap<WrapKeyVersion, u64>,
    /// Live signing keys whose secret is not yet wrapped under the current wrapping key.
    pub secrets_pending: u64,
}

impl MasterStatus {
    /// `state` with nothing counted.
    fn uncounted(state: MasterState) -> Self {
        Self {
            state,
            keys_using: BTreeMap::new(),
            keys_not_plain: 0,
            keys_pending: 0,
            secrets_using: BTreeMap::new(),
            secrets_pending: 0,
        }
    }

    /// Adds one key.
    fn count(&mut self, key: &Custody, now: SystemTime) {
        if !key.digest_needed(now) {
            return;
        }
        let current = self.state.current;
        self.keys_pending += u64::from(key.digest_version != current);
        match key.signing {
            // A signing key's digest is of a bearer secret nobody was given: never checked,
            // it holds no master key version back. Its wrapped secret holds its wrapping key.
            Some(wrap) => {
                *self.secrets_using.entry(wrap).or_default() += 1;
                self.secrets_pending += u64::from(wrap != self.state.wrap_current());
            }
            None => {
                for v in key.digest_versions() {
                    *self.keys_using.entry(v).or_default() += 1;
                }
                self.keys_not_plain += u64::from(!key.is_plain_under(current));
            }
        }
    }
}

/// Whether a key's digest (or wrapped secret) still matters: see `key_index::digest_needed`.
fn digest_needed(r: &KeyRecord, now: SystemTime) -> bool {
    key_index::digest_needed(r.state, r.rotation_deadline, now)
}

fn master_event(at: SystemTime, actor: Actor, action: AuditAction, ctx: &RequestContext) -> AuditEvent {
    AuditEvent {
        at,
        actor,
        action,
        target: None,
        client_addr: ctx.client_addr.map(|a| a.to_string()),
        reason: None,
        changes: Vec::new(),
        code: None,
    }
}

pub struct MasterKeys<H, S> {
    deps: Deps<H, S>,
    migration: MigrationConfig,
    /// The master key state, which this service alone changes; the others read it.
    view: Arc<MasterView>,
    /// Serializes master key rotation, retirement and migration batches.
    ops: tokio::sync::Mutex<()>,
    /// Wakes the migration task after a rotation.
    migration_wake: tokio::sync::Notify,
    access: Arc<Access>,
}

impl<H: Hsm, S: Store> MasterKeys<H, S> {
    /// Changes the state the other services read through `view`; checks permissions with
    /// `access`.
    pub fn new(deps: Deps<H, S>, migration: MigrationConfig, view: Arc<MasterView>, access: Arc<Access>) -> Self {
        Self {
            deps,
            migration,
            view,
            ops: tokio::sync::Mutex::new(()),
            migration_wake: tokio::sync::Notify::new(),
            access,
        }
    }

    /// Verifies each live master key version's self-test digest: proves the token holds this
    /// database's master keys.
    pub async fn self_test(&self) -> Result<()> {
        let tests: Vec<Digest> = self.master_state().live().map(|v| v.self_test.clone()).collect();
        for digest in tests {
            if !self.deps.hsm.verify(self_test_input(), &digest).await? {
                return Err(Error::FailedPrecondition(format!(
                    "HSM self-test failed: master key {} on the token does not match this database",
                    digest.version
                )));
            }
        }
        Ok(())
    }

    /// Takes the master key state another cluster node wrote (a rotation, a retirement, a
    /// migration's progress). The caller has made sure the HSM has every live version. The
    /// re-digest stays with the node that rotated (or the next one to start).
    pub fn adopt(&self, state: MasterState) {
        if self.view.state() != state {
            tracing::info!(current = %state.current, "master key state changed on another node");
            self.view.set(state);
        }
    }

    /// The master key state as last written.
    pub fn master_state(&self) -> MasterState {
        self.view.state()
    }

    /// Needs `keyward:master:read` (or `keyward:master:rotate`, which reads what it changes).
    /// The counts come from the store's key index; without `count` they are zero.
    pub fn master_status(&self, caller: &Caller, count: bool) -> Result<MasterStatus> {
        if !scope::any_grants(&caller.scopes, Permission::MasterRotate.scope()) {
            self.access.authorize(caller, Permission::MasterRead)?;
        }
        if count {
            self.indexed_master_status()
        } else {
            let state = self.master_state();
            Ok(MasterStatus::uncounted(state))
        }
    }

    /// The counts from the store's key index (memory; no record is read). Fails closed like
    /// any read when the store cannot show a current view.
    fn indexed_master_status(&self) -> Result<MasterStatus> {
        let index = self.deps.store.key_index()?;
        let mut status = self.empty_status();
        let now = self.deps.clock.now();
        index.for_each_custody(|c| status.count(c, now));
        Ok(status)
    }

    /// The counts from every key record: what retirement decides on.
    fn scan_master_status(&self) -> Result<MasterStatus> {
        let mut status = self.empty_status();
        let now = self.deps.clock.now();
        for record in self.deps.store.scan_keys(None) {
            status.count(&Custody::of(&record?), now);
        }
        Ok(status)
    }

    /// The counts `scan_master_status` makes, for tests comparing them with the index's.
    #[cfg(test)]
    pub(crate) fn scanned_status(&self) -> Result<MasterStatus> {
        self.scan_master_status()
    }

    /// The current state with a zero count for each live version.
    fn empty_status(&self) -> MasterStatus {
        let mut status = MasterStatus::uncounted(self.master_state());
        for v in status.state.live() {
            status.keys_using.insert(v.version, 0);
        }
        for v in status.state.live_wrap_keys() {
            status.secrets_using.insert(v, 0);
        }
        status
    }

    /// Makes master key version N+1 and wrapping key vN+1 in the HSM and current, and starts the
    /// background re-digest (and re-wrap of signing secrets). Refused while a previous
    /// rotation's re-digest is still running.
    pub async fn rotate_master(&self, caller: &Caller, ctx: &RequestContext) -> Result<MasterState> {
        self.access.authorize(caller, Permission::MasterRotate)?;
        let _ops = self.ops.lock().await;
        let state = self.master_state();
        if let Some(m) = &state.migration {
            return Err(Error::FailedPrecondition(format!(
                "the re-digest under master key {} is still running ({} keys done); rotate again once it finishes",
                m.to, m.wrapped
            )));
        }
        let previous = state.current;
        let next = MasterKeyVersion(state.versions.iter().map(|v| v.version.0).max().unwrap_or(0) + 1);
        let wrap_next = WrapKeyVersion(next.0);
        self.deps.hsm.create_master_key(next).await?;
        self.deps.hsm.create_wrap_key(wrap_next).await?;
        let self_test = self.deps.hsm.digest(next, self_test_input()).await?;
        let now = self.deps.clock.now();
        let mut new = state.clone();
        new.current = next;
        new.versions.push(MasterVersion { version: next, created_at: now, retired_at: None, self_test });
        new.wrap_keys.retain(|w| w.version != wrap_next);
        new.wrap_keys.push(WrapKey { version: wrap_next, created_at: now, retired_at: None });
        new.migration = Some(Migration { to: next, started_at: now, after: None, wrapped: 0, rewrapped: 0 });
        let event = AuditEvent {
            changes: vec![FieldChange {
                field: "current_version".into(),
                before: previous.to_string(),
                after: next.to_string(),
            }],
            ..master_event(now, Actor::Key(caller.key_id), AuditAction::MasterRotated, ctx)
        };
        self.deps.store.set_master(new.clone(), event).await?;
        self.view.set(new.clone());
        self.migration_wake.notify_one();
        tracing::info!(from = %previous, to = %next, "master key rotated; re-digesting keys and re-wrapping signing secrets in the background");
        Ok(new)
    }

    /// Destroys master key `version` in the HSM, once no live key's digest needs it, and
    /// wrapping key `version` with it, once no live signing key's secret is wrapped under it
    /// (the current wrapping key stays: a database rotated before wrapping keys rotated has
    /// only v1). Retiring a retired version again makes sure both are gone from the token, and
    /// retires its wrapping key if that was left (then needed, or current).
    pub async fn retire_master(
        &self,
        caller: &Caller,
        version: MasterKeyVersion,
        ctx: &RequestContext,
    ) -> Result<MasterState> {
        self.access.authorize(caller, Permission::MasterRotate)?;
        let _ops = self.ops.lock().await;
        let state = self.master_state();
        let Some(found) = state.version(version) else {
            return Err(Error::NotFound(format!("master key {version}")));
        };
        let wrap = WrapKeyVersion(version.0);
        let wrap_retiring = state.is_wrap_live(wrap) && wrap != state.wrap_current();
        if found.retired_at.is_some() {
            self.deps.hsm.destroy_master_key(version).await?;
            if !wrap_retiring {
                if state.wrap_key(wrap).is_some_and(|w| w.retired_at.is_some()) {
                    self.deps.hsm.destroy_wrap_key(wrap).await?;
                }
                return Ok(state);
            }
            Self::refuse_if_counted(wrap, &self.scan_master_status()?)?;
            let new = self.record_retired(caller, &state, None, Some(wrap), ctx).await?;
            self.deps.hsm.destroy_wrap_key(wrap).await?;
            tracing::info!(version = %wrap, "signing secret wrapping key retired");
            return Ok(new);
        }
        if version == state.current {
            return Err(Error::FailedPrecondition(format!(
                "master key {version} is the current version: rotate to a new one first"
            )));
        }
        let status = self.scan_master_status()?;
        let using = status.keys_using.get(&version).copied().unwrap_or(0);
        if using > 0 {
            return Err(Error::FailedPrecondition(format!(
                "{using} keys still need master key {version}. Each moves to {} on its next successful \
                 verification; ListKeys with master_key_version={} lists them. Revoke those that will \
                 not be used again, then retire {version}",
                state.current, version.0
            )));
        }
        if wrap_retiring {
            Self::refuse_if_counted(wrap, &status)?;
        }
        let new = self.record_retired(caller, &state, Some(version), wrap_retiring.then_some(wrap), ctx).await?;
        // Recorded first: if destroying fails, retiring again finishes the job.
        self.deps.hsm.destroy_master_key(version).await?;
        if wrap_retiring {
            self.deps.hsm.destroy_wrap_key(wrap).await?;
        }
        tracing::info!(%version, wrap_key_destroyed = wrap_retiring, "master key retired");
        Ok(new)
    }

    fn refuse_if_counted(wrap: WrapKeyVersion, status: &MasterStatus) -> Result<()> {
        let using = status.secrets_using.get(&wrap).copied().unwrap_or(0);
        if using == 0 {
            return Ok(());
        }
        let progress = match &status.state.migration {
            Some(_) => "the re-wrap after the last rotation is still running; retire once it finishes",
            None => {
                "the re-wrap left them (a record the token would not unwrap, which the log names, or a key \
                 created as the rotation began); rotate again, or revoke them, then retire"
            }
        };
        Err(Error::FailedPrecondition(format!(
            "{using} signing keys' secrets are still wrapped under wrapping key {wrap}: {progress}"
        )))
    }

    /// Records master key `master` and wrapping key `wrap` as retired, audited.
    async fn record_retired(
        &self,
        caller: &Caller,
        state: &MasterState,
        master: Option<MasterKeyVersion>,
        wrap: Option<WrapKeyVersion>,
        ctx: &RequestContext,
    ) -> Result<MasterState> {
        let now = self.deps.clock.now();
        let mut new = state.clone();
        if let Some(v) = new.versions.iter_mut().find(|v| Some(v.version) == master) {
            v.retired_at = Some(now);
        }
        if let Some(w) = new.wrap_keys.iter_mut().find(|w| Some(w.version) == wrap) {
            w.retired_at = Some(now);
        }
        let reason = match (master, wrap) {
            (Some(m), Some(w)) => format!("master key {m} and signing secret wrapping key {w} destroyed in the HSM"),
            (Some(m), None) => format!("master key {m} destroyed in the HSM"),
            (None, Some(w)) => format!("signing secret wrapping key {w} destroyed in the HSM"),
            (None, None) => String::new(),
        };
        let event = AuditEvent {
            reason: Some(reason),
            ..master_event(now, Actor::Key(caller.key_id), AuditAction::MasterRetired, ctx)
        };
        self.deps.store.set_master(new.clone(), event).await?;
        self.view.set(new.clone());
        Ok(new)
    }
}

#[cfg(test)]
mod tests;
