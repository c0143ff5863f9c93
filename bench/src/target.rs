//! A server under load: its connections and admin credential (`Target`), the VerifyKey load the
//! benches share (timed runs, and a running `Load` cut into windows afterwards), CreateKey and
//! RotateKey in bulk, and `keyward-bench verify [--policies]`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use keyward::proto::{
    self, key_service_client::KeyServiceClient, master_key_service_client::MasterKeyServiceClient,
    verify_service_client::VerifyServiceClient,
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    error::{BenchError, Result},
    figures::{Figures, Samples, merge, micros},
};

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Samples>>, start: Instant) -> Result<Figures> {
    let mut parts = Vec::with_capacity(tasks.len());
    for t in tasks {
        parts.push(t.await?);
    }
    Ok(merge(parts, start.elapsed()))
}

fn bearer(key: &str) -> Result<MetadataValue<Ascii>> {
    format!("Bearer {key}").parse().map_err(|_| BenchError::AdminKeyNotAscii)
}

/// Open connections to the target and the admin credential.
pub(crate) struct Target {
    pub(crate) channels: Vec<Channel>,
    pub(crate) auth: MetadataValue<Ascii>,
}

/// What a verification run presents: a key, and what the request asks of it.
#[derive(Clone)]
pub(crate) struct Presented {
    pub(crate) key: Arc<String>,
    pub(crate) client_ip: String,
    pub(crate) required_scopes: Vec<String>,
}

impl Target {
    pub(crate) async fn connect(target: &str, admin_key: &str, connections: usize) -> Result<Self> {
        let endpoint = Channel::from_shared(format!("http://{target}"))
            .map_err(|source| BenchError::Address { target: target.to_owned(), source })?;
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            let connected = endpoint.connect().await;
            channels.push(connected.map_err(|source| BenchError::Connect { target: target.to_owned(), source })?);
        }
        Ok(Self { channels, auth: bearer(admin_key)? })
    }

    pub(crate) async fn create(&self, create: proto::CreateKeyRequest) -> Result<String> {
        let mut request = tonic::Request::new(create);
        request.metadata_mut().insert("authorization", self.auth.clone());
        let created = KeyServiceClient::new(self.channels[0].clone()).create_key(request).await;
        Ok(created.map_err(|s| BenchError::call("CreateKey", &s))?.into_inner().key)
    }

    /// VerifyKey on `presented` from `concurrency` tasks for `duration`; only VALID counts.
    pub(crate) async fn run(&self, presented: &Presented, concurrency: usize, duration: Duration) -> Result<Figures> {
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

    /// The first connection.
    pub(crate) fn channel(&self) -> Channel {
        self.channels[0].clone()
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
    ) -> Result<(Vec<String>, Figures)> {
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
            let (samples, some) = t.await?;
            parts.push(samples);
            ids.extend(some);
        }
        let figures = merge(parts, start.elapsed());
        if let Some(e) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(BenchError::CreateFailed { made: ids.len(), first: e });
        }
        Ok((ids, figures))
    }

    /// RotateKey once on each of `ids` from `concurrency` tasks; with the first error, if any.
    pub(crate) async fn rotate_each(&self, ids: Vec<String>, concurrency: usize) -> Result<(Figures, Option<String>)> {
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
    pub(crate) async fn master_status(&self, skip_counts: bool) -> Result<(proto::MasterKeyStatus, Duration)> {
        let t = Instant::now();
        let request = self.request(proto::GetMasterKeyStatusRequest { skip_counts });
        let status = self.master_client().get_master_key_status(request).await;
        Ok((status.map_err(|s| BenchError::call("GetMasterKeyStatus", &s))?.into_inner(), t.elapsed()))
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
        let latency_us = micros(started.elapsed());
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
    pub(crate) async fn stop(self) -> Result<Vec<Call>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for t in self.tasks {
            calls.extend(t.await?);
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
        remaining: Some(keyward::domain::validate::MAX_USES),
        refill: Some(proto::Refill { amount: keyward::domain::validate::MAX_USES, interval: Some(duration(86_400)) }),
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
) -> Result<Figures> {
    let target = Target::connect(target, admin_key, connections).await?;
    let key = target.create(plain_key()).await?;
    let presented =
        Presented { key: Arc::new(key), client_ip: String::new(), required_scopes: vec!["bench:read".into()] };
    target.run(&presented, concurrency, duration).await
}

/// `verify`, every call reporting `client_ip` as the end client's address.
pub async fn verify_from(
    target: &str,
    admin_key: &str,
    client_ip: &str,
    concurrency: usize,
    connections: usize,
    duration: Duration,
) -> Result<Figures> {
    let target = Target::connect(target, admin_key, connections).await?;
    let key = target.create(plain_key()).await?;
    let presented =
        Presented { key: Arc::new(key), client_ip: client_ip.into(), required_scopes: vec!["bench:read".into()] };
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
) -> Result<(Figures, Figures)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
