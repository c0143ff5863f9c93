//! Caller credentials: `authorization: Bearer <key>` and the `keyward:` permissions.

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::Instance;

fn new_key(name: &str, scopes: &[&str]) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_without_or_with_a_bad_credential_are_unauthenticated() {
    let kw = Instance::started().await;
    let (key, _) = kw.create_key("svc", &[]).await;
    let mut forged = key.clone().into_bytes();
    forged[10] = if forged[10] == b'x' { b'y' } else { b'x' };
    let forged = String::from_utf8(forged).unwrap();
    for bearer in [None, Some("not-a-key"), Some(forged.as_str())] {
        let status = kw.keys(bearer).await.create_key(new_key("x", &[])).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bearer:?}");
        let status = kw
            .verifier(bearer)
            .await
            .verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bearer:?}");
    }
}

#[tokio::test]
async fn a_verify_only_key_may_verify_but_not_manage_keys() {
    let kw = Instance::started().await;
    let (gateway, _) = kw.create_key("gateway", &["keyward:verify"]).await;
    let (app, app_id) = kw.create_key("app", &["orders:read"]).await;
    let mut admin = kw.keys(Some(&gateway)).await;
    for status in [
        admin.create_key(new_key("x", &[])).await.unwrap_err(),
        admin.get_key(proto::GetKeyRequest { key_id: app_id.clone() }).await.unwrap_err(),
        admin.list_keys(proto::ListKeysRequest::default()).await.unwrap_err(),
        admin.revoke_key(proto::RevokeKeyRequest { key_id: app_id, reason: String::new() }).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let response = kw
        .verifier(Some(&gateway))
        .await
        .verify_key(proto::VerifyKeyRequest {
            key: app,
            required_scopes: vec!["orders:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.code(), VerifyCode::Valid);

    // An application key holds no keyward permission at all.
    let (plain, _) = kw.create_key("plain", &["*"]).await;
    let status = kw.verifier(Some(&plain)).await.verify_key(proto::VerifyKeyRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_admin_cannot_mint_keyward_permissions_it_does_not_hold() {
    let kw = Instance::started().await;
    let (creator, _) = kw.create_key("creator", &["keyward:keys:create"]).await;
    let mut admin = kw.keys(Some(&creator)).await;
    for scopes in [&["keyward:*"][..], &["keyward:verify"], &["keyward:keys:*"]] {
        let status = admin.create_key(new_key("escalate", scopes)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{scopes:?}");
    }
    let ok = admin.create_key(new_key("fine", &["keyward:keys:create", "orders:*"])).await.unwrap();
    assert_eq!(ok.into_inner().info.unwrap().scopes, vec!["keyward:keys:create", "orders:*"]);
}

#[tokio::test]
async fn a_revoked_admin_is_locked_out_on_its_next_call() {
    let kw = Instance::started().await;
    let (admin_key, admin_id) = kw.create_key("admin", &["keyward:*"]).await;
    let mut admin = kw.keys(Some(&admin_key)).await;
    admin.list_keys(proto::ListKeysRequest::default()).await.expect("the admin works");
    kw.root_keys().await.revoke_key(proto::RevokeKeyRequest { key_id: admin_id, reason: String::new() }).await.unwrap();
    let status = admin.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}
