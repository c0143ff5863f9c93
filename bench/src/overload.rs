//! `keyward-bench overload`: what the server does at several times the VerifyKey rate it can
//! sustain. First a closed loop (a fixed number of callers, each waiting for its answer)
//! measures the sustainable rate; then an open loop starts calls on a fixed schedule at
//! `multiplier` times that rate, whatever the answers, over many connections. Both phases
//! report accepted calls/s and latency, the `RESOURCE_EXHAUSTED` answers (load shedding: they
//! must come back fast) and any other outcome, and the server's resident memory when it runs on
//! this machine.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use keyward::proto;

use crate::{
    error::{BenchError, Result},
    figures::Figures,
    rss::{pid_listening_on, vm_rss_bytes},
    target::{Presented, Target, plain_key},
};

/// What `keyward-bench overload` runs with.
#[derive(Clone, Debug)]
pub struct OverloadOptions {
    /// How long each phase runs.
    pub phase: Duration,
    /// Callers of the closed loop: enough to saturate the server.
    pub concurrency: usize,
    /// HTTP/2 connections each phase spreads its calls over.
    pub connections: usize,
    /// The open loop's rate, as a multiple of the closed loop's.
    pub multiplier: f64,
    /// The server's process, to watch its memory (found from the port if it listens here).
    pub pid: Option<u32>,
    /// Calls the open loop keeps outstanding at most; beyond it, scheduled calls are skipped and
    /// counted, so that the load generator's own memory stays bounded.
    pub max_outstanding: usize,
}

impl Default for OverloadOptions {
    fn default() -> Self {
        Self {
            phase: Duration::from_secs(5),
            concurrency: 64,
            connections: 16,
            multiplier: 3.0,
            pid: None,
            max_outstanding: 50_000,
        }
    }
}

/// The outcomes of one phase.
pub struct Phase {
    /// Calls started per second (the closed loop's is what the server allowed).
    pub offered_per_second: f64,
    /// VALID answers, with their latencies.
    pub accepted: Figures,
    /// `RESOURCE_EXHAUSTED` answers, with their latencies.
    pub shed: Figures,
    /// Every other outcome (a gRPC code, a verify code other than VALID, a transport error) and
    /// its count.
    pub other: BTreeMap<String, usize>,
    /// Scheduled calls not started because `max_outstanding` were in flight.
    pub skipped: usize,
    /// The server's peak resident memory while the phase ran, in bytes.
    pub peak_rss: Option<u64>,
}

/// Both phases, and the server's memory before and after.
pub struct OverloadReport {
    pub sustained: Phase,
    pub overload: Phase,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

/// One call's outcome, as a phase tallies it.
enum Outcome {
    Accepted,
    Shed,
    Other(String),
}

#[derive(Default)]
struct Tally {
    accepted_us: Vec<u32>,
    shed_us: Vec<u32>,
    other: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        match outcome {
            Outcome::Accepted => self.accepted_us.push(us),
            Outcome::Shed => self.shed_us.push(us),
            Outcome::Other(what) => *self.other.entry(what).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.accepted_us.extend(other.accepted_us);
        self.shed_us.extend(other.shed_us);
        for (what, n) in other.other {
            *self.other.entry(what).or_default() += n;
        }
    }

