//! The master key across nodes: every node opens its own sessions to the shared token, and a
//! rotation (or retirement) made through one node is taken up by the others, which find the new
//! version (and its signing-secret wrapping key) on the token and use it.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};

use super::SEEN_WITHIN;
use crate::{
    common::cluster::{ClusterNodes, timed},
    signing::{Signed, now, sign},
};

/// VerifySignature of `signed` on node `i` as root.
async fn check_signed(cluster: &ClusterNodes, i: usize, signed: &Signed) -> Result<VerifyCode, String> {
    let mut client = cluster.verifier(i).await;
    let answer = timed(client.verify_signature(signed.request(&[], ""))).await;
    answer.map(|r| r.into_inner().code()).map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Polls GetMasterKeyStatus on node `i` until `done` holds; fails after `within`.
async fn until_status(
    cluster: &ClusterNodes,
    i: usize,
    within: Duration,
    what: &str,
    done: impl Fn(&proto::MasterKeyStatus) -> bool,
) -> proto::MasterKeyStatus {
    let mut master = cluster.node(i).master(Some(&cluster.root_key)).await;
    let deadline = Instant::now() + within;
    loop {
        let status = timed(master.get_master_key_status(proto::GetMasterKeyStatusRequest { skip_counts: false }))
            .await
            .map(|r| r.into_inner());
        if let Ok(status) = &status
            && done(status)
        {
            return status.clone();
        }
        assert!(Instant::now() < deadline, "node {i}: {what} after {within:?}: {status:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_master_rotation_on_one_node_is_taken_up_by_the_others_and_a_retirement_too() {
    let cluster = ClusterNodes::start(3).await;
    let (old_key, _) = cluster.create_key(0, "made-under-v1").await;
    let signing =
        proto::CreateKeyRequest { name: "signer".into(), kind: proto::KeyKind::Signing as i32, ..Default::default() };
    let created = timed(cluster.keys(0).await.create_key(signing)).await.expect("CreateKey").into_inner();
    let (signer, secret) = (created.info.unwrap().key_id, created.signing_secret);
    // Signed before the rotation; each node checks its own later (each has its own replay cache).
    let before: Vec<Signed> = (0..3).map(|i| sign(&signer, &secret, now(), &format!("before-{i}"))).collect();

    let mut master = cluster.node(0).master(Some(&cluster.root_key)).await;
    let rotated = timed(master.rotate_master_key(proto::RotateMasterKeyRequest {})).await.expect("RotateMasterKey");
    assert_eq!(rotated.into_inner().current_version, 2);
    for i in 1..3 {
        until_status(&cluster, i, SEEN_WITHIN, "current version 2", |s| s.current_version == 2).await;
    }

    // Node 2 makes a digest under version 2, which it found on the shared token.
    let (new_key, _) = cluster.create_key(1, "made-under-v2").await;
    for i in 0..3 {
        for key in [&old_key, &new_key] {
            let deadline = Instant::now() + SEEN_WITHIN;
            while cluster.verify(i, key).await != Ok(VerifyCode::Valid) {
                assert!(Instant::now() < deadline, "node {i} does not verify a key\n{}", cluster.logs());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // Once the re-digest is done, node 3 retires version 1; every node takes that up too.
    let done = until_status(&cluster, 2, Duration::from_secs(30), "the re-digest done", |s| {
        s.migration.is_none() && s.keys_pending == 0 && s.signing_keys_pending == 0
    })
    .await;
    let wrapped_under = |v: u32| done.versions.iter().find(|x| x.version == v).map_or(0, |x| x.signing_keys_using);
    assert_eq!((done.current_wrap_version, wrapped_under(1), wrapped_under(2)), (2, 0, 1), "{done:?}");
    // Every node unwraps the re-wrapped secret with wrapping key v2, found on the shared token.
    for (i, signed) in before.iter().enumerate() {
        assert_eq!(check_signed(&cluster, i, signed).await, Ok(VerifyCode::Valid), "node {i}\n{}", cluster.logs());
    }
    // The root key, just used on every node, may still be moving to a plain v2 digest (a lazy
    // re-digest in flight): retired as soon as nothing needs v1.
    let mut master = cluster.node(2).master(Some(&cluster.root_key)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match timed(master.retire_master_key(proto::RetireMasterKeyRequest { version: 1 })).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline => {
                assert!(!e.message().contains("signing"), "the secret was re-wrapped: {}", e.message());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("RetireMasterKey: {e:?}\n{}", cluster.logs()),
        }
    }
    for i in 0..3 {
        until_status(&cluster, i, SEEN_WITHIN, "version 1 retired", |s| {
            s.versions.iter().any(|v| v.version == 1 && v.retired_at.is_some())
        })
        .await;
        for key in [&old_key, &new_key] {
            assert_eq!(cluster.verify(i, key).await, Ok(VerifyCode::Valid), "node {i} after the retirement");
        }
        let after = sign(&signer, &secret, now(), &format!("after-{i}"));
        assert_eq!(check_signed(&cluster, i, &after).await, Ok(VerifyCode::Valid), "node {i} after the retirement");
    }
}
