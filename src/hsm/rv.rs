//! PKCS#11 return codes → what the adapter does about them, in one table (`meaning`): which
//! failures mean "the token is gone, reconnect", which are the PIN refused, which are harmless
//! (already initialized, already logged in), which are a MAC that does not match, and which are
//! plain failures. Every other file asks this one; none matches a `CKR_*` itself.

use cryptoki::{
    context::Function,
    error::{Error as CkError, RvError},
};

use super::pkcs11::StartError;
use crate::domain::ports::HsmError;

/// What a failed PKCS#11 call means to the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// The token or our sessions are gone: calls answer `UNAVAILABLE`, health goes
    /// `NOT_SERVING`, the adapter reconnects.
    TokenGone,
    /// `CKR_PIN_INCORRECT`: never offered again (see `pin.rs`).
    PinIncorrect,
    /// `CKR_PIN_LOCKED`.
    PinLocked,
    /// `C_Initialize` on a module this process initialized already: nothing to do.
    AlreadyInitialized,
    /// `C_Login` while the application is logged in already (a login is per application, not
    /// per session): nothing to do.
    AlreadyLoggedIn,
    /// `C_Verify`: the MAC does not match (or has the wrong length). An answer, not a failure.
    SignatureMismatch,
    /// Anything else: this call failed; the connection stays.
    Failed,
}

/// The table.
pub fn meaning(e: &CkError) -> Meaning {
    let CkError::Pkcs11(rv, _) = e else { return Meaning::Failed };
    match rv {
        RvError::DeviceRemoved
        | RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::ObjectHandleInvalid
        | RvError::KeyHandleInvalid
        | RvError::SlotIdInvalid
        | RvError::UserNotLoggedIn
        | RvError::CryptokiNotInitialized
        // SoftHSM2 answers CKR_GENERAL_ERROR once its token directory is gone or unreadable.
        | RvError::GeneralError
        | RvError::FunctionFailed => Meaning::TokenGone,
        RvError::PinIncorrect => Meaning::PinIncorrect,
        RvError::PinLocked => Meaning::PinLocked,
        RvError::CryptokiAlreadyInitialized => Meaning::AlreadyInitialized,
        RvError::UserAlreadyLoggedIn => Meaning::AlreadyLoggedIn,
        RvError::SignatureInvalid | RvError::SignatureLenRange => Meaning::SignatureMismatch,
        _ => Meaning::Failed,
    }
}

/// Whether the error means the token or our sessions are gone, so the adapter must reconnect.
pub fn is_token_gone(e: &CkError) -> bool {
    meaning(e) == Meaning::TokenGone
}

/// Whether `C_Initialize` failed only because the module is initialized already.
pub fn is_already_initialized(e: &CkError) -> bool {
    meaning(e) == Meaning::AlreadyInitialized
}

/// Whether `C_Login` failed only because the application is logged in already.
pub fn is_already_logged_in(e: &CkError) -> bool {
    meaning(e) == Meaning::AlreadyLoggedIn
}

/// Whether `C_Verify` answered "does not match" (rather than failing).
pub fn is_signature_mismatch(e: &CkError) -> bool {
    meaning(e) == Meaning::SignatureMismatch
}

/// The error for a key the adapter holds no handle for (a master key version the token lacks,
/// or no audit key yet): a bad argument, so a plain failure, never token loss.
pub fn no_such_key() -> CkError {
    CkError::Pkcs11(RvError::ArgumentsBad, Function::SignInit)
}

/// The error for a wrapped signing secret the token refused to unwrap while the token itself
/// is fine (SoftHSM2 answers `CKR_GENERAL_ERROR` to a blob that fails its integrity check): a
/// damaged record, so a plain failure, never token loss.
pub fn wrapped_key_invalid() -> CkError {
    CkError::Pkcs11(RvError::WrappedKeyInvalid, Function::UnwrapKey)
}

/// Maps a cryptoki error to the port's error. The text carries the function and return code
/// only: PKCS#11 errors never contain key material.
pub fn classify(e: &CkError) -> HsmError {
    match meaning(e) {
        Meaning::TokenGone => HsmError::Unavailable(e.to_string()),
        _ => HsmError::Failed(e.to_string()),
    }
}

/// Maps a cryptoki error met while opening the token (module, slot, login, keys) to the
/// operator's start-up error.
pub fn start_error(e: CkError) -> StartError {
    match meaning(&e) {
        Meaning::PinIncorrect => StartError::PinIncorrect,
        Meaning::PinLocked => StartError::PinLocked,
        _ => StartError::Pkcs11(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(code: RvError) -> CkError {
        CkError::Pkcs11(code, Function::Sign)
    }

    #[test]
    fn token_loss_is_unavailable_and_refusals_are_failures() {
        let gone = CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign);
        assert!(matches!(classify(&gone), HsmError::Unavailable(_)));
        let session = CkError::Pkcs11(RvError::SessionHandleInvalid, Function::Verify);
        assert!(matches!(classify(&session), HsmError::Unavailable(_)));
        let refused = CkError::Pkcs11(RvError::MechanismInvalid, Function::SignInit);
        assert!(matches!(classify(&refused), HsmError::Failed(_)));
    }

    #[test]
    fn every_way_of_losing_the_token_or_its_sessions_reconnects() {
        for code in [
            RvError::DeviceRemoved,
            RvError::DeviceError,
            RvError::TokenNotPresent,
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::ObjectHandleInvalid,
            RvError::KeyHandleInvalid,
            RvError::UserNotLoggedIn,
            RvError::CryptokiNotInitialized,
            RvError::GeneralError,
        ] {
            assert!(is_token_gone(&rv(code)), "{code:?}");
        }
        for code in [RvError::MechanismInvalid, RvError::ArgumentsBad, RvError::SignatureInvalid, RvError::PinIncorrect]
        {
            assert!(!is_token_gone(&rv(code)), "{code:?}");
        }
        let not_pkcs11 = CkError::NullFunctionPointer;
        assert_eq!(meaning(&not_pkcs11), Meaning::Failed);
    }

    #[test]
    fn harmless_codes_and_mismatches_are_told_apart_from_failures() {
        assert!(is_already_initialized(&rv(RvError::CryptokiAlreadyInitialized)));
        assert!(is_already_logged_in(&rv(RvError::UserAlreadyLoggedIn)));
        assert!(is_signature_mismatch(&rv(RvError::SignatureInvalid)));
        assert!(is_signature_mismatch(&rv(RvError::SignatureLenRange)));
        assert!(!is_signature_mismatch(&rv(RvError::DeviceRemoved)));
        assert!(!is_already_logged_in(&rv(RvError::PinIncorrect)));
    }

    #[test]
    fn a_key_without_a_handle_is_a_failure_not_token_loss() {
        assert!(!is_token_gone(&no_such_key()));
        assert!(matches!(classify(&no_such_key()), HsmError::Failed(_)));
    }

    #[test]
    fn pin_refusals_become_their_own_start_errors() {
        assert!(matches!(start_error(rv(RvError::PinIncorrect)), StartError::PinIncorrect));
        assert!(matches!(start_error(rv(RvError::PinLocked)), StartError::PinLocked));
        let other = start_error(rv(RvError::TokenNotPresent));
        assert!(matches!(&other, StartError::Pkcs11(_)), "{other:?}");
        assert!(other.is_transient());
    }
}
