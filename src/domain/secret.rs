//! Types that hold secrets: zeroized on drop, redacted in `Debug`, never `Display`ed.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of a key's random secret.
pub const SECRET_LEN: usize = 32;

/// The random part of an API key, drawn from the HSM's RNG.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A whole key string as given to or by a client (`<prefix>_<body>`).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyString(Zeroizing<String>);

impl KeyString {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyString(<redacted>)")
    }
}

/// A PIN or password for the HSM.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// Bytes that must not outlive their use (a digest input, say): zeroized on drop, redacted.
pub struct SensitiveBytes(Zeroizing<Vec<u8>>);

impl SensitiveBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SensitiveBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SensitiveBytes(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let secret = Secret::from_bytes([0x41; SECRET_LEN]);
        let key = KeyString::new("kw_supersecretvalue".into());
        let pin = Pin::new("1234-pin".into());
        let all = format!("{secret:?} {key:?} {pin:?} {:?}", SensitiveBytes::new(vec![0x41; 8]));
        assert!(!all.contains("AAAA") && !all.contains("65, 65"), "{all}");
        assert!(!all.contains("supersecret"), "{all}");
        assert!(!all.contains("1234"), "{all}");
        assert_eq!(all.matches("<redacted>").count(), 4);
    }
}
