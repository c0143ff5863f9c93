//! One-time token setup for `keyward init`: a development SoftHSM2 token, and the master key
//! generated inside the token (sensitive, never extractable).

use cryptoki::{session::UserType, types::AuthPin};

use super::pkcs11::{
    Pkcs11Config, StartError, find_label, find_master_keys, find_token, generate_hmac_key, generate_master_key,
    load_module, login,
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

/// Generates master key `version` and, if the token has none, the audit key inside the token.
/// Refuses if that master key version already exists.
pub fn create_master_key(config: &Pkcs11Config, version: MasterKeyVersion) -> Result<(), StartError> {
    let ctx = load_module(config)?;
    let result = (|| {
        let slot = find_token(&ctx, &config.token_label)?;
        let session = ctx.open_rw_session(slot)?;
        login(&session, &config.pin)?;
        if find_master_keys(&session)?.contains_key(&version) {
            return Err(StartError::MasterKeyExists(version));
        }
        generate_master_key(&session, version)?;
        if find_label(&session, super::AUDIT_KEY_LABEL)?.is_none() {
            generate_hmac_key(&session, super::AUDIT_KEY_LABEL)?;
        }
        Ok(())
    })();
    let _ = ctx.finalize();
    result
}
