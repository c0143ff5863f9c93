//! The key lifecycle as a client sees it: create, verify, get, list, revoke, expire.

use std::time::{Duration, SystemTime};

use keyward::proto::{self, KeyState, VerifyCode};
use tonic::Code;

use crate::common::Instance;

fn change_one_char(key: &str, at: usize) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_created_key_verifies_with_its_scopes_and_its_metadata() {
    let kw = Instance::started().await;
    let created = kw
        .root_keys()
        .await
        .create_key(proto::CreateKeyRequest {
            name: "orders-api".into(),
            prefix: "sk".into(),
            scopes: vec!["orders:*".into()],
            metadata: [("team".to_string(), "payments".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.key.starts_with("sk_") && created.key.len() == 73, "{}", created.key);
    let info = created.info.unwrap();
    assert_eq!(info.state(), KeyState::Active);

    let ok = kw.verify(&created.key, &["orders:read", "orders:items:write"]).await;
    assert!(ok.valid);
    assert_eq!(ok.code(), VerifyCode::Valid);
    assert_eq!(ok.key_id, info.key_id);
    assert_eq!(ok.name, "orders-api");
    assert_eq!(ok.metadata.get("team").map(String::as_str), Some("payments"));

    let short = kw.verify(&created.key, &["orders:read", "billing:read"]).await;
    assert_eq!((short.valid, short.code()), (false, VerifyCode::InsufficientScope));
}

#[tokio::test]
async fn a_key_with_any_character_changed_is_invalid_and_learns_nothing() {
    let kw = Instance::started().await;
    let (key, _) = kw.create_key("svc", &[]).await;
    for at in [0, 3, 10, 40, key.len() - 1] {
        let response = kw.verify(&change_one_char(&key, at), &[]).await;
        assert_eq!(response.code(), VerifyCode::Invalid, "changed at {at}");
        assert!(!response.valid);
        assert!(response.key_id.is_empty() && response.name.is_empty(), "an invalid key learns nothing");
    }
}

#[tokio::test]
async fn a_revoked_key_answers_revoked_and_revocation_is_idempotent() {
    let kw = Instance::started().await;
    let (key, id) = kw.create_key("svc", &[]).await;
    let mut admin = kw.root_keys().await;
    let revoked = admin
        .revoke_key(proto::RevokeKeyRequest { key_id: id.clone(), reason: "rotated out".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state(), KeyState::Revoked);
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.revoke_reason, "rotated out");
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Revoked);

    let again = admin.revoke_key(proto::RevokeKeyRequest { key_id: id.clone(), reason: String::new() }).await.unwrap();
    assert_eq!(again.into_inner().revoked_at, revoked.revoked_at);
    let got = admin.get_key(proto::GetKeyRequest { key_id: id }).await.unwrap().into_inner();
    assert_eq!(got.state(), KeyState::Revoked);
}

#[tokio::test]
async fn a_key_past_its_expiry_answers_expired() {
    let kw = Instance::started().await;
    let expires = SystemTime::now() + Duration::from_millis(1500);
    let created = kw
        .root_keys()
        .await
        .create_key(proto::CreateKeyRequest {
            name: "short-lived".into(),
            expires_at: Some(expires.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kw.code(&created.key, &[]).await, VerifyCode::Valid);
    tokio::time::sleep(expires.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(100))
        .await;
    let response = kw.verify(&created.key, &[]).await;
    assert_eq!((response.valid, response.code()), (false, VerifyCode::Expired));
    assert!(response.expires_at.is_some());
}

#[tokio::test]
async fn get_and_list_show_every_key_in_pages() {
    let kw = Instance::started().await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(kw.create_key(&format!("svc-{i}"), &["a:b"]).await.1);
    }
    let mut admin = kw.root_keys().await;
    let got = admin.get_key(proto::GetKeyRequest { key_id: ids[2].clone() }).await.unwrap().into_inner();
    assert_eq!((got.name.as_str(), got.scopes.as_slice()), ("svc-2", &["a:b".to_string()][..]));

    let mut seen = vec![];
    let (mut token, mut tokens) = (String::new(), vec![]);
    loop {
        let page = admin
            .list_keys(proto::ListKeysRequest { page_size: 2, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.key_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokens.push(token.clone());
    }
    assert_eq!(seen.len(), 6, "root and five keys");
    assert_eq!(&seen[1..], ids.as_slice(), "oldest first");

    // Page tokens are opaque: no key id shows in them, and one that was edited (or written by
    // hand from a key id) is refused, naming the field.
    assert_eq!(tokens.len(), 2, "three pages");
    for token in &tokens {
        assert!(seen.iter().all(|id| !token.contains(id.as_str())), "{token}");
        assert!(seen.iter().all(|id| !token.contains(&id[..8])), "{token}");
    }
    let mut tampered = tokens[0].clone().into_bytes();
    tampered[3] = if tampered[3] == b'x' { b'y' } else { b'x' };
    for forged in [String::from_utf8(tampered).unwrap(), seen[1].clone(), format!("{}.0000000000000000", seen[1])] {
        let status = admin
            .list_keys(proto::ListKeysRequest { page_size: 2, page_token: forged.clone(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{forged}: {status:?}");
        assert!(status.message().contains("page_token"), "{}", status.message());
    }
}

#[tokio::test]
async fn malformed_fields_are_invalid_argument_naming_the_field_never_internal() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let create = |f: fn(&mut proto::CreateKeyRequest)| {
        let mut r = proto::CreateKeyRequest { name: "ok".into(), ..Default::default() };
        f(&mut r);
        r
    };
    let cases: Vec<(&str, proto::CreateKeyRequest)> = vec![
        ("name", create(|r| r.name = String::new())),
        ("prefix", create(|r| r.prefix = "Bad_Prefix".into())),
        ("scopes", create(|r| r.scopes = vec!["orders::read".into()])),
        ("expires_at", create(|r| r.expires_at = Some(prost_types::Timestamp { seconds: 1, nanos: 0 }))),
        ("metadata", create(|r| r.metadata = [(String::new(), "v".to_string())].into())),
    ];
    for (field, request) in cases {
        let status = admin.create_key(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    let status = admin.get_key(proto::GetKeyRequest { key_id: "nope".into() }).await.unwrap_err();
    assert_eq!((status.code(), status.message().contains("key_id")), (Code::InvalidArgument, true));
    let status = admin
        .list_keys(proto::ListKeysRequest { page_size: -1, page_token: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .list_keys(proto::ListKeysRequest { page_size: 1, page_token: "forged".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .revoke_key(proto::RevokeKeyRequest { key_id: uuid::Uuid::now_v7().to_string(), reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let mut verifier = kw.root_verifier().await;
    let bad_ip = proto::VerifyKeyRequest { key: "kw_x".into(), client_ip: "999.1.1.1".into(), ..Default::default() };
    let status = verifier.verify_key(bad_ip).await.unwrap_err();
    assert_eq!((status.code(), status.message().contains("client_ip")), (Code::InvalidArgument, true));
    let huge = proto::VerifyKeyRequest { key: "k".repeat(1 << 20), ..Default::default() };
    let status = verifier.verify_key(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "messages over the limit are refused: {status:?}");
    // The server is still healthy after all that.
    let (key, _) = kw.create_key("after", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
}
