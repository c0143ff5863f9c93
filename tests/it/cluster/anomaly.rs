//! Anomaly detection in a cluster: each node detects on its own verifications, and what one
//! node records (the anomaly on the key, its `key.anomaly` event, the DISABLE policy's effect)
//! is cluster-wide; the cool-down on the key's record makes two nodes flagging the same burst
//! write one anomaly.

use std::time::{Duration, Instant};

use keyward::proto::{self, AnomalyAction, VerifyCode};

use crate::common::{
    VerifyClient,
    cluster::{ClusterNodes, ETCD_MEMBERS},
    etcd::EtcdCluster,
};

async fn verify(v: &mut VerifyClient, key: &str, client_ip: &str) -> VerifyCode {
    let request = proto::VerifyKeyRequest { key: key.into(), client_ip: client_ip.into(), ..Default::default() };
    v.verify_key(request).await.expect("VerifyKey").into_inner().code()
}

#[tokio::test]
async fn two_nodes_flagging_one_burst_write_one_anomaly_that_disables_the_key_everywhere() {
    let mut cluster = ClusterNodes::initialized(EtcdCluster::start(ETCD_MEMBERS).await);
    cluster.add_node();
    cluster.add_node();
    // The nodes share the data directory's configuration.
    for (key, value) in [("window_seconds", "1"), ("min_baseline_seconds", "3"), ("new_networks", "10")] {
        cluster.node(0).configure("anomaly", key, value);
    }
    cluster.start_node(0).await;
    cluster.start_node(1).await;
    let request = proto::CreateKeyRequest {
        name: "payments".into(),
        anomaly_action: AnomalyAction::Disable as i32,
        ..Default::default()
    };
    let (key, id) = cluster.create(0, request).await.expect("CreateKey");
    let (mut v0, mut v1) = (cluster.verifier(0).await, cluster.verifier(1).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while verify(&mut v1, &key, "198.51.100.7").await != VerifyCode::Valid {
        assert!(Instant::now() < deadline, "node 2 does not know the key\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A baseline on both nodes: five seconds of steady traffic from two networks.
    for n in 0..20 {
        let ip = if n % 2 == 0 { "198.51.100.7" } else { "2001:db8:1::7" };
        assert_eq!(verify(&mut v0, &key, ip).await, VerifyCode::Valid);
        assert_eq!(verify(&mut v1, &key, ip).await, VerifyCode::Valid);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The same thirty new networks on both nodes, in the same window.
    for n in 0..30 {
        let ip = format!("203.0.{n}.9");
        verify(&mut v0, &key, &ip).await;
        verify(&mut v1, &key, &ip).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while verify(&mut v1, &key, "198.51.100.7").await != VerifyCode::Disabled {
        assert!(Instant::now() < deadline, "the key was not disabled within 20 s\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(verify(&mut v0, &key, "198.51.100.7").await, VerifyCode::Disabled, "on every node");
    // A few windows for a second node's finding, if any, to be written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2 {
        let query =
            proto::QueryEventsRequest { key_id: id.clone(), action: "key.anomaly".into(), ..Default::default() };
        let events = cluster.audit(i).await.query_events(query).await.expect("QueryEvents").into_inner().events;
        assert_eq!(events.len(), 1, "node {}: one anomaly for one burst: {events:?}", i + 1);
        assert_eq!(events[0].code, "NEW_NETWORKS");
        let info = cluster.keys(i).await.get_key(proto::GetKeyRequest { key_id: id.clone() }).await.unwrap();
        assert_eq!(info.into_inner().anomalies.len(), 1);
    }
}
