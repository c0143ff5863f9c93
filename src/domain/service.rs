//! The use cases: authenticate callers, create, read, list, revoke and verify keys, and set up
//! a new installation. Works through the `Hsm` and `Store` ports only.

use std::{collections::BTreeMap, sync::Arc, time::Duration, time::SystemTime};

use super::{
    audit::{Actor, AuditAction, AuditEvent},
    auth_cache::AuthCache,
    clock::Clock,
    error::{Error, Result},
    key::{Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion},
    key_format::{self, ParsedKey},
    policy::{self, VerifyCode},
    ports::{Hsm, MasterState, Store},
    scope,
    secret::{KeyString, Secret, SensitiveBytes},
    validate,
};

/// Domain separation for key digests: an HMAC made for one purpose never stands for another.
const KEY_DIGEST_CONTEXT: &[u8] = b"keyward/v1/key-digest\0";
/// The fixed message whose digest, made at init, startup verifies (the HSM self-test).
const SELF_TEST_MESSAGE: &[u8] = b"keyward/v1/self-test\0";
/// The scopes of the root key that `keyward init` makes.
pub const ROOT_SCOPE: &str = "keyward:*";

/// What the HSM signs for a key: context ‖ key id ‖ secret.
pub fn key_digest_input(id: KeyId, secret: &Secret) -> SensitiveBytes {
    let mut input = Vec::with_capacity(KEY_DIGEST_CONTEXT.len() + 16 + 32);
    input.extend_from_slice(KEY_DIGEST_CONTEXT);
    input.extend_from_slice(id.as_bytes());
    input.extend_from_slice(secret.expose());
    SensitiveBytes::new(input)
}

fn self_test_input() -> SensitiveBytes {
    SensitiveBytes::new(SELF_TEST_MESSAGE.to_vec())
}

/// A permission on keyward itself: a scope in the reserved `keyward:` namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Verify,
    KeysCreate,
    KeysRead,
    KeysRevoke,
}

impl Permission {
    pub fn scope(self) -> &'static str {
        match self {
            Permission::Verify => "keyward:verify",
            Permission::KeysCreate => "keyward:keys:create",
            Permission::KeysRead => "keyward:keys:read",
            Permission::KeysRevoke => "keyward:keys:revoke",
        }
    }
}

/// An authenticated caller: a key that proved its secret and is active.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: KeyId,
    pub scopes: Vec<String>,
}

/// Facts about the request that go into the audit trail.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub client_addr: Option<String>,
}

/// A request to create a key, before validation.
#[derive(Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct CreatedKey {
    /// The full key: returned to the creator once, kept nowhere.
    pub key: KeyString,
    pub record: KeyRecord,
}

#[derive(Debug)]
pub struct Verification {
    pub code: VerifyCode,
    /// Set whenever the secret verified (every code but `Invalid`).
    pub record: Option<KeyRecord>,
}

/// Tunables of the use cases.
#[derive(Clone, Debug)]
pub struct KeysConfig {
    pub auth_cache_capacity: usize,
    pub auth_cache_ttl: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { auth_cache_capacity: 10_000, auth_cache_ttl: Duration::from_secs(300) }
    }
}

pub struct Keys<H, S> {
    hsm: Arc<H>,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    master: MasterState,
    auth_cache: AuthCache,
    /// Verified against for unknown key ids, so that they cost what a wrong secret costs.
    decoy: Digest,
}

impl<H: Hsm, S: Store> Keys<H, S> {
    pub fn new(hsm: Arc<H>, store: Arc<S>, clock: Arc<dyn Clock>, master: MasterState, config: KeysConfig) -> Self {
        let mut decoy = [0u8; 32];
        getrandom::fill(&mut decoy).expect("the OS random number generator works");
        let decoy = Digest { version: master.current, mac: decoy };
        let auth_cache = AuthCache::new(config.auth_cache_capacity, config.auth_cache_ttl);
        Self { hsm, store, clock, master, auth_cache, decoy }
    }

