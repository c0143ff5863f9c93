//! Leak reports: a secret scanner presents a key it found exposed, and keyward revokes it on
//! sight, audited (`key.leaked`) with where it was found, in the same transaction. The caller
//! needs only `keyward:leaks:report`, which grants nothing else: it cannot read, list or
//! verify keys, and learns nothing about a key it does not already hold in full.

use std::time::SystemTime;

use super::{KeyAdmin, key_event};
use crate::domain::{
    access::{Caller, Permission, RequestContext},
    audit::{Actor, AuditAction},
    error::{Error, Result},
    key::{KeyId, KeyState},
    key_format,
    ports::{Hsm, Store},
    validate,
};

/// What a leak report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakReport {
    pub key_id: KeyId,
    /// The key was revoked before this report (by RevokeKey or an earlier report): nothing was
    /// changed or audited.
    pub already_revoked: bool,
    pub revoked_at: Option<SystemTime>,
}

/// The one answer for a key that is not genuine: malformed, unknown, or a wrong secret. As with
/// VerifyKey's `INVALID`, nothing says which.
fn not_genuine() -> Error {
    Error::NotFound("key (malformed, unknown, or not a genuine keyward key)".into())
}

impl<H: Hsm, S: Store> KeyAdmin<H, S> {
    /// Revokes `key`, the full key string found exposed at `source_url`, once the HSM confirms
    /// it is genuine. Reporting a revoked key succeeds and changes nothing. A rotated key is
    /// revoked too; its successor (a different secret) is left alone.
    pub async fn report_leak(
        &self,
        caller: &Caller,
        key: &str,
        source_url: &str,
        ctx: &RequestContext,
    ) -> Result<LeakReport> {
        self.access.authorize(caller, Permission::LeaksReport)?;
        if key.trim().is_empty() {
            return Err(Error::invalid("key", "is required: the full key string that was found"));
        }
        let source_url = validate::source_url(source_url)?;
        let parsed = key_format::parse(key.trim()).ok_or_else(not_genuine)?;
        let Some(record) = self.deps.store.get_key(parsed.key_id)? else {
            // An unknown id costs what a wrong secret costs.
            self.prover.unknown_key(&parsed).await?;
            return Err(not_genuine());
        };
        if !self.prover.prove(&parsed, &record).await? {
            return Err(not_genuine());
        }
        let id = record.id;
        let now = self.deps.clock.now();
        let reason = format!("leaked: {source_url}");
        let event =
            key_event(now, Actor::Key(caller.key_id), AuditAction::KeyLeaked, id, ctx, Some(source_url.clone()));
        let updated = self
            .deps
            .store
            .update_key(id, move |current| {
                if current.state == KeyState::Revoked {
                    return Ok(None);
                }
                let mut revoked = current.clone();
                revoked.state = KeyState::Revoked;
                revoked.revoked_at = Some(now);
                revoked.revoke_reason = Some(reason.clone());
                revoked.updated_at = Some(now);
                Ok(Some((revoked, Some(event.clone()))))
            })
            .await?;
        let already_revoked = updated.before.state == KeyState::Revoked;
        if already_revoked {
            tracing::info!(key_id = %id, actor = %caller.key_id, source_url, "leak reported for a key already revoked");
        } else {
            tracing::warn!(key_id = %id, actor = %caller.key_id, source_url, "leaked key revoked");
        }
        Ok(LeakReport { key_id: id, already_revoked, revoked_at: updated.after.revoked_at })
    }
}
