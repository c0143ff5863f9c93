//! One-time token setup for `keyward init`: a development SoftHSM2 token, and the master key
//! generated inside the token (sensitive, never extractable).

use cryptoki::{session::UserType, types::AuthPin};

use super::pkcs11::{
    Pkcs11Config, StartError, find_label, find_master_keys, find_token, generate_hmac_key, generate_master_key,
    generate_wrapping_key_if_missing, is_safe_master_key, load_module, login,
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

/// Generates master key `version` and, if the token has none, the audit key and the signing-secret
/// wrapping key inside the token.
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
        if find_label(&session, super::AUDIT_KEY_LABEL)?.is_none() {
            generate_hmac_key(&session, super::AUDIT_KEY_LABEL)?;
        }
        generate_wrapping_key_if_missing(&session)?;
        Ok(())
    })();
    let _ = ctx.finalize();
    result
}
