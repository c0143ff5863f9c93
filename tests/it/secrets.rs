//! No key, secret, digest or PIN in logs (at trace level), in the database files, or in
//! error messages; the data directory readable by its owner only.

use std::{collections::HashMap, fs, os::unix::fs::PermissionsExt, path::Path};

use keyward::{
    domain::{key_format, ports::Store},
    proto,
    store::SledStore,
};

use crate::common::Instance;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_secret_reaches_logs_database_files_or_errors() {
    let mut kw = Instance::started().await;
    let mut keys = vec![kw.root_key.clone()];
    let mut errors = Vec::new();
    let mut admin = kw.root_keys().await;
    for i in 0..3 {
        let created = admin
            .create_key(proto::CreateKeyRequest {
                name: format!("svc-{i}"),
                scopes: vec!["a:b".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        kw.verify(&created.key, &["a:b"]).await;
        kw.verify(&created.key, &["c:d"]).await;
        if i == 0 {
            admin
                .revoke_key(proto::RevokeKeyRequest { key_id: created.info.unwrap().key_id, reason: "x".into() })
                .await
                .unwrap();
            kw.verify(&created.key, &[]).await;
        }
        // Error paths with the key in hand: as a bad bearer, as a malformed verify request.
        let truncated = &created.key[..created.key.len() - 1];
        errors.push(kw.keys(Some(truncated)).await.list_keys(proto::ListKeysRequest::default()).await.unwrap_err());
        let bad = proto::VerifyKeyRequest { key: created.key.clone(), client_ip: "bad".into(), ..Default::default() };
        errors.push(kw.root_verifier().await.verify_key(bad).await.unwrap_err());
        keys.push(created.key);
    }

    // The newer RPCs: rotation, update, disable and enable, master key rotation, audit and usage
    // queries, with errors from a bad bearer on each service.
    let (rotating, rotating_id) = kw.create_key("rotating", &["a:b"]).await;
    kw.verify(&rotating, &["a:b"]).await;
    let rotated = admin
        .rotate_key(proto::RotateKeyRequest { key_id: rotating_id, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let successor = rotated.info.unwrap().key_id;
    kw.verify(&rotated.key, &["a:b"]).await;
    kw.verify(&rotating, &[]).await;
    admin
        .update_key(proto::UpdateKeyRequest {
            key_id: successor.clone(),
            metadata: HashMap::from([("team".to_owned(), "payments".to_owned())]),
            update_mask: Some(prost_types::FieldMask { paths: vec!["metadata".into()] }),
            ..Default::default()
        })
        .await
        .unwrap();
    admin.disable_key(proto::DisableKeyRequest { key_id: successor.clone(), reason: "x".into() }).await.unwrap();
    kw.verify(&rotated.key, &[]).await;
    admin.enable_key(proto::EnableKeyRequest { key_id: successor.clone() }).await.unwrap();
    let mut master = kw.master(Some(&kw.root_key)).await;
    master.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap();
    master.get_master_key_status(proto::GetMasterKeyStatusRequest::default()).await.unwrap();
    kw.verify(&rotated.key, &["a:b"]).await;
    let mut audit = kw.audit(Some(&kw.root_key)).await;
    audit.query_events(proto::QueryEventsRequest::default()).await.unwrap();
    audit.verify_chain(proto::VerifyChainRequest::default()).await.unwrap();
    audit.key_usage(proto::KeyUsageRequest { key_id: successor.clone(), ..Default::default() }).await.unwrap();
    audit.query_usage(proto::QueryUsageRequest::default()).await.unwrap();
    let truncated = &rotated.key[..rotated.key.len() - 1];
    errors.push(kw.audit(Some(truncated)).await.query_events(proto::QueryEventsRequest::default()).await.unwrap_err());
    errors.push(
        kw.master(Some(&rotated.key)).await.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap_err(),
    );
    errors.push(
        kw.keys(Some(&rotated.key))
            .await
            .rotate_key(proto::RotateKeyRequest { key_id: successor, ..Default::default() })
            .await
            .unwrap_err(),
    );
    keys.extend([rotating, rotated.key.clone()]);
    assert!(kw.stop().await.success());

    // The PIN from the environment rather than the PIN file.
    let pin = fs::read_to_string(kw.data_dir.join("softhsm/user.pin")).unwrap().trim().to_owned();
    kw.start_with_env(&[("KEYWARD_HSM_PIN", &pin)]).await;
    kw.verify(&rotated.key, &[]).await;
    assert!(kw.stop().await.success());

    let logs = kw.logs();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "the server logged at trace level");
    let db_bytes = all_bytes(&kw.data_dir.join("db"));
    let store = SledStore::open(&kw.data_dir.join("db"), std::sync::Arc::new(crate::common::NoSealer)).unwrap();
    let so_pin = fs::read_to_string(kw.data_dir.join("softhsm/so.pin")).unwrap().trim().to_owned();
    for p in [&pin, &so_pin] {
        assert!(!logs.contains(p.as_str()), "a PIN is in the logs");
        assert!(!contains(&db_bytes, p.as_bytes()), "a PIN is in the database");
    }
    for key in &keys {
        let parsed = key_format::parse(key).unwrap();
        let body = &key[key.find('_').unwrap() + 1..];
        let secret = parsed.secret.expose();
        let digest = store.get_key(parsed.key_id).unwrap().unwrap().digest.mac;
        for text in [
            key.as_str(),
            body,
            &hex(secret),
            &hex(&digest),
            &format!("{:?}", &secret[..4]),
            &format!("{:?}", &digest[..4]),
        ] {
            assert!(!logs.contains(text), "secret material in the logs: {}…", &text[..6]);
            for e in &errors {
                assert!(!e.message().contains(text), "secret material in an error: {e:?}");
            }
        }
        assert!(
            !contains(&db_bytes, key.as_bytes()) && !contains(&db_bytes, body.as_bytes()),
            "a key string in the database"
        );
        assert!(!contains(&db_bytes, secret), "a raw secret in the database");
        assert!(contains(&db_bytes, &digest), "the database holds the HSM digest (sanity check of this search)");
    }
    store.close();
}

/// Every directory under `dir` (itself included) 0700, every file 0600.
fn assert_owner_only(dir: &Path) {
    let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_owner_only(&path);
        } else {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        }
    }
}

#[tokio::test]
async fn the_data_directory_is_readable_by_its_owner_only() {
    let mut kw = Instance::init();
    // The root key, PINs, token, configuration and the database that init wrote.
    assert_owner_only(&kw.data_dir);
    kw.start().await;
    let (key, _) = kw.create_key("moded", &[]).await;
    kw.verify(&key, &[]).await;
    kw.master(Some(&kw.root_key)).await.rotate_master_key(proto::RotateMasterKeyRequest {}).await.unwrap();
    assert!(kw.stop().await.success());
    // And whatever sled and SoftHSM2 wrote while serving.
    assert_owner_only(&kw.data_dir);
}
