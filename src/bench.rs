//! `keyward bench`: load figures anyone can reproduce. `verify` drives VerifyKey on a running
//! server; `hsm` measures raw HMAC verifications through the same PKCS#11 adapter, the ceiling
//! that verification cannot pass. (A fuller load generator comes with the benchmark issue.)

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::transport::Channel;

use crate::{
    domain::{
        key::{Digest, KeyId, MasterKeyVersion},
        ports::Hsm,
        secret::{Secret, SensitiveBytes},
        service::key_digest_input,
    },
    hsm::Pkcs11Hsm,
    proto::{self, key_service_client::KeyServiceClient, verify_service_client::VerifyServiceClient},
};

/// Latency percentiles and throughput of one run.
pub struct Figures {
    pub calls: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Figures {
    fn new(mut latencies_us: Vec<u32>, errors: usize, elapsed: Duration) -> Self {
        latencies_us.sort_unstable();
        Self { calls: latencies_us.len(), errors, elapsed, latencies_us }
    }

    pub fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    pub fn report(&self, what: &str) -> String {
        format!(
            "{what}: {} calls in {:.1} s = {:.0}/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; errors {}",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(1.0),
            self.errors
        )
    }
}

/// One worker's latencies (µs) of successful calls, and its failed calls.
#[derive(Default)]
struct Samples {
    latencies_us: Vec<u32>,
    errors: usize,
}

impl Samples {
    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.latencies_us.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            self.errors += 1;
        }
    }
}

fn merge(parts: impl IntoIterator<Item = Samples>, elapsed: Duration) -> Figures {
    let (mut all, mut errors) = (Vec::new(), 0);
    for part in parts {
        all.extend(part.latencies_us);
        errors += part.errors;
    }
    Figures::new(all, errors, elapsed)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Samples>>, start: Instant) -> Result<Figures, String> {
    let mut parts = Vec::with_capacity(tasks.len());
    for t in tasks {
        parts.push(t.await.map_err(|e| e.to_string())?);
    }
    Ok(merge(parts, start.elapsed()))
}

fn bearer(key: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, String> {
    format!("Bearer {key}").parse().map_err(|_| "the admin key is not ASCII".to_string())
}

/// Creates one key with the admin key, then runs VerifyKey on it from `concurrency` tasks
/// over `connections` HTTP/2 connections for `duration`.
pub async fn verify(
    target: &str,
    admin_key: &str,
    concurrency: usize,
    connections: usize,
    duration: Duration,
) -> Result<Figures, String> {
    let endpoint = Channel::from_shared(format!("http://{target}")).map_err(|e| e.to_string())?;
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(endpoint.connect().await.map_err(|e| format!("connecting to {target}: {e}"))?);
    }
    let auth = bearer(admin_key)?;
    let mut request = tonic::Request::new(proto::CreateKeyRequest {
        name: "bench".into(),
        scopes: vec!["bench:read".into()],
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", auth.clone());
    let created =
        KeyServiceClient::new(channels[0].clone()).create_key(request).await.map_err(|e| e.to_string())?.into_inner();
    let key = Arc::new(created.key);

    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut client = VerifyServiceClient::new(channels[i % channels.len()].clone());
        let (key, auth) = (key.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let mut request = tonic::Request::new(proto::VerifyKeyRequest {
                    key: key.to_string(),
                    required_scopes: vec!["bench:read".into()],
                    ..Default::default()
                });
                request.metadata_mut().insert("authorization", auth.clone());
                let t = Instant::now();
                let ok = matches!(client.verify_key(request).await, Ok(r) if r.get_ref().valid);
                samples.record(t, ok);
            }
            samples
        }));
    }
    join_all(tasks, start).await
}

/// A fixed key id and secret with their digest under `version`: what the HSM runs verify on.
struct Probe {
    id: KeyId,
    secret: Secret,
    digest: Digest,
}

impl Probe {
    async fn new(hsm: &Pkcs11Hsm, version: MasterKeyVersion) -> Result<Self, String> {
        let (id, secret) = (KeyId::new_v7(), Secret::from_bytes([7; 32]));
        let digest = hsm.digest(version, key_digest_input(id, &secret)).await.map_err(|e| e.to_string())?;
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
) -> Result<Figures, String> {
    let probe = Arc::new(Probe::new(hsm, version).await?);
    let (start, deadline) = (Instant::now(), Instant::now() + duration);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (hsm, probe) = (hsm.clone(), probe.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = matches!(hsm.verify(probe.input(), &probe.digest).await, Ok(true));
                samples.record(t, ok);
            }
            samples
        }));
    }
    join_all(tasks, start).await
}

/// Raw `C_Verify` calls on `threads` OS threads, no async hop: the HSM's own ceiling.
pub async fn hsm_direct(
    hsm: &Pkcs11Hsm,
    version: MasterKeyVersion,
    threads: usize,
    duration: Duration,
) -> Result<Figures, String> {
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
        parts.push(h.join().map_err(|_| "a bench thread panicked".to_string())?);
    }
    Ok(merge(parts, start.elapsed()))
}

/// Reads a key file's first line.
pub fn read_key_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rates_come_from_the_recorded_latencies() {
        let parts = [
            Samples { latencies_us: (51..=100).rev().map(|ms| ms * 1000).collect(), errors: 1 },
            Samples { latencies_us: (1..=50).map(|ms| ms * 1000).collect(), errors: 2 },
        ];
        let f = merge(parts, Duration::from_secs(4));
        assert_eq!((f.calls, f.errors), (100, 3));
        assert_eq!(f.per_second(), 25.0);
        assert_eq!(f.quantile_ms(0.0), 1.0);
        assert_eq!(f.quantile_ms(0.5), 51.0);
        assert_eq!(f.quantile_ms(0.99), 99.0);
        assert_eq!(f.quantile_ms(1.0), 100.0);
        assert!(merge([], Duration::from_secs(1)).quantile_ms(0.5).is_nan());
    }
}
