//! One-time token setup for `keyward init`: a development SoftHSM2 token, and the master key
//! generated inside the token (sensitive, never extractable).

use cryptoki::{
    error::Error as CkError,
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};

use super::{
    master_key_label,
    pkcs11::{Pkcs11Config, StartError, find_master_keys, find_token, load_module, login},
};
use crate::domain::{key::MasterKeyVersion, secret::Pin};

/// Initializes the first uninitialized token slot with `label` and sets its user PIN.
/// For development tokens (SoftHSM2 always offers one free slot).
pub fn init_dev_token(config: &Pkcs11Config, so_pin: &Pin) -> Result<(), StartError> {
    let ctx = load_module(config)?;
    let result = (|| {
        let mut free = None;
        for slot in ctx.get_slots_with_token()? {
            if !ctx.get_token_info(slot)?.token_initialized() {
                free = Some(slot);
                break;
            }
        }
        let slot = free.ok_or_else(|| StartError::Pkcs11("no uninitialized token slot is free".into()))?;
        ctx.init_token(slot, &AuthPin::from(so_pin.expose()), &config.token_label)?;
        // The slot may be renumbered once its token is initialized: find it again by label.
        let slot = find_token(&ctx, &config.token_label)?;
        let session = ctx.open_rw_session(slot)?;
        session.login(UserType::So, Some(&AuthPin::from(so_pin.expose())))?;
        session.init_pin(&AuthPin::from(config.pin.expose()))?;
        session.logout()?;
        Ok(())
    })();
    let _ = ctx.finalize();
    result
}

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
pub(super) fn generate_master_key(session: &Session, version: MasterKeyVersion) -> Result<ObjectHandle, CkError> {
    generate_hmac_key(session, &master_key_label(version))
}

/// Generates an HMAC key labelled `label` in a read-write session (already logged in).
pub(super) fn generate_hmac_key(session: &Session, label: &str) -> Result<ObjectHandle, CkError> {
    session.generate_key(&Mechanism::GenericSecretKeyGen, &hmac_key_template(label))
}

/// Whether `key` is one keyward would have generated: made inside the token and never out of
/// it (`CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`), and usable only to sign and
/// verify. A key imported with a known value, or one that could wrap or decrypt, fails this.
pub(super) fn is_safe_master_key(session: &Session, key: ObjectHandle) -> Result<bool, CkError> {
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
    let types: Vec<T> = wanted.iter().map(|(t, _)| *t).collect();
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

/// Generates master key `version` and, if the token has none, the audit key inside the token.
/// If that master key version already exists: with `adopt_existing` (an interrupted `init` made
/// it), uses it when it is a key keyward would have made; otherwise refuses.
pub fn create_master_key(
    config: &Pkcs11Config,
    version: MasterKeyVersion,
    adopt_existing: bool,
) -> Result<(), StartError> {
    let ctx = load_module(config)?;
    let result = (|| {
        let slot = find_token(&ctx, &config.token_label)?;
        let session = ctx.open_rw_session(slot)?;
        login(&session, &config.pin)?;
        match find_master_keys(&session)?.get(&version) {
            None => {
                generate_master_key(&session, version)?;
            }
            Some(_) if !adopt_existing => return Err(StartError::MasterKeyExists(version)),
            Some(&existing) if !is_safe_master_key(&session, existing)? => {
                return Err(StartError::Pkcs11(format!(
                    "master key {version} already exists on the token but is not a key keyward would have made \
                     (generated in the token, always sensitive, never extractable, sign and verify only); keyward \
                     will not use it: remove it, and find out who put it there"
                )));
            }
            Some(_) => {
                tracing::warn!(%version, "adopting the master key an interrupted `keyward init` left on the token")
            }
        }
        if super::pkcs11::find_label(&session, super::AUDIT_KEY_LABEL)?.is_none() {
            generate_hmac_key(&session, super::AUDIT_KEY_LABEL)?;
        }
        Ok(())
    })();
    let _ = ctx.finalize();
    result
}
