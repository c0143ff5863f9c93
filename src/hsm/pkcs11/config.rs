//! How the adapter finds and logs in to the token (`Pkcs11Config`), and why opening it can fail
//! (`StartError`): each a clear message for the operator, never a PIN or key material.

use std::path::PathBuf;

use cryptoki::error::Error as CkError;

use crate::{
    domain::{key::MasterKeyVersion, secret::Pin},
    hsm::rv,
};

/// Where the token is and how to log in. `Debug` never shows the PIN.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: Pin,
    /// Where `pin` came from, if a file: re-read on reconnect, so that a corrected PIN is
    /// picked up without a restart.
    pub pin_file: Option<PathBuf>,
    /// Sessions in the pool: the most HSM calls in flight at once.
    pub sessions: usize,
}

/// Why the HSM could not be opened at startup: each a clear message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the PKCS#11 module {path}: {reason}")]
    Module { path: String, reason: String },
    #[error("no token labelled {0:?} is present (is the token initialized, and SOFTHSM2_CONF right?)")]
    TokenMissing(String),
    #[error("{0} tokens are labelled {1:?}; labels must be unique")]
    TokenAmbiguous(usize, String),
    #[error("the HSM PIN is wrong (CKR_PIN_INCORRECT)")]
    PinIncorrect,
    #[error("the HSM PIN is locked (CKR_PIN_LOCKED)")]
    PinLocked,
    #[error(
        "the HSM refused this PIN before; it is not offered again (a token locks its user after a few wrong PINs): {}",
        if *from_file { "correct hsm.pin_file" } else { "KEYWARD_HSM_PIN cannot change while keyward runs: restart it with the right PIN" }
    )]
    PinUnchanged { from_file: bool },
    #[error("the self-test digest of master key {0} does not verify: the token holds a different key")]
    SelfTestFailed(MasterKeyVersion),
    #[error("master key {0} is missing from the token")]
    MasterKeyMissing(MasterKeyVersion),
    #[error("master key {0} exists {1} times on the token; it must be unique")]
    MasterKeyDuplicated(MasterKeyVersion, usize),
    #[error("master key {0} already exists on the token")]
    MasterKeyExists(MasterKeyVersion),
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
}

/// The return code decides: see `rv::start_error`.
impl From<CkError> for StartError {
    fn from(e: CkError) -> Self {
        rv::start_error(e)
    }
}

impl StartError {
    /// Whether the error is the token's state, which may change while keyward runs (absent,
    /// unreadable, refusing the PIN), rather than a configuration to fix before starting.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StartError::TokenMissing(_)
                | StartError::PinIncorrect
                | StartError::PinLocked
                | StartError::PinUnchanged { .. }
                | StartError::Pkcs11(_)
        )
    }
}
