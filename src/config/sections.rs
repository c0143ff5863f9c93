//! The configuration sections of the domain and the server: rotation, master key migration,
//! usage log, store, brute-force defence, policy state, HSM and server limits.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, human};

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

/// The database's disk: see "Disk full" in docs/operations.md.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Mutations are refused (`UNAVAILABLE`) while fewer bytes are free on the database's file
    /// system; 0: no reserve.
    pub min_free_bytes: u64,
    /// The longest a mutation waits for the database to commit and flush it; past it the
    /// mutation answers `UNAVAILABLE` and writes are refused until a restart.
    #[serde(with = "human")]
    pub write_timeout: Duration,
}

/// The default reserve: room for sled's next log segments and a compaction.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

impl Default for StoreSection {
    fn default() -> Self {
        Self { min_free_bytes: DEFAULT_MIN_FREE_BYTES, write_timeout: Duration::from_secs(5) }
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
        let d = crate::domain::brute_force::BruteForceConfig::default();
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
    pub fn domain(&self) -> Result<crate::domain::brute_force::BruteForceConfig, ConfigError> {
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
        Ok(crate::domain::brute_force::BruteForceConfig {
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

/// The gRPC server's limits, as `grpc::serve` takes them; the defaults are documented in docs/configuration.md.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub max_message_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// Calls in flight across all connections; beyond it `RESOURCE_EXHAUSTED` at once (0: no limit).
    pub max_in_flight: usize,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: request headers (metadata) larger are refused.
    pub max_header_list_bytes: u32,
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_in_flight: 1024,
            max_header_list_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
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
