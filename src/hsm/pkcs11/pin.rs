//! Where the adapter gets the user PIN on each (re)connect, and the lockout guard: a PIN the
//! token refused is never offered again (real HSMs lock the user after a few wrong PINs); a new
//! login is tried only once `hsm.pin_file` holds a different PIN.

use std::{path::PathBuf, sync::Mutex};

use super::config::StartError;
use crate::domain::secret::Pin;

pub(super) struct PinSource {
    /// The PIN given at start (`KEYWARD_HSM_PIN`, or the file's content then).
    initial: Pin,
    /// Re-read on every reconnect when the PIN came from a file.
    file: Option<PathBuf>,
    /// The last PIN the token refused.
    refused: Mutex<Option<Pin>>,
}

impl PinSource {
    pub(super) fn new(initial: Pin, file: Option<PathBuf>) -> Self {
        Self { initial, file, refused: Mutex::new(None) }
    }

    /// The PIN to log in with, unless it is the one the token last refused.
    pub(super) fn to_try(&self) -> Result<Pin, StartError> {
        let pin = match &self.file {
            None => Pin::new(self.initial.expose().to_owned()),
            Some(path) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    StartError::Pkcs11(format!("cannot read the PIN file {}: {}", path.display(), e.kind()))
                })?);
                Pin::new(text.lines().next().unwrap_or_default().to_owned())
            }
        };
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match refused.as_ref() {
            Some(bad) if bad.expose() == pin.expose() => {
                Err(StartError::PinUnchanged { from_file: self.file.is_some() })
            }
            _ => Ok(pin),
        }
    }

    /// Remembers that the token refused `pin`.
    pub(super) fn refused(&self, pin: Pin) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(pin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_pin_is_not_offered_again_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.pin");
        std::fs::write(&file, "1111\n").unwrap();
        let source = PinSource::new(Pin::new("1111".into()), Some(file.clone()));
        let pin = source.to_try().unwrap();
        assert_eq!(pin.expose(), "1111");
        source.refused(pin);
        assert!(matches!(source.to_try(), Err(StartError::PinUnchanged { from_file: true })));
        std::fs::write(&file, "2222\n").unwrap();
        assert_eq!(source.to_try().unwrap().expose(), "2222");
    }

    #[test]
    fn a_refused_pin_from_the_environment_is_never_offered_again() {
        let source = PinSource::new(Pin::new("1111".into()), None);
        source.refused(source.to_try().unwrap());
        let err = source.to_try().err().unwrap();
        assert!(matches!(err, StartError::PinUnchanged { from_file: false }));
        assert!(!err.to_string().contains("1111"));
    }
}
