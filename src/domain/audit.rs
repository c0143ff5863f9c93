//! Audit events: who did what to which key, when and from where. Written in the same
//! transaction as the change they describe. Never holds a secret.

use std::{fmt, time::SystemTime};

use super::key::KeyId;

/// Domain separation for the audit chain's MACs.
pub const CHAIN_CONTEXT: &[u8] = b"keyward/v1/audit-chain\0";

/// What the HSM MACs for audit event `seq`: context ‖ the previous event's MAC (zeros for the
/// first) ‖ `seq` (big-endian) ‖ the event as stored. Editing, deleting, reordering or inserting
/// an event breaks the MAC of that event or of the one after it.
pub fn chain_message(prev_mac: &[u8; 32], seq: u64, event_bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHAIN_CONTEXT.len() + 32 + 8 + event_bytes.len());
    m.extend_from_slice(CHAIN_CONTEXT);
    m.extend_from_slice(prev_mac);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(event_bytes);
    m
}

/// The result of checking the chain over a range of sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// The range checked (0 when the trail is empty).
    pub first: u64,
    pub last: u64,
    /// Events whose MAC the HSM confirmed.
    pub checked: u64,
    /// Events written before the chain existed (no MAC): not checkable.
    pub unsealed: u64,
    /// The first problem: its sequence number and what is wrong.
    pub broken: Option<(u64, String)>,
}

/// Filters of an audit query, all optional and combined with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub key: Option<KeyId>,
    pub actor: Option<Actor>,
    pub action: Option<AuditAction>,
    pub code: Option<String>,
    pub since: Option<SystemTime>,
    /// Exclusive.
    pub until: Option<SystemTime>,
    pub newest_first: bool,
}

impl AuditQuery {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.key.is_none_or(|k| e.target == Some(k))
            && self.actor.as_ref().is_none_or(|a| &e.actor == a)
            && self.action.is_none_or(|a| e.action == a)
            && self.code.as_ref().is_none_or(|c| e.code.as_ref() == Some(c))
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
    }
}

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
    /// Usage records were dropped (the usage log could not keep up); the reason says how many.
    UsageDropped,
    /// Calls refused for a bad credential or a missing permission, counted per source over a
    /// short interval: the reason says how many and why, the code which status they got.
    AuthFailed,
    /// ReportLeak revoked a key found exposed; the reason is where it was found.
    KeyLeaked,
    /// The anomaly detector found unusual use of a key: the code is the kind (`NEW_NETWORKS`,
    /// …), the reason the evidence; a state change if the key's policy disabled it.
    KeyAnomaly,
    /// A console session began: the actor (and target) is the key signed in with, the client
    /// address the browser's. Refused sign-ins are `AuthFailed`, counted like refused calls.
    ConsoleSignIn,
    /// A console session was ended by its key (signing out); sessions that time out are not events.
    ConsoleSignOut,
}

impl AuditAction {
    pub const ALL: [AuditAction; 16] = [
        AuditAction::KeyCreated,
        AuditAction::KeyRevoked,
        AuditAction::KeyUpdated,
        AuditAction::KeyDisabled,
        AuditAction::KeyEnabled,
        AuditAction::KeyRotated,
        AuditAction::KeyExpired,
        AuditAction::MasterRotated,
        AuditAction::MasterMigrated,
        AuditAction::MasterRetired,
        AuditAction::UsageDropped,
        AuditAction::AuthFailed,
        AuditAction::KeyLeaked,
        AuditAction::KeyAnomaly,
        AuditAction::ConsoleSignIn,
        AuditAction::ConsoleSignOut,
    ];

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
            AuditAction::UsageDropped => "usage.dropped",
            AuditAction::AuthFailed => "auth.failed",
            AuditAction::KeyLeaked => "key.leaked",
            AuditAction::KeyAnomaly => "key.anomaly",
            AuditAction::ConsoleSignIn => "console.sign_in",
            AuditAction::ConsoleSignOut => "console.sign_out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
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
    /// For an event about refused calls: the status they got (`UNAUTHENTICATED`, …).
    pub code: Option<String>,
}

/// An audit event as stored, with its place in the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub seq: u64,
    pub event: AuditEvent,
    /// Its chain MAC (`None` for an event from before the chain).
    pub mac: Option<[u8; 32]>,
    /// Cluster mode: the node that sealed it (`None` on a single node).
    pub node: Option<String>,
}
