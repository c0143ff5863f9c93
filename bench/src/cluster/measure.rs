//! The cluster bench's four measurements, each against running servers: VerifyKey on a node
//! against the single node, CreateKey and RevokeKey throughput on both, revocation propagation
//! from node A to node B, and fail-closed and recovery times around a loss of etcd quorum.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyward::proto::{self, VerifyCode, key_service_client::KeyServiceClient};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::{
    ClusterOptions,
    report::{FailClosed, FailClosedCycle, Propagation},
};
use crate::{
    drive::{Limit, Outcome, Run, code_name, drive},
    error::{BenchError, Result},
    etcd::EtcdCluster,
    figures::{Figures, micros},
    suite::report::Stats,
    target::{Presented, Target, plain_key},
};

/// Alternating VerifyKey rounds per instance.
const VERIFY_ROUNDS: u32 = 3;
/// Keys made before a measurement, this many calls at once.
const SETUP_CONCURRENCY: usize = 16;
/// Rounds of CreateKey that may make the keys a measurement needs.
const SETUP_ATTEMPTS: usize = 3;
/// The longest a revoked key may stay VALID on B before the bench gives up on it.
const PROPAGATION_GIVE_UP: Duration = Duration::from_secs(5);
/// The pause between two probes of the fail-closed measurement.
pub const FAIL_CLOSED_POLL: Duration = Duration::from_millis(2);
/// The longest the fail-closed measurement waits for each change.
const FAIL_CLOSED_GIVE_UP: Duration = Duration::from_secs(30);
/// One probe call's timeout (a node must answer, even when it cannot prove it is current).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// (key id, key) pairs made for a measurement.
type Keys = Arc<Mutex<Vec<(String, String)>>>;

fn stats(run: &Run) -> Stats {
    Stats::new(&run.figures, run.errors.clone())
}

fn presented(key: String) -> Presented {
    Presented { key: Arc::new(key), client_ip: String::new(), required_scopes: vec!["bench:read".into()] }
}

/// VerifyKey of `key` on `target`'s connection `channel`: its code, or the gRPC code it failed with.
async fn verify_once(target: &Target, channel: usize, key: &str) -> Result<VerifyCode, tonic::Code> {
    let mut request = target.request(proto::VerifyKeyRequest { key: key.into(), ..Default::default() });
    request.set_timeout(PROBE_TIMEOUT);
    match target.verify_client(channel).verify_key(request).await {
        Ok(r) => Ok(VerifyCode::try_from(r.get_ref().code).unwrap_or(VerifyCode::Unspecified)),
        Err(s) => Err(s.code()),
    }
}

/// The server's overall health (`""`), or `None` when the call failed.
async fn health(target: &Target) -> Option<ServingStatus> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(PROBE_TIMEOUT);
    let answer = HealthClient::new(target.channels[0].clone()).check(request).await.ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

/// CreateKey from `concurrency` callers within `limit`, keeping each key made.
async fn create(target: &Target, concurrency: usize, limit: Limit, made: &Keys) -> Result<Run> {
    drive(concurrency, limit, |w| {
        let channel = target.channels[w % target.channels.len()].clone();
        let (auth, made) = (target.auth.clone(), made.clone());
        move |_| {
            let (mut client, auth, made) = (KeyServiceClient::new(channel.clone()), auth.clone(), made.clone());
            async move {
                let mut request = tonic::Request::new(plain_key());
                request.metadata_mut().insert("authorization", auth);
                Some(match client.create_key(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let id = r.info.map(|i| i.key_id).unwrap_or_default();
                        made.lock().unwrap_or_else(|e| e.into_inner()).push((id, r.key));
                        Outcome::ok()
                    }
                    Err(s) => Outcome::status(&s),
                })
            }
        }
    })
    .await
}

