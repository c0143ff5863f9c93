//! Signing keys: the HMAC secret a client signs requests with (RFC 9421, `hmac-sha256`),
//! which keyward keeps only wrapped by an HSM AES key, and checks inside the HSM; `params` reads
//! a signature's parameters, `replay` remembers its nonce.

pub mod params;
pub mod replay;

use std::fmt;

/// How a key is presented: the key string itself (bearer), or signatures made with a secret
/// keyward keeps wrapped (signing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    #[default]
    Bearer,
    Signing,
}

/// A version of the AES key that wraps signing secrets on the token (label
/// `keyward-wrap-v<n>`, beside the master keys' `keyward-master-v<n>`). `keyward init` makes v1;
/// rotating the master key to version N makes wrapping key vN too, and the re-digest that
/// follows re-wraps every signing secret under it inside the HSM; retiring master key N destroys
/// wrapping key vN once no secret needs it. A version number is thus shared with the master
/// key made with it (a token rotated before signing keys existed keeps v1 until its next
/// rotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WrapKeyVersion(pub u32);

impl fmt::Display for WrapKeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The wrapping key version `keyward init` makes (and `keyward serve` on a token that has none).
pub const FIRST_WRAP_KEY: WrapKeyVersion = WrapKeyVersion(1);

/// A signing secret as keyward stores it: wrapped (`CKM_AES_KEY_WRAP`, RFC 3394) under wrapping
/// key `version`. The blob can be unwrapped only inside the HSM that holds that key; it is not
/// secret on its own, so it may be logged in `Debug` as a length only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WrappedSecret {
    pub version: WrapKeyVersion,
    pub blob: Vec<u8>,
}

impl fmt::Debug for WrappedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedSecret({}, {} bytes)", self.version, self.blob.len())
    }
}

/// `[signing]`: how signed requests are checked.
#[derive(Clone, Debug)]
pub struct SigningConfig {
    /// How far `created` may be from now, either way; also how long nonces are remembered.
    pub max_skew: std::time::Duration,
    /// Whether a signature without `created` is refused (`BAD_SIGNATURE_PARAMS`).
    pub require_created: bool,
    /// Whether a signature without `nonce` is refused (`BAD_SIGNATURE_PARAMS`).
    pub require_nonce: bool,
    /// The most nonces remembered at once (see `replay`).
    pub replay_cache_capacity: usize,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            max_skew: std::time::Duration::from_secs(300),
            require_created: true,
            require_nonce: true,
            replay_cache_capacity: 1_000_000,
        }
    }
}
