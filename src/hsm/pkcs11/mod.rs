//! `Hsm` over PKCS#11: a pool of logged-in sessions used by dedicated worker threads (one per
//! session) that take calls from a bounded queue, so async tasks never block and a busy worker
//! takes the next call without sleeping; token loss marks the adapter unhealthy and a
//! background thread re-initializes (Finalize, Initialize, Login, find keys) with backoff.
//!
//! `config` (how to reach the token, start-up errors), `connect` (opening it), `pool` (sessions
//! and reconnect), `objects` (finding, creating and copying keys), `ops` (random, sign, verify),
//! `pin` (the PIN lockout guard), `probe` (the liveness probe). Return codes are read by
//! `hsm::rv` alone.

mod config;
mod connect;
mod objects;
mod ops;
mod pin;
mod pool;
mod probe;
mod signing;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use cryptoki::{error::Error as CkError, session::Session};
use tracing::Instrument;

pub use self::signing::{UNWRAPPED_CACHE, wrap_key_label};
pub use self::{
    config::{Pkcs11Config, StartError},
    connect::FirstConnect,
};
pub(super) use self::{
    connect::{find_token, load_module, login},
    objects::{find_label, find_master_keys, generate_hmac_key, generate_master_key, is_safe_master_key},
    signing::generate_wrapping_key_if_missing,
};
use self::{
    connect::{initialize, open_module},
    ops::{check_digest, hmac, to_mac, wrap_input},
    pool::{Connection, Inner, reconnecting},
};
use super::observe::{Op, record_error};
use crate::{
    domain::{
        key::{Digest, MasterKeyVersion},
        ports::{AUDIT_MAC_LEN, AuditSealer, Hsm, HsmError},
        secret::{Secret, SensitiveBytes},
        signing::{WrapKeyVersion, WrappedSecret},
    },
    metrics,
};

/// A call waiting for a worker.
type Job = Box<dyn FnOnce(&Arc<Inner>) + Send>;

/// Calls that may wait for a worker; past this, callers wait to enqueue.
const QUEUE_DEPTH: usize = 1024;

/// The PKCS#11 HSM adapter. Cheap to clone.
#[derive(Clone)]
pub struct Pkcs11Hsm {
    inner: Arc<Inner>,
    jobs: flume::Sender<Job>,
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token by label, logs in and finds the master keys.
    pub fn open(config: Pkcs11Config) -> Result<Self, StartError> {
        let ctx = load_module(&config)?;
        let hsm = Self::with_context(config, ctx)?;
        let conn = hsm.inner.connect()?;
        *hsm.inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        hsm.inner.set_healthy(true);
        Ok(hsm)
    }

    /// For `keyward serve`: like `open`, but a token that is absent, unreadable or refuses the
    /// PIN is not fatal: the adapter is returned unconnected (unhealthy) with the reason, for
    /// `connect_in_background`. A module that cannot be loaded, or a token whose keys are not
    /// right, still fails. Starts the liveness probe.
    pub fn open_serving(config: Pkcs11Config) -> Result<(Self, Option<StartError>), StartError> {
        let ctx = open_module(&config)?;
        let hsm = Self::with_context(config, ctx)?;
        let connected = initialize(&hsm.inner.ctx).map_err(StartError::from).and_then(|()| hsm.inner.connect());
        let unreachable = match connected {
            Ok(conn) => {
                *hsm.inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                hsm.inner.set_healthy(true);
                None
            }
            Err(e) if e.is_transient() => Some(e),
            Err(e) => return Err(e),
        };
        probe::start(&hsm.inner);
        Ok((hsm, unreachable))
    }

    fn with_context(config: Pkcs11Config, ctx: cryptoki::context::Pkcs11) -> Result<Self, StartError> {
        let sessions = config.sessions.max(1);
        let inner = Arc::new(Inner::new(config, ctx));
        inner.set_healthy(false);
        let (jobs, queue) = flume::bounded::<Job>(QUEUE_DEPTH);
        for n in 0..sessions {
            let (inner, queue) = (inner.clone(), queue.clone());
            std::thread::Builder::new()
                .name(format!("keyward-hsm-{n}"))
                .spawn(move || {
                    // Ends when every sender (every clone of the adapter) is gone.
                    while let Ok(job) = queue.recv() {
                        job(&inner);
                    }
                })
                .map_err(|e| StartError::Pkcs11(format!("cannot start an HSM worker thread: {e}")))?;
        }
        Ok(Self { inner, jobs })
    }

