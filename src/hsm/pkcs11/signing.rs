//! Signing secrets on the token: the AES wrapping keys (`keyward-wrap-v<n>`: token objects,
//! sensitive, never extractable, wrap and unwrap only), making a new secret (random bytes
//! imported as a session object, wrapped with `CKM_AES_KEY_WRAP`, destroyed), and checking a
//! signature (the blob unwrapped into a sensitive, non-extractable session object, then
//! `C_Verify` with `CKM_SHA256_HMAC`), with a bounded cache of unwrapped handles.
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

use super::{config::StartError, objects::working_copy, pool::Connection};
use crate::{
    domain::{
        secret::{SECRET_LEN, Secret},
        signing::{CURRENT_WRAP_KEY, WrapKeyVersion, WrappedSecret},
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

/// Generates the current wrapping key in a read-write session (logged in) if the token lacks it.
/// Returns whether it made one.
pub(in crate::hsm) fn generate_wrapping_key_if_missing(session: &Session) -> Result<bool, StartError> {
    if find_wrapping_keys(session)?.contains_key(&CURRENT_WRAP_KEY) {
        return Ok(false);
    }
    session.generate_key(&Mechanism::AesKeyGen, &wrapping_key_template(&wrap_key_label(CURRENT_WRAP_KEY)))?;
    Ok(true)
}

/// Makes the current wrapping key if the token has none (tokens made before signing keys), and
/// takes session copies of every wrapping key.
pub(super) fn ensure_wrapping_key(ctx: &Pkcs11, conn: &Connection) -> Result<(), StartError> {
    if conn.wrapping.read().unwrap_or_else(|e| e.into_inner()).contains_key(&CURRENT_WRAP_KEY) {
        return Ok(());
    }
    let session = ctx.open_rw_session(conn.slot)?;
    if generate_wrapping_key_if_missing(&session)? {
        tracing::info!(version = %CURRENT_WRAP_KEY, "signing secret wrapping key created on the token");
    }
    let owner = conn.owner.lock().unwrap_or_else(|e| e.into_inner());
    let copies: HashMap<_, _> =
        find_wrapping_keys(&session)?.into_iter().map(|(v, handle)| (v, working_copy(&owner, handle))).collect();
    *conn.wrapping.write().unwrap_or_else(|e| e.into_inner()) = copies;
    Ok(())
}

fn wrapping_handle(conn: &Connection, version: WrapKeyVersion) -> Result<ObjectHandle, CkError> {
    conn.wrapping.read().unwrap_or_else(|e| e.into_inner()).get(&version).copied().ok_or_else(rv::no_such_key)
}

/// A new signing secret and its wrapped form. The session object holding it exists only
/// between the import and the wrap.
pub(super) fn new_secret(session: &Session, conn: &Connection) -> Result<(Secret, WrappedSecret), CkError> {
    let wrapping = wrapping_handle(conn, CURRENT_WRAP_KEY)?;
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
    Ok((Secret::from_bytes(*bytes), WrappedSecret { version: CURRENT_WRAP_KEY, blob }))
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
            let wrapping = wrapping_handle(conn, wrapped.version)?;
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
