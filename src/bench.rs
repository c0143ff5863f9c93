//! `keyward bench`: load figures anyone can reproduce. `verify` drives VerifyKey on a running
//! server (its connections and load are shared with `bench_rotation` and the suite in
//! `bench_suite`); `hsm` measures raw HMAC verifications through the same PKCS#11 adapter, the
//! ceiling that verification cannot pass.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    bench_drive::{Limit, Outcome, Run, drive},
    domain::{
        key::{Digest, KeyId, MasterKeyVersion},
        ports::Hsm,
        proof::key_digest_input,
        secret::{Secret, SensitiveBytes},
    },
    hsm::Pkcs11Hsm,
    proto::{
        self, key_service_client::KeyServiceClient, master_key_service_client::MasterKeyServiceClient,
        verify_service_client::VerifyServiceClient,
    },
};

/// Latency percentiles and throughput of one run.
pub struct Figures {
    pub calls: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Figures {
    pub(crate) fn new(mut latencies_us: Vec<u32>, errors: usize, elapsed: Duration) -> Self {
        latencies_us.sort_unstable();
        Self { calls: latencies_us.len(), errors, elapsed, latencies_us }
    }

    /// Several runs as one: calls and time add up.
    pub(crate) fn combine(runs: Vec<Figures>) -> Self {
        let elapsed = runs.iter().map(|f| f.elapsed).sum();
        let errors = runs.iter().map(|f| f.errors).sum();
        Self::new(runs.into_iter().flat_map(|f| f.latencies_us).collect(), errors, elapsed)
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

/// Open connections to the target and the admin credential.
pub(crate) struct Target {
    pub(crate) channels: Vec<Channel>,
    pub(crate) auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

/// What a verification run presents: a key, and what the request asks of it.
#[derive(Clone)]
pub(crate) struct Presented {
    pub(crate) key: Arc<String>,
    pub(crate) client_ip: String,
    pub(crate) required_scopes: Vec<String>,
}

impl Target {
    pub(crate) async fn connect(target: &str, admin_key: &str, connections: usize) -> Result<Self, String> {
        let endpoint = Channel::from_shared(format!("http://{target}")).map_err(|e| e.to_string())?;
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            channels.push(endpoint.connect().await.map_err(|e| format!("connecting to {target}: {e}"))?);
        }
        Ok(Self { channels, auth: bearer(admin_key)? })
    }

    pub(crate) async fn create(&self, create: proto::CreateKeyRequest) -> Result<String, String> {
        let mut request = tonic::Request::new(create);
        request.metadata_mut().insert("authorization", self.auth.clone());
        let created = KeyServiceClient::new(self.channels[0].clone()).create_key(request).await;
        Ok(created.map_err(|e| e.to_string())?.into_inner().key)
    }

    /// VerifyKey on `presented` from `concurrency` tasks for `duration`; only VALID counts.
    pub(crate) async fn run(
        &self,
        presented: &Presented,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Figures, String> {
        let deadline = Instant::now() + duration;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..concurrency.max(1) {
            let (client, presented, auth) = (self.verify_client(i), presented.clone(), self.auth.clone());
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::default();
                verify_calls(client, presented, auth, || Instant::now() < deadline, |t, ok| samples.record(t, ok))
                    .await;
                samples
            }));
        }
        join_all(tasks, start).await
    }

    pub(crate) fn verify_client(&self, i: usize) -> VerifyServiceClient<Channel> {
        VerifyServiceClient::new(self.channels[i % self.channels.len()].clone())
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.auth.clone());
        request
    }

    pub(crate) fn master_client(&self) -> MasterKeyServiceClient<Channel> {
        MasterKeyServiceClient::new(self.channels[0].clone())
    }