    /// Fails unless master key `version` is on the token exactly once.
    pub fn require_master_key(&self, version: MasterKeyVersion) -> Result<(), StartError> {
        let guard = self.inner.conn.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(conn) if conn.keys.read().unwrap_or_else(|e| e.into_inner()).contains_key(&version) => Ok(()),
            _ => Err(StartError::MasterKeyMissing(version)),
        }
    }

    /// Starts using master key `version`, made on the token by another cluster node.
    pub async fn pick_up_master_key(&self, version: MasterKeyVersion) -> Result<(), HsmError> {
        self.admin(Op::FindMasterKey, move |inner, conn| objects::pick_up_key(&inner.ctx, conn, version)).await
    }

    /// Starts using wrapping key `version`, made on the token by another cluster node.
    pub async fn pick_up_wrap_key(&self, version: WrapKeyVersion) -> Result<(), HsmError> {
        self.admin(Op::FindWrapKey, move |inner, conn| signing::pick_up_wrap_key(&inner.ctx, conn, version)).await
    }

    /// Stops using wrapping key `version`, retired by another cluster node.
    pub fn forget_wrap_key(&self, version: WrapKeyVersion) {
        let guard = self.inner.conn.read().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = guard.as_ref() {
            signing::forget_wrap_key(conn, version);
        }
    }

    /// Fails unless wrapping key `version` is on the token.
    pub fn require_wrap_key(&self, version: WrapKeyVersion) -> Result<(), StartError> {
        let guard = self.inner.conn.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(conn) if conn.wrapping.read().unwrap_or_else(|e| e.into_inner()).contains_key(&version) => Ok(()),
            _ => Err(StartError::Pkcs11(format!(
                "wrapping key {version} ({}) is not on the token: signing keys wrapped under it cannot verify; \
                 is this the database's token?",
                wrap_key_label(version)
            ))),
        }
    }

    /// Makes the audit chain key and the signing-secret wrapping key if the token lacks them
    /// (tokens made before the audit chain or before signing keys).
    pub fn ensure_token_keys(&self) -> Result<(), StartError> {
        let guard = self.inner.conn.read().unwrap_or_else(|e| e.into_inner());
        let conn = guard.as_ref().ok_or_else(|| StartError::Pkcs11("the token is not connected".into()))?;
        objects::ensure_audit_key(&self.inner.ctx, conn)?;
        signing::ensure_wrapping_key(&self.inner.ctx, conn)
    }

    /// How many unwrapped signing secrets the connection holds (at most `UNWRAPPED_CACHE`).
    pub fn unwrapped_cached(&self) -> usize {
        let guard = self.inner.conn.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map_or(0, |conn| conn.unwrapped.lock().unwrap_or_else(|e| e.into_inner()).len())
    }

    /// Whether the token is connected now.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// After `open_serving` left the token unconnected: keeps connecting in the background
    /// (capped back-off), running `checks` on the first connection before any call goes through.
    pub fn connect_in_background(&self, checks: FirstConnect) {
        *self.inner.first_connect.lock().unwrap_or_else(|e| e.into_inner()) = Some(checks);
        self.inner.start_reconnect();
    }

    /// `C_Verify` on the calling thread, bypassing the async hop (benchmarks of the raw HSM).
    pub fn verify_blocking(&self, input: &SensitiveBytes, digest: &Digest) -> Result<bool, HsmError> {
        let started = Instant::now();
        let result = self.inner.with_session(|session, conn| check_digest(session, conn, input.expose(), digest));
        metrics::get().hsm_operation(Op::Verify.name(), started.elapsed());
        record_error(Op::Verify, &result);
        result
    }

    /// Closes every session and finalizes the module.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut conn = self.inner.conn.write().unwrap_or_else(|e| e.into_inner());
        *conn = None;
        self.inner.set_healthy(false);
        if let Err(e) = self.inner.ctx.clone().finalize() {
            tracing::debug!(error = %e, "C_Finalize at close");
        }
    }

    /// Runs a rare administrative operation (its own read-write session) off the async workers.
    async fn admin<T: Send + 'static>(
        &self,
        name: Op,
        op: impl FnOnce(&Inner, &Connection) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let guard = inner.conn.read().unwrap_or_else(|e| e.into_inner());
            let conn = guard.as_ref().ok_or_else(|| HsmError::Unavailable("reconnecting to the token".into()))?;
            let started = Instant::now();
            let result = op(&inner, conn);
            metrics::get().hsm_operation(name.name(), started.elapsed());
            result
        })
        .instrument(name.span())
        .await
        .map_err(|e| HsmError::Failed(format!("HSM admin task: {e}")))
        .and_then(|r| r);
        record_error(name, &result);
        result
    }

    /// Runs `op` on a pooled session on one of the worker threads, in a span named for it.
    async fn run<T: Send + 'static>(
        &self,
        name: Op,
        op: impl FnOnce(&Session, &Connection) -> Result<T, CkError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let result = self.run_unobserved(name, op).instrument(name.span()).await;
        record_error(name, &result);
        result
    }

    async fn run_unobserved<T: Send + 'static>(
        &self,
        name: Op,
        op: impl FnOnce(&Session, &Connection) -> Result<T, CkError> + Send + 'static,
    ) -> Result<T, HsmError> {
        if !self.inner.healthy.load(Ordering::Relaxed) {
            return Err(reconnecting());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |inner| {
            let started = Instant::now();
            let result = inner.with_session(op);
            metrics::get().hsm_operation(name.name(), started.elapsed());
            let _ = reply.send(result);
        });
        self.jobs.send_async(job).await.map_err(|_| HsmError::Unavailable("the HSM workers stopped".into()))?;
        answer.await.map_err(|_| HsmError::Failed("an HSM worker dropped the call".into()))?
    }
}

