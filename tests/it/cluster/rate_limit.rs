//! A rate limit is one limit for the cluster: each node enforces its share, so verifiers
//! hammering a key on three nodes at once get no more than the limit in all.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use super::SEEN_WITHIN;
use crate::common::cluster::{ClusterNodes, Outcome, timed, verify_with};

/// The key's limit: 30 per 10 minutes (each of 3 nodes: a burst of 10, then one per minute,
/// far slower than this test).
const LIMIT: u32 = 30;
const CALLS_PER_VERIFIER: usize = 40;

#[tokio::test]
async fn a_limit_of_30_hammered_on_three_nodes_lets_at_most_30_through() {
    let cluster = ClusterNodes::start(3).await;
    let request = proto::CreateKeyRequest {
        name: "limited".into(),
        rate_limit: Some(proto::RateLimit {
            limit: LIMIT,
            window: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        }),
        ..Default::default()
    };
    let (key, key_id) = cluster.create(0, request).await.expect("CreateKey with a rate limit");
    for i in 0..3 {
        let deadline = Instant::now() + SEEN_WITHIN;
        let mut keys = cluster.keys(i).await;
        while timed(keys.get_key(proto::GetKeyRequest { key_id: key_id.clone() })).await.is_err() {
            assert!(Instant::now() < deadline, "node {i} does not know the key\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut tasks = Vec::new();
    for i in 0..3 {
        for _ in 0..3 {
            let (mut client, key) = (cluster.verifier(i).await, key.clone());
            tasks.push(tokio::spawn(async move {
                let (mut valid, mut limited, mut other) = (0u32, 0u32, Vec::<Outcome>::new());
                for _ in 0..CALLS_PER_VERIFIER {
                    match verify_with(&mut client, &key, None).await {
                        Ok(VerifyCode::Valid) => valid += 1,
                        Ok(VerifyCode::RateLimited) => limited += 1,
                        outcome => other.push(outcome),
                    }
                }
                (valid, limited, other)
            }));
        }
    }
    let (mut valid, mut limited, mut other) = (0, 0, Vec::new());
    for task in tasks {
        let (v, l, o) = task.await.expect("a verifier");
        (valid, limited) = (valid + v, limited + l);
        other.extend(o);
    }
    println!("{valid} VALID and {limited} RATE_LIMITED for a limit of {LIMIT} on 3 nodes");
    assert!(other.is_empty(), "answers other than VALID and RATE_LIMITED: {other:?}\n{}", cluster.logs());
    assert!(valid <= LIMIT, "{valid} VALID for a limit of {LIMIT}: the nodes did not share it");
    assert!(valid >= LIMIT / 3, "{valid} VALID: not even one node's share went through");
    assert!(limited > 0);
}
