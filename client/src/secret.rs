//! [`ApiKey`]: an API key held in memory, wiped when dropped and never printed.

use std::fmt;

use zeroize::Zeroizing;

/// An API key (the caller's own, or one to attach to outgoing calls).
///
/// The bytes are overwritten with zeros when the value is dropped, and `Debug` prints
/// `ApiKey(<redacted>)`, so a key never ends up in a log line through this type.
///
/// ```
/// use keyward_client::ApiKey;
///
/// let key = ApiKey::new("kw_example");
/// assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
/// assert_eq!(key.expose(), "kw_example");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    /// Wraps `key`; surrounding whitespace (a trailing newline from a file) is removed.
    pub fn new(key: impl Into<String>) -> Self {
        let key = Zeroizing::new(key.into());
        let trimmed = key.trim();
        if trimmed.len() == key.len() {
            return ApiKey(key);
        }
        // `key` (untrimmed) is wiped when it goes out of scope here.
        ApiKey(Zeroizing::new(trimmed.to_owned()))
    }

    /// The key itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey::new(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        ApiKey::new(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::new("kw_secretsecret");
        assert!(!format!("{key:?}").contains("secret"));
        assert!(!format!("{:?}", Some(key)).contains("secret"));
    }

    #[test]
    fn surrounding_whitespace_is_removed() {
        assert_eq!(ApiKey::new("  kw_abc\n").expose(), "kw_abc");
    }
}
