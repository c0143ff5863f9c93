//! The ports: what the domain needs from the outside world (an HSM, a store), as traits the
//! adapters in `crate::hsm` and `crate::store` implement.

use std::{future::Future, time::SystemTime};

use super::{
    audit::{AuditEvent, AuditQuery, ChainReport, RecordedEvent},
    cluster::ClusterStatus,
    error::Error,
    key::{Digest, KeyId, KeyRecord, MasterKeyVersion},
    key_index::KeyIndex,
    secret::{Secret, SensitiveBytes},
    signing::{FIRST_WRAP_KEY, WrapKeyVersion, WrappedSecret},
    usage::UsageDelta,
    usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HsmError {
    /// The token cannot be reached (removed, session lost, not logged in): retry later.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// The HSM refused the operation for a reason retrying will not fix.
    #[error("HSM operation failed: {0}")]
    Failed(String),
    /// The token's contents forbid the operation (say, a master key that is not safe to use).
    #[error("{0}")]
    Refused(String),
}

/// The HSM holding the master keys. Every call may block on the device, so adapters run
/// them off the async workers.
pub trait Hsm: Send + Sync + 'static {
    /// 32 bytes from the HSM's random number generator.
    fn random_secret(&self) -> impl Future<Output = Result<Secret, HsmError>> + Send;
    /// HMAC-SHA256 of `input` under master key `version`, computed inside the HSM.
    fn digest(
        &self,
        version: MasterKeyVersion,
        input: SensitiveBytes,
    ) -> impl Future<Output = Result<Digest, HsmError>> + Send;
    /// Whether `digest` is the HMAC of `input` under the digest's master key version; the
    /// comparison happens inside the HSM (`C_Verify`). A wrapped digest (see `Digest`) is
    /// checked by recomputing its inner MACs in the HSM, innermost first, then `C_Verify`.
    fn verify(&self, input: SensitiveBytes, digest: &Digest) -> impl Future<Output = Result<bool, HsmError>> + Send;
    /// `digest` wrapped under master key `version`: HMAC of `WRAP_CONTEXT ‖ digest.mac`.
    fn wrap(&self, digest: &Digest, version: MasterKeyVersion)
    -> impl Future<Output = Result<Digest, HsmError>> + Send;
    /// Generates master key `version` inside the token (sensitive, never extractable). A key of
    /// that version already there is adopted only if the token generated it and it never left
    /// (a rotation that stopped before it was recorded); otherwise `Refused`.
    fn create_master_key(&self, version: MasterKeyVersion) -> impl Future<Output = Result<(), HsmError>> + Send;
    /// Destroys master key `version` on the token; a version already gone is not an error.
    fn destroy_master_key(&self, version: MasterKeyVersion) -> impl Future<Output = Result<(), HsmError>> + Send;
    /// A new signing secret: 32 bytes from the HSM's random number generator, imported as a
    /// session object, wrapped under wrapping key `version`, then destroyed on the token. The
    /// clear secret is returned once, to hand to the client; keyward keeps only the wrapped blob.
    fn new_signing_secret(
        &self,
        version: WrapKeyVersion,
    ) -> impl Future<Output = Result<(Secret, WrappedSecret), HsmError>> + Send;
    /// Generates wrapping key `version` inside the token (AES-256, sensitive, never extractable,
    /// wrap and unwrap only). One already there is adopted only if keyward could have made it
    /// (generated in the token, never extractable, wrap and unwrap only); otherwise `Refused`.
    fn create_wrap_key(&self, version: WrapKeyVersion) -> impl Future<Output = Result<(), HsmError>> + Send;
    /// Destroys wrapping key `version` on the token; a version already gone is not an error.
    fn destroy_wrap_key(&self, version: WrapKeyVersion) -> impl Future<Output = Result<(), HsmError>> + Send;
    /// The same signing secret wrapped under wrapping key `to`, without it ever leaving the HSM
    /// in clear: unwrapped into a sensitive session object (extractable only so that it can be
    /// wrapped again), wrapped under `to`, destroyed.
    fn rewrap(
        &self,
        wrapped: &WrappedSecret,
        to: WrapKeyVersion,
    ) -> impl Future<Output = Result<WrappedSecret, HsmError>> + Send;
    /// Whether `signature` is the HMAC-SHA256 of `message` under the wrapped signing secret: the
    /// secret is unwrapped inside the HSM into a sensitive, non-extractable session object and
    /// the MAC checked with `C_Verify` (a constant-time comparison made by the HSM).
    fn verify_signature(
        &self,
        wrapped: &WrappedSecret,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> impl Future<Output = Result<bool, HsmError>> + Send;
    /// False while the token is unreachable.
    fn is_healthy(&self) -> bool;
}

/// Length of an audit chain MAC (HMAC-SHA256).
pub const AUDIT_MAC_LEN: usize = 32;

/// The HSM key that seals the audit chain, used from inside a store transaction: blocking calls,
/// on the caller's thread. Separate from the master keys, so retiring a master key version never
/// makes old audit events unverifiable.
pub trait AuditSealer: Send + Sync + 'static {
    /// HMAC-SHA256 of `message` under the audit key, computed in the HSM.
    fn seal(&self, message: &[u8]) -> Result<[u8; AUDIT_MAC_LEN], HsmError>;
    /// Whether `mac` is the audit key's HMAC of `message` (`C_Verify`, inside the HSM).
    fn check(&self, message: &[u8], mac: &[u8; AUDIT_MAC_LEN]) -> Result<bool, HsmError>;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store could not read or write durably (I/O error, disk full): retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded: the database is damaged or from an unknown version.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// `initialize` on a store that already has a master key record.
    #[error("the database is already initialized")]
    AlreadyInitialized,
}

