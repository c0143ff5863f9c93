//! Opening the token: loading the module, finding the token by label, logging in, finding the
//! master keys and the audit key, and the start-up checks deferred to the first connection
//! when the token was unreachable at start.

use std::sync::{Mutex, RwLock};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::Error as CkError,
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};

use super::{
    config::{Pkcs11Config, StartError},
    objects::{self, ensure_audit_key, find_label, find_master_keys, working_copy},
    ops::check_digest,
    pool::{Connection, Inner},
    signing::{UnwrapCache, ensure_wrapping_key, find_wrapping_keys},
};
use crate::{
    domain::{
        key::{Digest, MasterKeyVersion},
        secret::{Pin, SensitiveBytes},
    },
    hsm::{AUDIT_KEY_LABEL, rv},
};

/// What `keyward serve` checks when it connects to the token at start, deferred to the first
/// successful connection when the token was unreachable then.
pub struct FirstConnect {
    /// Live master key versions: each must be on the token.
    pub required: Vec<MasterKeyVersion>,
    /// Retired versions: a warning if still on the token.
    pub retired: Vec<MasterKeyVersion>,
    /// The live versions' self-test digests over `self_test_input`: each must verify.
    pub self_tests: Vec<Digest>,
    pub self_test_input: SensitiveBytes,
}

/// `C_Initialize`; a module this process initialized already is fine.
pub(in crate::hsm) fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Err(e) if !rv::is_already_initialized(&e) => Err(e),
        _ => Ok(()),
    }
}

/// The module, loaded but not initialized.
pub(super) fn open_module(config: &Pkcs11Config) -> Result<Pkcs11, StartError> {
    Pkcs11::new(&config.module)
        .map_err(|e| StartError::Module { path: config.module.display().to_string(), reason: e.to_string() })
}

/// The module, loaded and initialized.
pub(in crate::hsm) fn load_module(config: &Pkcs11Config) -> Result<Pkcs11, StartError> {
    let ctx = open_module(config)?;
    initialize(&ctx)?;
    Ok(ctx)
}

/// The one slot whose token is labelled `label`.
pub(in crate::hsm) fn find_token(ctx: &Pkcs11, label: &str) -> Result<Slot, StartError> {
    let mut found = Vec::new();
    for slot in ctx.get_slots_with_token()? {
        if ctx.get_token_info(slot)?.label().trim_end() == label {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(StartError::TokenMissing(label.to_owned())),
        many => Err(StartError::TokenAmbiguous(many.len(), label.to_owned())),
    }
}

/// Logs the application in as the user; already logged in is fine.
pub(in crate::hsm) fn login(session: &Session, pin: &Pin) -> Result<(), StartError> {
    match session.login(UserType::User, Some(&AuthPin::from(pin.expose()))) {
        Err(e) if !rv::is_already_logged_in(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

impl Inner {
    /// A new connection: token, login, master keys (their session copies) and audit key; runs
    /// the deferred start-up checks if this is the first.
    pub(super) fn connect(&self) -> Result<Connection, StartError> {
        let pin = self.pin.to_try()?;
        let slot = find_token(&self.ctx, &self.config.token_label)?;
        let session = self.ctx.open_ro_session(slot)?;
        match login(&session, &pin) {
            Err(StartError::PinIncorrect) => {
                self.pin.refused(pin);
                return Err(StartError::PinIncorrect);
            }
            other => other?,
        }
        let token_keys = find_master_keys(&session)?;
        for (version, handle) in &token_keys {
            if !objects::is_safe_master_key(&session, *handle)? {
                tracing::warn!(
                    %version,
                    "master key on the token lacks the attributes keyward gives its master keys \
                     (generated in the token, always sensitive, never extractable, sign and verify only)"
                );
            }
        }
        let owner = self.ctx.open_ro_session(slot)?;
        let keys = token_keys.into_iter().map(|(v, handle)| (v, working_copy(&owner, handle))).collect();
        let audit = find_label(&session, AUDIT_KEY_LABEL)?.map(|handle| working_copy(&owner, handle));
        let wrapping =
            find_wrapping_keys(&session)?.into_iter().map(|(v, handle)| (v, working_copy(&owner, handle))).collect();
        let conn = Connection {
            slot,
            keys: RwLock::new(keys),
            audit: RwLock::new(audit),
            wrapping: RwLock::new(wrapping),
            unwrapped: Mutex::new(UnwrapCache::default()),
            idle: Mutex::new(vec![session]),
            owner: Mutex::new(owner),
        };
        let mut first = self.first_connect.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(checks) = first.as_ref() {
            self.first_checks(&conn, checks)?;
            *first = None;
        }
        Ok(conn)
    }

    /// The start-up checks, on the first connection after starting without the token.
    fn first_checks(&self, conn: &Connection, checks: &FirstConnect) -> Result<(), StartError> {
        {
            let keys = conn.keys.read().unwrap_or_else(|e| e.into_inner());
            if let Some(missing) = checks.required.iter().find(|v| !keys.contains_key(v)) {
                return Err(StartError::MasterKeyMissing(*missing));
            }
            for retired in checks.retired.iter().filter(|v| keys.contains_key(v)) {
                tracing::warn!(version = %retired, "a retired master key is still on the token; run `keyward master retire` for it again to destroy it");
            }
        }
        ensure_audit_key(&self.ctx, conn)?;
        ensure_wrapping_key(&self.ctx, conn)?;
        let idle = conn.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let session = idle.ok_or_else(|| StartError::Pkcs11("the new connection has no session".into()))?;
        let verified = checks.self_tests.iter().try_for_each(|digest| {
            match check_digest(&session, conn, checks.self_test_input.expose(), digest)? {
                true => Ok(()),
                false => Err(StartError::SelfTestFailed(digest.version)),
            }
        });
        conn.idle.lock().unwrap_or_else(|e| e.into_inner()).push(session);
        verified?;
        tracing::info!("HSM connected for the first time: master keys, audit key, wrapping key and self-test checked");
        Ok(())
    }
}
