//! etcd holds no secret in clear: after keys are created, used, rotated and revoked on several
//! nodes, no key string, no key secret (in any usual encoding) and no token PIN appears in any
//! key or value under the cluster's prefix.

use std::time::Duration;

use base64::Engine;
use etcd_client::GetOptions;
use keyward::{domain::key_format, proto};

use super::{SEEN_WITHIN, VALID, until_verify};
use crate::common::cluster::{ClusterNodes, timed};

/// The default `--etcd-prefix`.
const PREFIX: &str = "/keyward/";

/// Every way a key's secret could be written down: the key string, its body, and the 32
/// secret bytes raw, in hex and in base64.
fn forbidden_forms(key: &str) -> Vec<(String, Vec<u8>)> {
    let parsed = key_format::parse(key).expect("a well-formed key");
    let secret = parsed.secret.expose();
    let (_, body) = key.rsplit_once('_').expect("prefix_body");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut forms = vec![
        ("the key string".to_owned(), key.as_bytes().to_vec()),
        ("the key's body".to_owned(), body.as_bytes().to_vec()),
        ("the secret's bytes".to_owned(), secret.to_vec()),
        ("the secret in hex".to_owned(), hex.clone().into_bytes()),
        ("the secret in upper-case hex".to_owned(), hex.to_uppercase().into_bytes()),
    ];
    for engine in engines {
        // Without its last characters, which depend on what follows the secret.
        let text = engine.encode(secret);
        forms.push(("the secret in base64".to_owned(), text.as_bytes()[..40].to_vec()));
    }
    forms
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn etcd_holds_no_key_secret_or_pin_in_clear() {
    let cluster = ClusterNodes::start(3).await;
    let mut keys = vec![cluster.root_key.clone()];
    let mut key_ids = Vec::new();
    for i in 0..3 {
        let (key, key_id) = cluster.create_key(i, &format!("made on node {i}")).await;
        until_verify(&cluster, (i + 1) % 3, &key, VALID, SEEN_WITHIN, "a new key, on the next node").await;
        keys.push(key);
        key_ids.push(key_id);
    }
    cluster.revoke(1, &key_ids[0]).await;
    let mut admin = cluster.keys(2).await;
    let rotated = timed(admin.rotate_key(proto::RotateKeyRequest { key_id: key_ids[1].clone(), ..Default::default() }))
        .await
        .expect("RotateKey")
        .into_inner();
    keys.push(rotated.key);
    key_ids.push(rotated.info.expect("the successor's info").key_id);
    // Usage is flushed every second by default: let it reach the store.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pins: Vec<(String, String)> = ["user.pin", "so.pin"]
        .iter()
        .map(|f| {
            let pin =
                std::fs::read_to_string(cluster.data_dir.join("softhsm").join(f)).expect("the dev token's PIN file");
            (format!("the token's {f}"), pin.trim().to_owned())
        })
        .collect();
    assert!(pins.iter().all(|(_, pin)| pin.len() >= 8), "the PINs are read");

    let mut etcd = cluster.etcd.client().await;
    let dump = etcd.get(PREFIX, Some(GetOptions::new().with_prefix())).await.expect("a range read of the prefix");
    let entries: Vec<(Vec<u8>, Vec<u8>)> =
        dump.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect();
    // The scan covers the records: the marker and every key's record are there.
    let names: Vec<String> = entries.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
    assert!(names.contains(&format!("{PREFIX}cluster")), "the cluster marker is in the dump: {names:?}");
    for key_id in &key_ids {
        assert!(names.contains(&format!("{PREFIX}keys/{key_id}")), "key {key_id}'s record is in the dump: {names:?}");
    }
    println!("{} etcd entries under {PREFIX} scanned", entries.len());

    let mut forbidden: Vec<(String, Vec<u8>)> = keys.iter().flat_map(|k| forbidden_forms(k)).collect();
    forbidden.extend(pins.into_iter().map(|(what, pin)| (what, pin.into_bytes())));
    for (name, value) in &entries {
        for (what, bytes) in &forbidden {
            assert!(
                !contains(name, bytes) && !contains(value, bytes),
                "{what} is in clear in etcd, in the entry {}",
                String::from_utf8_lossy(name)
            );
        }
    }
}
