//! Key ownership over gRPC: a team admin (`keyward:keys:*@team-a`) manages team-a's keys, finds
//! no other team's key, lists only its team's, and cannot create keys for others or mint
//! unsuffixed permissions; a global admin sees everything.

use keyward::proto;
use prost_types::FieldMask;
use tonic::Code;

use crate::common::{Instance, KeyClient};

fn new_key(name: &str, scopes: &[&str], owner: &str) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        owner: owner.into(),
        ..Default::default()
    }
}

async fn create(client: &mut KeyClient, req: proto::CreateKeyRequest) -> Result<(String, String), tonic::Status> {
    let created = client.create_key(req).await?.into_inner();
    Ok((created.key, created.info.unwrap().key_id))
}

async fn list_all(client: &mut KeyClient, owner: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = proto::ListKeysRequest { page_size: 2, page_token, owner: owner.into(), ..Default::default() };
        let page = client.list_keys(req).await.unwrap().into_inner();
        ids.extend(page.keys.into_iter().map(|k| k.key_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

fn get(key_id: &str) -> proto::GetKeyRequest {
    proto::GetKeyRequest { key_id: key_id.into() }
}

#[tokio::test]
async fn a_team_admin_manages_only_its_teams_keys() {
    let kw = Instance::started().await;
    let mut root = kw.root_keys().await;
    let (team_admin, _) =
        create(&mut root, new_key("team-a admin", &["keyward:keys:*@team-a"], "team-a")).await.unwrap();
    let (_, b_id) = create(&mut root, new_key("b worker", &["orders:read"], "team-b")).await.unwrap();
    let (_, unowned_id) = create(&mut root, new_key("unowned", &[], "")).await.unwrap();
    let mut admin = kw.keys(Some(&team_admin)).await;

    // Create, get, update and revoke a team-a key.
    let (a_key, a_id) = create(&mut admin, new_key("a worker", &["orders:*"], "team-a")).await.unwrap();
    let info = admin.get_key(get(&a_id)).await.unwrap().into_inner();
    assert_eq!((info.name.as_str(), info.owner.as_str()), ("a worker", "team-a"));
    let rename = |key_id: &str| proto::UpdateKeyRequest {
        key_id: key_id.into(),
        name: "renamed".into(),
        update_mask: Some(FieldMask { paths: vec!["name".into()] }),
        ..Default::default()
    };
    assert_eq!(admin.update_key(rename(&a_id)).await.unwrap().into_inner().name, "renamed");
    assert_eq!(kw.code(&a_key, &["orders:read"]).await, proto::VerifyCode::Valid);

    // Other teams' keys, and unowned ones, answer as if they did not exist.
    let missing = "01890000-0000-7000-8000-000000000000";
    let absent = admin.get_key(get(missing)).await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound);
    for other in [&b_id, &unowned_id] {
        let status = admin.get_key(get(other)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), absent.message().replace(missing, other), "indistinguishable from a missing key");
        assert_eq!(admin.update_key(rename(other)).await.unwrap_err().code(), Code::NotFound);
        let revoke = proto::RevokeKeyRequest { key_id: other.to_string(), reason: String::new() };
        assert_eq!(admin.revoke_key(revoke).await.unwrap_err().code(), Code::NotFound);
        let rotate = proto::RotateKeyRequest { key_id: other.to_string(), ..Default::default() };
        assert_eq!(admin.rotate_key(rotate).await.unwrap_err().code(), Code::NotFound);
    }
    let b = root.get_key(get(&b_id)).await.unwrap().into_inner();
    assert_eq!((b.name.as_str(), b.state()), ("b worker", proto::KeyState::Active), "team-b's key is untouched");

    // The list holds team-a's keys only, on every page; the global admin sees them all.
    let mut team_a = list_all(&mut admin, "").await;
    team_a.sort();
    let admin_id = root.list_keys(proto::ListKeysRequest { owner: "team-a".into(), ..Default::default() }).await;
    let mut expected: Vec<String> = admin_id.unwrap().into_inner().keys.into_iter().map(|k| k.key_id).collect();
    expected.sort();
    assert_eq!(expected.len(), 2, "the team admin's own key and the worker");
    assert_eq!(team_a, expected);
    assert!(list_all(&mut admin, "team-b").await.is_empty());
    let everything = list_all(&mut root, "").await;
    assert_eq!(everything.len(), 5, "root, team admin, b worker, unowned, a worker");
    assert!(everything.contains(&b_id) && everything.contains(&unowned_id));

    let revoke = proto::RevokeKeyRequest { key_id: a_id.clone(), reason: "done".into() };
    assert_eq!(admin.revoke_key(revoke).await.unwrap().into_inner().state(), proto::KeyState::Revoked);
    assert_eq!(kw.code(&a_key, &[]).await, proto::VerifyCode::Revoked);
}

#[tokio::test]
async fn a_team_admin_cannot_create_for_others_or_escalate() {
    let kw = Instance::started().await;
    let mut root = kw.root_keys().await;
    let (team_admin, _) = create(&mut root, new_key("team-a admin", &["keyward:keys:*@team-a"], "")).await.unwrap();
    let mut admin = kw.keys(Some(&team_admin)).await;

    for owner in ["", "team-b"] {
        let status = create(&mut admin, new_key("svc", &[], owner)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{owner:?}: {status:?}");
        assert!(status.message().contains("owner"), "names the field: {}", status.message());
    }
    let status = create(&mut admin, new_key("svc", &[], "Team A")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("owner"), "{}", status.message());

    for scope in ["keyward:keys:*", "keyward:keys:create", "keyward:keys:read@team-b"] {
        let status = create(&mut admin, new_key("sub admin", &[scope], "team-a")).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{scope}: {status:?}");
    }
    let (sub, _) = create(&mut admin, new_key("sub admin", &["keyward:keys:read@team-a"], "team-a")).await.unwrap();
    // A team permission grants nothing outside key management: this key cannot verify.
    let mut sub_verifier = kw.verifier(Some(&sub)).await;
    let verify = proto::VerifyKeyRequest { key: team_admin.clone(), ..Default::default() };
    assert_eq!(sub_verifier.verify_key(verify).await.unwrap_err().code(), Code::PermissionDenied);
    // A team suffix on a permission it cannot scope is malformed.
    let status = create(&mut root, new_key("bad", &["keyward:verify@team-a"], "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("scopes"), "{}", status.message());
}

#[tokio::test]
async fn a_team_admin_reads_its_own_keys_usage_and_no_other_teams() {
    let kw = Instance::started().await;
    let mut root = kw.root_keys().await;
    let (reader, _) =
        create(&mut root, new_key("team-a reader", &["keyward:keys:read@team-a"], "team-a")).await.unwrap();
    let (a_key, a_id) = create(&mut root, new_key("a worker", &["orders:read"], "team-a")).await.unwrap();
    let (_, b_id) = create(&mut root, new_key("b worker", &["orders:read"], "team-b")).await.unwrap();
    assert_eq!(kw.code(&a_key, &[]).await, proto::VerifyCode::Valid);

    let mut audit = kw.audit(Some(&reader)).await;
    let usage = |key_id: &str| proto::KeyUsageRequest { key_id: key_id.into(), ..Default::default() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let counted = audit.key_usage(usage(&a_id)).await.unwrap().into_inner();
        if counted.total == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the verification never reached the usage log: {counted:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let other = audit.key_usage(usage(&b_id)).await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound, "another team's key is not found, as with GetKey: {other:?}");
    // The rest of the audit trail stays closed to it.
    let events = audit.query_events(proto::QueryEventsRequest::default()).await.unwrap_err();
    assert_eq!(events.code(), Code::PermissionDenied);
}
