//! An in-memory HSM for unit tests only: HMAC-SHA256 in software, with a call counter.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{
    key::{Digest, MasterKeyVersion, WRAP_CONTEXT},
    ports::{AUDIT_MAC_LEN, AuditSealer, Hsm, HsmError},
    secret::{Secret, SensitiveBytes},
    signing::{FIRST_WRAP_KEY, WrapKeyVersion, WrappedSecret},
};

pub struct FakeHsm {
    keys: Mutex<HashMap<MasterKeyVersion, [u8; 32]>>,
    /// Signing secrets by their "wrapped" form (a random handle standing in for the wrap).
    signing: Mutex<HashMap<WrappedSecret, [u8; 32]>>,
    /// The wrapping key versions on the "token".
    wrap_keys: Mutex<HashSet<WrapKeyVersion>>,
    calls: AtomicU64,
    pub down: AtomicBool,
    /// Makes only audit sealing fail (an injected fault on the audit path).
    pub seal_fails: AtomicBool,
}

impl Default for FakeHsm {
    fn default() -> Self {
        Self::new()
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    key
}

impl FakeHsm {
    pub fn new() -> Self {
        Self {
            keys: Mutex::new([(MasterKeyVersion(1), random_key()), (AUDIT, random_key())].into()),
            signing: Mutex::new(HashMap::new()),
            wrap_keys: Mutex::new([FIRST_WRAP_KEY].into()),
            calls: AtomicU64::new(0),
            down: AtomicBool::new(false),
            seal_fails: AtomicBool::new(false),
        }
    }

    /// How many operations were asked of this HSM.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn has(&self, version: MasterKeyVersion) -> bool {
        self.keys.lock().unwrap().contains_key(&version)
    }

    pub fn has_wrap_key(&self, version: WrapKeyVersion) -> bool {
        self.wrap_keys.lock().unwrap().contains(&version)
    }

    fn require_wrap_key(&self, version: WrapKeyVersion) -> Result<(), HsmError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(HsmError::Unavailable("fake token removed".into()));
        }
        match self.has_wrap_key(version) {
            true => Ok(()),
            false => Err(HsmError::Failed("no such wrapping key".into())),
        }
    }

    fn mac(&self, version: MasterKeyVersion, data: &[u8]) -> Result<[u8; 32], HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(HsmError::Unavailable("fake token removed".into()));
        }
        let key =
            *self.keys.lock().unwrap().get(&version).ok_or_else(|| HsmError::Failed("no such master key".into()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(data);
        Ok(mac.finalize().into_bytes().into())
    }
}

/// The audit key is kept as master key version 0, which keyward never uses.
const AUDIT: MasterKeyVersion = MasterKeyVersion(0);

impl AuditSealer for FakeHsm {
    fn seal(&self, message: &[u8]) -> Result<[u8; AUDIT_MAC_LEN], HsmError> {
        if self.seal_fails.load(Ordering::SeqCst) {
            return Err(HsmError::Failed("injected audit fault".into()));
        }
        self.mac(AUDIT, message)
    }

    fn check(&self, message: &[u8], mac: &[u8; AUDIT_MAC_LEN]) -> Result<bool, HsmError> {
        Ok(self.mac(AUDIT, message)? == *mac)
    }
}

fn wrap_input(inner: &[u8]) -> Vec<u8> {
    [WRAP_CONTEXT, inner].concat()
}

impl Hsm for FakeHsm {
    async fn random_secret(&self) -> Result<Secret, HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Secret::from_bytes(random_key()))
    }

    async fn digest(&self, version: MasterKeyVersion, input: SensitiveBytes) -> Result<Digest, HsmError> {
        Ok(Digest::plain(version, self.mac(version, input.expose())?))
    }

    async fn verify(&self, input: SensitiveBytes, digest: &Digest) -> Result<bool, HsmError> {
        let mut message = input.expose().to_vec();
        for &version in &digest.wrapped {
            message = wrap_input(&self.mac(version, &message)?);
        }
        Ok(self.mac(digest.version, &message)? == digest.mac)
    }

    async fn wrap(&self, digest: &Digest, version: MasterKeyVersion) -> Result<Digest, HsmError> {
        let mac = self.mac(version, &wrap_input(&digest.mac))?;
        let mut wrapped = digest.wrapped.clone();
        wrapped.push(digest.version);
        Ok(Digest { version, mac, wrapped })
    }

    async fn create_master_key(&self, version: MasterKeyVersion) -> Result<(), HsmError> {
        self.keys.lock().unwrap().entry(version).or_insert_with(random_key);
        Ok(())
    }

    async fn destroy_master_key(&self, version: MasterKeyVersion) -> Result<(), HsmError> {
        self.keys.lock().unwrap().remove(&version);
        Ok(())
    }

    async fn new_signing_secret(&self, version: WrapKeyVersion) -> Result<(Secret, WrappedSecret), HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.require_wrap_key(version)?;
        let secret = random_key();
        let wrapped = WrappedSecret { version, blob: random_key().to_vec() };
        self.signing.lock().unwrap().insert(wrapped.clone(), secret);
        Ok((Secret::from_bytes(secret), wrapped))
    }

    async fn create_wrap_key(&self, version: WrapKeyVersion) -> Result<(), HsmError> {
        self.wrap_keys.lock().unwrap().insert(version);
        Ok(())
    }

    async fn destroy_wrap_key(&self, version: WrapKeyVersion) -> Result<(), HsmError> {
        self.wrap_keys.lock().unwrap().remove(&version);
        Ok(())
    }

    async fn rewrap(&self, wrapped: &WrappedSecret, to: WrapKeyVersion) -> Result<WrappedSecret, HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.require_wrap_key(wrapped.version)?;
        self.require_wrap_key(to)?;
        let mut signing = self.signing.lock().unwrap();
        let secret = *signing.get(wrapped).ok_or_else(|| HsmError::Failed("wrapped secret does not unwrap".into()))?;
        let new = WrappedSecret { version: to, blob: random_key().to_vec() };
        signing.insert(new.clone(), secret);
        Ok(new)
    }

    async fn verify_signature(
        &self,
        wrapped: &WrappedSecret,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, HsmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.require_wrap_key(wrapped.version)?;
        let secret = *self
            .signing
            .lock()
            .unwrap()
            .get(wrapped)
            .ok_or_else(|| HsmError::Failed("wrapped secret does not unwrap".into()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(&message);
        Ok(mac.verify_slice(&signature).is_ok())
    }

    fn is_healthy(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }
}
