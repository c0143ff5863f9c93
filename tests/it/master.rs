//! Master key rotation on a real token: rotate (CLI and RPC) → old and new keys verify →
//! background re-digest → retire, refused while a live key needs the version; a SIGKILL in the
//! middle of the re-digest resumes after restart; a planted master or wrapping key is never
//! adopted.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::{Instance, MasterClient, pkcs11_tool};

async fn status(m: &mut MasterClient) -> proto::MasterKeyStatus {
    m.get_master_key_status(proto::GetMasterKeyStatusRequest { skip_counts: false })
        .await
        .expect("GetMasterKeyStatus")
        .into_inner()
}

/// Polls the status until `done` holds, for up to 60 s.
async fn wait_for(
    m: &mut MasterClient,
    what: &str,
    done: impl Fn(&proto::MasterKeyStatus) -> bool,
) -> proto::MasterKeyStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(m).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in 60 s: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn using(s: &proto::MasterKeyStatus, version: u32) -> u64 {
    s.versions.iter().find(|v| v.version == version).map_or(0, |v| v.keys_using)
}

fn token_labels(kw: &Instance) -> String {
    let out = pkcs11_tool(kw, &["--list-objects", "--type", "secrkey"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates `n` keys, 16 at a time; returns (key, id) pairs in creation order.
async fn create_many(kw: &Instance, n: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut admin = kw.root_keys().await;
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in (w..n).step_by(16) {
                let created = admin
                    .create_key(proto::CreateKeyRequest { name: format!("svc-{i}"), ..Default::default() })
                    .await
                    .expect("CreateKey")
                    .into_inner();
                made.push((created.key, created.info.unwrap().key_id));
            }
            made
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test]
async fn rotate_verify_migrate_then_retire_once_no_live_key_needs_the_old_version() {
    let mut kw = Instance::started().await;
    let old = create_many(&kw, 12).await;
    let (_, idle_id) = kw.create_key("idle", &["orders:read"]).await;

    let key_file = kw.data_dir.join("root.key");
    let out = kw.keyward(&[
        "master",
        "rotate",
        "--wait",
        "--target",
        &kw.addr().to_string(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("rotated to master key v2"), "{printed}");
    assert!(printed.contains("every key verifies under v2"), "{printed}");

    let mut m = kw.master(Some(&kw.root_key)).await;
    let s = status(&mut m).await;
    assert_eq!((s.current_version, s.migration.is_none(), s.keys_pending), (2, true, 0), "{s:?}");
    let cheap = m.get_master_key_status(proto::GetMasterKeyStatusRequest { skip_counts: true }).await.unwrap();
    let cheap = cheap.into_inner();
    assert_eq!((cheap.current_version, cheap.versions.len()), (2, 2));
    assert!(cheap.versions.iter().all(|v| v.keys_using == 0), "no counts when skipped");
    assert!(token_labels(&kw).contains("keyward-master-v2"));
    assert!(!kw.logs().contains("lacks the attributes"), "keyward's own master keys pass its checks");

    // Old keys verify (each re-digested on the way), new keys are made under v2 alone.
    for (key, _) in &old {
        assert_eq!(kw.code(key, &[]).await, VerifyCode::Valid);
    }
    let (fresh, fresh_id) = kw.create_key("fresh", &[]).await;
    assert_eq!(kw.code(&fresh, &[]).await, VerifyCode::Valid);
    let mut admin = kw.root_keys().await;
    let info = admin.get_key(proto::GetKeyRequest { key_id: fresh_id }).await.unwrap().into_inner();
    assert_eq!(info.master_key_versions, vec![2]);
    let idle = admin.get_key(proto::GetKeyRequest { key_id: idle_id.clone() }).await.unwrap().into_inner();
    assert_eq!(idle.master_key_versions, vec![1, 2], "wrapped: needs v1 until it is next used");

    // Only the idle key still needs v1: retiring is refused and says why.
    let s = wait_for(&mut m, "lazy re-digest of the used keys", |s| using(s, 1) == 1).await;
    assert_eq!(s.keys_not_plain, 1);
    let refused = m.retire_master_key(proto::RetireMasterKeyRequest { version: 1 }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("1 keys still need master key v1"), "{}", refused.message());
    let current = m.retire_master_key(proto::RetireMasterKeyRequest { version: 2 }).await.unwrap_err();
    assert_eq!(current.code(), Code::FailedPrecondition);
    let bad = m.retire_master_key(proto::RetireMasterKeyRequest { version: 0 }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("version"));
    let listed = admin
        .list_keys(proto::ListKeysRequest { master_key_version: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = listed.keys.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(ids, vec![idle_id.as_str()], "ListKeys finds the keys holding a version back");

    admin.revoke_key(proto::RevokeKeyRequest { key_id: idle_id, reason: "unused".into() }).await.unwrap();
    let s = m.retire_master_key(proto::RetireMasterKeyRequest { version: 1 }).await.expect("retire v1").into_inner();
    let v1 = s.versions.iter().find(|v| v.version == 1).unwrap();
    assert!(v1.retired_at.is_some() && !v1.current);
    let labels = token_labels(&kw);
    assert!(!labels.contains("keyward-master-v1") && labels.contains("keyward-master-v2"), "{labels}");

    // A restart checks only the live versions; every key still verifies.
    kw.stop().await;
    kw.start().await;
    assert!(!kw.logs().contains("lacks the attributes"), "v2, made by a rotation, passes the startup check");
    for (key, _) in old.iter().take(3) {
        assert_eq!(kw.code(key, &[]).await, VerifyCode::Valid);
    }
    assert_eq!(kw.code(&fresh, &[]).await, VerifyCode::Valid);
}

#[tokio::test]
async fn a_sigkill_in_the_middle_of_the_re_digest_is_resumed_after_restart() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.configure("master", "migration_batch", "25");
    kw.configure("master", "migration_pause_ms", "100");
    kw.start().await;
    let keys = create_many(&kw, 600).await;
    let mut m = kw.master(Some(&kw.root_key)).await;
    m.rotate_master_key(proto::RotateMasterKeyRequest {}).await.expect("RotateMasterKey");
    let s = wait_for(&mut m, "the first batches", |s| s.migration.as_ref().is_some_and(|g| g.keys_done >= 50)).await;
    let done_before = s.migration.unwrap().keys_done;
    kw.kill();

    kw.start().await;
    let mut m = kw.master(Some(&kw.root_key)).await;
    let s = status(&mut m).await;
    let resumed = s.migration.as_ref().expect("the re-digest is still recorded as running").keys_done;
    // What was reported done was durable: the restart resumes at or after it, not from zero.
    assert!(resumed >= done_before && resumed < 600, "resumes from its last checkpoint: {resumed} vs {done_before}");
    let s = wait_for(&mut m, "the resumed re-digest to finish", |s| s.migration.is_none()).await;
    assert_eq!((s.current_version, s.keys_pending), (2, 0), "{s:?}");
    let mut v = kw.root_verifier().await;
    for (key, _) in &keys {
        let r = v.verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(r.into_inner().code(), VerifyCode::Valid);
    }
}

#[tokio::test]
async fn a_key_planted_on_the_token_under_the_next_label_is_never_adopted() {
    let mut kw = Instance::init();
    // Generated on the token, but readable: anyone could have copied its value.
    let out = pkcs11_tool(&kw, &["--keygen", "--key-type", "GENERIC:32", "--label", "keyward-master-v2"]);
    assert!(out.status.success(), "planting a key: {}", String::from_utf8_lossy(&out.stderr));
    kw.start().await;
    let mut m = kw.master(Some(&kw.root_key)).await;
    let refused = m.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("keyward will not use it"), "{}", refused.message());
    assert_eq!(status(&mut m).await.current_version, 1, "nothing changed");
    kw.stop().await;
    kw.start().await;
    assert!(kw.logs().contains("lacks the attributes"), "startup warns about the planted key");
    let (key, _) = kw.create_key("after", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
}

#[tokio::test]
async fn a_wrapping_key_planted_under_the_next_label_is_never_adopted() {
    let mut kw = Instance::init();
    // An AES key an attacker made on the token, readable: signing secrets wrapped under it would
    // be theirs to unwrap.
    let out = pkcs11_tool(&kw, &["--keygen", "--key-type", "AES:32", "--label", "keyward-wrap-v2"]);
    assert!(out.status.success(), "planting a key: {}", String::from_utf8_lossy(&out.stderr));
    kw.start().await;
    let mut m = kw.master(Some(&kw.root_key)).await;
    let refused = m.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("wrapping key v2 already exists"), "{}", refused.message());
    let s = status(&mut m).await;
    assert_eq!((s.current_version, s.current_wrap_version), (1, 1), "nothing changed");
    kw.stop().await;

    // Removed: the next rotation adopts the master key v2 the refused one made, and makes its
    // own wrapping key v2.
    let out = pkcs11_tool(&kw, &["--delete-object", "--type", "secrkey", "--label", "keyward-wrap-v2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    kw.start().await;
    let mut m = kw.master(Some(&kw.root_key)).await;
    let rotated = m.rotate_master_key(proto::RotateMasterKeyRequest {}).await.expect("RotateMasterKey").into_inner();
    assert_eq!((rotated.current_version, rotated.current_wrap_version), (2, 2));
    let listing = token_labels(&kw);
    assert_eq!(listing.matches("label:      keyward-wrap-v2").count(), 1, "{listing}");
    assert_eq!(listing.matches("sensitive, always sensitive, never extractable, local").count(), 5, "{listing}");
}
