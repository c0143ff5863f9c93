//! Master key rotation. `rotate_master` makes version N+1 in the HSM and makes it current: new
//! digests use it at once. keyward never holds a key's secret, so it cannot recompute an old
//! digest under N+1; instead a background job *wraps* every old digest under N+1 (one HSM
//! operation per key, resumable from a checkpoint after a crash), and each key's next successful
//! verification replaces its digest with a plain one under N+1 (lazy migration). A version is
//! retired (destroyed in the HSM) only once no live key's digest needs it.

use std::{collections::BTreeMap, time::SystemTime};

use super::{
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    error::{Error, Result},
    key::{Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion},
    ports::{DigestSwap, Hsm, MasterState, MasterVersion, Migration, Store},
    scope,
    service::{Caller, Keys, Permission, RequestContext, self_test_input},
};

/// The master key state with what the keys need of it.
#[derive(Clone, Debug)]
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
}

/// Whether a key's digest still matters: not revoked, and not a rotated key past its overlap
/// (neither can ever verify again).
fn digest_needed(r: &KeyRecord, now: SystemTime) -> bool {
    match r.state {
        KeyState::Revoked => false,
        KeyState::Rotated => r.rotation_deadline.is_none_or(|at| now < at),
        KeyState::Active | KeyState::Disabled => true,
    }
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

impl<H: Hsm, S: Store> Keys<H, S> {
    /// Needs `keyward:master:read` (or `keyward:master:rotate`, which reads what it changes).
    /// Counting reads every key record; without it the counts are zero.
    pub fn master_status(&self, caller: &Caller, count: bool) -> Result<MasterStatus> {
        if !scope::any_grants(&caller.scopes, Permission::MasterRotate.scope()) {
            self.authorize(caller, Permission::MasterRead)?;
        }
        if count {
            self.scan_master_status()
        } else {
            let state = self.master_state();
            Ok(MasterStatus { state, keys_using: BTreeMap::new(), keys_not_plain: 0, keys_pending: 0 })
        }
    }

    fn scan_master_status(&self) -> Result<MasterStatus> {
        let state = self.master_state();
        let mut status = MasterStatus { keys_using: BTreeMap::new(), keys_not_plain: 0, keys_pending: 0, state };
        for v in status.state.live() {
            status.keys_using.insert(v.version, 0);
        }
        let now = self.clock.now();
        for record in self.store.scan_keys(None) {
            let record = record?;
            if !digest_needed(&record, now) {
                continue;
            }
            for v in record.digest.versions() {
                *status.keys_using.entry(v).or_default() += 1;
            }
            status.keys_not_plain += u64::from(!record.digest.is_plain_under(status.state.current));
            status.keys_pending += u64::from(record.digest.version != status.state.current);
        }
        Ok(status)
    }

    /// Makes master key version N+1 in the HSM and current, and starts the background
    /// re-digest. Refused while a previous rotation's re-digest is still running.
    pub async fn rotate_master(&self, caller: &Caller, ctx: &RequestContext) -> Result<MasterState> {
        self.authorize(caller, Permission::MasterRotate)?;
        let _ops = self.master_ops.lock().await;
        let state = self.master_state();
        if let Some(m) = &state.migration {
            return Err(Error::FailedPrecondition(format!(
                "the re-digest under master key {} is still running ({} keys done); rotate again once it finishes",
                m.to, m.wrapped
            )));
        }
        let previous = state.current;
        let next = MasterKeyVersion(state.versions.iter().map(|v| v.version.0).max().unwrap_or(0) + 1);
        self.hsm.create_master_key(next).await?;
        let self_test = self.hsm.digest(next, self_test_input()).await?;
        let now = self.clock.now();
        let mut new = state.clone();
        new.current = next;
        new.versions.push(MasterVersion { version: next, created_at: now, retired_at: None, self_test });
        new.migration = Some(Migration { to: next, started_at: now, after: None, wrapped: 0 });
        let event = AuditEvent {
            changes: vec![FieldChange {
                field: "current_version".into(),
                before: previous.to_string(),
                after: next.to_string(),
            }],
            ..master_event(now, Actor::Key(caller.key_id), AuditAction::MasterRotated, ctx)
        };
        self.store.set_master(new.clone(), event).await?;
        self.set_master_state(new.clone());
        self.migration_wake.notify_one();
        tracing::info!(from = %previous, to = %next, "master key rotated; re-digesting keys in the background");
        Ok(new)
    }

    /// Destroys master key `version` in the HSM, once no live key's digest needs it. Retiring a
    /// retired version again only makes sure it is gone from the token.
    pub async fn retire_master(
        &self,
        caller: &Caller,
        version: MasterKeyVersion,
        ctx: &RequestContext,
    ) -> Result<MasterState> {
        self.authorize(caller, Permission::MasterRotate)?;
        let _ops = self.master_ops.lock().await;
        let state = self.master_state();
        let Some(found) = state.version(version) else {
            return Err(Error::NotFound(format!("master key {version}")));
        };
        if found.retired_at.is_some() {
            self.hsm.destroy_master_key(version).await?;
            return Ok(state);
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
        let now = self.clock.now();
        let mut new = state.clone();
        if let Some(v) = new.versions.iter_mut().find(|v| v.version == version) {
            v.retired_at = Some(now);
        }
        let event = AuditEvent {
            reason: Some(format!("master key {version} destroyed in the HSM")),
            ..master_event(now, Actor::Key(caller.key_id), AuditAction::MasterRetired, ctx)
        };
        self.store.set_master(new.clone(), event).await?;
        self.set_master_state(new.clone());
        // Recorded first: if destroying fails, retiring again finishes the job.
        self.hsm.destroy_master_key(version).await?;
        tracing::info!(%version, "master key retired");
        Ok(new)
    }

    /// The background re-digest: runs while a migration is recorded (so it resumes after a
    /// restart), then waits for the next rotation. Never returns.
    pub async fn run_migrations(&self) {
        loop {
            if self.master_state().migration.is_none() {
                self.migration_wake.notified().await;
                continue;
            }
            match self.migrate_batch().await {
                Ok(true) if !self.config.migration.pause.is_zero() => {
                    tokio::time::sleep(self.config.migration.pause).await
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "master key re-digest batch failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Wraps the next batch of digests under the migration's version and records them with the
    /// checkpoint in one transaction. Returns whether keys remain.
    pub async fn migrate_batch(&self) -> Result<bool> {
        let Some(migration) = self.master_state().migration else { return Ok(false) };
        let to = migration.to;
        let batch_size = self.config.migration.batch.max(1);
        let mut todo: Vec<(KeyId, Digest)> = Vec::new();
        let mut last = migration.after;
        let mut scanned = 0;
        let now = self.clock.now();
        for record in self.store.scan_keys(migration.after).take(batch_size) {
            let record = record?;
            scanned += 1;
            last = Some(record.id);
            if digest_needed(&record, now) && record.digest.version != to {
                todo.push((record.id, record.digest));
            }
        }
        let done = scanned < batch_size;
        let swaps = self.wrap_all(todo, to).await?;

        let _ops = self.master_ops.lock().await;
        let mut state = self.master_state();
        if state.migration.as_ref().map(|m| (m.to, m.after)) != Some((to, migration.after)) {
            return Ok(true); // Changed under us; start again from the recorded checkpoint.
        }
        let wrapped = migration.wrapped + swaps.len() as u64;
        let now = self.clock.now();
        let event = done.then(|| {
            let took = now.duration_since(migration.started_at).unwrap_or_default();
            AuditEvent {
                reason: Some(format!(
                    "{wrapped} keys re-digested under master key {to} in {}",
                    humantime::format_duration(std::time::Duration::from_millis(took.as_millis() as u64))
                )),
                ..master_event(
                    now,
                    Actor::System("migration".into()),
                    AuditAction::MasterMigrated,
                    &RequestContext::default(),
                )
            }
        });
        state.migration = (!done).then_some(Migration { after: last, wrapped, ..migration });
        self.store.replace_digests(swaps, Some((state.clone(), event))).await?;
        self.set_master_state(state);
        if done {
            tracing::info!(%to, wrapped, "master key re-digest finished");
        }
        Ok(!done)
    }

    /// Each digest wrapped under `to`, at most `migration.concurrency` HSM calls at a time.
    async fn wrap_all(&self, todo: Vec<(KeyId, Digest)>, to: MasterKeyVersion) -> Result<Vec<DigestSwap>> {
        let limit = self.config.migration.concurrency.max(1);
        let mut running = tokio::task::JoinSet::new();
        let mut swaps = Vec::with_capacity(todo.len());
        let joined = |r: std::result::Result<Result<DigestSwap>, tokio::task::JoinError>| {
            r.map_err(|e| Error::Unavailable(format!("re-digest task: {e}")))?
        };
        for (id, expected) in todo {
            if running.len() >= limit
                && let Some(r) = running.join_next().await
            {
                swaps.push(joined(r)?);
            }
            let hsm = self.hsm.clone();
            running.spawn(async move {
                let new = hsm.wrap(&expected, to).await?;
                Ok(DigestSwap { id, expected, new })
            });
        }
        while let Some(r) = running.join_next().await {
            swaps.push(joined(r)?);
        }
        Ok(swaps)
    }
}
