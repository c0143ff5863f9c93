//! One key state for the cluster: created on one node, valid on the others; revoked on one,
//! refused by the others within 1 s; one audit chain with the same head on every node.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use super::{SEEN_WITHIN, VALID, same_verified_chain_everywhere, until_verify, until_verify_since};
use crate::common::cluster::{ClusterNodes, timed};

#[tokio::test]
async fn a_key_made_on_one_node_verifies_on_every_node_and_its_revocation_reaches_them_within_a_second() {
    let cluster = ClusterNodes::start(3).await;
    let (key, key_id) = cluster.create_key(0, "made on n1").await;
    for i in [1, 2] {
        until_verify(&cluster, i, &key, VALID, SEEN_WITHIN, "a key created on node 0").await;
    }

    cluster.revoke(1, &key_id).await;
    let acknowledged = Instant::now();
    for i in [0, 2] {
        let took = until_verify_since(
            &cluster,
            i,
            &key,
            Ok(VerifyCode::Revoked),
            acknowledged,
            Duration::from_secs(1),
            "a key revoked on node 1 (bound: 1 s after the revocation was acknowledged)",
        )
        .await;
        println!("revocation seen on node {i} after {took:?}");
    }
    // Once refused, refused for good.
    for i in 0..3 {
        assert_eq!(cluster.verify(i, &key).await, Ok(VerifyCode::Revoked), "node {i}");
    }

    let (seq, _) = same_verified_chain_everywhere(&cluster, SEEN_WITHIN).await;
    // Every node tells the same story: the key's creation and revocation, in order.
    let mut stories = Vec::new();
    for i in 0..3 {
        let mut audit = cluster.audit(i).await;
        let request = proto::QueryEventsRequest { key_id: key_id.clone(), page_size: 1000, ..Default::default() };
        let events = timed(audit.query_events(request)).await.expect("QueryEvents").into_inner().events;
        stories.push(events.into_iter().map(|e| (e.seq, e.action, e.mac)).collect::<Vec<_>>());
    }
    let actions: Vec<&str> = stories[0].iter().map(|(_, action, _)| action.as_str()).collect();
    assert_eq!(actions, ["key.created", "key.revoked"], "the key's events on node 0");
    assert!(stories[0].iter().all(|(s, _, _)| *s <= seq), "no event beyond the head");
    assert_eq!(stories[1], stories[0], "node 1 gives node 0's events");
    assert_eq!(stories[2], stories[0], "node 2 gives node 0's events");
}
