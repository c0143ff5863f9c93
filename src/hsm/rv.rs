//! PKCS#11 return codes → `HsmError`, in one table: which failures mean "the token is gone,
//! reconnect" and which are plain refusals.

use cryptoki::error::{Error as CkError, RvError};

use crate::domain::ports::HsmError;

/// Whether the error means the token or our sessions are gone, so the adapter must reconnect.
pub fn is_connection_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
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
                | RvError::GeneralError
                | RvError::FunctionFailed,
            _
        )
    )
}

/// Maps a cryptoki error to the port's error. The text carries the function and return code
/// only: PKCS#11 errors never contain key material.
pub fn classify(e: &CkError) -> HsmError {
    if is_connection_lost(e) { HsmError::Unavailable(e.to_string()) } else { HsmError::Failed(e.to_string()) }
}

#[cfg(test)]
mod tests {
    use cryptoki::context::Function;

    use super::*;

    #[test]
    fn token_loss_is_unavailable_and_refusals_are_failures() {
        let gone = CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign);
        assert!(matches!(classify(&gone), HsmError::Unavailable(_)));
        let session = CkError::Pkcs11(RvError::SessionHandleInvalid, Function::Verify);
        assert!(matches!(classify(&session), HsmError::Unavailable(_)));
        let refused = CkError::Pkcs11(RvError::MechanismInvalid, Function::SignInit);
        assert!(matches!(classify(&refused), HsmError::Failed(_)));
    }
}
