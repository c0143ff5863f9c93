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
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (`--listen` overrides).
    pub listen: Option<SocketAddr>,
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
}

/// Durations in the configuration: humantime text (`90d`, `24h`, `30s`); `"off"` for none.
mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::domain::key::duration_text(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
    }

    pub mod off {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_str("off"),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = String::deserialize(d)?;
            if text == "off" {
                return Ok(None);
            }
            let parsed = humantime::parse_duration(&text).map_err(|e| D::Error::custom(format!("{text:?}: {e}")))?;
            Ok((!parsed.is_zero()).then_some(parsed))
        }
    }
}

/// Key rotation: defaults, the rotation policy, the reaper and the sweeper that applies them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationSection {
    /// How long a rotated key keeps verifying when RotateKey names no grace period.
    #[serde(with = "human")]
    pub grace_period: Duration,
    /// `max_age` of new keys that name none (`"off"`: no limit).
    #[serde(with = "human::off")]
    pub max_age: Option<Duration>,
    /// Verifications say `rotation_due` from this long before a key's `max_age`.
    #[serde(with = "human")]
    pub warning: Duration,
    /// A key stops verifying this long after its `max_age`.
    #[serde(with = "human")]
    pub max_age_grace: Duration,
    /// The sweeper disables keys unused this long (`"off"`: never). The root key is exempt.
    #[serde(with = "human::off")]
    pub inactive_after: Option<Duration>,
    /// How often the sweeper runs (`"off"`: only on SweepKeys).
    #[serde(with = "human::off")]
    pub sweep_interval: Option<Duration>,
}

impl Default for RotationSection {
    fn default() -> Self {
        let d = crate::domain::rotation::RotationConfig::default();
        Self {
            grace_period: d.default_grace,
            max_age: d.default_max_age,
            warning: d.rules.warning,
            max_age_grace: d.rules.grace,
            inactive_after: d.inactive_after,
            sweep_interval: Some(Duration::from_secs(3600)),
        }
    }
}

impl RotationSection {
    pub fn domain(&self) -> crate::domain::rotation::RotationConfig {
        crate::domain::rotation::RotationConfig {
            default_grace: self.grace_period,
            default_max_age: self.max_age,
            rules: crate::domain::policy::RotationRules { warning: self.warning, grace: self.max_age_grace },
            inactive_after: self.inactive_after,
        }
    }
}

/// The background re-digest after a master key rotation.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterSection {
    /// Keys per transaction and progress checkpoint.
    pub migration_batch: usize,
    /// HSM operations the re-digest keeps in flight.
    pub migration_concurrency: usize,
    /// Pause between batches, leaving the HSM to verifications.
    pub migration_pause_ms: u64,
}

impl Default for MasterSection {
    fn default() -> Self {
        let d = crate::domain::rotation::MigrationConfig::default();
        Self {
            migration_batch: d.batch,
            migration_concurrency: d.concurrency,
            migration_pause_ms: d.pause.as_millis() as u64,
        }
    }
}

impl MasterSection {
    pub fn domain(&self) -> crate::domain::rotation::MigrationConfig {
        crate::domain::rotation::MigrationConfig {
            batch: self.migration_batch.max(1),
            concurrency: self.migration_concurrency.max(1),
            pause: Duration::from_millis(self.migration_pause_ms),
        }
    }
}

/// The usage log: one record per verification, with retention by age and by count.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageLogSection {
    pub enabled: bool,
    /// Records waiting to be written at most; beyond it they are dropped, counted and audited.
    pub queue_capacity: usize,
    /// Records per write at most.
    pub batch: usize,
    /// How long the writer gathers records before writing them (ms): the most a crash loses.
    pub flush_ms: u64,
    /// Records older than this are pruned (`"off"`: kept whatever their age).
    #[serde(with = "human::off")]
    pub max_age: Option<Duration>,
    /// Records kept at most, oldest pruned first (0: no limit).
    pub max_records: u64,
}

impl Default for UsageLogSection {
    fn default() -> Self {
        let d = crate::domain::usage_log::UsageLogConfig::default();
        Self {
            enabled: d.enabled,
            queue_capacity: d.queue_capacity,
            batch: d.batch,
            flush_ms: d.linger.as_millis() as u64,
            max_age: d.max_age,
            max_records: d.max_records.unwrap_or(0),
        }
    }
}

