//! The master key across nodes: every node opens its own sessions to the shared token, and a
//! rotation (or retirement) made through one node is taken up by the others, which find the new
//! version on the token and use it.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use super::SEEN_WITHIN;
use crate::common::cluster::{ClusterNodes, timed};

/// Polls GetMasterKeyStatus on node `i` until `done` holds; fails after `within`.
async fn until_status(
    cluster: &ClusterNodes,
    i: usize,
    within: Duration,
    what: &str,
    done: impl Fn(&proto::MasterKeyStatus) -> bool,
) -> proto::MasterKeyStatus {
    let mut master = cluster.node(i).master(Some(&cluster.root_key)).await;
    let deadline = Instant::now() + within;
    loop {
        let status = timed(master.get_master_key_status(proto::GetMasterKeyStatusRequest { skip_counts: false }))
            .await
            .map(|r| r.into_inner());
        if let Ok(status) = &status
            && done(status)
        {
            return status.clone();
        }
        assert!(Instant::now() < deadline, "node {i}: {what} after {within:?}: {status:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_master_rotation_on_one_node_is_taken_up_by_the_others_and_a_retirement_too() {
    let cluster = ClusterNodes::start(3).await;
    let (old_key, _) = cluster.create_key(0, "made-under-v1").await;

    let mut master = cluster.node(0).master(Some(&cluster.root_key)).await;
    let rotated = timed(master.rotate_master_key(proto::RotateMasterKeyRequest {})).await.expect("RotateMasterKey");
    assert_eq!(rotated.into_inner().current_version, 2);
    for i in 1..3 {
        until_status(&cluster, i, SEEN_WITHIN, "current version 2", |s| s.current_version == 2).await;
    }

    // Node 2 makes a digest under version 2, which it found on the shared token.
    let (new_key, _) = cluster.create_key(1, "made-under-v2").await;
    for i in 0..3 {
        for key in [&old_key, &new_key] {
            let deadline = Instant::now() + SEEN_WITHIN;
            while cluster.verify(i, key).await != Ok(VerifyCode::Valid) {
                assert!(Instant::now() < deadline, "node {i} does not verify a key\n{}", cluster.logs());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // Once the re-digest is done, node 3 retires version 1; every node takes that up too.
    until_status(&cluster, 2, Duration::from_secs(30), "the re-digest done", |s| {
        s.migration.is_none() && s.keys_pending == 0
    })
    .await;
    let mut master = cluster.node(2).master(Some(&cluster.root_key)).await;
    timed(master.retire_master_key(proto::RetireMasterKeyRequest { version: 1 })).await.expect("RetireMasterKey");
    for i in 0..3 {
        until_status(&cluster, i, SEEN_WITHIN, "version 1 retired", |s| {
            s.versions.iter().any(|v| v.version == 1 && v.retired_at.is_some())
        })
        .await;
        for key in [&old_key, &new_key] {
            assert_eq!(cluster.verify(i, key).await, Ok(VerifyCode::Valid), "node {i} after the retirement");
        }
    }
}
