//! Client key rotation: RotateKey makes a successor with a new secret (a signing key: also a new
//! signing secret) and the old key's name,
//! scopes, policies, metadata and owner; the old key keeps verifying (with `rotation_pending`) until
//! its grace period ends. A key may rotate itself with `keyward:self:rotate`.

use std::time::{Duration, SystemTime};

use super::{KeyAdmin, key_event};
use crate::domain::{
    access::{self, Caller, Permission, RequestContext},
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    error::{Error, Result},
    key::{Digest, KeyId, KeyRecord, KeyState},
    key_format,
    ownership::Reach,
    ports::{Hsm, Store},
    proof::key_digest_input,
    quota, scope,
    secret::{KeyString, Secret},
    validate,
};

#[derive(Debug)]
pub struct RotatedKey {
    /// The successor's full key: returned once, kept nowhere.
    pub key: KeyString,
    pub record: KeyRecord,
    /// The old key, now `Rotated`.
    pub previous: KeyRecord,
    /// A signing key's successor's new secret: returned once, kept only wrapped by the HSM.
    pub signing_secret: Option<Secret>,
}

/// The successor of `old`: same name, prefix, scopes, policies and metadata; a new id, digest
/// and creation time. An expiry keeps the old key's lifetime, counted from now; a `not_before`
/// already past is dropped.
fn successor(old: &KeyRecord, id: KeyId, digest: Digest, by: KeyId, now: SystemTime) -> KeyRecord {
    let mut new = KeyRecord::new(id, old.name.clone(), old.prefix.clone(), old.scopes.clone(), now, digest);
    new.expires_at = old.expires_at.map(|at| now + at.duration_since(old.created_at).unwrap_or_default());
    new.metadata = old.metadata.clone();
    new.created_by = Some(by);
    new.allowed_cidrs = old.allowed_cidrs.clone();
    new.not_before = old.not_before.filter(|at| *at > now);
    new.rate_limit = old.rate_limit;
    new.quota = old.quota;
    new.max_age = old.max_age;
    new.rotated_from = Some(old.id);
    new.owner = old.owner.clone();
    new
}

impl<H: Hsm, S: Store> KeyAdmin<H, S> {
    /// Rotates key `key_id` (empty: the caller's own key). The old key verifies until
    /// `grace` (default: the configured one) has passed, then is expired.
    pub async fn rotate(
        &self,
        caller: &Caller,
        key_id: &str,
        grace: Option<Duration>,
        ctx: &RequestContext,
    ) -> Result<RotatedKey> {
        let id = if key_id.is_empty() { caller.key_id } else { validate::key_id("key_id", key_id)? };
        let own = id == caller.key_id && scope::any_grants(&caller.scopes, Permission::SelfRotate.scope());
        let reach = Reach::of(&caller.scopes, Permission::KeysRotate);
        if !own && reach.is_none() {
            self.access.denied(caller, Permission::KeysRotate.scope());
            return Err(Error::PermissionDenied(format!(
                "this call needs the `{}` permission, or `{}` to rotate the caller's own key",
                Permission::KeysRotate.scope(),
                Permission::SelfRotate.scope()
            )));
        }
        let grace = validate::grace_period(grace.unwrap_or(self.rotation.default_grace))?;
        if !own {
            self.check_reach(caller, &reach, Permission::KeysRotate, id)?;
        }
        let now = self.deps.clock.now();
        let new_id = KeyId::new_v7();
        let secret = self.deps.hsm.random_secret().await?;
        let digest = self.deps.hsm.digest(self.master.current(), key_digest_input(new_id, &secret)).await?;
        // A signing key's successor signs with a new secret. A key's kind never changes, so the
        // record read here tells it (the transaction below reads the key again for the rest).
        let is_signing = self.deps.store.get_key(id)?.is_some_and(|k| k.signing.is_some());
        let (signing_secret, wrapped) = if is_signing {
            let (secret, wrapped) = self.deps.hsm.new_signing_secret(self.master.wrap_current()).await?;
            (Some(secret), Some(wrapped))
        } else {
            (None, None)
        };
        let actor = Actor::Key(caller.key_id);
        let rotated = key_event(now, actor.clone(), AuditAction::KeyRotated, id, ctx, None);
        let created = key_event(now, actor, AuditAction::KeyCreated, new_id, ctx, Some(format!("rotated from {id}")));
        let caller = caller.clone();
        let deadline = now + grace;
        // The successor takes over the uses left, as this node sees them: fold its lease on the
        // old key back into the stored count first (as UpdateKey does for a quota change).
        // (Without an account here, this node holds no lease on the key.)
        let gate = self.ledger.existing_gate(id);
        let _reserving = match &gate {
            Some(g) => Some(g.reserving.lock().await),
            None => None,
        };
        let returned = gate.as_ref().and_then(|g| g.account().lease.take());
        let rotation = self
            .deps
            .store
            .rotate_key(id, move |stored| {
                if !own {
                    reach.check_key(stored)?;
                }
                let mut old = stored.clone();
                old.quota = quota::settle(stored.quota, returned, now);
                let old = &old;
                match old.state {
                    KeyState::Active => {}
                    KeyState::Revoked => return Err(Error::FailedPrecondition(format!("key {id} is revoked"))),
                    KeyState::Disabled => {
                        return Err(Error::FailedPrecondition(format!(
                            "key {id} is disabled: enable it first, or revoke it and create a new key"
                        )));
                    }
                    KeyState::Rotated => {
                        let to = old.rotated_to.map(|t| t.to_string()).unwrap_or_default();
                        return Err(Error::FailedPrecondition(format!("key {id} was already rotated to {to}")));
                    }
                }
                if !own {
                    // The successor holds the old key's scopes: an admin may only pass on
                    // keyward permissions it holds itself.
                    access::check_escalation(&caller, &old.scopes)?;
                }
                let mut new = successor(old, new_id, digest.clone(), caller.key_id, now);
                new.signing = wrapped.clone().filter(|_| old.signing.is_some());
                let mut after = old.clone();
                after.state = KeyState::Rotated;
                after.rotated_to = Some(new_id);
                after.rotated_at = Some(now);
                after.rotation_deadline = Some(deadline);
                after.updated_at = Some(now);
                let changes = vec![
                    FieldChange { field: "state".into(), before: "active".into(), after: "rotated".into() },
                    FieldChange { field: "rotated_to".into(), before: "none".into(), after: new_id.to_string() },
                    FieldChange {
                        field: "rotation_deadline".into(),
                        before: "none".into(),
                        after: humantime::format_rfc3339_nanos(deadline).to_string(),
                    },
                ];
                let events = vec![AuditEvent { changes, ..rotated.clone() }, created.clone()];
                Ok((after, new, events))
            })
            .await;
        if let Some(g) = &gate {
            let mut account = g.account();
            match &rotation {
                // Refused inside the transaction: nothing was written, the lease still holds.
                Err(e) if !matches!(e, Error::Unavailable(_)) => account.lease = returned,
                // Folded back, or the write's fate is unknown: give it up, never spend it twice.
                _ => *account = Default::default(),
            }
        }
        let (updated, mut new) = rotation?;
        self.catch_up_with_rotation(&mut new, &secret).await;
        let key = key_format::render(&new.prefix, new.id, &secret);
        Ok(RotatedKey { key, record: self.view(new), previous: self.view(updated.after), signing_secret })
    }
}