impl UsageLogSection {
    pub fn domain(&self) -> crate::domain::usage_log::UsageLogConfig {
        crate::domain::usage_log::UsageLogConfig {
            enabled: self.enabled,
            queue_capacity: self.queue_capacity.max(1),
            batch: self.batch.max(1),
            linger: Duration::from_millis(self.flush_ms),
            max_age: self.max_age,
            max_records: (self.max_records > 0).then_some(self.max_records),
            ..Default::default()
        }
    }
}

/// The database's disk: see the README's "Disk full".
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Mutations are refused (`UNAVAILABLE`) while fewer bytes are free on the database's file
    /// system; 0: no reserve.
    pub min_free_bytes: u64,
}

/// The default reserve: room for sled's next log segments and a compaction.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

impl Default for StoreSection {
    fn default() -> Self {
        Self { min_free_bytes: DEFAULT_MIN_FREE_BYTES }
    }
}

/// Brute-force defence: per-source failure counters with exponential back-off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BruteForceSection {
    pub enabled: bool,
    /// Failed verifications (or authentications) within `window` that block a source.
    pub max_failures: u32,
    #[serde(with = "human")]
    pub window: Duration,
    /// The first block's length; each further block of the same source doubles it.
    #[serde(with = "human")]
    pub backoff: Duration,
    /// The longest block.
    #[serde(with = "human")]
    pub max_backoff: Duration,
    /// Sources whose counters are kept at once (least recently used are dropped).
    pub capacity: usize,
}

impl Default for BruteForceSection {
    fn default() -> Self {
        let d = crate::domain::throttle::ThrottleConfig::default();
        Self {
            enabled: d.enabled,
            max_failures: d.max_failures,
            window: d.window,
            backoff: d.base_backoff,
            max_backoff: d.max_backoff,
            capacity: d.capacity,
        }
    }
}

impl BruteForceSection {
    pub fn domain(&self) -> Result<crate::domain::throttle::ThrottleConfig, ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("brute_force.{what}")));
        if self.max_failures == 0 {
            return invalid("max_failures must be at least 1");
        }
        if self.window.is_zero() || self.backoff.is_zero() {
            return invalid("window and backoff must be longer than 0s");
        }
        if self.max_backoff < self.backoff {
            return invalid("max_backoff must be at least backoff");
        }
        Ok(crate::domain::throttle::ThrottleConfig {
            enabled: self.enabled,
            max_failures: self.max_failures,
            window: self.window,
            base_backoff: self.backoff,
            max_backoff: self.max_backoff,
            capacity: self.capacity.max(1),
        })
    }
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
    /// Calls in flight across all connections; beyond it `RESOURCE_EXHAUSTED` (0: no limit).
    pub max_in_flight: usize,
    /// Largest request header list (gRPC metadata), in bytes.
    pub max_header_list_bytes: u32,
    pub shutdown_grace_ms: u64,
    /// How long a caller's HSM-verified credential is remembered (memory only).
    pub auth_cache_ttl_ms: u64,
    pub auth_cache_capacity: usize,
    /// Serve plaintext gRPC on a non-loopback address (`--allow-plaintext`): only behind a
    /// TLS-terminating proxy or on a network you trust.
    pub allow_plaintext: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        let limits = ServerLimits::default();
        Self {
            max_message_bytes: limits.max_message_bytes,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
            max_concurrent_streams: limits.max_concurrent_streams,
            max_in_flight: limits.max_in_flight,
            max_header_list_bytes: limits.max_header_list_bytes,
            shutdown_grace_ms: limits.shutdown_grace.as_millis() as u64,
            auth_cache_ttl_ms: 300_000,
            auth_cache_capacity: 10_000,
            allow_plaintext: false,
        }
    }
}

impl ServerSection {
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_message_bytes: self.max_message_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_streams: self.max_concurrent_streams,
            max_in_flight: self.max_in_flight,
            max_header_list_bytes: self.max_header_list_bytes,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

/// TLS on the gRPC listener (see `crate::tls`); `--tls-cert`, `--tls-key` and `--client-ca` win.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server's certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether every client must present a certificate. Default `required`.
    pub client_auth: Option<ClientAuth>,
    /// How often the files are checked for changes (`"off"`: only on SIGHUP).
    #[serde(with = "human::off")]
    pub reload_interval: Option<Duration>,
    /// A verified client certificate's SAN (URI or DNS name) → the key id it stands for.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub identities: std::collections::BTreeMap<String, String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            client_auth: None,
            reload_interval: Some(Duration::from_secs(5)),
            identities: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate from `client_ca`.
    Required,
    /// A certificate, if presented, must chain to `client_ca`; clients without one may still
    /// authenticate with a bearer key.
    Optional,
}

