//! The master key state as last written, read by every service that makes or checks digests;
//! only `MasterKeys` (this module's parent) changes it.

use std::sync::{
    RwLock,
    atomic::{AtomicU32, Ordering},
};

use crate::domain::{
    key::{Digest, MasterKeyVersion},
    ports::MasterState,
    signing::{WrapKeyVersion, WrappedSecret},
};

pub struct MasterView {
    state: RwLock<MasterState>,
    /// `state.current`, read on every create and verify without the lock.
    current: AtomicU32,
}

impl MasterView {
    pub fn new(state: MasterState) -> Self {
        Self { current: AtomicU32::new(state.current.0), state: RwLock::new(state) }
    }

    /// The master key version new digests use.
    pub fn current(&self) -> MasterKeyVersion {
        MasterKeyVersion(self.current.load(Ordering::Acquire))
    }

    pub fn state(&self) -> MasterState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether every master key version `digest` needs is live (not retired), so the HSM can
    /// still check it.
    pub fn can_check(&self, digest: &Digest) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        digest.versions().all(|v| state.is_live(v))
    }

    /// The wrapping key new signing secrets use.
    pub fn wrap_current(&self) -> WrapKeyVersion {
        self.state.read().unwrap_or_else(|e| e.into_inner()).wrap_current()
    }

    /// Whether the wrapping key `wrapped` is under is live (not retired), so the HSM can still
    /// unwrap it.
    pub fn can_unwrap(&self, wrapped: &WrappedSecret) -> bool {
        self.state.read().unwrap_or_else(|e| e.into_inner()).is_wrap_live(wrapped.version)
    }

    /// Replaces the state (after it was written).
    pub(super) fn set(&self, state: MasterState) {
        self.current.store(state.current.0, Ordering::Release);
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }
}
