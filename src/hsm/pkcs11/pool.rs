//! The live connection and its session pool: calls borrow an idle logged-in session (opening
//! one if none is idle); a failure that means the token is gone marks the adapter unhealthy and
//! starts the reconnect thread (Finalize, Initialize, Login, find keys, with capped back-off);
//! the liveness probe's check lives here too.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, TryLockError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use cryptoki::{context::Pkcs11, error::Error as CkError, object::ObjectHandle, session::Session, slot::Slot};

use super::{
    config::{Pkcs11Config, StartError},
    connect::{FirstConnect, initialize},
    pin::PinSource,
    signing::UnwrapCache,
};
use crate::{
    domain::{key::MasterKeyVersion, ports::HsmError, signing::WrapKeyVersion},
    hsm::rv,
    metrics,
};

/// A live connection to the token: its slot, the master key handles, a pool of sessions.
pub(super) struct Connection {
    pub slot: Slot,
    /// Written only by master key rotation and retirement.
    pub keys: RwLock<HashMap<MasterKeyVersion, ObjectHandle>>,
    /// The audit chain key; set once made (`ensure_audit_key`).
    pub audit: RwLock<Option<ObjectHandle>>,
    /// Session copies of the signing-secret wrapping keys, by version.
    pub wrapping: RwLock<HashMap<WrapKeyVersion, ObjectHandle>>,
    /// Unwrapped signing secrets (session objects owned by `owner`), bounded.
    pub unwrapped: Mutex<UnwrapCache>,
    pub idle: Mutex<Vec<Session>>,
    /// Owns the session copies of the keys (`working_copy`): they live as long as it does.
    pub owner: Mutex<Session>,
}

pub(in crate::hsm) struct Inner {
    pub(super) config: Pkcs11Config,
    pub(super) ctx: Pkcs11,
    /// `None` while reconnecting. Calls hold the read lock; reconnect takes the write lock, so
    /// it runs only when no session is in use.
    pub(super) conn: RwLock<Option<Connection>>,
    pub(super) healthy: AtomicBool,
    reconnecting: AtomicBool,
    /// Set by `close`: the reconnect and probe threads stop.
    pub(super) closed: AtomicBool,
    pub(super) pin: PinSource,
    /// Checks the first connection must pass when the token was unreachable at start.
    pub(super) first_connect: Mutex<Option<FirstConnect>>,
}

/// What a call answers while there is no connection.
pub(super) fn reconnecting() -> HsmError {
    HsmError::Unavailable("the token is unreachable; reconnecting".into())
}

impl Inner {
    /// An adapter not connected yet (unhealthy).
    pub(super) fn new(config: Pkcs11Config, ctx: Pkcs11) -> Self {
        let pin = PinSource::new(config.pin.clone(), config.pin_file.clone());
        Self {
            config,
            ctx,
            conn: RwLock::new(None),
            healthy: AtomicBool::new(false),
            reconnecting: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            pin,
            first_connect: Mutex::new(None),
        }
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
        metrics::get().hsm_healthy(healthy);
    }

    /// Runs `op` on an idle session (opening one if none is idle).
    pub(super) fn with_session<T>(
        self: &Arc<Self>,
        op: impl FnOnce(&Session, &Connection) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        // Never wait for a reconnect in progress (it holds the write lock): answer at once.
        let guard = match self.conn.try_read() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(reconnecting()),
        };
        let Some(conn) = guard.as_ref() else {
            return Err(reconnecting());
        };
        let pooled = conn.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let session = match pooled {
            Some(s) => s,
            None => match self.ctx.open_ro_session(conn.slot) {
                Ok(s) => s,
                Err(e) => return Err(self.fail(guard, &e)),
            },
        };
        match op(&session, conn) {
            Ok(value) => {
                conn.idle.lock().unwrap_or_else(|e| e.into_inner()).push(session);
                Ok(value)
            }
            Err(e) if rv::is_token_gone(&e) => {
                drop(session);
                Err(self.fail(guard, &e))
            }
            Err(e) => {
                conn.idle.lock().unwrap_or_else(|e| e.into_inner()).push(session);
                Err(rv::classify(&e))
            }
        }
    }

    /// Records a failure; if it means the token is gone, starts reconnecting.
    fn fail(self: &Arc<Self>, guard: RwLockReadGuard<'_, Option<Connection>>, e: &CkError) -> HsmError {
        drop(guard);
        if rv::is_token_gone(e) {
            tracing::warn!(error = %e, "HSM connection lost; reconnecting");
            self.start_reconnect();
        }
        rv::classify(e)
    }

    pub(super) fn start_reconnect(self: &Arc<Self>) {
        self.set_healthy(false);
        if self.closed.load(Ordering::SeqCst) || self.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new().name("keyward-hsm-reconnect".into()).spawn(move || {
            let mut delay = Duration::from_millis(10);
            while !inner.closed.load(Ordering::SeqCst) {
                match inner.reconnect_once() {
                    Ok(()) => {
                        tracing::info!("HSM reconnected");
                        metrics::get().hsm_reconnect(true);
                        inner.set_healthy(true);
                        break;
                    }
                    Err(e) => {
                        metrics::get().hsm_reconnect(false);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "HSM unreachable; retrying");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            }
            inner.reconnecting.store(false, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the HSM reconnect thread");
            self.reconnecting.store(false, Ordering::SeqCst);
        }
    }

    /// The liveness probe's check: `C_GetTokenInfo` on our slot (SoftHSM2 answers
    /// `CKR_GENERAL_ERROR` once its token directory is gone or unreadable; a real HSM
    /// `CKR_TOKEN_NOT_PRESENT` or `CKR_DEVICE_REMOVED`), and `C_GetSessionInfo` on an idle
    /// session (`CKR_SESSION_HANDLE_INVALID` once our sessions were closed behind our back).
    /// Starts reconnecting if either says the token or our sessions are gone (`rv::meaning`).
    /// Never waits.
    pub(super) fn probe(self: &Arc<Self>) {
        if !self.healthy.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(guard) = self.conn.try_read() else { return };
        let Some(conn) = guard.as_ref() else { return };
        let mut lost = self.ctx.get_token_info(conn.slot).err();
        if lost.is_none() {
            let idle = conn.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(session) = idle {
                match session.get_session_info() {
                    Ok(_) => conn.idle.lock().unwrap_or_else(|e| e.into_inner()).push(session),
                    Err(e) => lost = Some(e),
                }
            }
        }
        if let Some(e) = lost.filter(rv::is_token_gone) {
            drop(guard);
            tracing::warn!(error = %e, "HSM liveness probe failed; reconnecting");
            self.start_reconnect();
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn reconnect_once(&self) -> Result<(), StartError> {
        // A PIN the token refused is not offered again: no finalize, no login.
        drop(self.pin.to_try()?);
        let mut conn = self.conn.write().unwrap_or_else(|e| e.into_inner());
        // Close our sessions, then finalize: no session is in use while we hold the lock.
        *conn = None;
        if let Err(e) = self.ctx.clone().finalize() {
            tracing::debug!(error = %e, "C_Finalize during reconnect");
        }
        initialize(&self.ctx)?;
        *conn = Some(self.connect()?);
        Ok(())
    }
}
