//! Typed configuration: `DIR/keyward.toml` (or `--config`), then `KEYWARD_*` environment
//! variables over it, then command-line flags over both. Unknown keys are an error. Relative
//! paths in the file are relative to the file's directory.

mod anomaly;
mod authz;
mod cluster;
mod console;
mod human;
mod listen;
mod sections;
mod signing;
mod tls;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use self::{
    anomaly::AnomalySection,
    authz::{AuthzSection, BEARER_HEADER, MAX_ROUTES, RouteRule},
    cluster::{
        ClusterFlags, ClusterSection, ClusterSettings, DEFAULT_ETCD_PREFIX, MAX_NODE_ID_LEN, host_name,
        sanitize_node_id,
    },
    console::ConsoleSection,
    listen::{ListenAddr, UNIX_PREFIX},
    sections::{
        BruteForceSection, DEFAULT_MIN_FREE_BYTES, HsmSection, MasterSection, PolicySection, RotationSection,
        ServerLimits, ServerSection, StoreSection, UsageLogSection,
    },
    signing::SigningSection,
    tls::{ClientAuth, TlsFlags, TlsSection, TlsSettings},
};
use crate::domain::secret::Pin;

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
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the gRPC listener, `HOST:PORT` or `unix:/abs/path` (`--listen` overrides).
    pub listen: Option<ListenAddr>,
    /// Address of the HTTP forward-auth listener (`/v1/authorize`), `HOST:PORT` or
    /// `unix:/abs/path` (`--http-listen` overrides); off if unset.
    pub http_listen: Option<ListenAddr>,
    /// Address of the Prometheus `/metrics` endpoint (`--metrics-listen` overrides); off if unset.
    pub metrics_listen: Option<SocketAddr>,
    pub hsm: HsmSection,
    pub server: ServerSection,
    pub policy: PolicySection,
    pub rotation: RotationSection,
    pub master: MasterSection,
    pub usage_log: UsageLogSection,
    pub store: StoreSection,
    pub brute_force: BruteForceSection,
    pub tls: TlsSection,
    pub cluster: ClusterSection,
    pub authz: AuthzSection,
    pub anomaly: AnomalySection,
    pub signing: SigningSection,
    pub console: ConsoleSection,
}

/// Whether plaintext may be served on `addr`: on loopback and on a Unix socket always,
/// elsewhere only when explicitly allowed.
pub fn plaintext_allowed(addr: &ListenAddr, allowed: bool) -> bool {
    allowed || addr.is_local()
}

/// The default configuration file of a data directory.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keyward.toml")
}

impl Config {
    /// Reads `path` if it exists (a missing file means defaults), then applies the environment.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str::<Config>(&text)
                .map_err(|e| ConfigError::Parse { path: path.display().to_string(), reason: e.message().to_owned() })?
                .relative_to(path.parent().unwrap_or(Path::new(""))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Config::default(),
            Err(e) => return Err(ConfigError::Read { path: path.display().to_string(), reason: e.to_string() }),
        };
        config.apply_env(|name| std::env::var_os(name).map(PathBuf::from));
        Ok(config)
    }

    /// The file's relative paths joined to `dir`, the directory holding the file (so that a
    /// data directory holding its configuration can be moved).
    fn relative_to(mut self, dir: &Path) -> Self {
        let paths = [
            &mut self.hsm.module,
            &mut self.hsm.pin_file,
            &mut self.hsm.softhsm2_conf,
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.tls.client_ca,
            &mut self.cluster.ca_file,
            &mut self.cluster.cert_file,
            &mut self.cluster.key_file,
            &mut self.cluster.password_file,
        ];
        for path in paths.into_iter().flatten() {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        self
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
mod tests;