    /// Verifies the digest made at init: proves the token holds this database's master key.
    pub async fn self_test(&self) -> Result<()> {
        if self.hsm.verify(self_test_input(), &self.master.self_test).await? {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "HSM self-test failed: master key {} on the token does not match this database",
                self.master.self_test.version
            )))
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.hsm.is_healthy()
    }

    /// Checks a bearer credential. Any failure is `Unauthenticated`, saying no more than that.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        const INVALID: Error = Error::Unauthenticated("invalid credential");
        let bearer = bearer.ok_or(Error::Unauthenticated("missing credential: send `authorization: Bearer <key>`"))?;
        let parsed = key_format::parse(bearer).ok_or(INVALID)?;
        let record = match self.store.get_key(parsed.key_id)? {
            Some(record) if self.auth_cache.contains(record.id, &parsed.secret) => record,
            Some(record) => {
                if !self.secret_matches(&parsed, &record.digest).await? {
                    return Err(INVALID);
                }
                self.auth_cache.insert(record.id, &parsed.secret);
                record
            }
            None => {
                self.secret_matches(&parsed, &self.decoy).await?;
                return Err(INVALID);
            }
        };
        match policy::evaluate(&record, self.clock.now(), &[]) {
            VerifyCode::Valid => Ok(Caller { key_id: record.id, scopes: record.scopes }),
            _ => Err(Error::Unauthenticated("credential is revoked or expired")),
        }
    }

    pub fn authorize(&self, caller: &Caller, permission: Permission) -> Result<()> {
        if scope::any_grants(&caller.scopes, permission.scope()) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!("this call needs the `{}` permission", permission.scope())))
        }
    }

    pub async fn create(&self, caller: &Caller, new: NewKey, ctx: &RequestContext) -> Result<CreatedKey> {
        self.authorize(caller, Permission::KeysCreate)?;
        let now = self.clock.now();
        let name = validate::name(&new.name)?;
        let prefix = validate::prefix(&new.prefix)?;
        let scopes = validate::scopes("scopes", &new.scopes, validate::MAX_SCOPES)?;
        let expires_at = validate::expires_at(new.expires_at, now)?;
        let metadata = validate::metadata(new.metadata)?;
        if let Some(escalation) =
            scopes.iter().find(|s| scope::is_permission(s) && !scope::any_grants(&caller.scopes, s))
        {
            return Err(Error::PermissionDenied(format!(
                "cannot grant `{escalation}`: a key may only grant keyward permissions its creator holds"
            )));
        }

        let id = KeyId::new_v7();
        let secret = self.hsm.random_secret().await?;
        let digest = self.hsm.digest(self.master.current, key_digest_input(id, &secret)).await?;
        let record = KeyRecord {
            id,
            name,
            prefix,
            scopes,
            state: KeyState::Active,
            created_at: now,
            expires_at,
            revoked_at: None,
            revoke_reason: None,
            metadata,
            created_by: Some(caller.key_id),
            digest,
        };
        let event = audit(now, Actor::Key(caller.key_id), AuditAction::KeyCreated, id, ctx, None);
        self.store.insert_key(record.clone(), event).await?;
        let key = key_format::render(&record.prefix, id, &secret);
        Ok(CreatedKey { key, record })
    }

    pub fn get(&self, caller: &Caller, key_id: &str) -> Result<KeyRecord> {
        self.authorize(caller, Permission::KeysRead)?;
        let id = validate::key_id("key_id", key_id)?;
        self.store.get_key(id)?.ok_or_else(|| Error::NotFound(format!("key {id}")))
    }

    /// One page of keys, oldest first, and the token for the next page if there is one.
    pub fn list(&self, caller: &Caller, page_size: i32, page_token: &str) -> Result<(Vec<KeyRecord>, Option<String>)> {
        self.authorize(caller, Permission::KeysRead)?;
        let size = validate::page_size(page_size)?;
        let after = validate::page_token(page_token)?;
        let mut keys = self.store.list_keys(after, size + 1)?;
        let next = if keys.len() > size {
            keys.truncate(size);
            keys.last().map(|k| k.id.to_string())
        } else {
            None
        };
        Ok((keys, next))
    }

    /// Revokes a key for good; revoking a revoked key changes nothing and succeeds.
    pub async fn revoke(&self, caller: &Caller, key_id: &str, reason: &str, ctx: &RequestContext) -> Result<KeyRecord> {
        self.authorize(caller, Permission::KeysRevoke)?;
        let id = validate::key_id("key_id", key_id)?;
        let reason = validate::reason(reason)?;
        let now = self.clock.now();
        let event = audit(now, Actor::Key(caller.key_id), AuditAction::KeyRevoked, id, ctx, reason.clone());
        self.store
            .update_key(id, move |current| {
                if current.state == KeyState::Revoked {
                    return Ok(None);
                }
                let mut revoked = current.clone();
                revoked.state = KeyState::Revoked;
                revoked.revoked_at = Some(now);
                revoked.revoke_reason = reason.clone();
                Ok(Some((revoked, event.clone())))
            })
            .await
    }

    /// Verifies a presented key: parse → record → secret (HSM) → policy. A key that does not
    /// prove its secret is `Invalid`, whatever its id's state.
    pub async fn verify(
        &self,
        caller: &Caller,
        key: &str,
        client_ip: &str,
        required_scopes: &[String],
    ) -> Result<Verification> {
        self.authorize(caller, Permission::Verify)?;
        validate::scopes("required_scopes", required_scopes, validate::MAX_SCOPES)?;
        validate::client_ip(client_ip)?;
        const INVALID: Verification = Verification { code: VerifyCode::Invalid, record: None };
        let Some(parsed) = key_format::parse(key) else {
            return Ok(INVALID);
        };
        let Some(record) = self.store.get_key(parsed.key_id)? else {
            self.secret_matches(&parsed, &self.decoy).await?;
            return Ok(INVALID);
        };
        if !self.secret_matches(&parsed, &record.digest).await? {
            return Ok(INVALID);
        }
        let code = policy::evaluate(&record, self.clock.now(), required_scopes);
        Ok(Verification { code, record: Some(record) })
    }

    async fn secret_matches(&self, parsed: &ParsedKey, digest: &Digest) -> Result<bool> {
        Ok(self.hsm.verify(key_digest_input(parsed.key_id, &parsed.secret), digest).await?)
    }
}