/// The TLS files given on the command line, over `[tls]`.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// What the server needs to serve TLS, checked for consistency (the files are read later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With the client authentication it requires.
    pub client_ca: Option<(PathBuf, ClientAuth)>,
    pub reload_interval: Option<Duration>,
}

impl TlsSection {
    /// The TLS settings with the flags over the file, or `None` for plaintext. Refuses
    /// combinations that cannot work (a key without a certificate, mTLS without TLS...).
    pub fn settings(&self, flags: &TlsFlags) -> Result<Option<TlsSettings>, ConfigError> {
        let cert = flags.cert.clone().or_else(|| self.cert.clone());
        let key = flags.key.clone().or_else(|| self.key.clone());
        let client_ca = flags.client_ca.clone().or_else(|| self.client_ca.clone());
        let invalid = |reason: &str| Err(ConfigError::Invalid(format!("TLS: {reason}")));
        if self.client_auth.is_some() && client_ca.is_none() {
            return invalid("tls.client_auth needs tls.client_ca (or --client-ca)");
        }
        if !self.identities.is_empty() && client_ca.is_none() {
            return invalid(
                "tls.identities needs tls.client_ca (or --client-ca): only verified client certificates stand for keys",
            );
        }
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if client_ca.is_some() => {
                return invalid(
                    "a client CA (tls.client_ca, --client-ca) needs the server's own certificate and key: set \
                     tls.cert and tls.key (or --tls-cert and --tls-key)",
                );
            }
            (None, None) => return Ok(None),
            (Some(_), None) => return invalid("a certificate without its private key: set tls.key (or --tls-key)"),
            (None, Some(_)) => {
                return invalid("a private key without its certificate: set tls.cert (or --tls-cert)");
            }
        };
        let client_ca = client_ca.map(|ca| (ca, self.client_auth.unwrap_or(ClientAuth::Required)));
        Ok(Some(TlsSettings { cert, key, client_ca, reload_interval: self.reload_interval }))
    }
}

