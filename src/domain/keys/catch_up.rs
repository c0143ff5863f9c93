//! A key made (CreateKey, or RotateKey's successor) while a master key rotation lands: its
//! digest was computed (and its signing secret wrapped) under the versions current when the
//! request began. If the rotation's background re-digest started before the new record was
//! written, it may have passed the key by, leaving it on the old versions (and the old version
//! unretirable). Both calls therefore check the versions again once the record is written and,
//! while the new secret is still at hand, move the key under the current ones: a plain digest
//! under the new master key, the signing secret re-wrapped inside the HSM. A rotation that
//! lands after that check starts its re-digest after the record was written, so it finds the
//! key. The check reads the store's master state, not the services' copy of it: in cluster
//! mode a write is answered only once this node's view holds every change committed before it
//! (its audit events come after theirs in the chain), so a rotation made on another node before
//! the key was written is seen here.

use super::KeyAdmin;
use crate::domain::{
    error::Result,
    key::{KeyRecord, MasterKeyVersion},
    ports::{DigestSwap, Hsm, SecretSwap, Store},
    proof::key_digest_input,
    secret::Secret,
    signing::WrapKeyVersion,
};

impl<H: Hsm, S: Store> KeyAdmin<H, S> {
    /// Moves the just-written `record` (whose secret is `secret`) under the current master and
    /// wrapping key versions if a rotation made them newer meanwhile; `record` then holds what
    /// was written. A failure is logged and leaves the key as it is: it verifies all the same,
    /// and its first verification moves its digest (retiring the old version waits until then).
    pub(super) async fn catch_up_with_rotation(&self, record: &mut KeyRecord, secret: &Secret) {
        let (current, wrap_current) = match self.deps.store.master() {
            Ok(Some(state)) => (state.current, state.wrap_current()),
            _ => (self.master.current(), self.master.wrap_current()),
        };
        let digest_behind = record.digest.version != current;
        let secret_behind = record.signing.as_ref().is_some_and(|w| w.version != wrap_current);
        if !digest_behind && !secret_behind {
            return;
        }
        let versions = (digest_behind.then_some(current), secret_behind.then_some(wrap_current));
        match self.swap_for(record, secret, versions).await {
            Ok(swap) => {
                record.digest = swap.new;
                if let Some(s) = swap.secret {
                    record.signing = Some(s.new);
                }
                tracing::info!(key_id = %record.id, master = %current, "a key made during a master rotation moved under the new versions");
            }
            Err(e) => tracing::warn!(key_id = %record.id, error = %e,
                "a key made during a master rotation could not move under the new versions; its next verification moves its digest"),
        }
    }

    /// The swap to these versions (`None`: that part stays), written.
    async fn swap_for(
        &self,
        record: &KeyRecord,
        secret: &Secret,
        (master, wrap): (Option<MasterKeyVersion>, Option<WrapKeyVersion>),
    ) -> Result<DigestSwap> {
        let new = match master {
            Some(version) => self.deps.hsm.digest(version, key_digest_input(record.id, secret)).await?,
            None => record.digest.clone(),
        };
        let secret = match (&record.signing, wrap) {
            (Some(old), Some(version)) => {
                let new = self.deps.hsm.rewrap(old, version).await?;
                Some(SecretSwap { expected: old.clone(), new })
            }
            _ => None,
        };
        let swap = DigestSwap { id: record.id, expected: record.digest.clone(), new, secret };
        self.deps.store.replace_digests(vec![swap.clone()], None).await?;
        Ok(swap)
    }
}