fn audit(
    at: SystemTime,
    actor: Actor,
    action: AuditAction,
    target: KeyId,
    ctx: &RequestContext,
    reason: Option<String>,
) -> AuditEvent {
    AuditEvent { at, actor, action, target: Some(target), client_addr: ctx.client_addr.clone(), reason }
}

/// Sets up a new installation once the master key exists in the HSM: records the master state
/// with its self-test digest, and creates the root key (scope `keyward:*`), returned once.
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
    let record = KeyRecord {
        id,
        name: "root".into(),
        prefix: key_format::DEFAULT_PREFIX.into(),
        scopes: vec![ROOT_SCOPE.into()],
        state: KeyState::Active,
        created_at: now,
        expires_at: None,
        revoked_at: None,
        revoke_reason: None,
        metadata: BTreeMap::new(),
        created_by: None,
        digest,
    };
    let event = audit(now, Actor::System("init".into()), AuditAction::KeyCreated, id, &RequestContext::default(), None);
    store.initialize(MasterState { current: version, self_test }, record.clone(), event).await.map_err(
        |e| match e {
            super::ports::StoreError::AlreadyInitialized => {
                Error::AlreadyExists("the database is already initialized".into())
            }
            other => other.into(),
        },
    )?;
    let key = key_format::render(&record.prefix, id, &secret);
    Ok(CreatedKey { key, record })
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
