//! The etcd test harness itself (no keyward): three real members form one cluster, survive
//! losing one, refuse linearizable reads without quorum, and serve again when it comes back.

use std::time::{Duration, Instant};

use crate::common::etcd::{EtcdCluster, connect, linearizable_get};

/// Puts `key` through `client` until one succeeds, for up to `within` (an election may be under
/// way); panics with the last error and the members' logs.
async fn put_within(etcd: &EtcdCluster, client: &mut etcd_client::Client, key: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), client.put(key, "v", None)).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) if Instant::now() > deadline => panic!("put {key}: {e}; logs:\n{}", etcd.logs()),
            Err(_) if Instant::now() > deadline => panic!("put {key}: no answer; logs:\n{}", etcd.logs()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn three_members_replicate_survive_one_loss_and_refuse_reads_without_quorum() {
    let mut etcd = EtcdCluster::start(3).await;
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(etcd.urls(), endpoints.join(","));

    // Written through member 0, read (linearizably) through member 2.
    etcd.member_client(0).await.put("harness/a", "written on m0", None).await.expect("put on member 0");
    let got = etcd.member_client(2).await.get("harness/a", None).await.expect("get on member 2");
    assert_eq!(got.kvs().first().map(|kv| kv.value()), Some(&b"written on m0"[..]));

    // The leader SIGKILLed: the other two elect a new one and take writes.
    let leader = etcd.leader().await;
    etcd.kill(leader);
    let mut survivors = connect(&[endpoints[(leader + 1) % 3].clone(), endpoints[(leader + 2) % 3].clone()]).await;
    put_within(&etcd, &mut survivors, "harness/after-kill", Duration::from_secs(5)).await;
    for i in 0..20 {
        put_within(&etcd, &mut survivors, &format!("harness/more/{i}"), Duration::ZERO).await;
    }

    // Restarted on its data directory and ports, it rejoins and has every write.
    etcd.restart(leader).await;
    let got = etcd.member_client(leader).await.get("harness/more/19", None).await.expect("get on the restarted member");
    assert_eq!(got.kvs().len(), 1, "the restarted member caught up");

    // Two of three SIGSTOPped: the third cannot serve a linearizable read.
    let (a, b, alone) = (leader, (leader + 1) % 3, (leader + 2) % 3);
    etcd.stop(a);
    etcd.stop(b);
    let alone_endpoint = [endpoints[alone].clone()];
    let refused = linearizable_get(&alone_endpoint, Duration::from_secs(1)).await;
    assert!(refused.is_err(), "a linearizable read without quorum must fail");

    // SIGCONT: quorum is back, and so are reads.
    etcd.cont(a);
    etcd.cont(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = linearizable_get(&alone_endpoint, Duration::from_secs(1)).await {
        assert!(Instant::now() < deadline, "no read 10 s after SIGCONT: {e}; logs:\n{}", etcd.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
