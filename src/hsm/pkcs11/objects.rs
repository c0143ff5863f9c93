//! Key objects on the token: the template keyward generates its HMAC keys with, finding master
//! keys and the audit key (by label, failing on duplicates), the attribute check of a key keyward
//! would have made, the session copies the hot path uses, and creating or destroying a master
//! key version on a live connection.

use std::collections::HashMap;

use cryptoki::{
    context::Pkcs11,
    error::Error as CkError,
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
};

use super::{config::StartError, pool::Connection};
use crate::{
    domain::{key::MasterKeyVersion, ports::HsmError},
    hsm::{AUDIT_KEY_LABEL, master_key_label, rv},
};

const LABEL_PREFIX: &str = "keyward-master-v";

/// The template of keyward's HMAC keys (master key versions, the audit key): a 32-byte generic
/// secret for HMAC-SHA256, a token object, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, usable only to
/// sign and verify, labelled `label` (also its `CKA_ID`).
fn hmac_key_template(label: &str) -> Vec<Attribute> {
    let label = label.as_bytes().to_vec();
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone()),
        Attribute::Id(label),
    ]
}

/// Generates master key `version` in a read-write session (already logged in).
pub(in crate::hsm) fn generate_master_key(
    session: &Session,
    version: MasterKeyVersion,
) -> Result<ObjectHandle, CkError> {
    generate_hmac_key(session, &master_key_label(version))
}

/// Generates an HMAC key labelled `label` in a read-write session (already logged in).
pub(in crate::hsm) fn generate_hmac_key(session: &Session, label: &str) -> Result<ObjectHandle, CkError> {
    session.generate_key(&Mechanism::GenericSecretKeyGen, &hmac_key_template(label))
}

/// Whether `key` is one keyward would have generated: made inside the token and never out of
/// it (`CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`), and usable only to sign and
/// verify. A key imported with a known value, or one that could wrap or decrypt, fails this.
pub(in crate::hsm) fn is_safe_master_key(session: &Session, key: ObjectHandle) -> Result<bool, CkError> {
    use AttributeType as T;
    let wanted = [
        (T::Local, true),
        (T::AlwaysSensitive, true),
        (T::NeverExtractable, true),
        (T::Sensitive, true),
        (T::Extractable, false),
        (T::Sign, true),
        (T::Verify, true),
        (T::Encrypt, false),
        (T::Decrypt, false),
        (T::Wrap, false),
        (T::Unwrap, false),
        (T::Derive, false),
    ];
    has_flags(session, key, &wanted)
}

/// Whether `key`'s boolean attributes are exactly those `wanted` says (an attribute the token
/// does not report counts as not matching).
pub(in crate::hsm) fn has_flags(
    session: &Session,
    key: ObjectHandle,
    wanted: &[(AttributeType, bool)],
) -> Result<bool, CkError> {
    let types: Vec<AttributeType> = wanted.iter().map(|(t, _)| *t).collect();
    let attrs = session.get_attributes(key, &types)?;
    let value = |a: &Attribute| match a {
        Attribute::Local(v)
        | Attribute::AlwaysSensitive(v)
        | Attribute::NeverExtractable(v)
        | Attribute::Sensitive(v)
        | Attribute::Extractable(v)
        | Attribute::Sign(v)
        | Attribute::Verify(v)
        | Attribute::Encrypt(v)
        | Attribute::Decrypt(v)
        | Attribute::Wrap(v)
        | Attribute::Unwrap(v)
        | Attribute::Derive(v) => Some((a.attribute_type(), *v)),
        _ => None,
    };
    let got: Vec<_> = attrs.iter().filter_map(value).collect();
    Ok(wanted.iter().all(|w| got.contains(w)))
}

/// The one generic secret key labelled `label`, if any; fails if there are several.
pub(in crate::hsm) fn find_label(session: &Session, label: &str) -> Result<Option<ObjectHandle>, StartError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    match session.find_objects(&template)?.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(StartError::Pkcs11(format!("{} keys are labelled {label:?}; it must be unique", many.len()))),
    }
}

/// Every master key on the token, by version; fails on a version present more than once.
pub(in crate::hsm) fn find_master_keys(
    session: &Session,
) -> Result<HashMap<MasterKeyVersion, ObjectHandle>, StartError> {
    // Token objects only: our own session copies (`working_copy`) carry the same labels.
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
    ];
    let mut by_version: HashMap<MasterKeyVersion, Vec<ObjectHandle>> = HashMap::new();
    for handle in session.find_objects(&template)? {
        let attrs = session.get_attributes(handle, &[AttributeType::Label])?;
        let Some(Attribute::Label(label)) = attrs.first() else { continue };
        let version = std::str::from_utf8(label)
            .ok()
            .and_then(|l| l.strip_prefix(LABEL_PREFIX))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(v) = version {
            by_version.entry(MasterKeyVersion(v)).or_default().push(handle);
        }
    }
    by_version
        .into_iter()
        .map(|(v, handles)| match handles.as_slice() {
            [one] => Ok((v, *one)),
            many => Err(StartError::MasterKeyDuplicated(v, many.len())),
        })
        .collect()
}

/// The handle (session copy) of master key `version`; a version the token lacks is a bad
/// argument, not a lost connection.
pub(super) fn key_handle(conn: &Connection, version: MasterKeyVersion) -> Result<ObjectHandle, CkError> {
    conn.keys.read().unwrap_or_else(|e| e.into_inner()).get(&version).copied().ok_or_else(rv::no_such_key)
}

/// The handle of the audit chain key.
pub(super) fn audit_handle(conn: &Connection) -> Result<ObjectHandle, CkError> {
    conn.audit.read().unwrap_or_else(|e| e.into_inner()).ok_or_else(rv::no_such_key)
}

