//! A keyward node SIGKILLed in the middle of writes: everything it acknowledged is on the other
//! nodes, and once restarted it catches up (keys and audit chain).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keyward::proto;

use super::{SEEN_WITHIN, all_valid_on, same_verified_chain_everywhere};
use crate::common::cluster::{ClusterNodes, timed};

#[tokio::test]
async fn every_create_a_killed_node_acknowledged_is_on_the_others_and_on_it_after_its_restart() {
    let mut cluster = ClusterNodes::start(3).await;
    const VICTIM: usize = 2;

    // Creates on the victim, one after another, until a call fails (the node is gone).
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut keys = cluster.keys(VICTIM).await;
    let writer = {
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let request = proto::CreateKeyRequest { name: format!("written on n3 #{n}"), ..Default::default() };
                match timed(keys.create_key(request)).await {
                    Ok(created) => acknowledged.lock().unwrap().push(created.into_inner().key),
                    Err(_) => return,
                }
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "fewer than 20 creates in 20 s\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill_node(VICTIM);
    writer.await.expect("the writer");
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    println!("{} creates acknowledged by node {VICTIM} before its SIGKILL", acknowledged.len());

    for i in [0, 1] {
        all_valid_on(&cluster, i, &acknowledged, SEEN_WITHIN, "a create the killed node acknowledged").await;
    }
    // Written while it is down: it must catch up on this too.
    let (while_down, _) = cluster.create_key(0, "made while n3 was down").await;

    cluster.start_node(VICTIM).await;
    let everything: Vec<String> = acknowledged.into_iter().chain([while_down]).collect();
    all_valid_on(&cluster, VICTIM, &everything, SEEN_WITHIN, "after the restart").await;
    same_verified_chain_everywhere(&cluster, SEEN_WITHIN).await;
}
