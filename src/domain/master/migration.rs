//! The background re-digest after a master key rotation: every digest not under the new
//! version is wrapped under it, and every signing secret not under the newest wrapping key is
//! re-wrapped under it inside the HSM, a batch per transaction with a checkpoint, so that the
//! job resumes after a restart.

use super::{MasterKeys, digest_needed, master_event};
use crate::domain::{
    access::RequestContext,
    audit::{Actor, AuditAction, AuditEvent},
    error::{Error, Result},
    key::{Digest, KeyId, MasterKeyVersion},
    ports::{DigestSwap, Hsm, HsmError, Migration, SecretSwap, Store},
    signing::{WrapKeyVersion, WrappedSecret},
};

/// One key's work: its digest to wrap under the new master key, its signing secret to re-wrap
/// under the newest wrapping key (either may be already done).
struct Todo {
    id: KeyId,
    digest: Digest,
    redigest: bool,
    secret: Option<WrappedSecret>,
}

impl<H: Hsm, S: Store> MasterKeys<H, S> {
    /// The background re-digest: runs while a migration is recorded (so it resumes after a
    /// restart), then waits for the next rotation. Never returns.
    pub async fn run_migrations(&self) {
        loop {
            if self.master_state().migration.is_none() {
                self.migration_wake.notified().await;
                continue;
            }
            match self.migrate_batch().await {
                Ok(true) if !self.migration.pause.is_zero() => tokio::time::sleep(self.migration.pause).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "master key re-digest batch failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Wraps the next batch of digests under the migration's version, and re-wraps the batch's
    /// signing secrets under the newest wrapping key, and records them with the checkpoint in
    /// one transaction. Returns whether keys remain.
    pub async fn migrate_batch(&self) -> Result<bool> {
        let state = self.master_state();
        let wrap_to = state.wrap_current();
        let Some(migration) = state.migration else { return Ok(false) };
        let to = migration.to;
        let batch_size = self.migration.batch.max(1);
        let mut todo: Vec<Todo> = Vec::new();
        let mut last = migration.after;
        let mut scanned = 0;
        let now = self.deps.clock.now();
        for record in self.deps.store.scan_keys(migration.after).take(batch_size) {
            let record = record?;
            scanned += 1;
            last = Some(record.id);
            if !digest_needed(&record, now) {
                continue;
            }
            let redigest = record.digest.version != to;
            let secret = record.signing.filter(|w| w.version != wrap_to);
            if redigest || secret.is_some() {
                todo.push(Todo { id: record.id, digest: record.digest, redigest, secret });
            }
        }
        let done = scanned < batch_size;
        let swaps = self.wrap_all(todo, to, wrap_to).await?;

        let _ops = self.ops.lock().await;
        let mut state = self.master_state();
        if state.migration.as_ref().map(|m| (m.to, m.after)) != Some((to, migration.after)) {
            return Ok(true); // Changed under us; start again from the recorded checkpoint.
        }
        let wrapped = migration.wrapped + swaps.iter().filter(|s| s.new != s.expected).count() as u64;
        let rewrapped = migration.rewrapped + swaps.iter().filter(|s| s.secret.is_some()).count() as u64;
        let now = self.deps.clock.now();
        let event = done.then(|| {
            let took = now.duration_since(migration.started_at).unwrap_or_default();
            AuditEvent {
                reason: Some(format!(
                    "{wrapped} keys re-digested under master key {to} and {rewrapped} signing secrets re-wrapped \
                     under wrapping key {wrap_to} in {}",
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
        state.migration = (!done).then_some(Migration { after: last, wrapped, rewrapped, ..migration });
        self.deps.store.replace_digests(swaps, Some((state.clone(), event))).await?;
        self.view.set(state);
        if done {
            tracing::info!(%to, wrapped, rewrapped, "master key re-digest and signing secret re-wrap finished");
        }
        Ok(!done)
    }

    /// Each digest wrapped under `to` and each secret re-wrapped under `wrap_to`, at most
    /// `migration.concurrency` keys at a time.
    async fn wrap_all(
        &self,
        todo: Vec<Todo>,
        to: MasterKeyVersion,
        wrap_to: WrapKeyVersion,
    ) -> Result<Vec<DigestSwap>> {
        let limit = self.migration.concurrency.max(1);
        let mut running = tokio::task::JoinSet::new();
        let mut swaps = Vec::with_capacity(todo.len());
        let joined = |r: std::result::Result<Result<DigestSwap>, tokio::task::JoinError>| {
            r.map_err(|e| Error::Unavailable(format!("re-digest task: {e}")))?
        };
        for Todo { id, digest: expected, redigest, secret } in todo {
            if running.len() >= limit
                && let Some(r) = running.join_next().await
            {
                swaps.push(joined(r)?);
            }
            let hsm = self.deps.hsm.clone();
            running.spawn(async move {
                let new = if redigest { hsm.wrap(&expected, to).await? } else { expected.clone() };
                let secret = match secret {
                    None => None,
                    Some(old) => match hsm.rewrap(&old, wrap_to).await {
                        Ok(new) => Some(SecretSwap { new, expected: old }),
                        // The token refused this blob (a damaged record): left as it is, so
                        // that one record cannot stall the job; it keeps the old wrapping key
                        // from being retired until it is revoked.
                        Err(HsmError::Failed(e)) => {
                            tracing::warn!(key_id = %id, from = %old.version, to = %wrap_to, error = %e,
                                "a signing secret could not be re-wrapped; left under its wrapping key");
                            None
                        }
                        Err(e) => return Err(e.into()),
                    },
                };
                Ok(DigestSwap { id, expected, new, secret })
            });
        }
        while let Some(r) = running.join_next().await {
            swaps.push(joined(r)?);
        }
        Ok(swaps)
    }
}
