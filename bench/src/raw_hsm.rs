//! The raw HSM: HMAC-SHA256 `C_Verify` calls through keyward's own PKCS#11 adapter, the ceiling
//! verification cannot pass (`keyward-bench hsm`, and the suite's HSM baseline).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keyward::{
    domain::{
        key::{Digest, KeyId, MasterKeyVersion},
        ports::Hsm,
        proof::key_digest_input,
        secret::{Secret, SensitiveBytes},
    },
    hsm::Pkcs11Hsm,
};

use crate::{
    drive::{Limit, Outcome, Run, drive},
    error::{BenchError, Result},
    figures::{Figures, Samples, merge},
};

/// A fixed key id and secret with their digest under `version`: what the HSM runs verify on.
struct Probe {
    id: KeyId,
    secret: Secret,
    digest: Digest,
}

impl Probe {
    async fn new(hsm: &Pkcs11Hsm, version: MasterKeyVersion) -> Result<Self> {
        let (id, secret) = (KeyId::new_v7(), Secret::from_bytes([7; 32]));
        let digest = hsm.digest(version, key_digest_input(id, &secret)).await?;
        Ok(Self { id, secret, digest })
    }

    fn input(&self) -> SensitiveBytes {
        key_digest_input(self.id, &self.secret)
    }
}

/// Raw HMAC-SHA256 verifications through the PKCS#11 adapter from `concurrency` tasks.
pub async fn hsm(
    hsm: &Pkcs11Hsm,
    version: MasterKeyVersion,
    concurrency: usize,
    duration: Duration,
) -> Result<Figures> {
    Ok(hsm_run(hsm, version, concurrency, Limit::For(duration)).await?.figures)
}

/// [`hsm`] within any [`Limit`].
pub(crate) async fn hsm_run(
    hsm: &Pkcs11Hsm,
    version: MasterKeyVersion,
    concurrency: usize,
    limit: Limit,
) -> Result<Run> {
    let probe = Arc::new(Probe::new(hsm, version).await?);
    drive(concurrency, limit, |_| {
        let (hsm, probe) = (hsm.clone(), probe.clone());
        move |_| {
            let (hsm, probe) = (hsm.clone(), probe.clone());
            async move {
                let verified = hsm.verify(probe.input(), &probe.digest).await;
                Some(Outcome::of(matches!(verified, Ok(true)), "HSM_FAILED"))
            }
        }
    })
    .await
}

/// Raw `C_Verify` calls on `threads` OS threads, no async hop: the HSM's own ceiling.
pub async fn hsm_direct(
    hsm: &Pkcs11Hsm,
    version: MasterKeyVersion,
    threads: usize,
    duration: Duration,
) -> Result<Figures> {
    let probe = Arc::new(Probe::new(hsm, version).await?);
    let (start, deadline) = (Instant::now(), Instant::now() + duration);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (hsm, probe) = (hsm.clone(), probe.clone());
            std::thread::spawn(move || {
                let mut samples = Samples::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    samples.record(t, matches!(hsm.verify_blocking(&probe.input(), &probe.digest), Ok(true)));
                }
                samples
            })
        })
        .collect();
    let mut parts = Vec::with_capacity(handles.len());
    for h in handles {
        parts.push(h.join().map_err(|_| BenchError::ThreadPanicked)?);
    }
    Ok(merge(parts, start.elapsed()))
}
