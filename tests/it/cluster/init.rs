//! `keyward init --etcd` makes a cluster once per prefix: a second init on a prefix that holds
//! one is refused, names the prefix, and changes nothing there.

use etcd_client::GetOptions;

use crate::common::{cluster::init, etcd::EtcdCluster};

/// Every entry under `prefix`: (key, value, mod revision).
async fn entries(etcd: &EtcdCluster, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    let mut client = etcd.client().await;
    let dump = client.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("a range read");
    dump.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision())).collect()
}

#[tokio::test]
async fn init_refuses_a_prefix_that_already_holds_a_cluster_and_names_it() {
    crate::common::require_softhsm();
    let etcd = EtcdCluster::start(1).await;
    let tmp = tempfile::tempdir().unwrap();

    let first = init(&tmp.path().join("first"), &etcd.urls(), &[]);
    assert!(first.status.success(), "the first init: {}", String::from_utf8_lossy(&first.stderr));
    let before = entries(&etcd, "/keyward/").await;
    assert!(!before.is_empty(), "init wrote the cluster's state under /keyward/");

    // Another data directory, the same etcd and prefix.
    let second = init(&tmp.path().join("second"), &etcd.urls(), &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second init on /keyward/ must fail; stderr:\n{stderr}");
    assert!(stderr.contains("/keyward/"), "the refusal names the prefix: {stderr}");
    assert_eq!(entries(&etcd, "/keyward/").await, before, "the refused init changed nothing under /keyward/");
    assert!(!tmp.path().join("second/root.key").exists(), "the refused init wrote no root key");

    // Another prefix on the same etcd is another cluster.
    let other = init(&tmp.path().join("other"), &etcd.urls(), &["--etcd-prefix", "/other/"]);
    assert!(other.status.success(), "init on /other/: {}", String::from_utf8_lossy(&other.stderr));
    assert_eq!(entries(&etcd, "/keyward/").await, before, "a cluster under /other/ leaves /keyward/ alone");
}