    fn into_phase(self, started: usize, elapsed: Duration, skipped: usize, peak_rss: Option<u64>) -> Phase {
        Phase {
            offered_per_second: started as f64 / elapsed.as_secs_f64(),
            accepted: Figures::new(self.accepted_us, 0, elapsed),
            shed: Figures::new(self.shed_us, 0, elapsed),
            other: self.other,
            skipped,
            peak_rss,
        }
    }
}

/// Runs both phases against `target` with a key the admin key creates.
pub async fn overload(
    target: &str,
    admin_key: &str,
    options: &OverloadOptions,
    print: &mut dyn FnMut(String),
) -> Result<OverloadReport> {
    let pid = options.pid.or_else(|| target.parse::<SocketAddr>().ok().and_then(pid_listening_on));
    let rss = move || pid.and_then(vm_rss_bytes);
    let conn = Target::connect(target, admin_key, options.connections).await?;
    let key = conn.create(plain_key()).await?;
    let presented =
        Presented { key: Arc::new(key), client_ip: String::new(), required_scopes: vec!["bench:read".into()] };
    // Warm the connections and the server's caches.
    conn.run(&presented, options.concurrency, Duration::from_millis(500)).await?;
    let rss_before = rss();
    match pid {
        Some(pid) => print(format!("server pid {pid}: RSS {}", mib(rss_before))),
        None => print("server process unknown (not local, or not readable): no memory figures".into()),
    }

    let sustained = watch_rss(rss, closed_loop(&conn, &presented, options.concurrency, options.phase)).await?;
    print(report("closed loop", options.concurrency, &sustained));
    let rate = sustained.accepted.per_second() * options.multiplier;
    if rate < 1.0 {
        return Err(BenchError::NoValidAnswer);
    }
    // Fresh connections for the open loop, so that the closed loop's leave no backlog.
    let conn = Target::connect(target, admin_key, options.connections).await?;
    let overload = watch_rss(rss, open_loop(&conn, &presented, rate, options.phase, options.max_outstanding)).await?;
    print(report(&format!("open loop at {}x", options.multiplier), options.connections, &overload));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss();
    if pid.is_some() {
        print(format!(
            "server RSS before {}, peak closed loop {}, peak open loop {}, 1 s after {}",
            mib(rss_before),
            mib(sustained.peak_rss),
            mib(overload.peak_rss),
            mib(rss_after)
        ));
    }
    if let (Some(accepted), Some(shed)) =
        (finite(overload.accepted.quantile_ms(0.99)), finite(overload.shed.quantile_ms(0.99)))
    {
        print(format!(
            "open loop: RESOURCE_EXHAUSTED p99 {shed:.3} ms vs accepted p99 {accepted:.3} ms; accepted p99 was {:.3} ms in the closed loop",
            sustained.accepted.quantile_ms(0.99)
        ));
    }
    Ok(OverloadReport { sustained, overload, rss_before, rss_after })
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".into(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
}

/// One phase's figures as a line.
pub fn report(what: &str, width: usize, p: &Phase) -> String {
    let other = if p.other.is_empty() {
        "none".to_string()
    } else {
        p.other.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    };
    format!(
        "{what} (x{width}): offered {:.0}/s; accepted {:.0}/s, p50 {:.3} ms, p99 {:.3} ms; RESOURCE_EXHAUSTED {} \
         ({:.0}/s), p50 {:.3} ms, p99 {:.3} ms; other {other}; skipped {}",
        p.offered_per_second,
        p.accepted.per_second(),
        p.accepted.quantile_ms(0.5),
        p.accepted.quantile_ms(0.99),
        p.shed.calls,
        p.shed.per_second(),
        p.shed.quantile_ms(0.5),
        p.shed.quantile_ms(0.99),
        p.skipped,
    )
}

/// Runs `phase`, sampling the server's memory every 50 ms; the peak goes into the phase.
async fn watch_rss(
    rss: impl Fn() -> Option<u64> + Send + Copy + 'static,
    phase: impl Future<Output = Result<Phase>>,
) -> Result<Phase> {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = rss();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                peak = peak.max(rss());
            }
            peak
        })
    };
    let result = phase.await;
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await?;
    result.map(|p| Phase { peak_rss: p.peak_rss.max(peak), ..p })
}

/// A VerifyKey call's outcome.
async fn call(
    mut client: proto::verify_service_client::VerifyServiceClient<tonic::transport::Channel>,
    request: tonic::Request<proto::VerifyKeyRequest>,
) -> Outcome {
    match client.verify_key(request).await {
        Ok(r) if r.get_ref().code() == proto::VerifyCode::Valid => Outcome::Accepted,
        Ok(r) => Outcome::Other(r.get_ref().code().short_name().to_owned()),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => Outcome::Shed,
        Err(s) => Outcome::Other(format!("{:?}", s.code())),
    }
}

type Auth = Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>;

/// The admin credential `conn` sends.
fn admin_auth(conn: &Target) -> Auth {
    conn.request(()).metadata().get("authorization").cloned()
}

