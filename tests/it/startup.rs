//! `keyward serve` refuses to start, with a clear message and a non-zero exit, when its
//! configuration, the keys on its token or its database are not right (an absent token or a
//! wrong PIN are not: see `hsm_faults`); `keyward init` refuses to overwrite.

use std::{fs, time::Duration};

use keyward::proto;
use tonic::Code;

use crate::common::{Instance, pkcs11_tool, serve_expecting_refusal};

fn assert_refused(instance: &Instance, dev: bool, env: &[(&str, &str)], says: &str) {
    let (status, stderr) = serve_expecting_refusal(instance, dev, env);
    assert!(!status.success(), "started anyway; stderr:\n{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in:\n{stderr}");
}

/// A wrong PIN is the token's answer, not a configuration error: the server starts, serves
/// `NOT_SERVING` and `UNAVAILABLE`, says why without any PIN, and never offers that PIN again
/// (`KEYWARD_HSM_PIN` cannot change while it runs). A missing token: see `hsm_faults`.
#[tokio::test]
async fn a_wrong_pin_from_the_environment_serves_unavailable_without_showing_any_pin() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.start_with_env(&[("KEYWARD_HSM_PIN", "wrong-pin-0000")]).await;
    let status = kw.root_verifier().await.verify_key(proto::VerifyKeyRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The reconnect loop has had time to retry; it must not have logged in again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(kw.is_running());
    let logs = kw.logs();
    assert_eq!(logs.matches("the HSM PIN is wrong").count(), 1, "{logs}");
    assert!(logs.contains("KEYWARD_HSM_PIN cannot change while keyward runs"), "{logs}");
    let real_pin = fs::read_to_string(kw.data_dir.join("softhsm/user.pin")).unwrap();
    assert!(!logs.contains("wrong-pin-0000") && !logs.contains(real_pin.trim()), "{logs}");
    assert!(!status.message().contains("wrong-pin-0000"), "{status:?}");
}

#[tokio::test]
async fn a_missing_master_key_is_refused() {
    let kw = Instance::init();
    let out = pkcs11_tool(&kw, &["--delete-object", "--type", "secrkey", "--label", "keyward-master-v1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_refused(&kw, true, &[], "master key v1 is missing");
}

#[tokio::test]
async fn a_duplicated_master_key_is_refused() {
    let kw = Instance::init();
    let out =
        pkcs11_tool(&kw, &["--keygen", "--key-type", "GENERIC:32", "--label", "keyward-master-v1", "--sensitive"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_refused(&kw, true, &[], "master key v1 exists 2 times");
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_is_refused() {
    let mut kw = Instance::started().await;
    // sled locks its directory: a second server on the same data cannot open it.
    assert_refused(&kw, true, &[], "cannot open the database");
    kw.stop().await;
    fs::remove_dir_all(kw.data_dir.join("db")).unwrap();
    assert_refused(&kw, true, &[], "no database at");
}

#[tokio::test]
async fn the_development_token_is_refused_outside_dev_mode() {
    let kw = Instance::init();
    assert_refused(&kw, false, &[], "serve it with --dev");
}

#[tokio::test]
async fn init_refuses_to_overwrite_an_existing_installation() {
    let kw = Instance::init();
    let out = kw.keyward(&["init", "--dev", "--data-dir", kw.data_dir_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refuses to overwrite"));
    // Against the same token and database through the configuration: the master key exists.
    let config = kw.data_dir.join("keyward.toml");
    fs::remove_file(kw.data_dir.join("root.key")).unwrap();
    let out = kw.keyward(&["init", "--data-dir", kw.data_dir_str(), "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refuses to overwrite"));
    assert!(out.stdout.is_empty(), "no new root key was printed");
}
