//! A key's stored record and the small types that name its parts.

use std::{collections::BTreeMap, fmt, str::FromStr, time::SystemTime};

use uuid::Uuid;

/// A key's public identifier: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(Uuid);

impl KeyId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self)
    }
}

/// Which master key in the HSM made a digest. Versions start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MasterKeyVersion(pub u32);

impl fmt::Display for MasterKeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Length in bytes of an HMAC-SHA256 digest.
pub const DIGEST_LEN: usize = 32;

/// An HMAC-SHA256 the HSM computed over a key's id and secret, with the master key version that
/// made it. Not a secret by itself, but never logged: `Debug` shows only the version.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    pub version: MasterKeyVersion,
    pub mac: [u8; DIGEST_LEN],
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}, <redacted>)", self.version)
    }
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Revoked,
}

/// Everything keyward keeps about a key. The secret is not here: only its digest.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub state: KeyState,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
    pub revoke_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The key that created this one; `None` for the root key made by `keyward init`.
    pub created_by: Option<KeyId>,
    pub digest: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_round_trip_through_their_text_form() {
        let id = KeyId::new_v7();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<KeyId>().unwrap(), id);
        assert!("not-a-uuid".parse::<KeyId>().is_err());
    }

    #[test]
    fn digest_debug_hides_the_mac() {
        let d = Digest { version: MasterKeyVersion(3), mac: [0xab; DIGEST_LEN] };
        let s = format!("{d:?}");
        assert_eq!(s, "Digest(v3, <redacted>)");
    }
}
