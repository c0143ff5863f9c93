//! Signing secrets on the token: the AES wrapping keys (`keyward-wrap-v<n>`: token objects,
//! sensitive, never extractable, wrap and unwrap only; made, picked up from another node and
//! destroyed with master key rotation and retirement), making a new secret (random bytes
//! imported as a session object, wrapped with `CKM_AES_KEY_WRAP`, destroyed), moving a secret to
//! a newer wrapping key (unwrapped into a sensitive session object, wrapped again, destroyed),
//! and checking a signature (the blob unwrapped into a sensitive, non-extractable session
//! object, then `C_Verify` with `CKM_SHA256_HMAC`), with a bounded cache of unwrapped handles.
//!
//! The cache holds at most `UNWRAPPED_CACHE` session objects (one per signing key in use; a
//! few hundred bytes each inside the module, so well under a megabyte). They are owned by the
//! connection's `owner` session and die with it: a reconnect starts with an empty cache. A
//! handle evicted while another worker still verifies with it is destroyed only once no worker
//! holds it (`retiring`), so eviction never invalidates a call in flight.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use cryptoki::{
    context::Pkcs11,
    error::Error as CkError,
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
};

use super::{
    config::StartError,
    objects::{has_flags, vetted, working_copy},
    pool::Connection,
};
use crate::{
    domain::{
        ports::HsmError,
        secret::{SECRET_LEN, Secret},
        signing::{FIRST_WRAP_KEY, WrapKeyVersion, WrappedSecret},
    },
    hsm::rv,
};

const LABEL_PREFIX: &str = "keyward-wrap-v";

/// How many unwrapped signing secrets (session objects) a connection keeps.
pub const UNWRAPPED_CACHE: usize = 1024;

/// The label (and `CKA_ID`) of wrapping key `version`.
pub fn wrap_key_label(version: WrapKeyVersion) -> String {
    format!("{LABEL_PREFIX}{}", version.0)
}

/// The template of a wrapping key: AES-256, a token object, sensitive, never extractable,
/// usable only to wrap and unwrap.
fn wrapping_key_template(label: &str) -> Vec<Attribute> {
    let label = label.as_bytes().to_vec();
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone()),
        Attribute::Id(label),
    ]
}

/// What an unwrapped signing secret becomes: a session object, sensitive, not extractable,
/// usable only to verify.
fn unwrapped_template() -> [Attribute; 9] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Verify(true),
        Attribute::Sign(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
    ]
}

/// Every wrapping key on the token, by version; fails on a version present more than once.
pub(in crate::hsm) fn find_wrapping_keys(
    session: &Session,
) -> Result<HashMap<WrapKeyVersion, ObjectHandle>, StartError> {
    let template =
        [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(true)];
    let mut by_version: HashMap<WrapKeyVersion, Vec<ObjectHandle>> = HashMap::new();
    for handle in session.find_objects(&template)? {
        let attrs = session.get_attributes(handle, &[AttributeType::Label])?;
        let Some(Attribute::Label(label)) = attrs.first() else { continue };
        let version = std::str::from_utf8(label)
            .ok()
            .and_then(|l| l.strip_prefix(LABEL_PREFIX))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(v) = version {
            by_version.entry(WrapKeyVersion(v)).or_default().push(handle);
        }
    }
    by_version
        .into_iter()
        .map(|(v, handles)| match handles.as_slice() {
            [one] => Ok((v, *one)),
            many => Err(StartError::Pkcs11(format!(
                "{} keys are labelled {:?}; it must be unique",
                many.len(),
                wrap_key_label(v)
            ))),
        })
        .collect()
}

/// Generates wrapping key v1 in a read-write session (logged in) if the token has no wrapping
/// key at all (a token made before signing keys). Returns whether it made one.
pub(in crate::hsm) fn generate_wrapping_key_if_missing(session: &Session) -> Result<bool, StartError> {
    if !find_wrapping_keys(session)?.is_empty() {
        return Ok(false);
    }
    session.generate_key(&Mechanism::AesKeyGen, &wrapping_key_template(&wrap_key_label(FIRST_WRAP_KEY)))?;
    Ok(true)
}

