//! etcd members failing under a running cluster: losing one of three costs at most a retry
//! window and loses nothing; losing two (quorum) makes every node fail closed within
//! `max_staleness_ms` + 1 s, and service comes back by itself within 5 s of quorum's return.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keyward::proto::{self, VerifyCode};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{MAX_STALENESS, SEEN_WITHIN, UNAVAILABLE, VALID, all_valid_on, health, until_verify};
use crate::common::{
    KeyClient, VerifyClient,
    cluster::{ClusterNodes, Outcome, timed, verify_with},
};

/// The documented retry window: while etcd elects a new leader a call may fail; the same call
/// retried for up to this long succeeds.
const RETRY_WINDOW: Duration = Duration::from_secs(5);

/// What the load saw: every acknowledged create (key, when), the valid verifications, and
/// every failure that outlasted the retry window or was a wrong answer.
#[derive(Default)]
struct Seen {
    created: Vec<(String, Instant)>,
    valid: u64,
    failures: Vec<String>,
}

/// CreateKey on `client`, retried for up to the retry window.
async fn create_retrying(client: &mut KeyClient, name: &str) -> Result<String, tonic::Status> {
    let deadline = Instant::now() + RETRY_WINDOW;
    loop {
        let request = proto::CreateKeyRequest { name: name.into(), ..Default::default() };
        match timed(client.create_key(request)).await {
            Ok(created) => return Ok(created.into_inner().key),
            Err(status) if Instant::now() > deadline => return Err(status),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// VerifyKey on `client`, retried for up to the retry window when the call fails (an answer
/// is final).
async fn verify_retrying(client: &mut VerifyClient, key: &str) -> Outcome {
    let deadline = Instant::now() + RETRY_WINDOW;
    loop {
        match verify_with(client, key, None).await {
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            outcome => return outcome,
        }
    }
}

#[tokio::test]
async fn losing_one_etcd_member_under_load_costs_at_most_the_retry_window_and_loses_nothing() {
    let mut cluster = ClusterNodes::start(3).await;
    let (known, _) = cluster.create_key(0, "verified under load").await;
    for i in 0..3 {
        until_verify(&cluster, i, &known, VALID, SEEN_WITHIN, "the key the load verifies").await;
    }

    // On every node: one task creating keys, one verifying the known key.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (mut keys, stop_creating, seen_creating) = (cluster.keys(i).await, stop.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop_creating.load(Ordering::Relaxed) {
                n += 1;
                let result = create_retrying(&mut keys, &format!("load n{} #{n}", i + 1)).await;
                let mut seen = seen_creating.lock().unwrap();
                match result {
                    Ok(key) => seen.created.push((key, Instant::now())),
                    Err(status) => seen.failures.push(format!("CreateKey on node {i}: {status:?}")),
                }
            }
        }));
        let (mut verifier, stop_verifying, seen_verifying) = (cluster.verifier(i).await, stop.clone(), seen.clone());
        let known = known.clone();
        tasks.push(tokio::spawn(async move {
            while !stop_verifying.load(Ordering::Relaxed) {
                let outcome = verify_retrying(&mut verifier, &known).await;
                match outcome {
                    VALID => seen_verifying.lock().unwrap().valid += 1,
                    other => seen_verifying.lock().unwrap().failures.push(format!("VerifyKey on node {i}: {other:?}")),
                }
                // A steady load, not a flood: on 2 cores, a flood would starve etcd itself.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.etcd.leader().await;
    cluster.etcd.kill(leader);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a load task");
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let after_kill = seen.created.iter().filter(|(_, at)| *at > killed_at).count();
    println!(
        "etcd leader (member {leader}) SIGKILLed: {} creates acknowledged ({after_kill} after the kill), {} valid verifications",
        seen.created.len(),
        seen.valid
    );
    assert!(seen.failures.is_empty(), "failures beyond the retry window: {:?}\n{}", seen.failures, cluster.logs());
    assert!(after_kill > 0, "creates went on after the kill\n{}", cluster.logs());
    assert!(seen.valid > 0, "verifications went on");

    // Nothing lost: every acknowledged key is valid on every node.
    let created: Vec<String> = seen.created.into_iter().map(|(key, _)| key).collect();
    for i in 0..3 {
        all_valid_on(&cluster, i, &created, SEEN_WITHIN, "an acknowledged create").await;
    }
}

/// Whether node `i` fails closed now: VerifyKey `UNAVAILABLE` and health `NOT_SERVING`.
async fn fails_closed(cluster: &ClusterNodes, i: usize, key: &str) -> bool {
    cluster.verify(i, key).await == UNAVAILABLE && health(cluster, i).await == Some(ServingStatus::NotServing)
}

#[tokio::test]
async fn without_etcd_quorum_every_node_fails_closed_and_recovers_by_itself_when_quorum_returns() {
    let mut cluster = ClusterNodes::start(3).await;
    let (key, _) = cluster.create_key(0, "never valid from a stale cache").await;
    for i in 0..3 {
        until_verify(&cluster, i, &key, VALID, SEEN_WITHIN, "before quorum is lost").await;
    }
    let pids: Vec<u32> = (0..3).map(|i| cluster.node(i).pid()).collect();

    // SIGSTOP the leader and one more member: the third has no quorum.
    let leader = cluster.etcd.leader().await;
    let stopped = [leader, (leader + 1) % 3];
    for m in stopped {
        cluster.etcd.stop(m);
    }
    let stopped_at = Instant::now();
    let bound = MAX_STALENESS + Duration::from_secs(1);

    // Within the bound, every node refuses and says so in health.
    let mut closed = [false; 3];
    while closed.contains(&false) {
        for (i, closed) in closed.iter_mut().enumerate() {
            if *closed {
                let got = cluster.verify(i, &key).await;
                assert_eq!(got, UNAVAILABLE, "node {i} answered after failing closed\n{}", cluster.logs());
                continue;
            }
            let asked_at = stopped_at.elapsed();
            *closed = fails_closed(&cluster, i, &key).await;
            if *closed {
                println!("node {i} failed closed {asked_at:?} after quorum loss");
            }
            assert!(
                *closed || asked_at <= bound,
                "node {i} still serves {asked_at:?} after quorum loss\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // And keeps refusing while quorum is lost: never VALID from its cache.
    let mut answers = 0;
    while stopped_at.elapsed() < bound + Duration::from_secs(2) {
        for i in 0..3 {
            let got = cluster.verify(i, &key).await;
            assert_eq!(got, UNAVAILABLE, "node {i} answered while quorum was lost\n{}", cluster.logs());
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&cluster, 0).await, Some(ServingStatus::NotServing));
    // Mutations need quorum: refused, promptly, as UNAVAILABLE.
    let refused = cluster.create(1, proto::CreateKeyRequest { name: "no quorum".into(), ..Default::default() }).await;
    assert_eq!(refused.map_err(|s| s.code()).err(), Some(Code::Unavailable), "CreateKey without quorum");
    println!("{answers} verifications refused while quorum was lost");

    // Quorum back: the same processes serve again within 5 s.
    for m in stopped {
        cluster.etcd.cont(m);
    }
    let resumed_at = Instant::now();
    let mut serving = [false; 3];
    while serving.contains(&false) {
        for (i, serving) in serving.iter_mut().enumerate().filter(|(_, serving)| !**serving) {
            let asked_at = resumed_at.elapsed();
            *serving =
                cluster.verify(i, &key).await == VALID && health(&cluster, i).await == Some(ServingStatus::Serving);
            assert!(
                *serving || asked_at <= Duration::from_secs(5),
                "node {i} does not serve (VALID, SERVING) {asked_at:?} after SIGCONT\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("every node valid again {:?} after SIGCONT", resumed_at.elapsed());
    for (i, pid) in pids.iter().enumerate() {
        assert!(cluster.node_mut(i).is_running(), "node {i} is still running");
        assert_eq!(cluster.node(i).pid(), *pid, "node {i} was not restarted");
    }
    assert_eq!(cluster.verify(0, &key).await, Ok(VerifyCode::Valid));
}