    /// VerifyKey on `presented` from `concurrency` tasks until [`Load::stop`], each call recorded
    /// with when it started, so figures can be cut to a window afterwards.
    pub(crate) fn start_load(&self, presented: &Presented, concurrency: usize) -> Load {
        let (stop, origin) = (Arc::new(AtomicBool::new(false)), Instant::now());
        let mut tasks = Vec::new();
        for i in 0..concurrency.max(1) {
            let (client, presented, auth, stop) =
                (self.verify_client(i), presented.clone(), self.auth.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut calls = Vec::new();
                let go = || !stop.load(Ordering::Relaxed);
                verify_calls(client, presented, auth, go, |t, ok| calls.push(Call::new(origin, t, ok))).await;
                calls
            }));
        }
        Load { stop, origin, tasks }
    }

    /// Creates `n` keys like `template` with `in_flight` calls at once; returns their ids and the
    /// CreateKey figures. Stops at the first failure (a bench on a failing server measures nothing).
    pub(crate) async fn create_many(
        &self,
        template: &proto::CreateKeyRequest,
        n: usize,
        in_flight: usize,
    ) -> Result<(Vec<String>, Figures), String> {
        let (next, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None::<String>)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..in_flight.max(1) {
            let mut client = KeyServiceClient::new(self.channels[i % self.channels.len()].clone());
            let (next, failed, template, auth) = (next.clone(), failed.clone(), template.clone(), self.auth.clone());
            tasks.push(tokio::spawn(async move {
                let (mut samples, mut ids) = (Samples::default(), Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let mut request = tonic::Request::new(template.clone());
                    request.metadata_mut().insert("authorization", auth.clone());
                    let t = Instant::now();
                    match client.create_key(request).await {
                        Ok(r) => {
                            samples.record(t, true);
                            ids.extend(r.into_inner().info.map(|i| i.key_id));
                        }
                        Err(e) => {
                            samples.record(t, false);
                            failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(status_text(&e));
                            next.store(n, Ordering::Relaxed);
                        }
                    }
                }
                (samples, ids)
            }));
        }
        let (mut parts, mut ids) = (Vec::new(), Vec::with_capacity(n));
        for t in tasks {
            let (samples, some) = t.await.map_err(|e| e.to_string())?;
            parts.push(samples);
            ids.extend(some);
        }
        let figures = merge(parts, start.elapsed());
        if let Some(e) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(format!("CreateKey failed after {} keys: {e}", ids.len()));
        }
        Ok((ids, figures))
    }

    /// RotateKey once on each of `ids` from `concurrency` tasks; with the first error, if any.
    pub(crate) async fn rotate_each(
        &self,
        ids: Vec<String>,
        concurrency: usize,
    ) -> Result<(Figures, Option<String>), String> {
        let (ids, next, failed) = (Arc::new(ids), Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..concurrency.max(1) {
            let mut client = KeyServiceClient::new(self.channels[i % self.channels.len()].clone());
            let (ids, next, failed, auth) = (ids.clone(), next.clone(), failed.clone(), self.auth.clone());
            tasks.push(tokio::spawn(async move {
                let mut samples = Samples::default();
                while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let mut request =
                        tonic::Request::new(proto::RotateKeyRequest { key_id: id.clone(), grace_period: None });
                    request.metadata_mut().insert("authorization", auth.clone());
                    let t = Instant::now();
                    let rotated = client.rotate_key(request).await;
                    samples.record(t, rotated.is_ok());
                    if let Err(e) = rotated {
                        failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(status_text(&e));
                    }
                }
                samples
            }));
        }
        let figures = join_all(tasks, start).await?;
        let first_error = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok((figures, first_error))
    }

    /// GetMasterKeyStatus and how long it took.
    pub(crate) async fn master_status(&self, skip_counts: bool) -> Result<(proto::MasterKeyStatus, Duration), String> {
        let t = Instant::now();
        let request = self.request(proto::GetMasterKeyStatusRequest { skip_counts });
        let status = self.master_client().get_master_key_status(request).await;
        Ok((status.map_err(|e| status_text(&e))?.into_inner(), t.elapsed()))
    }
}

pub(crate) fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One VerifyKey caller: calls while `go()` holds, handing each call's start and whether it
/// answered VALID to `record`.
async fn verify_calls(
    mut client: VerifyServiceClient<Channel>,
    presented: Presented,
    auth: MetadataValue<Ascii>,
    go: impl Fn() -> bool,
    mut record: impl FnMut(Instant, bool),
) {
    while go() {
        let mut request = tonic::Request::new(proto::VerifyKeyRequest {
            key: presented.key.to_string(),
            client_ip: presented.client_ip.clone(),
            required_scopes: presented.required_scopes.clone(),
            cost: None,
        });
        request.metadata_mut().insert("authorization", auth.clone());
        let t = Instant::now();
        let ok = matches!(client.verify_key(request).await, Ok(r) if r.get_ref().valid);
        record(t, ok);
    }
}

/// One call of a [`Load`]: when it started (from the load's origin), its latency, its outcome.
#[derive(Clone, Copy)]
pub(crate) struct Call {
    started: Duration,
    latency_us: u32,
    ok: bool,
}

impl Call {
    fn new(origin: Instant, started: Instant, ok: bool) -> Self {
        let latency_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        Self { started: started.duration_since(origin), latency_us, ok }
    }
}

/// A running VerifyKey load (see [`Target::start_load`]).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    origin: Instant,
    tasks: Vec<tokio::task::JoinHandle<Vec<Call>>>,
}

impl Load {
    /// Time since the load started.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Stops the callers (each finishes its call in flight) and returns every call.
    pub(crate) async fn stop(self) -> Result<Vec<Call>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for t in self.tasks {
            calls.extend(t.await.map_err(|e| e.to_string())?);
        }
        Ok(calls)
    }
}