/// Sealing runs on the writer's thread (inside a store transaction), on a pooled session.
impl AuditSealer for Pkcs11Hsm {
    fn seal(&self, message: &[u8]) -> Result<[u8; AUDIT_MAC_LEN], HsmError> {
        if !self.inner.healthy.load(Ordering::Relaxed) {
            return Err(reconnecting());
        }
        to_mac(self.inner.with_session(|session, conn| ops::seal(session, conn, message))?)
    }

    fn check(&self, message: &[u8], mac: &[u8; AUDIT_MAC_LEN]) -> Result<bool, HsmError> {
        self.inner.with_session(|session, conn| ops::check_seal(session, conn, message, mac))
    }
}

impl Hsm for Pkcs11Hsm {
    async fn random_secret(&self) -> Result<Secret, HsmError> {
        self.run(Op::Random, |session, _| ops::random_secret(session)).await
    }

    async fn digest(&self, version: MasterKeyVersion, input: SensitiveBytes) -> Result<Digest, HsmError> {
        let mac = self.run(Op::Sign, move |session, conn| hmac(session, conn, version, input.expose())).await?;
        Ok(Digest::plain(version, to_mac(mac)?))
    }

    async fn verify(&self, input: SensitiveBytes, digest: &Digest) -> Result<bool, HsmError> {
        let digest = digest.clone();
        self.run(Op::Verify, move |session, conn| check_digest(session, conn, input.expose(), &digest)).await
    }

    async fn wrap(&self, digest: &Digest, version: MasterKeyVersion) -> Result<Digest, HsmError> {
        let inner = digest.mac;
        let mac = self.run(Op::Wrap, move |session, conn| hmac(session, conn, version, &wrap_input(&inner))).await?;
        let mut wrapped = digest.wrapped.clone();
        wrapped.push(digest.version);
        Ok(Digest { version, mac: to_mac(mac)?, wrapped })
    }

    async fn create_master_key(&self, version: MasterKeyVersion) -> Result<(), HsmError> {
        self.admin(Op::CreateMasterKey, move |inner, conn| objects::create_key(&inner.ctx, conn, version)).await
    }

    async fn destroy_master_key(&self, version: MasterKeyVersion) -> Result<(), HsmError> {
        self.admin(Op::DestroyMasterKey, move |inner, conn| objects::destroy_key(&inner.ctx, conn, version)).await
    }

    async fn new_signing_secret(&self, version: WrapKeyVersion) -> Result<(Secret, WrappedSecret), HsmError> {
        self.run(Op::NewSigningSecret, move |session, conn| signing::new_secret(session, conn, version)).await
    }

    async fn create_wrap_key(&self, version: WrapKeyVersion) -> Result<(), HsmError> {
        self.admin(Op::CreateWrapKey, move |inner, conn| signing::create_wrap_key(&inner.ctx, conn, version)).await
    }

    async fn destroy_wrap_key(&self, version: WrapKeyVersion) -> Result<(), HsmError> {
        self.admin(Op::DestroyWrapKey, move |inner, conn| signing::destroy_wrap_key(&inner.ctx, conn, version)).await
    }

    async fn rewrap(&self, wrapped: &WrappedSecret, to: WrapKeyVersion) -> Result<WrappedSecret, HsmError> {
        let wrapped = wrapped.clone();
        self.run(Op::Rewrap, move |session, conn| signing::rewrap(session, conn, &wrapped, to)).await
    }

    async fn verify_signature(
        &self,
        wrapped: &WrappedSecret,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, HsmError> {
        let wrapped = wrapped.clone();
        self.run(Op::VerifySignature, move |session, conn| {
            signing::verify(session, conn, &wrapped, &message, &signature)
        })
        .await
    }

    fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}
