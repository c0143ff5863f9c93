//! The fixture of the services' tests: the fake HSM (counting its calls) over a real temporary
//! sled store that counts key reads and writes, with the clock injected; and what those tests
//! share.

pub(crate) use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

pub(crate) use crate::{
    domain::{
        Services, ServicesConfig,
        access::{Caller, RequestContext},
        audit::{Actor, AuditAction, AuditEvent, RecordedEvent},
        audit_reader::AuditReader,
        auth::Authenticator,
        bootstrap::bootstrap,
        clock::{Clock, ManualClock},
        cluster::ClusterReader,
        error::{Error, Result},
        key::{KeyId, KeyRecord, KeyState, MasterKeyVersion, RateLimit, Refill},
        key_format,
        keys::{CreatedKey, KeyAdmin, NewKey},
        listing::ListFilter,
        master::{MasterKeys, MasterStatus},
        policy::VerifyCode,
        ports::{DigestSwap, KeyChange, MasterState, Store, StoreError, Updated},
        rotation::MigrationConfig,
        secret::{KeyString, Secret},
        update::KeyPatch,
        usage::UsageDelta,
        verification::{Verification, Verifier, VerifyRequest},
    },
    hsm::fake::FakeHsm,
    store::SledStore,
};

/// A store that counts reads and updates of key records, to prove which paths touch the database.
pub(crate) struct CountingStore {
    pub inner: SledStore,
    pub reads: AtomicU64,
    pub updates: AtomicU64,
}

impl Store for CountingStore {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_key(id)
    }
    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_ {
        self.inner.scan_keys(after)
    }
    fn key_index(&self) -> Result<&crate::domain::key_index::KeyIndex, StoreError> {
        self.inner.key_index()
    }
    async fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        self.inner.insert_key(record, event).await
    }
    async fn update_key<F>(&self, id: KeyId, change: F) -> Result<Updated>
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static,
    {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.update_key(id, change).await
    }
    async fn rotate_key<F>(&self, id: KeyId, change: F) -> Result<(Updated, KeyRecord)>
    where
        F: Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord, Vec<AuditEvent>)> + Send + 'static,
    {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.rotate_key(id, change).await
    }
    async fn replace_digests(
        &self,
        swaps: Vec<DigestSwap>,
        master: Option<(MasterState, Option<AuditEvent>)>,
    ) -> Result<usize, StoreError> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.inner.replace_digests(swaps, master).await
    }
    async fn set_master(&self, master: MasterState, event: AuditEvent) -> Result<(), StoreError> {
        self.inner.set_master(master, event).await
    }
    async fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await
    }
    async fn append_events(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.inner.append_events(events).await
    }
    async fn append_usage(
        &self,
        records: Vec<crate::domain::usage_log::UsageRecord>,
        retention: crate::domain::usage_log::Retention,
    ) -> Result<u64, StoreError> {
        self.inner.append_usage(records, retention).await
    }
    fn key_usage(
        &self,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        max_scan: usize,
    ) -> Result<crate::domain::usage_log::KeyUsage, StoreError> {
        self.inner.key_usage(key, since, until, max_scan)
    }
    fn query_usage(
        &self,
        query: &crate::domain::usage_log::UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<crate::domain::usage_log::UsageRecord>, Option<Vec<u8>>), StoreError> {
        self.inner.query_usage(query, cursor, limit, max_scan)
    }
    fn master(&self) -> Result<Option<MasterState>, StoreError> {
        self.inner.master()
    }
    async fn initialize(&self, master: MasterState, root: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        self.inner.initialize(master, root, event).await
    }
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.audit_after(after, limit)
    }
    fn query_audit(
        &self,
        query: &crate::domain::audit::AuditQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<Vec<u8>>), StoreError> {
        self.inner.query_audit(query, cursor, limit, max_scan)
    }
    fn audit_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.audit_durable()
    }
    fn verify_chain(&self, from: u64, to: Option<u64>) -> Result<crate::domain::audit::ChainReport, StoreError> {
        self.inner.verify_chain(from, to)
    }
}

pub(crate) struct Fixture {
    pub auth: Arc<Authenticator<FakeHsm, CountingStore>>,
    pub keys: Arc<KeyAdmin<FakeHsm, CountingStore>>,
    pub verify: Arc<Verifier<FakeHsm, CountingStore>>,
    pub master: Arc<MasterKeys<FakeHsm, CountingStore>>,
    pub audit: Arc<AuditReader<CountingStore>>,
    pub cluster: Arc<ClusterReader<CountingStore>>,
    pub anomaly: Option<Arc<crate::domain::anomaly::AnomalyWatch<FakeHsm, CountingStore>>>,
    pub hsm: Arc<FakeHsm>,
    pub store: Arc<CountingStore>,
    pub clock: Arc<ManualClock>,
    pub root: Caller,
    pub root_key: String,
    pub _dir: tempfile::TempDir,
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(ServicesConfig::default()).await
}

pub(crate) async fn fixture_with(config: ServicesConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Arc::new(FakeHsm::new());
    let store = Arc::new(CountingStore {
        inner: SledStore::open(&dir.path().join("db"), hsm.clone()).unwrap(),
        reads: AtomicU64::new(0),
        updates: AtomicU64::new(0),
    });
    let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let root = bootstrap(&*hsm, &*store, &*clock, MasterKeyVersion(1)).await.unwrap();
    let master = store.master().unwrap().unwrap();
    let Services { auth, keys, verify, master, audit, cluster, anomaly } =
        Services::new(hsm.clone(), store.clone(), clock.clone(), master, config);
    master.self_test().await.unwrap();
    let root_key = root.key.expose().to_owned();
    let root = auth.authenticate(Some(&root_key), &RequestContext::default()).await.unwrap();
    Fixture { auth, keys, verify, master, audit, cluster, anomaly, hsm, store, clock, root, root_key, _dir: dir }
}

