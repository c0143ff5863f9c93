//! Use-case tests: the fake HSM (counting its calls) over a real temporary sled store, with
//! the clock injected.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use super::*;
use crate::{
    domain::{
        audit::RecordedEvent,
        clock::ManualClock,
        key::{RateLimit, Refill},
        listing::ListFilter,
        ports::{StoreError, Updated},
        update::KeyPatch,
        usage::UsageDelta,
        verify::{Verification, VerifyRequest},
    },
    hsm::fake::FakeHsm,
    store::SledStore,
};

/// A store that counts reads and updates of key records, to prove which paths touch the database.
struct CountingStore {
    inner: SledStore,
    reads: AtomicU64,
    updates: AtomicU64,
}

impl Store for CountingStore {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_key(id)
    }
    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_ {
        self.inner.scan_keys(after)
    }
    async fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        self.inner.insert_key(record, event).await
    }
    async fn update_key<F>(&self, id: KeyId, change: F) -> Result<Updated>
    where
        F: Fn(&KeyRecord) -> super::super::ports::KeyChange + Send + 'static,
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
        swaps: Vec<super::super::ports::DigestSwap>,
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

struct Fixture {
    keys: Keys<FakeHsm, CountingStore>,
    hsm: Arc<FakeHsm>,
    store: Arc<CountingStore>,
    clock: Arc<ManualClock>,
    root: Caller,
    root_key: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with(KeysConfig::default()).await
}

async fn fixture_with(config: KeysConfig) -> Fixture {
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
    let keys = Keys::new(hsm.clone(), store.clone(), clock.clone(), master, config);
    keys.self_test().await.unwrap();
    let root_key = root.key.expose().to_owned();
    let root = keys.authenticate(Some(&root_key), &RequestContext::default()).await.unwrap();
    Fixture { keys, hsm, store, clock, root, root_key, _dir: dir }
}

fn named(name: &str, scopes: &[&str]) -> NewKey {
    NewKey { name: name.into(), scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn req<'a>(key: &'a str, client_ip: &'a str, required_scopes: &'a [String]) -> VerifyRequest<'a> {
    VerifyRequest { key, client_ip, required_scopes, cost: None }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

impl Fixture {
    async fn create(&self, name: &str, scopes: &[&str]) -> CreatedKey {
        self.keys.create(&self.root, named(name, scopes), &RequestContext::default()).await.unwrap()
    }

    async fn code(&self, key: &str, required: &[&str]) -> VerifyCode {
        self.keys.verify(&self.root, req(key, "", &strings(required))).await.unwrap().code
    }
}

#[tokio::test]
async fn a_created_key_verifies_and_its_scopes_are_enforced() {
    let f = fixture().await;
    let created = f.create("orders", &["orders:*"]).await;
    assert!(created.key.expose().starts_with("kw_"));
    let v = f.keys.verify(&f.root, req(created.key.expose(), "203.0.113.9", &strings(&["orders:read"]))).await.unwrap();
    assert_eq!(v.code, VerifyCode::Valid);
    assert_eq!(v.record.unwrap().id, created.record.id);
    assert_eq!(f.code(created.key.expose(), &["billing:read"]).await, VerifyCode::InsufficientScope);
}

#[tokio::test]
async fn malformed_keys_are_invalid_without_touching_the_hsm_or_the_database() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    let key = created.key.expose();
    let mut typo = key.to_string().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let (hsm_before, reads_before) = (f.hsm.calls(), f.store.reads.load(Ordering::SeqCst));
    for bad in ["", "garbage", &key[..key.len() - 1], &typo, &key.replace("kw_", "sk_"), &format!("{key}x")] {
        assert_eq!(f.code(bad, &[]).await, VerifyCode::Invalid, "{bad:?}");
    }
    assert_eq!(f.hsm.calls(), hsm_before, "parsing failures must not reach the HSM");
    assert_eq!(f.store.reads.load(Ordering::SeqCst), reads_before, "nor the database");
}

