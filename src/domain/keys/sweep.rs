//! The sweeper: ends keys that outlived their `max_age` and its grace (their `expires_at` is set
//! to that deadline, audited as `key.expired`), and disables keys unused for `inactive_after`
//! (the reaper, audited as `key.disabled`). Run periodically and by SweepKeys; idempotent: a
//! second run finds nothing left to do. Verification enforces the `max_age` deadline by itself;
//! the sweeper makes it visible in the record and the audit trail.

use std::time::{Duration, SystemTime};

use super::{KeyAdmin, key_event};
use crate::domain::{
    access::{Caller, Permission, RequestContext},
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    error::Result,
    key::{self, KeyRecord, KeyState},
    policy::RotationRules,
    ports::{Hsm, Store},
};

/// What a sweep did, or with `dry_run`, would do.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Keys ended for their age.
    pub expired: Vec<KeyRecord>,
    /// Keys disabled for disuse.
    pub disabled: Vec<KeyRecord>,
}

/// The `expires_at` the sweeper gives a key past its `max_age` and grace, if it needs one.
fn age_deadline(r: &KeyRecord, now: SystemTime, rules: &RotationRules) -> Option<SystemTime> {
    if r.state == KeyState::Revoked {
        return None;
    }
    let deadline = rules.max_age_deadline(r)?;
    (now >= deadline && r.expires_at.is_none_or(|at| at > deadline)).then_some(deadline)
}

/// When the key was last used or touched: its last use (`pending`: not yet written), its
/// creation, or the last admin change (so a key just enabled again is not reaped at once).
fn last_activity(r: &KeyRecord, pending: Option<SystemTime>) -> SystemTime {
    [Some(r.created_at), r.usage.last_used_at, r.updated_at, pending]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(r.created_at)
}

/// Whether the reaper disables this key: active, not the root key, not already ended, and
/// unused for `after`.
fn reapable(
    r: &KeyRecord,
    now: SystemTime,
    pending: Option<SystemTime>,
    after: Duration,
    rules: &RotationRules,
) -> bool {
    let ended = r.expires_at.is_some_and(|at| now >= at) || rules.deadline(r).is_some_and(|at| now >= at);
    r.state == KeyState::Active
        && r.created_by.is_some()
        && !ended
        && last_activity(r, pending).checked_add(after).is_some_and(|at| now >= at)
}

impl<H: Hsm, S: Store> KeyAdmin<H, S> {
    /// SweepKeys: the sweep, on a caller's request (`keyward:keys:update`; a dry run, which
    /// only lists, `keyward:keys:read`).
    pub async fn sweep_as(&self, caller: &Caller, dry_run: bool, ctx: &RequestContext) -> Result<SweepReport> {
        self.access.authorize(caller, if dry_run { Permission::KeysRead } else { Permission::KeysUpdate })?;
        self.sweep(Actor::Key(caller.key_id), dry_run, ctx).await
    }

    /// One pass over every key. Each change is decided again inside its write, so a key used or
    /// changed since the scan is left alone.
    pub async fn sweep(&self, actor: Actor, dry_run: bool, ctx: &RequestContext) -> Result<SweepReport> {
        let now = self.deps.clock.now();
        let rules = self.rotation.rules;
        let inactive_after = self.rotation.inactive_after;
        let mut report = SweepReport::default();
        let mut expire = Vec::new();
        let mut reap = Vec::new();
        for record in self.deps.store.scan_keys(None) {
            let record = record?;
            if age_deadline(&record, now, &rules).is_some() {
                expire.push(record);
            } else if inactive_after
                .is_some_and(|after| reapable(&record, now, self.ledger.pending_use(record.id), after, &rules))
            {
                reap.push(record);
            }
        }
        if dry_run {
            report.expired = expire.into_iter().map(|r| self.view(r)).collect();
            report.disabled = reap.into_iter().map(|r| self.view(r)).collect();
            return Ok(report);
        }
        for record in expire {
            let id = record.id;
            let base = key_event(now, actor.clone(), AuditAction::KeyExpired, id, ctx, None);
            let updated = self
                .deps
                .store
                .update_key(id, move |current| {
                    let Some(deadline) = age_deadline(current, now, &rules) else { return Ok(None) };
                    let age = current.max_age.map(key::duration_text).unwrap_or_default();
                    let mut next = current.clone();
                    next.expires_at = Some(deadline);
                    next.updated_at = Some(now);
                    let event = AuditEvent {
                        reason: Some(format!("older than its max_age ({age}) and the grace after it")),
                        changes: vec![FieldChange {
                            field: "expires_at".into(),
                            before: current
                                .expires_at
                                .map_or("none".into(), |t| humantime::format_rfc3339_nanos(t).to_string()),
                            after: humantime::format_rfc3339_nanos(deadline).to_string(),
                        }],
                        ..base.clone()
                    };
                    Ok(Some((next, Some(event))))
                })
                .await?;
            if updated.before != updated.after {
                tracing::info!(key_id = %id, "sweeper: key expired for its age");
                report.expired.push(self.view(updated.after));
            }
        }
        let Some(after) = inactive_after else { return Ok(report) };
        let unused = key::duration_text(after);
        for record in reap {
            let id = record.id;
            let reason = format!("unused for {unused}");
            let event = key_event(now, actor.clone(), AuditAction::KeyDisabled, id, ctx, Some(reason.clone()));
            // Held while deciding and writing, so a use is either still in memory or already in
            // the record the transaction reads, never in between (in a flush).
            let _flushing = self.ledger.hold_usage().await;
            let pending = self.ledger.pending_use(id);
            let updated = self
                .deps
                .store
                .update_key(id, move |current| {
                    if !reapable(current, now, pending, after, &rules) {
                        return Ok(None);
                    }
                    let mut next = current.clone();
                    next.state = KeyState::Disabled;
                    next.disabled_at = Some(now);
                    next.disable_reason = Some(reason.clone());
                    next.updated_at = Some(now);
                    Ok(Some((next, Some(event.clone()))))
                })
                .await?;
            if updated.before != updated.after {
                tracing::info!(key_id = %id, "reaper: unused key disabled");
                report.disabled.push(self.view(updated.after));
            }
        }
        Ok(report)
    }
}