fn verify_request(presented: &Presented, auth: &Auth) -> tonic::Request<proto::VerifyKeyRequest> {
    let mut request = tonic::Request::new(proto::VerifyKeyRequest {
        key: presented.key.to_string(),
        client_ip: presented.client_ip.clone(),
        required_scopes: presented.required_scopes.clone(),
        cost: None,
    });
    if let Some(a) = auth {
        request.metadata_mut().insert("authorization", a.clone());
    }
    request
}

/// `concurrency` callers, each starting its next call when the last is answered.
async fn closed_loop(conn: &Target, presented: &Presented, concurrency: usize, duration: Duration) -> Result<Phase> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let (client, presented, auth) = (conn.verify_client(i), presented.clone(), admin_auth(conn));
        tasks.push(tokio::spawn(async move {
            let (mut tally, mut calls) = (Tally::default(), 0usize);
            while Instant::now() < deadline {
                let t = Instant::now();
                let outcome = call(client.clone(), verify_request(&presented, &auth)).await;
                tally.record(outcome, t.elapsed());
                calls += 1;
            }
            (tally, calls)
        }));
    }
    let (mut tally, mut started) = (Tally::default(), 0);
    for t in tasks {
        let (part, calls) = t.await?;
        tally.merge(part);
        started += calls;
    }
    Ok(tally.into_phase(started, start.elapsed(), 0, None))
}

/// Calls started on a fixed schedule, `rate` per second, each on its own task, whatever the
/// answers; then waits for the calls still out.
async fn open_loop(
    conn: &Target,
    presented: &Presented,
    rate: f64,
    duration: Duration,
    max_outstanding: usize,
) -> Result<Phase> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (mut started, mut skipped) = (0usize, 0usize);
    let start = Instant::now();
    let auth = admin_auth(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        // Every call due by now, however late the tick.
        let due = (elapsed.as_secs_f64() * rate) as usize;
        while started + skipped < due {
            if outstanding.load(Ordering::Relaxed) >= max_outstanding {
                skipped += 1;
                continue;
            }
            outstanding.fetch_add(1, Ordering::Relaxed);
            let (client, request) = (conn.verify_client(started), verify_request(presented, &auth));
            let (tally, outstanding) = (tally.clone(), outstanding.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let outcome = call(client, request).await;
                let latency = t.elapsed();
                tally.lock().unwrap_or_else(|e| e.into_inner()).record(outcome, latency);
                outstanding.fetch_sub(1, Ordering::Relaxed);
            });
            started += 1;
        }
    }
    let offered = start.elapsed();
    // The calls still out are answered within the server's request timeout.
    let drain_deadline = Instant::now() + Duration::from_secs(15);
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unanswered = outstanding.load(Ordering::Relaxed);
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    if unanswered > 0 {
        tally.other.insert("unanswered after 15 s".into(), unanswered);
    }
    Ok(tally.into_phase(started, offered, skipped, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_sorts_outcomes_and_rates_them_over_the_phase() {
        let mut tally = Tally::default();
        for ms in 1..=10 {
            tally.record(Outcome::Accepted, Duration::from_millis(ms));
        }
        tally.record(Outcome::Shed, Duration::from_micros(200));
        let mut more = Tally::default();
        more.record(Outcome::Shed, Duration::from_micros(400));
        more.record(Outcome::Other("UNAVAILABLE".into()), Duration::ZERO);
        more.record(Outcome::Other("UNAVAILABLE".into()), Duration::ZERO);
        tally.merge(more);
        let phase = tally.into_phase(14, Duration::from_secs(2), 1, None);
        assert_eq!(phase.offered_per_second, 7.0);
        assert_eq!((phase.accepted.calls, phase.accepted.per_second()), (10, 5.0));
        assert_eq!(phase.accepted.quantile_ms(1.0), 10.0);
        assert_eq!((phase.shed.calls, phase.shed.quantile_ms(1.0)), (2, 0.4));
        assert_eq!(phase.other, BTreeMap::from([("UNAVAILABLE".to_string(), 2)]));
        let line = report("open loop", 16, &phase);
        assert!(
            line.contains("RESOURCE_EXHAUSTED 2 (1/s)") && line.contains("other UNAVAILABLE 2; skipped 1"),
            "{line}"
        );
    }
}
