//! One node leads the cluster's periodic work (the sweeper); when it dies, another takes over
//! once its presence lease expires.

use std::time::{Duration, Instant};

use keyward::proto;

use crate::common::cluster::{ClusterNodes, timed};

/// The lease's time to live with the default `max_staleness_ms` (3 × 1 s), and some slack.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(8);

/// Which of the running nodes `alive` say they lead.
async fn leaders(cluster: &ClusterNodes, alive: &[usize]) -> Vec<usize> {
    let mut found = Vec::new();
    for &i in alive {
        let mut client = cluster.node(i).cluster(Some(&cluster.root_key)).await;
        if let Ok(status) = timed(client.get_cluster_status(proto::GetClusterStatusRequest {})).await
            && status.into_inner().leader
        {
            found.push(i);
        }
    }
    found
}

async fn until_one_leader(cluster: &ClusterNodes, alive: &[usize], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let found = leaders(cluster, alive).await;
        if let [one] = found[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "leaders among {alive:?}: {found:?} after {within:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn exactly_one_node_leads_and_another_takes_over_when_it_dies() {
    let mut cluster = ClusterNodes::start(3).await;
    let first = until_one_leader(&cluster, &[0, 1, 2], Duration::from_secs(5)).await;
    // It stays the only one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leaders(&cluster, &[0, 1, 2]).await, [first]);

    cluster.kill_node(first);
    let alive: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let next = until_one_leader(&cluster, &alive, TAKEOVER_WITHIN).await;
    assert_ne!(next, first);
}
