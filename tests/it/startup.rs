//! `keyward serve` refuses to start, with a clear message and a non-zero exit, when its HSM or
//! database is not right; `keyward init` refuses to overwrite.

use std::fs;

use crate::common::{Instance, pkcs11_tool, serve_expecting_refusal};

fn assert_refused(instance: &Instance, dev: bool, env: &[(&str, &str)], says: &str) {
    let (status, stderr) = serve_expecting_refusal(instance, dev, env);
    assert!(!status.success(), "started anyway; stderr:\n{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in:\n{stderr}");
}

#[tokio::test]
async fn a_wrong_pin_is_refused_without_showing_any_pin() {
    let kw = Instance::init();
    let (status, stderr) = serve_expecting_refusal(&kw, true, &[("KEYWARD_HSM_PIN", "wrong-pin-0000")]);
    assert!(!status.success());
    assert!(stderr.contains("the HSM PIN is wrong"), "{stderr}");
    let real_pin = fs::read_to_string(kw.data_dir.join("softhsm/user.pin")).unwrap();
    assert!(!stderr.contains("wrong-pin-0000") && !stderr.contains(real_pin.trim()), "{stderr}");
}

#[tokio::test]
async fn a_missing_token_is_refused() {
    let kw = Instance::init();
    let tokens = kw.data_dir.join("softhsm/tokens");
    fs::remove_dir_all(&tokens).unwrap();
    fs::create_dir(&tokens).unwrap();
    assert_refused(&kw, true, &[], "no token labelled \"keyward-dev\"");
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
