//! Typed configuration: `DIR/keyward.toml` (or `--config`), then `KEYWARD_*` environment
//! variables over it, then command-line flags over both. Unknown keys are an error.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{domain::secret::Pin, grpc::ServerLimits};

/// The token label `keyward init --dev` gives its SoftHSM2 token; refused outside `--dev`.
pub const DEV_TOKEN_LABEL: &str = "keyward-dev";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Where SoftHSM2's module is found on Debian/Ubuntu and other common layouts.
pub const SOFTHSM_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid configuration in {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{0}")]
    Missing(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (`--listen` overrides).
    pub listen: Option<SocketAddr>,
    pub hsm: HsmSection,
    pub server: ServerSection,
    pub policy: PolicySection,
}

/// Where the per-key policies keep their state.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Keys whose rate-limit state is held in memory at once (least recently used are dropped).
    pub rate_limiter_capacity: usize,
    /// Most quota uses leased into memory at once per key: the most a crash can lose per key.
    pub quota_max_lease: u64,
    /// How often usage facts (last use, counts) are written: the most a crash can lose.
    pub usage_flush_ms: u64,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self { rate_limiter_capacity: 100_000, quota_max_lease: 100, usage_flush_ms: 1000 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HsmSection {
    /// Path of the PKCS#11 module. Default: SoftHSM2 where the system installed it.
    pub module: Option<PathBuf>,
    /// Label of the token holding the master key.
    pub token_label: String,
    /// File holding the user PIN (first line). `KEYWARD_HSM_PIN` in the environment wins.
    pub pin_file: Option<PathBuf>,
    /// SoftHSM2 only: its configuration file, exported as `SOFTHSM2_CONF` before loading.
    pub softhsm2_conf: Option<PathBuf>,
    /// Sessions in the pool: the most HSM operations in flight at once.
    pub sessions: usize,
}

impl Default for HsmSection {
    fn default() -> Self {
        Self { module: None, token_label: "keyward".into(), pin_file: None, softhsm2_conf: None, sessions: 2 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub max_message_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_concurrent_streams: u32,
    pub shutdown_grace_ms: u64,
    /// How long a caller's HSM-verified credential is remembered (memory only).
    pub auth_cache_ttl_ms: u64,
    pub auth_cache_capacity: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        let limits = ServerLimits::default();
        Self {
            max_message_bytes: limits.max_message_bytes,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
            max_concurrent_streams: limits.max_concurrent_streams,
            shutdown_grace_ms: limits.shutdown_grace.as_millis() as u64,
            auth_cache_ttl_ms: 300_000,
            auth_cache_capacity: 10_000,
        }
    }
}

impl ServerSection {
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_message_bytes: self.max_message_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_streams: self.max_concurrent_streams,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

/// The default configuration file of a data directory.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keyward.toml")
}

impl Config {
    /// Reads `path` if it exists (a missing file means defaults), then applies the environment.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| ConfigError::Parse { path: path.display().to_string(), reason: e.message().to_owned() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Config::default(),
            Err(e) => return Err(ConfigError::Read { path: path.display().to_string(), reason: e.to_string() }),
        };
        config.apply_env(|name| std::env::var_os(name).map(PathBuf::from));
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<PathBuf>) {
        if let Some(v) = var("KEYWARD_HSM_MODULE") {
            self.hsm.module = Some(v);
        }
        if let Some(v) = var("KEYWARD_HSM_TOKEN_LABEL") {
            self.hsm.token_label = v.to_string_lossy().into_owned();
        }
        if let Some(v) = var("KEYWARD_HSM_PIN_FILE") {
            self.hsm.pin_file = Some(v);
        }
    }

    /// The PKCS#11 module path: configured, or SoftHSM2 where the system installed it.
    pub fn module_path(&self) -> Result<PathBuf, ConfigError> {
        if let Some(m) = &self.hsm.module {
            return Ok(m.clone());
        }
        find_softhsm_module().ok_or_else(|| {
            ConfigError::Missing(
                "no PKCS#11 module configured and SoftHSM2 not found: set hsm.module, or install SoftHSM2 \
                 (Debian/Ubuntu: apt-get install softhsm2)"
                    .into(),
            )
        })
    }

    /// The user PIN: `KEYWARD_HSM_PIN`, else the first line of `hsm.pin_file`.
    pub fn pin(&self) -> Result<Pin, ConfigError> {
        if let Ok(pin) = std::env::var("KEYWARD_HSM_PIN") {
            return Ok(Pin::new(pin));
        }
        let path = self
            .hsm
            .pin_file
            .as_ref()
            .ok_or_else(|| ConfigError::Missing("no HSM PIN: set KEYWARD_HSM_PIN or hsm.pin_file".into()))?;
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?,
        );
        Ok(Pin::new(text.lines().next().unwrap_or_default().to_owned()))
    }
}

pub fn find_softhsm_module() -> Option<PathBuf> {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SOFTHSM_MODULE_PATHS.iter().map(PathBuf::from))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn file_values_and_environment_overlay() {
        let mut c: Config =
            toml::from_str("listen = \"127.0.0.1:7\"\n[hsm]\ntoken_label = \"prod\"\nsessions = 4\n").unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:7".parse().unwrap()));
        assert_eq!(c.hsm.sessions, 4);
        c.apply_env(|name| (name == "KEYWARD_HSM_TOKEN_LABEL").then(|| PathBuf::from("other")));
        assert_eq!(c.hsm.token_label, "other");
        assert_eq!(c.server.max_message_bytes, 64 * 1024);
    }
}
