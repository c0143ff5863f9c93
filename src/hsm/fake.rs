//! An in-memory HSM for unit tests only: HMAC-SHA256 in software, with a call counter.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{
    key::{Digest, MasterKeyVersion},
    ports::{Hsm, HsmError},
    secret::{Secret, SensitiveBytes},
};

pub struct FakeHsm {
    keys: HashMap<MasterKeyVersion, [u8; 32]>,
    calls: AtomicU64,
    pub down: AtomicBool,
}

impl Default for FakeHsm {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHsm {
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).unwrap();
        Self { keys: [(MasterKeyVersion(1), key)].into(), calls: AtomicU64::new(0), down: AtomicBool::new(false) }
    }

    /// How many operations were asked of this HSM.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn mac(&self, version: MasterKeyVersion) -> Result<Hmac<Sha256>, HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(HsmError::Unavailable("fake token removed".into()));
        }
        let key = self.keys.get(&version).ok_or_else(|| HsmError::Failed("no such master key".into()))?;
        Ok(Hmac::<Sha256>::new_from_slice(key).unwrap())
    }
}

impl Hsm for FakeHsm {
    async fn random_secret(&self) -> Result<Secret, HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).unwrap();
        Ok(Secret::from_bytes(bytes))
    }

    async fn digest(&self, version: MasterKeyVersion, input: SensitiveBytes) -> Result<Digest, HsmError> {
        let mut mac = self.mac(version)?;
        mac.update(input.expose());
        Ok(Digest { version, mac: mac.finalize().into_bytes().into() })
    }

    async fn verify(&self, input: SensitiveBytes, digest: &Digest) -> Result<bool, HsmError> {
        let mut mac = self.mac(digest.version)?;
        mac.update(input.expose());
        Ok(mac.verify_slice(&digest.mac).is_ok())
    }

    fn is_healthy(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }
}
