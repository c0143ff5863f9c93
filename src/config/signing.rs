//! `[signing]`: how signed requests (VerifySignature, docs/signing.md) are checked: the clock
//! skew allowed, the parameters required, the replay cache's size; and their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, human};
use crate::domain::signing::SigningConfig;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningSection {
    /// How far a signature's `created` may be from now, either way; nonces are remembered this
    /// long. 1 s to 1 h.
    #[serde(with = "human")]
    pub max_skew: Duration,
    /// Refuse signatures without `created` (BAD_SIGNATURE_PARAMS).
    pub require_created: bool,
    /// Refuse signatures without `nonce` (BAD_SIGNATURE_PARAMS).
    pub require_nonce: bool,
    /// The most nonces remembered at once, on each node (about 100 bytes each).
    pub replay_cache_capacity: usize,
}

impl Default for SigningSection {
    fn default() -> Self {
        let d = SigningConfig::default();
        Self {
            max_skew: d.max_skew,
            require_created: d.require_created,
            require_nonce: d.require_nonce,
            replay_cache_capacity: d.replay_cache_capacity,
        }
    }
}

impl SigningSection {
    pub fn domain(&self) -> Result<SigningConfig, ConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.max_skew) {
            return Err(ConfigError::Invalid("signing.max_skew must be between 1s and 1h".into()));
        }
        if !(1..=10_000_000).contains(&self.replay_cache_capacity) {
            return Err(ConfigError::Invalid("signing.replay_cache_capacity must be between 1 and 10000000".into()));
        }
        Ok(SigningConfig {
            max_skew: self.max_skew,
            require_created: self.require_created,
            require_nonce: self.require_nonce,
            replay_cache_capacity: self.replay_cache_capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_are_named() {
        let d = SigningSection::default().domain().unwrap();
        assert_eq!((d.max_skew, d.require_created, d.require_nonce), (Duration::from_secs(300), true, true));
        let skew = SigningSection { max_skew: Duration::ZERO, ..Default::default() };
        assert!(matches!(skew.domain(), Err(ConfigError::Invalid(why)) if why.contains("signing.max_skew")));
        let cache = SigningSection { replay_cache_capacity: 0, ..Default::default() };
        assert!(matches!(cache.domain(), Err(ConfigError::Invalid(why)) if why.contains("replay_cache_capacity")));
    }
}
