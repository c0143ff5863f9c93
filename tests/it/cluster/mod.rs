//! Cluster mode (issue 16) end to end: 3 real etcd members and several real keyward nodes on
//! loopback, started by each test for itself. What one node acknowledges, every node sees;
//! a node that cannot prove it is current fails closed; etcd never holds a secret in clear.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::common::cluster::{ClusterNodes, Outcome, timed};

mod acknowledged;
mod anomaly;
mod audit_trim;
mod dev_script;
mod etcd_faults;
mod etcd_tls;
mod init;
mod leader;
mod master;
mod node_crash;
mod propagation;
mod quota;
mod rate_limit;
mod secrecy;
mod signing;
mod watch_recovery;

/// `cluster.max_staleness_ms`'s default: how long a node may go without proving it is current.
const MAX_STALENESS: Duration = Duration::from_millis(1000);

/// How long a node may take to show what another node acknowledged (a new key), in these tests:
/// generous, as the issue bounds only revocations (1 s) and recovery (5 s).
const SEEN_WITHIN: Duration = Duration::from_secs(5);

/// Polls VerifyKey of `key` on node `i` until it answers `want`; fails after `within`.
/// Returns how long it took.
async fn until_verify(
    cluster: &ClusterNodes,
    i: usize,
    key: &str,
    want: Outcome,
    within: Duration,
    what: &str,
) -> Duration {
    until_verify_since(cluster, i, key, want, Instant::now(), within, what).await
}

/// `until_verify`, timed from `since` (e.g. when a revocation was acknowledged).
async fn until_verify_since(
    cluster: &ClusterNodes,
    i: usize,
    key: &str,
    want: Outcome,
    since: Instant,
    within: Duration,
    what: &str,
) -> Duration {
    let mut client = cluster.verifier(i).await;
    loop {
        let asked_at = since.elapsed();
        let got = crate::common::cluster::verify_with(&mut client, key, None).await;
        if got == want {
            return asked_at;
        }
        assert!(
            asked_at < within,
            "{what}: node {i} did not answer {want:?} within {within:?} (last answer {got:?})\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Node `i`'s health for the whole server (`""`), or `None` if the check failed.
async fn health(cluster: &ClusterNodes, i: usize) -> Option<ServingStatus> {
    let mut client = cluster.health(i).await;
    timed(client.check(HealthCheckRequest { service: String::new() })).await.ok().map(|r| r.get_ref().status())
}

/// The audit chain's head on node `i` (GetCheckpoint: sequence number and MAC) and what
/// VerifyChain says of the whole chain there.
async fn chain(cluster: &ClusterNodes, i: usize) -> ((u64, Vec<u8>), proto::VerifyChainResponse) {
    let mut audit = cluster.audit(i).await;
    let head = timed(audit.get_checkpoint(proto::GetCheckpointRequest {}))
        .await
        .unwrap_or_else(|s| panic!("GetCheckpoint on node {i}: {s:?}"))
        .into_inner();
    let verified = timed(audit.verify_chain(proto::VerifyChainRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("VerifyChain on node {i}: {s:?}"))
        .into_inner();
    ((head.seq, head.mac), verified)
}

/// Waits (up to `within`) until every node reports the same chain head and VerifyChain on
/// every node verifies the whole chain up to that head. Returns the head.
async fn same_verified_chain_everywhere(cluster: &ClusterNodes, within: Duration) -> (u64, Vec<u8>) {
    let deadline = Instant::now() + within;
    loop {
        let mut chains = Vec::new();
        for i in 0..cluster.len() {
            chains.push(chain(cluster, i).await);
        }
        let head = chains[0].0.clone();
        let agree = chains.iter().all(|(h, verified)| *h == head && verified.ok && verified.last_seq == head.0);
        if agree {
            assert!(head.0 > 0 && !head.1.is_empty(), "the chain has a sealed head: {head:?}");
            return head;
        }
        let seen: Vec<_> = chains.iter().map(|(h, verified)| (h.0, verified)).collect();
        assert!(
            Instant::now() < deadline,
            "the nodes' chains (head, VerifyChain) do not agree after {within:?}: {seen:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until every key in `keys` verifies VALID on node `i` (each within `within`), over one
/// connection.
async fn all_valid_on(cluster: &ClusterNodes, i: usize, keys: &[String], within: Duration, what: &str) {
    let mut client = cluster.verifier(i).await;
    for key in keys {
        let start = Instant::now();
        loop {
            let got = crate::common::cluster::verify_with(&mut client, key, None).await;
            if got == VALID {
                break;
            }
            assert!(
                start.elapsed() < within,
                "{what}: a key is not VALID on node {i} within {within:?} (last answer {got:?})\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A valid answer.
const VALID: Outcome = Ok(VerifyCode::Valid);
/// The answer of a node that cannot prove it is current.
const UNAVAILABLE: Outcome = Err(Code::Unavailable);
