//! Signing keys in a cluster: a signing key made on one node verifies on the others (its wrapped
//! secret comes through etcd; every node unwraps it in the shared token), a replay to the node
//! that saw the request is refused, and a revocation on a third node reaches the first.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use keyward::proto::{self, KeyKind, VerifyCode};
use sha2::Sha256;

use super::SEEN_WITHIN;
use crate::common::cluster::{ClusterNodes, timed};

/// A signature base for `POST https://api.example.com/orders` signed now with `nonce`, and its
/// HMAC-SHA256 under `secret` (RFC 9421 section 2.5).
fn signed(key_id: &str, secret: &[u8], nonce: &str) -> (Vec<u8>, Vec<u8>) {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let params = format!(
        "(\"@method\" \"@authority\" \"@path\");created={created};keyid=\"{key_id}\";alg=\"hmac-sha256\";nonce=\"{nonce}\""
    );
    let base = format!(
        "\"@method\": POST\n\"@authority\": api.example.com\n\"@path\": /orders\n\"@signature-params\": {params}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(base.as_bytes());
    (base.into_bytes(), mac.finalize().into_bytes().to_vec())
}

async fn verify(cluster: &ClusterNodes, i: usize, (base, signature): &(Vec<u8>, Vec<u8>)) -> VerifyCode {
    let request = proto::VerifySignatureRequest {
        signature_base: base.clone(),
        signature: signature.clone(),
        ..Default::default()
    };
    let mut client = cluster.verifier(i).await;
    timed(client.verify_signature(request))
        .await
        .unwrap_or_else(|status| panic!("VerifySignature on node {i}: {status:?}\n{}", cluster.logs()))
        .into_inner()
        .code()
}

#[tokio::test]
async fn a_signing_key_made_on_one_node_verifies_on_another_refuses_replays_there_and_its_revocation_reaches_every_node()
 {
    let cluster = ClusterNodes::start(3).await;
    let mut keys = cluster.keys(0).await;
    let created = timed(keys.create_key(proto::CreateKeyRequest {
        name: "signer".into(),
        kind: KeyKind::Signing as i32,
        ..Default::default()
    }))
    .await
    .expect("CreateKey of a signing key on node 0")
    .into_inner();
    let (key_id, secret) = (created.info.unwrap().key_id, created.signing_secret);

    // Node 1 knows the key once its watch has brought the record (each try a new nonce).
    let deadline = Instant::now() + SEEN_WITHIN;
    let mut n = 0;
    let first = loop {
        n += 1;
        let request = signed(&key_id, &secret, &format!("first-{n}"));
        match verify(&cluster, 1, &request).await {
            VerifyCode::Valid => break request,
            VerifyCode::Invalid => assert!(Instant::now() < deadline, "node 1 never knew the key\n{}", cluster.logs()),
            other => panic!("node 1 answered {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(verify(&cluster, 1, &first).await, VerifyCode::Replayed, "the same request again, same node");
    assert_eq!(verify(&cluster, 0, &signed(&key_id, &secret, "on-node-0")).await, VerifyCode::Valid);

    cluster.revoke(2, &key_id).await;
    let revoked_at = Instant::now();
    for i in [0, 1] {
        let mut n = 0;
        loop {
            n += 1;
            let code = verify(&cluster, i, &signed(&key_id, &secret, &format!("after-{i}-{n}"))).await;
            if code == VerifyCode::Revoked {
                break;
            }
            assert_eq!(code, VerifyCode::Valid, "node {i}");
            assert!(revoked_at.elapsed() < Duration::from_secs(1), "node {i} still VALID 1 s after the revocation");
        }
    }
}