/// Makes wrapping key v1 if the token has none (tokens made before signing keys), and takes
/// session copies of every wrapping key.
pub(super) fn ensure_wrapping_key(ctx: &Pkcs11, conn: &Connection) -> Result<(), StartError> {
    if !conn.wrapping.read().unwrap_or_else(|e| e.into_inner()).is_empty() {
        return Ok(());
    }
    let session = ctx.open_rw_session(conn.slot)?;
    if generate_wrapping_key_if_missing(&session)? {
        tracing::info!(version = %FIRST_WRAP_KEY, "signing secret wrapping key created on the token");
    }
    let owner = conn.owner.lock().unwrap_or_else(|e| e.into_inner());
    let copies: HashMap<_, _> =
        find_wrapping_keys(&session)?.into_iter().map(|(v, handle)| (v, working_copy(&owner, handle))).collect();
    *conn.wrapping.write().unwrap_or_else(|e| e.into_inner()) = copies;
    Ok(())
}

/// Whether `key` is a wrapping key keyward would have generated: made inside the token and
/// never out of it, usable only to wrap and unwrap.
fn is_safe_wrapping_key(session: &Session, key: ObjectHandle) -> Result<bool, CkError> {
    use AttributeType as T;
    let wanted = [
        (T::Local, true),
        (T::AlwaysSensitive, true),
        (T::NeverExtractable, true),
        (T::Sensitive, true),
        (T::Extractable, false),
        (T::Wrap, true),
        (T::Unwrap, true),
        (T::Encrypt, false),
        (T::Decrypt, false),
        (T::Sign, false),
        (T::Verify, false),
        (T::Derive, false),
    ];
    has_flags(session, key, &wanted)
}

/// Generates wrapping key `version` (or adopts one an unfinished rotation left, if keyward
/// could have made it) and starts using it.
pub(super) fn create_wrap_key(ctx: &Pkcs11, conn: &Connection, version: WrapKeyVersion) -> Result<(), HsmError> {
    let ck = |e: CkError| rv::classify(&e);
    let session = ctx.open_rw_session(conn.slot).map_err(ck)?;
    let found = find_wrapping_keys(&session).map_err(|e| HsmError::Refused(e.to_string()))?;
    let handle = match found.get(&version) {
        Some(&existing) => {
            if !is_safe_wrapping_key(&session, existing).map_err(ck)? {
                return Err(HsmError::Refused(format!(
                    "wrapping key {version} already exists on the token but is not a key keyward would have \
                     made (generated in the token, always sensitive, never extractable, wrap and unwrap only); \
                     keyward will not use it: remove it, and find out who put it there"
                )));
            }
            tracing::warn!(%version, "adopting the wrapping key an unfinished rotation left on the token");
            existing
        }
        None => {
            session.generate_key(&Mechanism::AesKeyGen, &wrapping_key_template(&wrap_key_label(version))).map_err(ck)?
        }
    };
    take_copy(conn, version, handle, found.get(&version).copied());
    Ok(())
}

/// Starts using wrapping key `version` that another cluster node made on the token; nothing to
/// do if this connection has it. `Refused` when it is missing or not one keyward would make.
pub(super) fn pick_up_wrap_key(ctx: &Pkcs11, conn: &Connection, version: WrapKeyVersion) -> Result<(), HsmError> {
    if conn.wrapping.read().unwrap_or_else(|e| e.into_inner()).contains_key(&version) {
        return Ok(());
    }
    let session = ctx.open_ro_session(conn.slot).map_err(|e| rv::classify(&e))?;
    let found = find_wrapping_keys(&session).map_err(|e| HsmError::Refused(e.to_string()))?;
    let what = format!("wrapping key {version}");
    let token = vetted(&session, found.get(&version).copied(), is_safe_wrapping_key, &what)?;
    take_copy(conn, version, token, Some(token));
    Ok(())
}

/// Destroys wrapping key `version` on the token (and forgets its session copy and the secrets
/// unwrapped with it).
pub(super) fn destroy_wrap_key(ctx: &Pkcs11, conn: &Connection, version: WrapKeyVersion) -> Result<(), HsmError> {
    let ck = |e: CkError| rv::classify(&e);
    let session = ctx.open_rw_session(conn.slot).map_err(ck)?;
    let found = find_wrapping_keys(&session).map_err(|e| HsmError::Failed(e.to_string()))?;
    let removed = conn.wrapping.write().unwrap_or_else(|e| e.into_inner()).remove(&version);
    if let Some(removed) = removed {
        drop_copy(conn, removed, found.get(&version).copied());
    }
    drop_unwrapped(conn, version);
    if let Some(&handle) = found.get(&version) {
        session.destroy_object(handle).map_err(ck)?;
    }
    Ok(())
}