/// RevokeKey of each of `keys` (until they run out or `limit` is spent).
async fn revoke(target: &Target, concurrency: usize, limit: Limit, keys: Vec<(String, String)>) -> Result<Run> {
    let keys = Arc::new(keys);
    drive(concurrency, limit, |w| {
        let channel = target.channels[w % target.channels.len()].clone();
        let (auth, keys) = (target.auth.clone(), keys.clone());
        move |i| {
            let (mut client, auth, keys) = (KeyServiceClient::new(channel.clone()), auth.clone(), keys.clone());
            async move {
                let (id, _) = keys.get(i as usize)?;
                let mut request =
                    tonic::Request::new(proto::RevokeKeyRequest { key_id: id.clone(), reason: "bench".into() });
                request.metadata_mut().insert("authorization", auth);
                Some(client.revoke_key(request).await.map_or_else(|s| Outcome::status(&s), |_| Outcome::ok()))
            }
        }
    })
    .await
}

/// Makes `n` keys on `target` (not measured). A refused CreateKey is made again, up to
/// [`SETUP_ATTEMPTS`] rounds; refusals are told on stderr (they are a finding, not a figure).
async fn make_keys(target: &Target, n: usize) -> Result<Vec<(String, String)>> {
    let made = Keys::default();
    let mut refused = BTreeMap::<String, u64>::new();
    for _ in 0..SETUP_ATTEMPTS {
        let have = made.lock().unwrap_or_else(|e| e.into_inner()).len();
        if have >= n {
            break;
        }
        let run = create(target, SETUP_CONCURRENCY, Limit::Calls((n - have) as u64), &made).await?;
        for (code, k) in run.errors {
            *refused.entry(code).or_default() += k;
        }
    }
    let made = std::mem::take(&mut *made.lock().unwrap_or_else(|e| e.into_inner()));
    if made.len() < n {
        return Err(BenchError::SetupFailed(format!("{} of {n} keys made; refused: {refused:?}", made.len())));
    }
    if !refused.is_empty() {
        eprintln!("keyward-bench cluster: CreateKey was refused while making keys ({refused:?}); made them again");
    }
    Ok(made)
}