/// Makes the audit chain key if the token has none (databases made before the chain).
pub(super) fn ensure_audit_key(ctx: &Pkcs11, conn: &Connection) -> Result<(), StartError> {
    if conn.audit.read().unwrap_or_else(|e| e.into_inner()).is_some() {
        return Ok(());
    }
    let session = ctx.open_rw_session(conn.slot)?;
    let handle = generate_hmac_key(&session, AUDIT_KEY_LABEL)?;
    let handle = working_copy(&conn.owner.lock().unwrap_or_else(|e| e.into_inner()), handle);
    *conn.audit.write().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    tracing::info!("audit chain key created on the token");
    Ok(())
}

/// Generates (or adopts, see `Hsm::create_master_key`) master key `version`.
pub(super) fn create_key(ctx: &Pkcs11, conn: &Connection, version: MasterKeyVersion) -> Result<(), HsmError> {
    let ck = |e: CkError| rv::classify(&e);
    let session = ctx.open_rw_session(conn.slot).map_err(ck)?;
    let found = find_master_keys(&session).map_err(|e| HsmError::Refused(e.to_string()))?;
    let handle = match found.get(&version) {
        Some(&existing) => {
            if !is_safe_master_key(&session, existing).map_err(ck)? {
                return Err(HsmError::Refused(format!(
                    "master key {version} already exists on the token but is not a key keyward would have \
                     made (generated in the token, always sensitive, never extractable, sign and verify \
                     only); keyward will not use it: remove it, and find out who put it there"
                )));
            }
            tracing::warn!(%version, "adopting master key left on the token by an unfinished rotation");
            existing
        }
        None => generate_master_key(&session, version).map_err(ck)?,
    };
    let handle = working_copy(&conn.owner.lock().unwrap_or_else(|e| e.into_inner()), handle);
    if let Some(replaced) = conn.keys.write().unwrap_or_else(|e| e.into_inner()).insert(version, handle) {
        drop_copy(conn, replaced, found.get(&version).copied());
    }
    Ok(())
}

/// Starts using master key `version` that another process (another cluster node) made on the
/// token; nothing to do if this connection has it already. `Refused` when it is missing or is
/// not a key keyward would have made.
pub(super) fn pick_up_key(ctx: &Pkcs11, conn: &Connection, version: MasterKeyVersion) -> Result<(), HsmError> {
    if conn.keys.read().unwrap_or_else(|e| e.into_inner()).contains_key(&version) {
        return Ok(());
    }
    let session = ctx.open_ro_session(conn.slot).map_err(|e| rv::classify(&e))?;
    let found = find_master_keys(&session).map_err(|e| HsmError::Refused(e.to_string()))?;
    let token = vetted(&session, found.get(&version).copied(), is_safe_master_key, &format!("master key {version}"))?;
    let handle = working_copy(&conn.owner.lock().unwrap_or_else(|e| e.into_inner()), token);
    conn.keys.write().unwrap_or_else(|e| e.into_inner()).entry(version).or_insert(handle);
    Ok(())
}

/// The token's key `what` (`found`: its handle, if the token holds it) if keyward could have
/// made it (`is_safe`); `Refused` when it is missing or is not.
pub(super) fn vetted(
    session: &Session,
    found: Option<ObjectHandle>,
    is_safe: fn(&Session, ObjectHandle) -> Result<bool, CkError>,
    what: &str,
) -> Result<ObjectHandle, HsmError> {
    let token = found.ok_or_else(|| HsmError::Refused(format!("{what} is not on the token")))?;
    if !is_safe(session, token).map_err(|e| rv::classify(&e))? {
        return Err(HsmError::Refused(format!(
            "{what} on the token is not a key keyward would have made; keyward will not use it"
        )));
    }
    Ok(token)
}

/// Destroys master key `version` on the token (and forgets its session copy).
pub(super) fn destroy_key(ctx: &Pkcs11, conn: &Connection, version: MasterKeyVersion) -> Result<(), HsmError> {
    let ck = |e: CkError| rv::classify(&e);
    let session = ctx.open_rw_session(conn.slot).map_err(ck)?;
    let found = find_master_keys(&session).map_err(|e| HsmError::Failed(e.to_string()))?;
    let removed = conn.keys.write().unwrap_or_else(|e| e.into_inner()).remove(&version);
    if let Some(removed) = removed {
        drop_copy(conn, removed, found.get(&version).copied());
    }
    if let Some(&handle) = found.get(&version) {
        session.destroy_object(handle).map_err(ck)?;
    }
    Ok(())
}

/// A session-object copy of the token key `token` (same attributes: sensitive, never
/// extractable; it never leaves the HSM), owned by `owner`, for the hot path: SoftHSM2 re-reads
/// and locks a token object's file on every use, and its session objects are ~2.8x faster
/// (22k vs 63k HMAC/s on one thread here). Falls back to the token object if the HSM does not
/// copy it, whatever the return code (e.g. `CKA_COPYABLE` false): the copy is an optimization.
pub(super) fn working_copy(owner: &Session, token: ObjectHandle) -> ObjectHandle {
    match owner.copy_object(token, &[Attribute::Token(false)]) {
        Ok(copy) => copy,
        Err(e) => {
            tracing::debug!(error = %e, "the HSM did not copy a key into a session object; using the token object");
            token
        }
    }
}

/// Destroys `handle` if it is a session copy (not the token object itself).
fn drop_copy(conn: &Connection, handle: ObjectHandle, token: Option<ObjectHandle>) {
    if Some(handle) != token
        && let Err(e) = conn.owner.lock().unwrap_or_else(|e| e.into_inner()).destroy_object(handle)
    {
        tracing::debug!(error = %e, "destroying a key's session copy");
    }
}
