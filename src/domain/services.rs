//! The domain services built together over one set of dependencies, for the composition root:
//! each service gets only the shared pieces it uses (see `Services::new`).

use std::{sync::Arc, time::Duration};

use super::{
    access::Access,
    anomaly::{AnomalyConfig, AnomalyWatch, Detector},
    audit_reader::AuditReader,
    auth::{AuthConfig, Authenticator},
    brute_force::{BruteForce, BruteForceConfig},
    clock::Clock,
    cluster::ClusterReader,
    deps::Deps,
    keys::KeyAdmin,
    ledger::Ledger,
    master::{MasterKeys, MasterView},
    ports::{Hsm, MasterState, Store},
    proof::Prover,
    quota,
    rotation::{MigrationConfig, RotationConfig},
    signing::SigningConfig,
    usage_log::UsageLogConfig,
    verification::{Verifier, VerifyConfig},
};

/// Tunables of the services.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    pub auth_cache_capacity: usize,
    pub auth_cache_ttl: Duration,
    /// Keys whose rate-limit state is kept in memory at once.
    pub rate_limiter_capacity: usize,
    /// The most quota uses leased at a time per key: the most a crash can lose per key.
    pub quota_max_lease: u64,
    pub rotation: RotationConfig,
    pub migration: MigrationConfig,
    pub usage_log: UsageLogConfig,
    /// Brute-force defence: per-source failure counters and back-off.
    pub brute_force: BruteForceConfig,
    /// Per-key anomaly detection over the usage log's stream.
    pub anomaly: AnomalyConfig,
    /// Signed requests (VerifySignature): clock skew, required parameters, replay cache.
    pub signing: SigningConfig,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            auth_cache_capacity: 10_000,
            auth_cache_ttl: Duration::from_secs(300),
            rate_limiter_capacity: 100_000,
            quota_max_lease: quota::DEFAULT_MAX_LEASE,
            rotation: RotationConfig::default(),
            migration: MigrationConfig::default(),
            usage_log: UsageLogConfig::default(),
            brute_force: BruteForceConfig::default(),
            anomaly: AnomalyConfig::default(),
            signing: SigningConfig::default(),
        }
    }
}

/// Every domain service of one server. The gRPC APIs take the ones they use; the background
/// tasks are `verify.flush_usage` with `auth.flush_auth_failures` (periodic),
/// `verify.write_usage_log` (a loop), `master.run_migrations`, `keys.sweep` (periodic),
/// `anomaly.evaluate` (once a window, when the detector is on), and at shutdown
/// `verify.shutdown`, `auth.flush_auth_failures` and `verify.flush_usage_log`.
pub struct Services<H, S> {
    pub auth: Arc<Authenticator<H, S>>,
    pub keys: Arc<KeyAdmin<H, S>>,
    pub verify: Arc<Verifier<H, S>>,
    pub master: Arc<MasterKeys<H, S>>,
    pub audit: Arc<AuditReader<S>>,
    pub cluster: Arc<ClusterReader<S>>,
    /// `None` with `[anomaly] enabled = false`.
    pub anomaly: Option<Arc<AnomalyWatch<H, S>>>,
}

// Written by hand: the derive would require `H: Clone` and `S: Clone`.
impl<H, S> Clone for Services<H, S> {
    fn clone(&self) -> Self {
        Self {
            auth: self.auth.clone(),
            keys: self.keys.clone(),
            verify: self.verify.clone(),
            master: self.master.clone(),
            audit: self.audit.clone(),
            cluster: self.cluster.clone(),
            anomaly: self.anomaly.clone(),
        }
    }
}

impl<H: Hsm, S: Store> Services<H, S> {
    /// The services over `hsm`, `store` and `clock`, starting from the master key state
    /// `master` as read from the store.
    pub fn new(hsm: Arc<H>, store: Arc<S>, clock: Arc<dyn Clock>, master: MasterState, config: ServicesConfig) -> Self {
        let deps = Deps::new(hsm, store, clock);
        let master = Arc::new(MasterView::new(master));
        let prover = Arc::new(Prover::new(deps.clone(), master.clone()));
        let access = Arc::new(Access::new(deps.clock.clone()));
        let ledger = Arc::new(Ledger::default());
        let brute_force = Arc::new(BruteForce::new(config.brute_force));
        let detector = config.anomaly.enabled.then(|| Arc::new(Detector::new(config.anomaly.clone())));
        let anomaly = detector.clone().map(|d| Arc::new(AnomalyWatch::new(deps.clone(), d)));
        let rules = config.rotation.rules;
        let auth_config =
            AuthConfig { cache_capacity: config.auth_cache_capacity, cache_ttl: config.auth_cache_ttl, rules };
        let verify_config = VerifyConfig {
            rules,
            rate_limiter_capacity: config.rate_limiter_capacity,
            quota_max_lease: config.quota_max_lease,
            usage_log: config.usage_log,
            signing: config.signing,
        };
        Self {
            auth: Arc::new(Authenticator::new(
                deps.clone(),
                auth_config,
                master.clone(),
                prover.clone(),
                brute_force.clone(),
                access.clone(),
                ledger.clone(),
            )),
            keys: Arc::new(KeyAdmin::new(
                deps.clone(),
                config.rotation,
                master.clone(),
                prover.clone(),
                ledger.clone(),
                access.clone(),
            )),
            verify: Arc::new(Verifier::new(
                deps.clone(),
                verify_config,
                prover,
                ledger,
                brute_force,
                access.clone(),
                detector,
            )),
            audit: Arc::new(AuditReader::new(deps.store.clone(), access.clone())),
            cluster: Arc::new(ClusterReader::new(deps.store.clone(), access.clone())),
            master: Arc::new(MasterKeys::new(deps, config.migration, master, access)),
            anomaly,
        }
    }
}