#[tokio::test]
async fn unknown_ids_and_wrong_secrets_cost_one_hsm_call_and_say_only_invalid() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    let unknown = key_format::render("kw", KeyId::new_v7(), &Secret::from_bytes([1; 32]));
    let wrong_secret = key_format::render("kw", created.record.id, &Secret::from_bytes([2; 32]));
    for key in [unknown, wrong_secret] {
        let before = f.hsm.calls();
        let v = f.keys.verify(&f.root, req(key.expose(), "", &[])).await.unwrap();
        assert_eq!((v.code, v.record.is_none()), (VerifyCode::Invalid, true));
        assert_eq!(f.hsm.calls(), before + 1);
    }
}

#[tokio::test]
async fn a_wrong_secret_is_invalid_even_for_a_revoked_key() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    f.keys.revoke(&f.root, &created.record.id.to_string(), "", &RequestContext::default()).await.unwrap();
    let forged = key_format::render("kw", created.record.id, &Secret::from_bytes([3; 32]));
    assert_eq!(f.code(forged.expose(), &[]).await, VerifyCode::Invalid);
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Revoked);
}

#[tokio::test]
async fn keys_expire_at_their_deadline() {
    let f = fixture().await;
    let mut new = named("short", &[]);
    new.expires_at = Some(f.clock.now() + Duration::from_secs(60));
    let created = f.keys.create(&f.root, new, &RequestContext::default()).await.unwrap();
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Valid);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.code(created.key.expose(), &[]).await, VerifyCode::Expired);
}

#[tokio::test]
async fn revocation_is_audited_once_and_idempotent() {
    let f = fixture().await;
    let created = f.create("svc", &[]).await;
    let id = created.record.id.to_string();
    let ctx = RequestContext { client_addr: Some("127.0.0.1:5000".parse().unwrap()) };
    let first = f.keys.revoke(&f.root, &id, "leaked in CI logs", &ctx).await.unwrap();
    let second = f.keys.revoke(&f.root, &id, "again", &ctx).await.unwrap();
    assert_eq!(first.state, KeyState::Revoked);
    assert_eq!(second.revoke_reason.as_deref(), Some("leaked in CI logs"));
    assert_eq!(first.revoked_at, second.revoked_at);
    let events = f.store.audit_after(0, 100).unwrap();
    let actions: Vec<_> = events.iter().map(|e| (e.seq, e.event.action)).collect();
    assert_eq!(actions, vec![(1, AuditAction::KeyCreated), (2, AuditAction::KeyCreated), (3, AuditAction::KeyRevoked)]);
    let revoked = &events[2].event;
    assert_eq!(revoked.actor, Actor::Key(f.root.key_id));
    assert_eq!(revoked.client_addr.as_deref(), Some("127.0.0.1:5000"));
    assert_eq!(revoked.reason.as_deref(), Some("leaked in CI logs"));
}