/// Drops this connection's session copy of wrapping key `version`, which another cluster node
/// retired (and destroyed on the token), and the secrets unwrapped with it.
pub(super) fn forget_wrap_key(conn: &Connection, version: WrapKeyVersion) {
    let removed = conn.wrapping.write().unwrap_or_else(|e| e.into_inner()).remove(&version);
    if let Some(removed) = removed {
        // A copy or, if the token would not copy it, the (already destroyed) token object.
        drop_copy(conn, removed, None);
    }
    drop_unwrapped(conn, version);
}

/// Keeps a session copy of token key `token` as wrapping key `version`.
fn take_copy(conn: &Connection, version: WrapKeyVersion, token: ObjectHandle, on_token: Option<ObjectHandle>) {
    let handle = working_copy(&conn.owner.lock().unwrap_or_else(|e| e.into_inner()), token);
    if let Some(replaced) = conn.wrapping.write().unwrap_or_else(|e| e.into_inner()).insert(version, handle) {
        drop_copy(conn, replaced, on_token);
    }
}

/// Destroys `handle` if it is a session copy (not the token object itself).
fn drop_copy(conn: &Connection, handle: ObjectHandle, token: Option<ObjectHandle>) {
    if Some(handle) != token
        && let Err(e) = conn.owner.lock().unwrap_or_else(|e| e.into_inner()).destroy_object(handle)
    {
        tracing::debug!(error = %e, "destroying a wrapping key's session copy");
    }
}

fn wrapping_handle(conn: &Connection, version: WrapKeyVersion) -> Result<ObjectHandle, CkError> {
    conn.wrapping.read().unwrap_or_else(|e| e.into_inner()).get(&version).copied().ok_or_else(rv::no_such_key)
}

/// The handle of wrapping key `version`; one this connection has not seen yet (made by another
/// cluster node a moment ago) is looked up on the token through `session`.
fn wrapping_handle_or_find(
    session: &Session,
    conn: &Connection,
    version: WrapKeyVersion,
) -> Result<ObjectHandle, CkError> {
    if let Ok(handle) = wrapping_handle(conn, version) {
        return Ok(handle);
    }
    let found = find_wrapping_keys(session).map_err(|_| rv::no_such_key())?;
    let Some(&token) = found.get(&version) else { return Err(rv::no_such_key()) };
    if !is_safe_wrapping_key(session, token)? {
        return Err(rv::no_such_key());
    }
    take_copy(conn, version, token, Some(token));
    wrapping_handle(conn, version)
}

/// A new signing secret and its form wrapped under `version`. The session object holding it
/// exists only between the import and the wrap.
pub(super) fn new_secret(
    session: &Session,
    conn: &Connection,
    version: WrapKeyVersion,
) -> Result<(Secret, WrappedSecret), CkError> {
    let wrapping = wrapping_handle_or_find(session, conn, version)?;
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    session.generate_random_slice(bytes.as_mut())?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        // Extractable only so that it can leave wrapped: sensitive keys are never read in clear.
        Attribute::Extractable(true),
        Attribute::Verify(true),
        Attribute::Sign(false),
        Attribute::Value(bytes.to_vec()),
    ];
    let imported = session.create_object(&template)?;
    let blob = session.wrap_key(&Mechanism::AesKeyWrap, wrapping, imported);
    let destroyed = session.destroy_object(imported);
    let blob = blob?;
    destroyed?;
    Ok((Secret::from_bytes(*bytes), WrappedSecret { version, blob }))
}

/// The secret `wrapped` holds, wrapped under wrapping key `to`, never in clear outside the
/// HSM: unwrapped into a session object that is sensitive (its value is never readable) and
/// extractable only because `C_WrapKey` needs it, usable for nothing else, wrapped under `to`,
/// destroyed.
pub(super) fn rewrap(
    session: &Session,
    conn: &Connection,
    wrapped: &WrappedSecret,
    to: WrapKeyVersion,
) -> Result<WrappedSecret, CkError> {
    let from = wrapping_handle_or_find(session, conn, wrapped.version)?;
    let target = wrapping_handle_or_find(session, conn, to)?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
    ];
    let unwrapped = match session.unwrap_key(&Mechanism::AesKeyWrap, from, &wrapped.blob, &template) {
        Ok(handle) => handle,
        // The token still answers: it was the blob, not the token.
        Err(e) if rv::is_token_gone(&e) && session.get_session_info().is_ok() => return Err(rv::wrapped_key_invalid()),
        Err(e) => return Err(e),
    };
    let blob = session.wrap_key(&Mechanism::AesKeyWrap, target, unwrapped);
    let destroyed = session.destroy_object(unwrapped);
    let blob = blob?;
    destroyed?;
    Ok(WrappedSecret { version: to, blob })
}