/// Whether plaintext gRPC may be served on `addr`: on loopback always, elsewhere only when
/// explicitly allowed.
pub fn plaintext_allowed(addr: SocketAddr, allowed: bool) -> bool {
    allowed || addr.ip().to_canonical().is_loopback()
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

    /// The TOML blocks of docs/configuration.md, then docs/operations.md, after `from`, in order.
    fn readme_toml_blocks(from: &str) -> Vec<&'static str> {
        let readme = concat!(include_str!("../docs/configuration.md"), include_str!("../docs/operations.md"));
        let mut rest = &readme[readme.find(from).expect("the heading")..];
        let mut blocks = Vec::new();
        while let Some(start) = rest.find("```toml\n") {
            rest = &rest[start + "```toml\n".len()..];
            let end = rest.find("```").expect("a closed block");
            blocks.push(&rest[..end]);
            rest = &rest[end..];
        }
        blocks
    }

    #[test]
    fn every_readme_configuration_example_is_valid() {
        let blocks = readme_toml_blocks("# Configuration");
        assert!(blocks.len() >= 2, "the TLS example and the configuration reference");
        for block in blocks {
            let c: Config = toml::from_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
            c.tls.settings(&TlsFlags::default()).unwrap_or_else(|e| panic!("{e}\n{block}"));
            crate::tls::Identities::from_config(&c.tls.identities).unwrap();
        }
    }

    #[test]
    fn the_readme_configuration_example_is_valid_and_says_the_defaults() {
        let block = readme_toml_blocks("# Configuration")[0];
        let c: Config = toml::from_str(block).unwrap();
        let d = Config::default();
        assert_eq!(toml::to_string(&c.rotation).unwrap(), toml::to_string(&d.rotation).unwrap());
        assert_eq!(toml::to_string(&c.master).unwrap(), toml::to_string(&d.master).unwrap());
        assert_eq!(toml::to_string(&c.policy).unwrap(), toml::to_string(&d.policy).unwrap());
        assert_eq!(toml::to_string(&c.server).unwrap(), toml::to_string(&d.server).unwrap());
        assert_eq!(toml::to_string(&c.tls).unwrap(), toml::to_string(&d.tls).unwrap());
        assert_eq!(toml::to_string(&c.brute_force).unwrap(), toml::to_string(&d.brute_force).unwrap());
        assert_eq!(toml::to_string(&c.store).unwrap(), toml::to_string(&d.store).unwrap());
    }

    #[test]
    fn brute_force_reads_durations_and_refuses_settings_that_cannot_work() {
        let c: Config =
            toml::from_str("[brute_force]\nmax_failures = 5\nwindow = \"10s\"\nmax_backoff = \"1h\"\n").unwrap();
        let d = c.brute_force.domain().unwrap();
        assert_eq!((d.max_failures, d.window, d.max_backoff), (5, Duration::from_secs(10), Duration::from_secs(3600)));
        assert_eq!(d.base_backoff, Duration::from_secs(1), "unset keys keep their default");
        for bad in ["max_failures = 0", "window = \"0s\"", "backoff = \"2h\""] {
            let c: Config = toml::from_str(&format!("[brute_force]\n{bad}\n")).unwrap();
            let err = c.brute_force.domain().unwrap_err().to_string();
            assert!(err.contains("brute_force."), "{bad}: {err}");
        }
    }

    #[test]
    fn tls_flags_win_over_the_file_and_inconsistent_settings_are_refused() {
        let c: Config = toml::from_str(
            "[tls]\ncert = \"/etc/k/s.crt\"\nkey = \"/etc/k/s.key\"\nclient_ca = \"/etc/k/ca.crt\"\n\
             client_auth = \"optional\"\nreload_interval = \"2s\"\n[tls.identities]\n\"spiffe://a/b\" = \"x\"\n",
        )
        .unwrap();
        let s = c.tls.settings(&TlsFlags::default()).unwrap().unwrap();
        assert_eq!(s.cert, PathBuf::from("/etc/k/s.crt"));
        assert_eq!(s.client_ca, Some((PathBuf::from("/etc/k/ca.crt"), ClientAuth::Optional)));
        assert_eq!(s.reload_interval, Some(Duration::from_secs(2)));
        let flags = TlsFlags { cert: Some("/x.crt".into()), key: None, client_ca: Some("/ca2".into()) };
        let s = c.tls.settings(&flags).unwrap().unwrap();
        assert_eq!((s.cert, s.key), (PathBuf::from("/x.crt"), PathBuf::from("/etc/k/s.key")));
        assert_eq!(s.client_ca.unwrap().0, PathBuf::from("/ca2"));

        assert_eq!(TlsSection::default().settings(&TlsFlags::default()).unwrap(), None, "no TLS by default");
        let only_cert = TlsFlags { cert: Some("/x.crt".into()), ..Default::default() };
        let err = TlsSection::default().settings(&only_cert).unwrap_err().to_string();
        assert!(err.contains("without its private key"), "{err}");
        let only_ca = TlsFlags { client_ca: Some("/ca".into()), ..Default::default() };
        let err = TlsSection::default().settings(&only_ca).unwrap_err().to_string();
        assert!(err.contains("needs the server's own certificate"), "{err}");
        let mut section = TlsSection { client_auth: Some(ClientAuth::Required), ..Default::default() };
        assert!(section.settings(&TlsFlags::default()).unwrap_err().to_string().contains("client_auth needs"));
        section.client_auth = None;
        section.identities.insert("spiffe://a/b".into(), "x".into());
        assert!(section.settings(&TlsFlags::default()).unwrap_err().to_string().contains("identities needs"));
        let err = toml::from_str::<Config>("[tls]\nclient_auth = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        for (addr, allowed) in [("127.0.0.1:1", true), ("[::1]:1", true), ("[::ffff:127.0.0.1]:1", true)] {
            assert_eq!(plaintext_allowed(addr.parse().unwrap(), false), allowed, "{addr}");
        }
        for addr in ["0.0.0.0:1", "[::]:1", "10.0.0.5:1"] {
            assert!(!plaintext_allowed(addr.parse().unwrap(), false), "{addr}");
            assert!(plaintext_allowed(addr.parse().unwrap(), true), "{addr}");
        }
    }

    #[test]
    fn rotation_durations_read_as_text_with_off() {
        let c: Config = toml::from_str(
            "[rotation]\nmax_age = \"off\"\ngrace_period = \"2h\"\ninactive_after = \"30d\"\nsweep_interval = \"off\"\n",
        )
        .unwrap();
        assert_eq!(c.rotation.max_age, None);
        assert_eq!(c.rotation.grace_period, Duration::from_secs(7200));
        assert_eq!(c.rotation.inactive_after, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.rotation.sweep_interval, None);
        assert_eq!(c.rotation.warning, Duration::from_secs(14 * 86_400), "unset keys keep their default");
        let err = toml::from_str::<Config>("[rotation]\nmax_age = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        let round: Config = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        assert_eq!(round.rotation.max_age, Config::default().rotation.max_age);
    }
}
