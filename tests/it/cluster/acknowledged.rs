//! What one node acknowledged, another node acts on at once: a RevokeKey sent to a second node
//! right after the first acknowledged the key's creation finds the key, even when the second
//! node's view has not caught up yet (its refusal would stand on a stale read: the write compares
//! its reads, and runs again on what etcd holds). The compares of a refusal must be evaluated by
//! a linearizable transaction: etcd serves one without operations from a member that may lag.

use keyward::proto;

use crate::common::cluster::{ClusterNodes, timed};

#[tokio::test]
async fn a_key_created_on_one_node_can_be_revoked_at_once_on_another() {
    let cluster = ClusterNodes::start(2).await;
    let mut clients = [cluster.keys(0).await, cluster.keys(1).await];
    for n in 0..60 {
        let (creator, other) = (n % 2, 1 - n % 2);
        let (_, key_id) = cluster.create_key(creator, &format!("k{n}")).await;
        let request = proto::RevokeKeyRequest { key_id, reason: "at once".into() };
        let revoked = timed(clients[other].revoke_key(request)).await;
        assert!(revoked.is_ok(), "RevokeKey on node {other} right after CreateKey on node {creator}: {revoked:?}");
    }
}
