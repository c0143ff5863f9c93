//! A quota is one quota for the cluster: `remaining: 1000` spent by concurrent verifiers on
//! three nodes gives at most 1000 VALID in all.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use super::SEEN_WITHIN;
use crate::common::cluster::{ClusterNodes, Outcome, timed, verify_with};

/// Verifiers per node.
const VERIFIERS: usize = 4;
/// A verifier stops after this many QUOTA_EXCEEDED in a row (its node has nothing left).
const EXHAUSTED_AFTER: usize = 20;

#[tokio::test]
async fn remaining_1000_spent_from_three_nodes_at_once_gives_at_most_1000_valid() {
    let cluster = ClusterNodes::start(3).await;
    let request = proto::CreateKeyRequest { name: "metered".into(), remaining: Some(1000), ..Default::default() };
    let (key, key_id) = cluster.create(0, request).await.expect("CreateKey with remaining: 1000");

    // Every node knows the key before any use is spent (GetKey spends nothing).
    for i in 0..3 {
        let deadline = Instant::now() + SEEN_WITHIN;
        let mut keys = cluster.keys(i).await;
        while timed(keys.get_key(proto::GetKeyRequest { key_id: key_id.clone() })).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "node {i} does not know the key after {SEEN_WITHIN:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let mut tasks = Vec::new();
    for i in 0..3 {
        for _ in 0..VERIFIERS {
            let (mut client, key) = (cluster.verifier(i).await, key.clone());
            tasks.push(tokio::spawn(async move {
                let (mut valid, mut exhausted_in_a_row, mut other) = (0u64, 0, Vec::<Outcome>::new());
                let deadline = Instant::now() + Duration::from_secs(30);
                while exhausted_in_a_row < EXHAUSTED_AFTER && Instant::now() < deadline {
                    match verify_with(&mut client, &key, Some(1)).await {
                        Ok(VerifyCode::Valid) => (valid, exhausted_in_a_row) = (valid + 1, 0),
                        Ok(VerifyCode::QuotaExceeded) => exhausted_in_a_row += 1,
                        outcome => other.push(outcome),
                    }
                }
                (valid, exhausted_in_a_row >= EXHAUSTED_AFTER, other)
            }));
        }
    }
    let (mut valid, mut other) = (0, Vec::new());
    for task in tasks {
        let (v, exhausted, o) = task.await.expect("a verifier");
        assert!(exhausted, "a verifier ran 30 s without exhausting the quota");
        valid += v;
        other.extend(o);
    }
    println!("{valid} VALID of remaining: 1000, from {} verifiers on 3 nodes", 3 * VERIFIERS);
    assert!(other.is_empty(), "answers other than VALID and QUOTA_EXCEEDED: {other:?}\n{}", cluster.logs());
    assert!(valid <= 1000, "{valid} VALID: the quota was overspent");
    assert!(valid >= 1, "no use of the quota was ever granted");
}
