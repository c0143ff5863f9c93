//! A node whose watch cannot resume (the revision it stopped at was compacted meanwhile) reloads
//! the cluster's state in full, and comes back current without a restart.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use super::{SEEN_WITHIN, UNAVAILABLE, until_verify};
use crate::common::{
    cluster::{ClusterNodes, node_id, timed},
    etcd::EtcdCluster,
};

#[tokio::test]
async fn a_node_cut_off_while_etcd_compacted_its_revision_reloads_and_catches_up() {
    let mut cluster = ClusterNodes::initialized(EtcdCluster::start(3).await);
    let (first, second) = (cluster.add_node(), cluster.add_node());
    // The first node talks to member 0 only, so stopping that member cuts it off.
    let only_member_0 = cluster.etcd.endpoints()[0].clone();
    cluster.node_mut(first).serve_args = vec!["--etcd".into(), only_member_0, "--node-id".into(), node_id(first)];
    cluster.start_node(first).await;
    cluster.start_node(second).await;
    let (old, old_id) = cluster.create_key(second, "before").await;
    until_verify(&cluster, first, &old, Ok(VerifyCode::Valid), SEEN_WITHIN, "the key made before").await;

    cluster.etcd.stop(0);
    until_verify(&cluster, first, &old, UNAVAILABLE, SEEN_WITHIN, "the cut-off node failing closed").await;
    // Meanwhile the other members go on (after electing a leader if member 0 led): a key is
    // made, the old one revoked, history compacted.
    let deadline = Instant::now() + SEEN_WITHIN;
    let new = loop {
        let request = proto::CreateKeyRequest { name: "while-cut-off".into(), ..Default::default() };
        match cluster.create(second, request).await {
            Ok((key, _)) => break key,
            Err(status) => assert!(Instant::now() < deadline, "CreateKey without member 0: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A call the second node routed to the stopped member may fail: retried (the retry window).
    let mut keys = cluster.keys(second).await;
    loop {
        let request = proto::RevokeKeyRequest { key_id: old_id.clone(), reason: "test".into() };
        match timed(keys.revoke_key(request)).await {
            Ok(_) => break,
            Err(status) => assert!(Instant::now() < deadline, "RevokeKey without member 0: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = cluster.etcd.member_client(1).await;
    let revision = client.get("x", None).await.expect("a read").header().expect("a header").revision();
    client.compact(revision, None).await.expect("compacting etcd's history");

    cluster.etcd.cont(0);
    let back = Instant::now();
    until_verify(&cluster, first, &new, Ok(VerifyCode::Valid), Duration::from_secs(10), "the key made meanwhile").await;
    assert_eq!(cluster.verify(first, &old).await, Ok(VerifyCode::Revoked), "the revocation made meanwhile");
    println!("the cut-off node was current again {:?} after its member came back", back.elapsed());
}