/// The figures of the calls that started in `from..to` (times from the load's origin), as a
/// rate over that window.
pub(crate) fn window(calls: &[Call], from: Duration, to: Duration) -> Figures {
    let inside = calls.iter().filter(|c| c.started >= from && c.started < to);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for c in inside {
        if c.ok {
            latencies.push(c.latency_us);
        } else {
            errors += 1;
        }
    }
    Figures::new(latencies, errors, to.saturating_sub(from))
}

pub(crate) fn plain_key() -> proto::CreateKeyRequest {
    proto::CreateKeyRequest { name: "bench".into(), scopes: vec!["bench:read".into()], ..Default::default() }
}

/// A key with every policy set, loose enough that every call is VALID: the cost of checking
/// them all, including a quota (one durable lease write per `quota_max_lease` calls).
pub(crate) fn policy_key() -> proto::CreateKeyRequest {
    let now = std::time::SystemTime::now();
    let duration = |secs| prost_types::Duration { seconds: secs, nanos: 0 };
    proto::CreateKeyRequest {
        name: "bench-policies".into(),
        scopes: vec!["bench:*".into(), "other:read".into()],
        allowed_cidrs: vec!["192.0.2.0/24".into(), "2001:db8::/32".into(), "10.0.0.0/8".into()],
        not_before: Some((now - Duration::from_secs(60)).into()),
        expires_at: Some((now + Duration::from_secs(86_400)).into()),
        rate_limit: Some(proto::RateLimit { limit: 1_000_000, window: Some(duration(1)) }),
        remaining: Some(crate::domain::validate::MAX_USES),
        refill: Some(proto::Refill { amount: crate::domain::validate::MAX_USES, interval: Some(duration(86_400)) }),
        metadata: [("team".to_string(), "bench".to_string())].into(),
        ..Default::default()
    }
}

/// Creates a key with the admin key, then runs VerifyKey on it from `concurrency` tasks over
/// `connections` HTTP/2 connections for `duration`.
pub async fn verify(
    target: &str,
    admin_key: &str,
    concurrency: usize,
    connections: usize,
    duration: Duration,
) -> Result<Figures, String> {
    let target = Target::connect(target, admin_key, connections).await?;
    let key = target.create(plain_key()).await?;
    let presented =
        Presented { key: Arc::new(key), client_ip: String::new(), required_scopes: vec!["bench:read".into()] };
    target.run(&presented, concurrency, duration).await
}

/// Policies on the hot path: VerifyKey on a key with no policies and on one with all of them,
/// in alternating rounds of `round` each (`rounds` of each), in the same run. Returns the
/// figures of each, all rounds merged.
pub async fn verify_policies(
    target: &str,
    admin_key: &str,
    concurrency: usize,
    connections: usize,
    round: Duration,
    rounds: usize,
) -> Result<(Figures, Figures), String> {
    let target = Target::connect(target, admin_key, connections).await?;
    let required_scopes = vec!["bench:read".into()];
    let plain =
        Presented { key: Arc::new(target.create(plain_key()).await?), client_ip: String::new(), required_scopes };
    let with_policies = Presented {
        key: Arc::new(target.create(policy_key()).await?),
        client_ip: "10.1.2.3".into(),
        required_scopes: vec!["bench:read".into(), "other:read".into()],
    };
    // Warm both paths (connections, caches) before measuring.
    target.run(&plain, concurrency, Duration::from_millis(500)).await?;
    target.run(&with_policies, concurrency, Duration::from_millis(500)).await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        a.push(target.run(&plain, concurrency, round).await?);
        b.push(target.run(&with_policies, concurrency, round).await?);
    }
    Ok((Figures::combine(a), Figures::combine(b)))
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
    Ok(hsm_run(hsm, version, concurrency, Limit::For(duration)).await?.figures)
}

/// [`hsm`] within any [`Limit`].
pub(crate) async fn hsm_run(
    hsm: &Pkcs11Hsm,
    version: MasterKeyVersion,
    concurrency: usize,
    limit: Limit,
) -> Result<Run, String> {
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

/// Moved to the admin commands, which read key files too.
pub use crate::admin::read_key_file;

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

    #[test]
    fn a_window_holds_the_calls_that_started_in_it() {
        let call = |ms, ok| Call { started: Duration::from_millis(ms), latency_us: ms as u32 * 1000, ok };
        let calls = [call(10, true), call(100, true), call(150, false), call(199, true), call(200, true)];
        let f = window(&calls, Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!((f.calls, f.errors, f.elapsed), (2, 1, Duration::from_millis(100)));
        assert_eq!((f.quantile_ms(0.0), f.quantile_ms(1.0)), (100.0, 199.0));
        assert_eq!(f.per_second(), 20.0);
    }
}
