//! etcd keeps only the newest `cluster.audit_keep_events` audit events: older ones are trimmed
//! behind a checkpoint, every running node keeps the whole chain in its own database, and a node
//! that joins afterwards starts its copy at the checkpoint and agrees on the head.

use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use super::{SEEN_WITHIN, chain, same_verified_chain_everywhere};
use keyward::proto;

use crate::common::{
    cluster::{ClusterNodes, node_id, timed},
    etcd::EtcdCluster,
};

const KEEP: u64 = 10;

/// Audit events etcd holds now.
async fn events_in_etcd(cluster: &ClusterNodes) -> usize {
    let mut client = cluster.etcd.client().await;
    let options = GetOptions::new().with_prefix().with_keys_only();
    client.get("/keyward/audit/e/", Some(options)).await.expect("reading etcd").kvs().len()
}

#[tokio::test]
async fn etcd_keeps_a_window_of_the_trail_and_a_late_node_starts_its_copy_at_the_checkpoint() {
    let mut cluster = ClusterNodes::initialized(EtcdCluster::start(3).await);
    for _ in 0..2 {
        cluster.add_node();
    }
    cluster.node(0).configure("cluster", "audit_keep_events", &KEEP.to_string());
    for i in 0..2 {
        cluster.start_node(i).await;
    }
    for n in 0..30 {
        cluster.create_key(n % 2, &format!("k{n}")).await;
    }
    // The first event (init) and 30 creations: 31 events, of which etcd keeps the newest 10.
    let deadline = Instant::now() + SEEN_WITHIN;
    while events_in_etcd(&cluster).await > KEEP as usize {
        assert!(
            Instant::now() < deadline,
            "etcd still holds {} events\n{}",
            events_in_etcd(&cluster).await,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let head = same_verified_chain_everywhere(&cluster, SEEN_WITHIN).await;
    assert_eq!(head.0, 31);
    for i in 0..2 {
        let (_, verified) = chain(&cluster, i).await;
        assert_eq!((verified.first_seq, verified.last_seq), (1, 31), "node {i} keeps the whole chain");
    }

    let late = cluster.add_node();
    cluster.start_node(late).await;
    let (late_head, verified) = chain(&cluster, late).await;
    assert_eq!(late_head, head, "the late node agrees on the head");
    assert!(verified.ok, "the late node's copy verifies: {verified:?}");
    assert!(verified.first_seq > 1 && verified.first_seq <= 31 - KEEP + 1, "it starts at the checkpoint: {verified:?}");
    assert_eq!(verified.last_seq, 31);

    let (_, after) = cluster.create_key(late, "after").await;
    let head = same_verified_chain_everywhere(&cluster, SEEN_WITHIN).await;
    assert_eq!(head.0, 32, "an event the late node sealed chains on for every node");
    // Every node's trail names the node that wrote each event.
    for i in 0..cluster.len() {
        let mut audit = cluster.audit(i).await;
        let request = proto::QueryEventsRequest { key_id: after.clone(), ..Default::default() };
        let events = timed(audit.query_events(request)).await.expect("QueryEvents").into_inner().events;
        let nodes: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(nodes, [node_id(late)], "node {i}: the creation of {after} names the node that wrote it");
    }
}