/// Waits until `key` verifies VALID on `target`.
async fn until_valid(target: &Target, key: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let answer = verify_once(target, 0, key).await;
        if answer == Ok(VerifyCode::Valid) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Cluster(format!(
                "a key made on node A was not VALID on the node polled within {within:?}: last answer {}",
                answer.map_or_else(code_name, |c| c.short_name().to_owned())
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// VerifyKey on the single node and on a cluster node, in alternating rounds with the same
/// driver settings: (single, cluster).
pub(crate) async fn verify(single: &Target, node: &Target, o: &ClusterOptions) -> Result<(Stats, Stats)> {
    let single_key = presented(single.create(plain_key()).await?);
    let node_key = presented(node.create(plain_key()).await?);
    until_valid(node, &node_key.key, Duration::from_secs(5)).await?;
    // Warm both (connections, caches) before measuring.
    single.run(&single_key, o.concurrency, Duration::from_millis(500)).await?;
    node.run(&node_key, o.concurrency, Duration::from_millis(500)).await?;
    let round = o.duration / VERIFY_ROUNDS;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..VERIFY_ROUNDS {
        a.push(single.run(&single_key, o.concurrency, round).await?);
        b.push(node.run(&node_key, o.concurrency, round).await?);
    }
    let as_stats = |f: Figures| {
        let errors = if f.errors > 0 { [("NOT_VALID".to_string(), f.errors as u64)].into() } else { BTreeMap::new() };
        Stats::new(&f, errors)
    };
    Ok((as_stats(Figures::combine(a)), as_stats(Figures::combine(b))))
}

/// CreateKey then RevokeKey for `o.duration` each, on the single node then on a cluster node:
/// ((single, cluster) CreateKey, (single, cluster) RevokeKey). RevokeKey revokes the keys just
/// made and ends early when they run out.
pub(crate) async fn mutations(
    single: &Target,
    node: &Target,
    o: &ClusterOptions,
) -> Result<((Stats, Stats), (Stats, Stats))> {
    let limit = Limit::For(o.duration);
    let (single_made, node_made) = (Keys::default(), Keys::default());
    let create_single = create(single, o.concurrency, limit, &single_made).await?;
    let create_node = create(node, o.concurrency, limit, &node_made).await?;
    let take = |k: &Keys| std::mem::take(&mut *k.lock().unwrap_or_else(|e| e.into_inner()));
    let revoke_single = revoke(single, o.concurrency, limit, take(&single_made)).await?;
    let revoke_node = revoke(node, o.concurrency, limit, take(&node_made)).await?;
    Ok(((stats(&create_single), stats(&create_node)), (stats(&revoke_single), stats(&revoke_node))))
}

/// What the pollers of one revocation saw.
struct Polled {
    /// From RevokeKey's answer to the first refusal B sent; `None`: still VALID at the give-up.
    refused_after: Option<Duration>,
    refusal: Option<String>,
    polls: u64,
    polling: Duration,
}

/// Polls `key` on B from `pollers` callers, back to back, from `acknowledged` until the first
/// answer that is not VALID.
async fn poll_until_refused(
    b: &Arc<Target>,
    key: &Arc<String>,
    pollers: usize,
    acknowledged: Instant,
) -> Result<Polled> {
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let first = Arc::new(Mutex::new(None::<(Duration, String)>));
    let mut tasks = Vec::with_capacity(pollers);
    for p in 0..pollers {
        let (b, key, done, polls, first) = (b.clone(), key.clone(), done.clone(), polls.clone(), first.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) && acknowledged.elapsed() < PROPAGATION_GIVE_UP {
                let answer = verify_once(&b, p, &key).await;
                polls.fetch_add(1, Ordering::Relaxed);
                if answer == Ok(VerifyCode::Valid) {
                    continue;
                }
                let at = acknowledged.elapsed();
                let what = answer.map_or_else(code_name, |c| c.short_name().to_owned());
                let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
                if first.as_ref().is_none_or(|(t, _)| at < *t) {
                    *first = Some((at, what));
                }
                done.store(true, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let polling = acknowledged.elapsed();
    let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(Polled {
        refused_after: first.as_ref().map(|(t, _)| *t),
        refusal: first.map(|(_, what)| what),
        polls: polls.load(Ordering::Relaxed),
        polling,
    })
}

/// Revocation propagation: makes `o.revocations` keys on A and waits until B knows them; then,
/// one key after another, confirms it VALID on B, revokes it on A and polls B until B refuses it.
pub(crate) async fn propagation(a: &Target, b: Target, o: &ClusterOptions) -> Result<Propagation> {
    let keys = make_keys(a, o.revocations).await?;
    let b = Arc::new(b);
    if let Some((_, last)) = keys.last() {
        until_valid(&b, last, Duration::from_secs(10)).await?;
    }
    let mut revoker = KeyServiceClient::new(a.channels[0].clone());
    let (mut latencies, mut not_refused, mut refusals) = (Vec::new(), 0, BTreeMap::<String, u64>::new());
    let (mut polls, mut polling, start) = (0, Duration::ZERO, Instant::now());
    for (id, key) in keys {
        let key = Arc::new(key);
        until_valid(&b, &key, Duration::from_secs(5)).await?;
        let request = a.request(proto::RevokeKeyRequest { key_id: id, reason: "propagation bench".into() });
        revoker.revoke_key(request).await.map_err(|s| BenchError::call("RevokeKey", &s))?;
        let polled = poll_until_refused(&b, &key, o.pollers, Instant::now()).await?;
        (polls, polling) = (polls + polled.polls, polling + polled.polling);
        match (polled.refused_after, polled.refusal) {
            (Some(t), Some(what)) => {
                latencies.push(micros(t));
                *refusals.entry(what).or_default() += 1;
            }
            _ => not_refused += 1,
        }
    }
    let figures = Figures::new(latencies, not_refused, start.elapsed());
    let spacing_ms = if polls == 0 { f64::NAN } else { polling.as_secs_f64() * 1000.0 / polls as f64 };
    Ok(Propagation::new(&figures, o.pollers, spacing_ms, refusals))
}

/// Probes VerifyKey of `key` and health on `node` every [`FAIL_CLOSED_POLL`] from `since` until
/// `verify_done` and `health_done` have each held once: the time each first held (from `since`,
/// at the answer), and the VerifyKey answers seen, by name.
async fn probe_until(
    node: &Target,
    key: &str,
    since: Instant,
    verify_done: impl Fn(&Result<VerifyCode, tonic::Code>) -> bool,
    health_done: impl Fn(Option<ServingStatus>) -> bool,
) -> Result<(Duration, Duration, BTreeMap<String, u64>)> {
    let (mut verified, mut healthy, mut seen) = (None, None, BTreeMap::<String, u64>::new());
    loop {
        let (answer, status) = tokio::join!(verify_once(node, 0, key), health(node));
        let at = since.elapsed();
        *seen.entry(answer.map_or_else(code_name, |c| c.short_name().to_owned())).or_default() += 1;
        if verified.is_none() && verify_done(&answer) {
            verified = Some(at);
        }
        if healthy.is_none() && health_done(status) {
            healthy = Some(at);
        }
        if let (Some(v), Some(h)) = (verified, healthy) {
            return Ok((v, h, seen));
        }
        if at > FAIL_CLOSED_GIVE_UP {
            return Err(BenchError::Cluster(format!(
                "node A did not {} within {FAIL_CLOSED_GIVE_UP:?} (answers seen: {seen:?})",
                if verified.is_none() { "change its VerifyKey answer" } else { "change its health" }
            )));
        }
        tokio::time::sleep(FAIL_CLOSED_POLL).await;
    }
}

/// `o.fail_cycles` times: pauses all etcd members but one (quorum lost), measures until node A
/// answers VerifyKey UNAVAILABLE and health NOT_SERVING, watches VerifyKey for `o.hold` (no
/// VALID may come), resumes the members and measures until VALID and SERVING again.
pub(crate) async fn fail_closed(etcd: &EtcdCluster, node: &Target, o: &ClusterOptions) -> Result<FailClosed> {
    let key = node.create(plain_key()).await?;
    until_valid(node, &key, Duration::from_secs(5)).await?;
    let paused: Vec<usize> = (1..etcd.len()).collect();
    let (mut cycles, mut answers) = (Vec::new(), BTreeMap::<String, u64>::new());
    for _ in 0..o.fail_cycles {
        let stopped = Instant::now();
        for &m in &paused {
            etcd.pause(m);
        }
        let measured = fail_closed_while_paused(node, &key, stopped, o.hold).await;
        let resumed = Instant::now();
        for &m in &paused {
            etcd.resume(m);
        }
        let (unavailable_after, not_serving_after, held) = measured?;
        for (answer, n) in held {
            *answers.entry(answer).or_default() += n;
        }
        let (valid_again_after, serving_again_after, _) =
            probe_until(node, &key, resumed, |a| *a == Ok(VerifyCode::Valid), |s| s == Some(ServingStatus::Serving))
                .await?;
        cycles.push(FailClosedCycle {
            unavailable_after_ms: ms(unavailable_after),
            not_serving_after_ms: ms(not_serving_after),
            valid_again_after_ms: ms(valid_again_after),
            serving_again_after_ms: ms(serving_again_after),
        });
        // A pause of its own length before the next cycle: its heartbeat phase differs.
        tokio::time::sleep(Duration::from_millis(300 + 137 * cycles.len() as u64)).await;
    }
    Ok(FailClosed::new(paused.len(), etcd.len(), cycles, ms(o.hold), answers, ms(FAIL_CLOSED_POLL)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The paused part of [`fail_closed`]: (UNAVAILABLE after, NOT_SERVING after, the VerifyKey
/// answers during the hold by name).
async fn fail_closed_while_paused(
    node: &Target,
    key: &str,
    stopped: Instant,
    hold: Duration,
) -> Result<(Duration, Duration, BTreeMap<String, u64>)> {
    let (unavailable, not_serving, _) = probe_until(
        node,
        key,
        stopped,
        |a| *a == Err(tonic::Code::Unavailable),
        |s| s == Some(ServingStatus::NotServing),
    )
    .await?;
    let until = Instant::now() + hold;
    let mut held = BTreeMap::<String, u64>::new();
    while Instant::now() < until {
        let answer = verify_once(node, 0, key).await;
        *held.entry(answer.map_or_else(code_name, |c| c.short_name().to_owned())).or_default() += 1;
        tokio::time::sleep(FAIL_CLOSED_POLL).await;
    }
    Ok((unavailable, not_serving, held))
}
