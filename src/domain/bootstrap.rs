//! Setting up a new installation, once the master key exists in the HSM: the master state with
//! its self-test digest, and the root key.

use super::{
    access::RequestContext,
    audit::{Actor, AuditAction},
    clock::Clock,
    error::{Error, Result},
    key::{KeyId, KeyRecord, MasterKeyVersion},
    key_format,
    keys::{CreatedKey, key_event},
    ports::{Hsm, MasterState, Store, StoreError},
    proof::{key_digest_input, self_test_input},
};

/// The scopes of the root key that `keyward init` makes.
pub const ROOT_SCOPE: &str = "keyward:*";

/// Records the master state with its self-test digest, and creates the root key (scope
/// `keyward:*`), returned once.
pub async fn bootstrap<H: Hsm, S: Store>(
    hsm: &H,
    store: &S,
    clock: &dyn Clock,
    version: MasterKeyVersion,
) -> Result<CreatedKey> {
    let self_test = hsm.digest(version, self_test_input()).await?;
    let now = clock.now();
    let id = KeyId::new_v7();
    let secret = hsm.random_secret().await?;
    let digest = hsm.digest(version, key_digest_input(id, &secret)).await?;
    let record =
        KeyRecord::new(id, "root".into(), key_format::DEFAULT_PREFIX.into(), vec![ROOT_SCOPE.into()], now, digest);
    // The root key has no max_age and is never reaped: losing it could lock the installation out.
    let event =
        key_event(now, Actor::System("init".into()), AuditAction::KeyCreated, id, &RequestContext::default(), None);
    store.initialize(MasterState::first(version, self_test, now), record.clone(), event).await.map_err(
        |e| match e {
            StoreError::AlreadyInitialized => Error::AlreadyExists("the database is already initialized".into()),
            other => other.into(),
        },
    )?;
    let key = key_format::render(&record.prefix, id, &secret);
    Ok(CreatedKey { key, record, signing_secret: None })
}