/// One master key version keyward made in the HSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterVersion {
    pub version: MasterKeyVersion,
    pub created_at: SystemTime,
    /// Set once the version was removed from the HSM.
    pub retired_at: Option<SystemTime>,
    /// A digest of a fixed message made under this version when it was created: startup
    /// verifies it (the HSM self-test).
    pub self_test: Digest,
}

/// The background re-digest that follows a master key rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub to: MasterKeyVersion,
    pub started_at: SystemTime,
    /// The last key done, in key id order; `None` before the first batch.
    pub after: Option<KeyId>,
    /// Keys re-digested so far.
    pub wrapped: u64,
    /// Signing secrets re-wrapped under the wrapping key of the same version so far.
    pub rewrapped: u64,
}

/// One version of the AES key that wraps signing secrets (see `WrapKeyVersion`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrapKey {
    pub version: WrapKeyVersion,
    pub created_at: SystemTime,
    /// Set once the version was removed from the HSM.
    pub retired_at: Option<SystemTime>,
}

/// What keyward keeps about its master keys: the version new digests use, every version made,
/// and the migration under way, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterState {
    pub current: MasterKeyVersion,
    /// Oldest first.
    pub versions: Vec<MasterVersion>,
    pub migration: Option<Migration>,
    /// Every signing-secret wrapping key version made, oldest first; the newest live one wraps
    /// new secrets. Never empty.
    pub wrap_keys: Vec<WrapKey>,
}

impl MasterState {
    pub fn first(version: MasterKeyVersion, self_test: Digest, at: SystemTime) -> Self {
        Self {
            current: version,
            versions: vec![MasterVersion { version, created_at: at, retired_at: None, self_test }],
            migration: None,
            wrap_keys: vec![WrapKey { version: FIRST_WRAP_KEY, created_at: at, retired_at: None }],
        }
    }

    /// The wrapping key new signing secrets use, and the one the migration re-wraps under.
    pub fn wrap_current(&self) -> WrapKeyVersion {
        self.wrap_keys.iter().filter(|w| w.retired_at.is_none()).map(|w| w.version).max().unwrap_or(FIRST_WRAP_KEY)
    }

    pub fn wrap_key(&self, version: WrapKeyVersion) -> Option<&WrapKey> {
        self.wrap_keys.iter().find(|w| w.version == version)
    }

    /// Whether wrapping key `version` is still in the HSM.
    pub fn is_wrap_live(&self, version: WrapKeyVersion) -> bool {
        self.wrap_key(version).is_some_and(|w| w.retired_at.is_none())
    }

    /// Wrapping key versions still in the HSM.
    pub fn live_wrap_keys(&self) -> impl Iterator<Item = WrapKeyVersion> + '_ {
        self.wrap_keys.iter().filter(|w| w.retired_at.is_none()).map(|w| w.version)
    }

    pub fn version(&self, version: MasterKeyVersion) -> Option<&MasterVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Versions still in the HSM.
    pub fn live(&self) -> impl Iterator<Item = &MasterVersion> {
        self.versions.iter().filter(|v| v.retired_at.is_none())
    }

    pub fn is_live(&self, version: MasterKeyVersion) -> bool {
        self.version(version).is_some_and(|v| v.retired_at.is_none())
    }
}

/// A digest to replace if, when the write runs, the key still has `expected`; and, if given,
/// its wrapped signing secret, replaced (independently of the digest) if still as expected.
#[derive(Clone, Debug)]
pub struct DigestSwap {
    pub id: KeyId,
    pub expected: Digest,
    pub new: Digest,
    pub secret: Option<SecretSwap>,
}

/// A signing secret re-wrapped under a newer wrapping key.
#[derive(Clone, Debug)]
pub struct SecretSwap {
    pub expected: WrappedSecret,
    pub new: WrappedSecret,
}

impl DigestSwap {
    /// Applies the swap to `record` as read in the write's transaction; returns whether
    /// anything changed.
    pub fn apply(&self, record: &mut KeyRecord) -> bool {
        let mut changed = false;
        if record.digest == self.expected && self.new != self.expected {
            record.digest = self.new.clone();
            changed = true;
        }
        if let Some(swap) = &self.secret
            && record.signing.as_ref() == Some(&swap.expected)
        {
            record.signing = Some(swap.new.clone());
            changed = true;
        }
        changed
    }
}