#[tokio::test]
async fn revoking_an_unknown_key_is_not_found() {
    let f = fixture().await;
    let err = f.keys.revoke(&f.root, &KeyId::new_v7().to_string(), "", &RequestContext::default()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(f.store.audit_after(0, 100).unwrap().len(), 1, "only the root key's creation");
}

#[tokio::test]
async fn callers_need_the_permission_for_each_call() {
    let f = fixture().await;
    let verifier_key = f.create("gateway", &["keyward:verify"]).await;
    let verifier = f.keys.authenticate(Some(verifier_key.key.expose()), &RequestContext::default()).await.unwrap();
    let ctx = RequestContext::default();
    let err = f.keys.create(&verifier, named("x", &[]), &ctx).await.unwrap_err();
    assert_eq!(err, Error::PermissionDenied("this call needs the `keyward:keys:create` permission".into()));
    assert!(matches!(f.keys.get(&verifier, &verifier_key.record.id.to_string()), Err(Error::PermissionDenied(_))));
    assert!(f.keys.verify(&verifier, req(verifier_key.key.expose(), "", &[])).await.is_ok());
    let app_key = f.create("app", &["*"]).await;
    let app = f.keys.authenticate(Some(app_key.key.expose()), &RequestContext::default()).await.unwrap();
    assert!(matches!(f.keys.verify(&app, req(app_key.key.expose(), "", &[])).await, Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn a_creator_cannot_grant_keyward_permissions_it_lacks() {
    let f = fixture().await;
    let admin_key = f.create("admin", &["keyward:keys:create", "keyward:verify"]).await;
    let admin = f.keys.authenticate(Some(admin_key.key.expose()), &RequestContext::default()).await.unwrap();
    let ctx = RequestContext::default();
    for escalation in [&["keyward:*"][..], &["keyward:keys:revoke"], &["keyward:keys:*"]] {
        let err = f.keys.create(&admin, named("x", escalation), &ctx).await.unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{escalation:?}: {err:?}");
    }
    let ok = f.keys.create(&admin, named("y", &["keyward:verify", "orders:*", "*"]), &ctx).await.unwrap();
    assert_eq!(ok.record.scopes, strings(&["*", "keyward:verify", "orders:*"]));
}

#[tokio::test]
async fn authentication_rejects_missing_bad_revoked_and_expired_credentials() {
    let f = fixture().await;
    assert!(matches!(f.keys.authenticate(None, &RequestContext::default()).await, Err(Error::Unauthenticated(_))));
    assert!(matches!(
        f.keys.authenticate(Some("kw_nope"), &RequestContext::default()).await,
        Err(Error::Unauthenticated(_))
    ));
    let admin = f.create("admin", &["keyward:*"]).await;
    assert!(f.keys.authenticate(Some(admin.key.expose()), &RequestContext::default()).await.is_ok());
    f.keys.revoke(&f.root, &admin.record.id.to_string(), "", &RequestContext::default()).await.unwrap();
    assert!(matches!(
        f.keys.authenticate(Some(admin.key.expose()), &RequestContext::default()).await,
        Err(Error::Unauthenticated(_))
    ));

    let mut new = named("temp", &["keyward:*"]);
    new.expires_at = Some(f.clock.now() + Duration::from_secs(5));
    let temp = f.keys.create(&f.root, new, &RequestContext::default()).await.unwrap();
    assert!(f.keys.authenticate(Some(temp.key.expose()), &RequestContext::default()).await.is_ok());
    f.clock.advance(Duration::from_secs(5));
    assert!(matches!(
        f.keys.authenticate(Some(temp.key.expose()), &RequestContext::default()).await,
        Err(Error::Unauthenticated(_))
    ));
}

#[tokio::test]
async fn an_identity_stands_for_its_key_with_no_hsm_call_and_the_same_checks() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let svc = f.create("payments", &["keyward:verify"]).await;
    let before = f.hsm.calls();
    let caller = f.keys.authenticate_identity(svc.record.id, &ctx).await.unwrap();
    assert_eq!((caller.key_id, caller.scopes), (svc.record.id, strings(&["keyward:verify"])));
    assert_eq!(f.hsm.calls(), before, "the certificate was the proof: no HSM operation");
    assert!(matches!(
        f.keys.authenticate_identity(KeyId::new_v7(), &ctx).await,
        Err(Error::Unauthenticated(m)) if m.contains("does not exist")
    ));

    f.keys.disable(&f.root, &svc.record.id.to_string(), "", &ctx).await.unwrap();
    assert!(matches!(f.keys.authenticate_identity(svc.record.id, &ctx).await, Err(Error::Unauthenticated(_))));
    f.keys.enable(&f.root, &svc.record.id.to_string(), &ctx).await.unwrap();
    assert!(f.keys.authenticate_identity(svc.record.id, &ctx).await.is_ok());

    let mut new = named("office", &["keyward:verify"]);
    new.allowed_cidrs = vec!["10.0.0.0/8".into()];
    let office = f.keys.create(&f.root, new, &ctx).await.unwrap();
    let inside = RequestContext { client_addr: Some("10.1.2.3:5000".parse().unwrap()) };
    let outside = RequestContext { client_addr: Some("192.0.2.1:5000".parse().unwrap()) };
    assert!(f.keys.authenticate_identity(office.record.id, &inside).await.is_ok());
    assert!(matches!(
        f.keys.authenticate_identity(office.record.id, &outside).await,
        Err(Error::Unauthenticated(m)) if m.contains("address")
    ));

    f.keys.revoke(&f.root, &svc.record.id.to_string(), "", &ctx).await.unwrap();
    assert!(matches!(f.keys.authenticate_identity(svc.record.id, &ctx).await, Err(Error::Unauthenticated(_))));
}

#[tokio::test]
async fn a_known_caller_costs_no_hsm_call_but_a_forged_one_still_does() {
    let f = fixture().await;
    let svc = f.create("svc", &["keyward:verify"]).await;
    f.keys.authenticate(Some(svc.key.expose()), &RequestContext::default()).await.unwrap();
    let before = f.hsm.calls();
    f.keys.authenticate(Some(svc.key.expose()), &RequestContext::default()).await.unwrap();
    assert_eq!(f.hsm.calls(), before, "cached");
    let forged = key_format::render("kw", svc.record.id, &Secret::from_bytes([4; 32]));
    assert!(f.keys.authenticate(Some(forged.expose()), &RequestContext::default()).await.is_err());
    assert_eq!(f.hsm.calls(), before + 1, "a different secret for the same id goes to the HSM");
}

#[tokio::test]
async fn listing_pages_through_every_key_in_creation_order() {
    let f = fixture().await;
    for i in 0..5 {
        f.create(&format!("k{i}"), &[]).await;
    }
    let (mut names, mut token) = (Vec::new(), String::new());
    loop {
        let (page, next) = f.keys.list(&f.root, &ListFilter::default(), 2, &token).unwrap();
        assert!(page.len() <= 2);
        names.extend(page.into_iter().map(|k| k.name));
        match next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(names, vec!["root", "k0", "k1", "k2", "k3", "k4"]);
}

#[tokio::test]
async fn an_unreachable_hsm_makes_calls_unavailable_not_invalid() {
    let f = fixture().await;
    let svc = f.create("svc", &[]).await;
    f.hsm.down.store(true, Ordering::SeqCst);
    let err = f.keys.verify(&f.root, req(svc.key.expose(), "", &[])).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(matches!(
        f.keys.create(&f.root, named("x", &[]), &RequestContext::default()).await,
        Err(Error::Unavailable(_))
    ));
    assert!(!f.keys.is_healthy());
}

#[tokio::test]
async fn bootstrapping_twice_is_refused() {
    let f = fixture().await;
    let err = bootstrap(&*f.hsm, &*f.store, &*f.clock, MasterKeyVersion(1)).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
}

#[tokio::test]
async fn a_self_test_against_another_master_key_fails() {
    let f = fixture().await;
    let other = Arc::new(FakeHsm::new());
    let keys =
        Keys::new(other, f.store.clone(), f.clock.clone(), f.store.master().unwrap().unwrap(), KeysConfig::default());
    assert!(matches!(keys.self_test().await, Err(Error::FailedPrecondition(_))));
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let f = fixture().await;
    let ctx = RequestContext::default();
    let err = f.keys.verify(&f.root, req("kw_x", "not-an-ip", &[])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "client_ip", .. }));
    let err = f.keys.verify(&f.root, req("kw_x", "", &strings(&["a::b"]))).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "required_scopes", .. }));
    let mut past = named("x", &[]);
    past.expires_at = Some(f.clock.now());
    assert!(matches!(
        f.keys.create(&f.root, past, &ctx).await,
        Err(Error::InvalidArgument { field: "expires_at", .. })
    ));
    assert!(matches!(f.keys.get(&f.root, "123"), Err(Error::InvalidArgument { field: "key_id", .. })));
    assert!(matches!(
        f.keys.list(&f.root, &ListFilter::default(), 5000, ""),
        Err(Error::InvalidArgument { field: "page_size", .. })
    ));
}

#[path = "service_policy_tests.rs"]
mod policies;

#[cfg(test)]
#[path = "service_rotation_tests.rs"]
mod rotation;

#[cfg(test)]
#[path = "service_audit_tests.rs"]
mod audit_trail;

#[cfg(test)]
#[path = "service_usage_tests.rs"]
mod usage_log;

#[cfg(test)]
#[path = "service_brute_force_tests.rs"]
mod brute_force;

#[cfg(test)]
#[path = "service_leak_tests.rs"]
mod leaks;

#[cfg(test)]
#[path = "service_ownership_tests.rs"]
mod ownership;