/// An unwrapped secret's handle, shared by the workers verifying with it.
struct Unwrapped(ObjectHandle);

/// The bounded cache of unwrapped signing secrets, oldest first out.
#[derive(Default)]
pub(super) struct UnwrapCache {
    handles: HashMap<WrappedSecret, Arc<Unwrapped>>,
    order: VecDeque<WrappedSecret>,
    /// Evicted handles some worker may still use: destroyed once only this list holds them.
    retiring: Vec<Arc<Unwrapped>>,
}

impl UnwrapCache {
    fn get(&self, wrapped: &WrappedSecret) -> Option<Arc<Unwrapped>> {
        self.handles.get(wrapped).cloned()
    }

    /// Keeps `handle` for `wrapped`; returns the handles now safe to destroy.
    fn insert(&mut self, wrapped: WrappedSecret, handle: Arc<Unwrapped>) -> Vec<ObjectHandle> {
        if let Some(raced) = self.handles.insert(wrapped.clone(), handle) {
            self.retiring.push(raced);
        } else {
            self.order.push_back(wrapped);
        }
        while self.order.len() > UNWRAPPED_CACHE {
            if let Some(oldest) = self.order.pop_front()
                && let Some(evicted) = self.handles.remove(&oldest)
            {
                self.retiring.push(evicted);
            }
        }
        let (done, busy): (Vec<_>, Vec<_>) = self.retiring.drain(..).partition(|h| Arc::strong_count(h) == 1);
        self.retiring = busy;
        done.into_iter().map(|h| h.0).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Forgets the secrets unwrapped with wrapping key `version`; returns the handles now safe
    /// to destroy (the others once their last call ends, like evicted ones).
    fn drop_version(&mut self, version: WrapKeyVersion) -> Vec<ObjectHandle> {
        self.order.retain(|w| w.version != version);
        let gone: Vec<WrappedSecret> = self.handles.keys().filter(|w| w.version == version).cloned().collect();
        for wrapped in gone {
            if let Some(handle) = self.handles.remove(&wrapped) {
                self.retiring.push(handle);
            }
        }
        let (done, busy): (Vec<_>, Vec<_>) = self.retiring.drain(..).partition(|h| Arc::strong_count(h) == 1);
        self.retiring = busy;
        done.into_iter().map(|h| h.0).collect()
    }
}

/// Destroys the secrets this connection unwrapped with wrapping key `version` (retired).
fn drop_unwrapped(conn: &Connection, version: WrapKeyVersion) {
    let stale = conn.unwrapped.lock().unwrap_or_else(|e| e.into_inner()).drop_version(version);
    let owner = conn.owner.lock().unwrap_or_else(|e| e.into_inner());
    for handle in stale {
        if let Err(e) = owner.destroy_object(handle) {
            tracing::debug!(error = %e, "destroying an unwrapped signing secret of a retired wrapping key");
        }
    }
}

/// Whether `signature` is the HMAC-SHA256 of `message` under the wrapped secret.
pub(super) fn verify(
    session: &Session,
    conn: &Connection,
    wrapped: &WrappedSecret,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CkError> {
    let cached = conn.unwrapped.lock().unwrap_or_else(|e| e.into_inner()).get(wrapped);
    let key = match cached {
        Some(key) => key,
        None => {
            let wrapping = wrapping_handle_or_find(session, conn, wrapped.version)?;
            let owner = conn.owner.lock().unwrap_or_else(|e| e.into_inner());
            let handle = match owner.unwrap_key(&Mechanism::AesKeyWrap, wrapping, &wrapped.blob, &unwrapped_template())
            {
                Ok(handle) => handle,
                // The token still answers: it was the blob, not the token.
                Err(e) if rv::is_token_gone(&e) && owner.get_session_info().is_ok() => {
                    return Err(rv::wrapped_key_invalid());
                }
                Err(e) => return Err(e),
            };
            let key = Arc::new(Unwrapped(handle));
            let stale = conn.unwrapped.lock().unwrap_or_else(|e| e.into_inner()).insert(wrapped.clone(), key.clone());
            for handle in stale {
                if let Err(e) = owner.destroy_object(handle) {
                    tracing::debug!(error = %e, "destroying an evicted unwrapped signing secret");
                }
            }
            key
        }
    };
    match session.verify(&Mechanism::Sha256Hmac, key.0, message, signature) {
        Ok(()) => Ok(true),
        Err(e) if rv::is_signature_mismatch(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