pub(crate) fn named(name: &str, scopes: &[&str]) -> NewKey {
    NewKey { name: name.into(), scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

pub(crate) fn req<'a>(key: &'a str, client_ip: &'a str, required_scopes: &'a [String]) -> VerifyRequest<'a> {
    VerifyRequest { key, client_ip, required_scopes, cost: None }
}

pub(crate) fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

impl Fixture {
    /// The same HSM, store and clock with master state `state` recorded (and the HSM holding
    /// only the wrapping keys it names as live), as a restarted keyward would find them.
    pub async fn reopened_with(self, state: MasterState) -> Fixture {
        for v in 1..=state.wrap_keys.iter().map(|w| w.version.0).max().unwrap_or(1) + 1 {
            let version = crate::domain::signing::WrapKeyVersion(v);
            if !state.is_wrap_live(version) {
                crate::domain::ports::Hsm::destroy_wrap_key(&*self.hsm, version).await.unwrap();
            }
        }
        let event = AuditEvent {
            at: self.clock.now(),
            actor: Actor::System("test".into()),
            action: AuditAction::MasterRotated,
            target: None,
            client_addr: None,
            reason: None,
            changes: Vec::new(),
            code: None,
        };
        self.store.set_master(state.clone(), event).await.unwrap();
        let Services { auth, keys, verify, master, audit, cluster, anomaly } =
            Services::new(self.hsm.clone(), self.store.clone(), self.clock.clone(), state, ServicesConfig::default());
        let root = auth.authenticate(Some(&self.root_key), &RequestContext::default()).await.unwrap();
        Fixture { auth, keys, verify, master, audit, cluster, anomaly, root, ..self }
    }

    pub async fn create(&self, name: &str, scopes: &[&str]) -> CreatedKey {
        self.keys.create(&self.root, named(name, scopes), &RequestContext::default()).await.unwrap()
    }

    pub async fn code(&self, key: &str, required: &[&str]) -> VerifyCode {
        self.verify.verify(&self.root, req(key, "", &strings(required))).await.unwrap().code
    }
}

/// A new key named `name`, shaped by `f`.
pub(crate) fn with(name: &str, f: impl FnOnce(&mut NewKey)) -> NewKey {
    let mut new = named(name, &[]);
    f(&mut new);
    new
}

/// Master key re-digests in batches of two.
pub(crate) fn small_batches() -> ServicesConfig {
    ServicesConfig {
        migration: MigrationConfig { batch: 2, concurrency: 2, pause: Duration::ZERO },
        ..Default::default()
    }
}

pub(crate) const V1: MasterKeyVersion = MasterKeyVersion(1);
pub(crate) const V2: MasterKeyVersion = MasterKeyVersion(2);

impl Fixture {
    pub async fn create_with(&self, new: NewKey) -> CreatedKey {
        self.keys.create(&self.root, new, &RequestContext::default()).await.unwrap()
    }

    pub async fn verify_full(&self, key: &str, client_ip: &str, cost: Option<u32>) -> Verification {
        let request = VerifyRequest { key, client_ip, required_scopes: &[], cost };
        self.verify.verify(&self.root, request).await.unwrap()
    }

    pub async fn patch(&self, id: KeyId, mask: &[&str], f: impl FnOnce(&mut KeyPatch)) -> Result<KeyRecord> {
        let mut patch = KeyPatch { mask: strings(mask), ..Default::default() };
        f(&mut patch);
        self.keys.update(&self.root, &id.to_string(), patch, &RequestContext::default()).await
    }

    pub fn remaining(&self, id: KeyId) -> Option<u64> {
        self.keys.get(&self.root, &id.to_string()).unwrap().quota.map(|q| q.remaining)
    }

    /// The counted master status, from the key index; checked against a scan of every record.
    pub fn status(&self) -> MasterStatus {
        let indexed = self.master.master_status(&self.root, true).unwrap();
        assert_eq!(indexed, self.master.scanned_status().unwrap(), "the key index counts as a scan does");
        indexed
    }

    pub async fn migrate_all(&self) -> usize {
        let mut batches = 1;
        while self.master.migrate_batch().await.unwrap() {
            batches += 1;
        }
        batches
    }

    /// Waits for the background re-digests a verification starts.
    pub async fn settle(&self) {
        for _ in 0..200 {
            if self.verify.redigesting_now() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("lazy re-digests did not finish");
    }

    pub fn actions(&self) -> Vec<AuditAction> {
        self.store.audit_after(0, 1000).unwrap().into_iter().map(|e| e.event.action).collect()
    }

    pub async fn verify_full_rotation(&self, key: &str) -> Verification {
        self.verify.verify(&self.root, req(key, "", &[])).await.unwrap()
    }
}

/// The codes of `n` verifications of `key`, one after another.
pub(crate) async fn futures_codes(f: &Fixture, key: &str, n: usize) -> Vec<VerifyCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(f.verify_full(key, "", None).await.code);
    }
    out
}