/// A change to a key, decided by the domain from the current record: the new record and the
/// audit event that describes it (`None` for bookkeeping such as quota leases), or `None` when
/// nothing needs to change.
pub type KeyChange = Result<Option<(KeyRecord, Option<AuditEvent>)>, Error>;

/// A key as it was read in an update's transaction, and as it stands after.
#[derive(Clone, Debug)]
pub struct Updated {
    pub before: KeyRecord,
    pub after: KeyRecord,
}

/// Key records and the audit trail. Every write is durable before its future resolves, and a
/// record change and its audit event are written atomically.
pub trait Store: Send + Sync + 'static {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError>;
    /// Keys in id (creation) order, starting after `after`.
    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_;
    /// The summary of every key record as of the last commit (see `key_index`). A cluster
    /// node that cannot show its view is current fails closed.
    fn key_index(&self) -> Result<&KeyIndex, StoreError>;
    /// Adds a new key with its audit event.
    fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads key `id`, lets `change` decide (it must be pure: it may run more than once), and
    /// writes the result with its audit event. `NotFound` if there is no such key.
    fn update_key<F>(&self, id: KeyId, change: F) -> impl Future<Output = Result<Updated, Error>> + Send
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static;
    /// Reads key `id`, lets `change` decide its new record, the successor key to insert and the
    /// audit events, and writes them in one transaction. Returns the old key before and after,
    /// and the successor.
    fn rotate_key<F>(&self, id: KeyId, change: F) -> impl Future<Output = Result<(Updated, KeyRecord), Error>> + Send
    where
        F: Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord, Vec<AuditEvent>), Error> + Send + 'static;
    /// Applies each swap (`DigestSwap::apply`: each digest or wrapped secret still as expected
    /// is replaced) and, if given, records `master` (a migration's progress), in one
    /// transaction. Returns how many records changed.
    fn replace_digests(
        &self,
        swaps: Vec<DigestSwap>,
        master: Option<(MasterState, Option<AuditEvent>)>,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
    /// Records a new master state with its audit event.
    fn set_master(&self, master: MasterState, event: AuditEvent)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Adds gathered usage to the keys' records (keys since deleted are skipped), durably.
    fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Appends audit events that go with no key change (usage drops, refused calls), sealed
    /// and indexed like any other, in one transaction.
    fn append_events(&self, events: Vec<AuditEvent>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Appends usage records and prunes what `retention` no longer keeps, in one durable write.
    /// Returns how many records were pruned.
    fn append_usage(
        &self,
        records: Vec<UsageRecord>,
        retention: Retention,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Key `key`'s usage records in `[since, until)`, counted, reading at most `max_scan`.
    fn key_usage(
        &self,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        max_scan: usize,
    ) -> Result<KeyUsage, StoreError>;
    /// Up to `limit` usage records matching `query`, resuming after `cursor`, reading at most
    /// `max_scan` entries; and the cursor to resume from if there may be more. One key's records
    /// are read through an index.
    fn query_usage(
        &self,
        query: &UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Vec<u8>>), StoreError>;
    fn master(&self) -> Result<Option<MasterState>, StoreError>;
    /// Records the master key state and the root key, once: a second call fails.
    fn initialize(
        &self,
        master: MasterState,
        root: KeyRecord,
        event: AuditEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Audit events with a sequence number above `after`, oldest first.
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;
    /// Up to `limit` events matching `query`, resuming after `cursor` (from a previous page),
    /// reading at most `max_scan` index entries; and the cursor to resume from if there may be
    /// more. Uses the key and time indexes, so one key's events never need a full scan.
    fn query_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<Vec<u8>>), StoreError>;
    /// False once the store stopped confirming writes (a write not confirmed within
    /// `store.write_timeout`): writes are refused until a restart, reads go on.
    fn writes_confirmed(&self) -> bool {
        true
    }
    /// False while the store cannot prove that what it reads is current (cluster mode: the
    /// node lost touch with etcd for longer than the staleness bound). Reads then fail closed.
    fn is_current(&self) -> bool {
        true
    }
    /// How many nodes share the key state (1 on a single node): each node enforces its share of
    /// every rate limit.
    fn nodes_sharing(&self) -> u32 {
        1
    }
    /// `get_key` without the proof that the read is current: the record as the store last
    /// knew it (cluster mode: the node's view, however stale). Only for the caller of a call
    /// that must answer while the node fails closed (`GetClusterStatus`); on one node, `get_key`.
    fn get_key_last_known(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.get_key(id)
    }
    /// What the store's node knows about its cluster (cluster mode), answered even while it
    /// is not current; `None` on a single node.
    fn cluster_status(&self) -> impl Future<Output = Option<ClusterStatus>> + Send {
        std::future::ready(None)
    }
    /// The newest durable audit sequence number, updated as writes become durable.
    fn audit_durable(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Checks the audit chain's MACs (in the HSM) over `from..=to` (`to`: `None` for the end).
    fn verify_chain(&self, from: u64, to: Option<u64>) -> Result<ChainReport, StoreError>;
}

impl From<HsmError> for Error {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::Refused(why) => Error::FailedPrecondition(why),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Unavailable(e.to_string())
    }
}
