//! `[console]`: the web console (docs/console.md): where it listens (off unless set), how long
//! an unused session lasts, how many sessions are kept, and how many rows a page shows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ListenAddr, human};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// `HOST:PORT` or `unix:/abs/path` (`--console-listen` overrides); off if unset. Plaintext
    /// only on loopback or a Unix socket, unless TLS is configured or plaintext is allowed.
    pub listen: Option<ListenAddr>,
    /// A session unused this long is signed out. 1 min to 24 h.
    #[serde(with = "human")]
    pub idle_timeout: Duration,
    /// Sessions kept at once; beyond, a sign-in is refused until one ends or idles out.
    pub max_sessions: usize,
    /// Keys and audit events per page, 10 to 500.
    pub page_size: u32,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self { listen: None, idle_timeout: Duration::from_secs(15 * 60), max_sessions: 1000, page_size: 50 }
    }
}

impl ConsoleSection {
    /// Checks the settings' ranges.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&self.idle_timeout) {
            return Err(ConfigError::Invalid("console.idle_timeout must be between 1m and 24h".into()));
        }
        if !(1..=1_000_000).contains(&self.max_sessions) {
            return Err(ConfigError::Invalid("console.max_sessions must be between 1 and 1000000".into()));
        }
        if !(10..=500).contains(&self.page_size) {
            return Err(ConfigError::Invalid("console.page_size must be between 10 and 500".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_off_by_default_and_bad_values_are_named() {
        let d = ConsoleSection::default();
        assert!(d.listen.is_none());
        d.check().unwrap();
        let c: ConsoleSection = toml::from_str("listen = \"127.0.0.1:8443\"\nidle_timeout = \"30m\"\n").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.listen, Some("127.0.0.1:8443".parse().unwrap()));
        let short = ConsoleSection { idle_timeout: Duration::from_secs(1), ..Default::default() };
        assert!(matches!(short.check(), Err(ConfigError::Invalid(why)) if why.contains("console.idle_timeout")));
        let page = ConsoleSection { page_size: 5000, ..Default::default() };
        assert!(matches!(page.check(), Err(ConfigError::Invalid(why)) if why.contains("console.page_size")));
    }
}
