//! The ports: what the domain needs from the outside world (an HSM, a store), as traits the
//! adapters in `crate::hsm` and `crate::store` implement.

use std::future::Future;

use super::{
    audit::{AuditEvent, RecordedEvent},
    error::Error,
    key::{Digest, KeyId, KeyRecord, MasterKeyVersion},
    secret::{Secret, SensitiveBytes},
    usage::UsageDelta,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HsmError {
    /// The token cannot be reached (removed, session lost, not logged in): retry later.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// The HSM refused the operation for a reason retrying will not fix.
    #[error("HSM operation failed: {0}")]
    Failed(String),
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
    /// comparison happens inside the HSM (`C_Verify`).
    fn verify(&self, input: SensitiveBytes, digest: &Digest) -> impl Future<Output = Result<bool, HsmError>> + Send;
    /// False while the token is unreachable.
    fn is_healthy(&self) -> bool;
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

/// What keyward keeps about its master key: the version new digests use, and a digest of a
/// fixed message made at init, which startup verifies (the HSM self-test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterState {
    pub current: MasterKeyVersion,
    pub self_test: Digest,
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
    /// Adds a new key with its audit event.
    fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads key `id`, lets `change` decide (it must be pure: it may run more than once), and
    /// writes the result with its audit event. `NotFound` if there is no such key.
    fn update_key<F>(&self, id: KeyId, change: F) -> impl Future<Output = Result<Updated, Error>> + Send
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static;
    /// Adds gathered usage to the keys' records (keys since deleted are skipped), durably.
    fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> impl Future<Output = Result<(), StoreError>> + Send;
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
}

impl From<HsmError> for Error {
    fn from(e: HsmError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Unavailable(e.to_string())
    }
}
