//! Proving a presented key: its secret checked in the HSM against the stored digest, and an
//! unknown id checked against a decoy so that it costs what a wrong secret costs. A key proven
//! under a digest that is not plain under the current master key is re-digested in the
//! background (lazy migration). Shared by authentication, verification and leak reports.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use super::{
    deps::Deps,
    error::{Error, Result},
    key::{Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion},
    key_format::ParsedKey,
    master::MasterView,
    ports::{DigestSwap, Hsm, Store},
    secret::{Secret, SensitiveBytes},
};

/// Domain separation for key digests: an HMAC made for one purpose never stands for another.
const KEY_DIGEST_CONTEXT: &[u8] = b"keyward/v1/key-digest\0";
/// The fixed message whose digest, made at init, startup verifies (the HSM self-test).
const SELF_TEST_MESSAGE: &[u8] = b"keyward/v1/self-test\0";

/// What the HSM signs for a key: context ‖ key id ‖ secret.
pub fn key_digest_input(id: KeyId, secret: &Secret) -> SensitiveBytes {
    let mut input = Vec::with_capacity(KEY_DIGEST_CONTEXT.len() + 16 + 32);
    input.extend_from_slice(KEY_DIGEST_CONTEXT);
    input.extend_from_slice(id.as_bytes());
    input.extend_from_slice(secret.expose());
    SensitiveBytes::new(input)
}

pub fn self_test_input() -> SensitiveBytes {
    SensitiveBytes::new(SELF_TEST_MESSAGE.to_vec())
}

pub struct Prover<H, S> {
    deps: Deps<H, S>,
    master: Arc<MasterView>,
    /// Verified against for unknown key ids, so that they cost what a wrong secret costs.
    decoy_mac: [u8; 32],
    /// Keys being re-digested after a proof, so a burst re-digests once.
    redigesting: Arc<Mutex<HashSet<KeyId>>>,
}

impl<H: Hsm, S: Store> Prover<H, S> {
    pub fn new(deps: Deps<H, S>, master: Arc<MasterView>) -> Self {
        let mut decoy_mac = [0u8; 32];
        getrandom::fill(&mut decoy_mac).expect("the OS random number generator works");
        Self { deps, master, decoy_mac, redigesting: Arc::default() }
    }

    fn decoy(&self) -> Digest {
        Digest::plain(self.master.current(), self.decoy_mac)
    }

    async fn secret_matches(&self, parsed: &ParsedKey, digest: &Digest) -> Result<bool> {
        Ok(self.deps.hsm.verify(key_digest_input(parsed.key_id, &parsed.secret), digest).await?)
    }

    /// For a key id that does not exist: one HSM operation against the decoy, so that the
    /// answer takes as long as a wrong secret's.
    pub async fn unknown_key(&self, parsed: &ParsedKey) -> Result<()> {
        self.secret_matches(parsed, &self.decoy()).await.map(|_| ())
    }

    /// Whether a signing secret's wrapping key is still on the token. One under a retired
    /// wrapping key (a revoked key's, which the re-wrap skips) can no longer be checked.
    pub fn can_unwrap(&self, wrapped: &crate::domain::signing::WrappedSecret) -> bool {
        self.master.can_unwrap(wrapped)
    }

    /// For a signature naming a key that does not exist or is not a signing key: one HSM
    /// verification of the signature base against the decoy, so that the answer costs what a
    /// wrong signature costs and does not tell which key ids exist.
    pub async fn unknown_signer(&self, signature_base: &[u8]) -> Result<()> {
        self.deps.hsm.verify(SensitiveBytes::new(signature_base.to_vec()), &self.decoy()).await?;
        Ok(())
    }

    /// Whether the presented secret is `record`'s, checked in the HSM. A digest that needs a
    /// retired master key can no longer be checked: it costs and answers what an unknown key
    /// does. A proven key whose digest is not plain under the current master key is re-digested
    /// in the background (lazy migration: one HSM operation, once).
    pub async fn prove(&self, parsed: &ParsedKey, record: &KeyRecord) -> Result<bool> {
        let current = self.master.current();
        if record.digest.is_plain_under(current) {
            return self.secret_matches(parsed, &record.digest).await;
        }
        if !self.master.can_check(&record.digest) {
            self.secret_matches(parsed, &self.decoy()).await?;
            return Ok(false);
        }
        if !self.secret_matches(parsed, &record.digest).await? {
            return Ok(false);
        }
        if record.state != KeyState::Revoked {
            self.redigest_later(parsed, record, current);
        }
        Ok(true)
    }

    /// Lazy re-digests under way (tests wait for them).
    #[cfg(test)]
    pub fn redigesting_now(&self) -> usize {
        self.redigesting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn redigest_later(&self, parsed: &ParsedKey, record: &KeyRecord, current: MasterKeyVersion) {
        let id = record.id;
        if !self.redigesting.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return;
        }
        let (hsm, store, redigesting) = (self.deps.hsm.clone(), self.deps.store.clone(), self.redigesting.clone());
        let input = key_digest_input(parsed.key_id, &parsed.secret);
        let expected = record.digest.clone();
        tokio::spawn(async move {
            let result = async {
                let new = hsm.digest(current, input).await?;
                store.replace_digests(vec![DigestSwap { id, expected, new, secret: None }], None).await?;
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(key_id = %id, error = %e, "re-digesting a key under the current master key failed; its next verification retries");
            }
            redigesting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }
}
