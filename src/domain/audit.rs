//! Audit events: who did what to which key, when and from where. Written in the same
//! transaction as the change they describe. Never holds a secret.

use std::{fmt, time::SystemTime};

use super::key::KeyId;

/// Who acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An authenticated caller, named by its key id.
    Key(KeyId),
    /// keyward itself (e.g. `init`, a sweeper).
    System(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Key(id) => write!(f, "key:{id}"),
            Actor::System(name) => write!(f, "system:{name}"),
        }
    }
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    KeyCreated,
    KeyRevoked,
    KeyUpdated,
    KeyDisabled,
    KeyEnabled,
    /// RotateKey: the target is the old key; its successor has its own `KeyCreated`.
    KeyRotated,
    /// The sweeper ended a key that outlived its `max_age` and grace.
    KeyExpired,
    /// A new master key version became current.
    MasterRotated,
    /// The background re-digest under the current master key version finished.
    MasterMigrated,
    /// A master key version was removed from the HSM.
    MasterRetired,
}

impl AuditAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuditAction::KeyCreated => "key.created",
            AuditAction::KeyRevoked => "key.revoked",
            AuditAction::KeyUpdated => "key.updated",
            AuditAction::KeyDisabled => "key.disabled",
            AuditAction::KeyEnabled => "key.enabled",
            AuditAction::KeyRotated => "key.rotated",
            AuditAction::KeyExpired => "key.expired",
            AuditAction::MasterRotated => "master.rotated",
            AuditAction::MasterMigrated => "master.migrated",
            AuditAction::MasterRetired => "master.retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use AuditAction::*;
        [
            KeyCreated,
            KeyRevoked,
            KeyUpdated,
            KeyDisabled,
            KeyEnabled,
            KeyRotated,
            KeyExpired,
            MasterRotated,
            MasterMigrated,
            MasterRetired,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// One field an update changed, each value in a readable text form (never a secret: a key's
/// digest is not a field an update can touch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: SystemTime,
    pub actor: Actor,
    pub action: AuditAction,
    pub target: Option<KeyId>,
    /// The network address of the caller, as keyward saw it.
    pub client_addr: Option<String>,
    /// Free text from the request (a revocation reason, say).
    pub reason: Option<String>,
    /// For an update: each changed field, before and after.
    pub changes: Vec<FieldChange>,
}

/// An audit event as stored, with its place in the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub seq: u64,
    pub event: AuditEvent,
}
