//! Verification policies end to end: every VerifyCode, in the documented order, and every admin
//! RPC that sets them, against a real server over a real SoftHSM2 token and sled database.

use std::time::SystemTime;

use keyward::{
    domain::{key::KeyId, key_format, secret::Secret},
    proto::{self, KeyState, VerifyCode},
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

use crate::common::{Instance, KeyClient, VerifyClient};

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fn secs(n: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: n, nanos: 0 }
}

fn at(offset_secs: i64) -> Timestamp {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    Timestamp { seconds: now + offset_secs, nanos: 0 }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: strings(paths) })
}

async fn create(admin: &mut KeyClient, req: proto::CreateKeyRequest) -> (String, proto::KeyInfo) {
    let created = admin.create_key(req).await.expect("CreateKey").into_inner();
    (created.key, created.info.unwrap())
}

fn named(name: &str) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest { name: name.into(), ..Default::default() }
}

async fn verify(v: &mut VerifyClient, key: &str, ip: &str, required: &[&str]) -> proto::VerifyKeyResponse {
    v.verify_key(proto::VerifyKeyRequest {
        key: key.into(),
        client_ip: ip.into(),
        required_scopes: strings(required),
        cost: None,
    })
    .await
    .expect("VerifyKey")
    .into_inner()
}

/// A well-formed key (right checksum) with this id and a secret that was never issued.
fn forged(id: KeyId) -> String {
    key_format::render("kw", id, &Secret::from_bytes([7; 32])).expose().to_owned()
}

#[tokio::test]
async fn every_verify_code_in_the_documented_order() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;

    // A key that will have expired once the server's clock moves on by two minutes.
    let (expiring, _) = create(&mut admin, proto::CreateKeyRequest { expires_at: Some(at(60)), ..named("exp") }).await;
    let (expired_disabled, info) =
        create(&mut admin, proto::CreateKeyRequest { expires_at: Some(at(60)), ..named("exp-dis") }).await;
    admin.disable_key(proto::DisableKeyRequest { key_id: info.key_id, reason: "paused".into() }).await.unwrap();
    let (expired_fenced, _) = create(
        &mut admin,
        proto::CreateKeyRequest {
            expires_at: Some(at(60)),
            allowed_cidrs: strings(&["10.0.0.0/8"]),
            ..named("exp-ip")
        },
    )
    .await;
    kw.advance_clock(120);

    let (plain, _) =
        create(&mut admin, proto::CreateKeyRequest { scopes: strings(&["orders:*", "billing:read"]), ..named("p") })
            .await;
    let (star, _) = create(&mut admin, proto::CreateKeyRequest { scopes: strings(&["*"]), ..named("star") }).await;
    let (revoked, info) = create(&mut admin, named("revoked")).await;
    admin.revoke_key(proto::RevokeKeyRequest { key_id: info.key_id, reason: String::new() }).await.unwrap();
    let (disabled, info) = create(&mut admin, named("disabled")).await;
    admin.disable_key(proto::DisableKeyRequest { key_id: info.key_id, reason: String::new() }).await.unwrap();
    let (later, _) = create(&mut admin, proto::CreateKeyRequest { not_before: Some(at(3600)), ..named("nb") }).await;
    let (fenced, _) = create(
        &mut admin,
        proto::CreateKeyRequest {
            allowed_cidrs: strings(&["10.0.0.0/8", "2001:db8::/32"]),
            scopes: strings(&["orders:read"]),
            ..named("fenced")
        },
    )
    .await;
    let limited_req = proto::CreateKeyRequest {
        rate_limit: Some(proto::RateLimit { limit: 1, window: Some(secs(3600)) }),
        scopes: strings(&["orders:read"]),
        ..named("limited")
    };
    let (limited, _) = create(&mut admin, limited_req.clone()).await;
    let (limited_metered, _) =
        create(&mut admin, proto::CreateKeyRequest { remaining: Some(0), ..limited_req.clone() }).await;
    let (metered, _) = create(&mut admin, proto::CreateKeyRequest { remaining: Some(1), ..named("metered") }).await;

    let stranger = forged(KeyId::new_v7());
    let forged_revoked = forged(key_format::parse(&revoked).unwrap().key_id);
    let forged_plain = forged(key_format::parse(&plain).unwrap().key_id);
    let mut typo = plain.clone().into_bytes();
    let n = typo.len();
    typo[n - 1] = if typo[n - 1] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();

    use VerifyCode::*;
    #[rustfmt::skip]
    let table: Vec<(&str, &str, &str, &[&str], VerifyCode)> = vec![
        ("genuine, no needs", &plain, "", &[], Valid),
        ("wildcard grants a deeper scope", &plain, "", &["orders:items:write", "billing:read"], Valid),
        ("scope outside the wildcard", &plain, "", &["billing:write"], InsufficientScope),
        ("bare * grants outside keyward:", &star, "", &["anything:at:all"], Valid),
        ("bare * never grants keyward:", &star, "", &["keyward:verify"], InsufficientScope),
        ("malformed", "kw_short", "", &[], Invalid),
        ("checksum typo", &typo, "", &[], Invalid),
        ("unknown id", &stranger, "", &[], Invalid),
        ("wrong secret", &forged_plain, "", &[], Invalid),
        ("revoked key, forged secret says nothing", &forged_revoked, "", &[], Invalid),
        ("revoked", &revoked, "", &[], Revoked),
        ("disabled", &disabled, "", &[], Disabled),
        ("disabled beats expired", &expired_disabled, "", &[], Disabled),
        ("not yet valid", &later, "", &[], NotYetValid),
        ("expired", &expiring, "", &[], Expired),
        ("expired beats IP", &expired_fenced, "192.0.2.1", &[], Expired),
        ("IPv4 inside", &fenced, "10.9.8.7", &["orders:read"], Valid),
        ("IPv6 inside", &fenced, "2001:db8:42::1", &["orders:read"], Valid),
        ("IPv4-mapped IPv6 inside", &fenced, "::ffff:10.0.0.1", &[], Valid),
        ("IPv4 outside", &fenced, "192.0.2.1", &[], IpNotAllowed),
        ("IPv6 outside", &fenced, "2001:db9::1", &[], IpNotAllowed),
        ("no client_ip with an allowlist", &fenced, "", &[], IpNotAllowed),
        ("IP beats scope", &fenced, "192.0.2.1", &["orders:write"], IpNotAllowed),
        ("scope beats rate limit", &limited, "", &["orders:write"], InsufficientScope),
        ("first call within the limit", &limited, "", &["orders:read"], Valid),
        ("second call over the limit", &limited, "", &["orders:read"], RateLimited),
        ("first call, quota empty", &limited_metered, "", &[], QuotaExceeded),
        ("rate limit beats quota", &limited_metered, "", &[], RateLimited),
        ("last use", &metered, "", &[], Valid),
        ("quota spent", &metered, "", &[], QuotaExceeded),
    ];
    for (what, key, ip, required, expected) in table {
        let r = verify(&mut v, key, ip, required).await;
        assert_eq!(r.code(), expected, "{what}");
        assert_eq!(r.valid, expected == Valid, "{what}");
        assert_eq!(r.key_id.is_empty(), expected == Invalid, "{what}: only a proven key is named");
        if expected == RateLimited {
            let wait = r.retry_after.expect("retry_after with RATE_LIMITED");
            assert!(wait.seconds > 0 && wait.seconds <= 3600, "{what}: {wait:?}");
        }
        if key == metered {
            assert_eq!(r.remaining, Some(0), "{what}");
        }
    }
}

#[tokio::test]
async fn admin_rpcs_set_change_pause_and_list_policies() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let full = proto::CreateKeyRequest {
        name: "Orders worker".into(),
        prefix: "ord".into(),
        scopes: strings(&["orders:*"]),
        allowed_cidrs: strings(&["10.0.0.0/8", "2001:db8::/32"]),
        not_before: Some(at(-10)),
        expires_at: Some(at(86_400)),
        rate_limit: Some(proto::RateLimit { limit: 100, window: Some(secs(1)) }),
        remaining: Some(500),
        refill: Some(proto::Refill { amount: 500, interval: Some(secs(86_400)) }),
        metadata: [("team".to_string(), "orders".to_string())].into(),
        max_age: Some(secs(30 * 86_400)),
        owner: "orders".into(),
        anomaly_action: proto::AnomalyAction::Disable as i32,
        kind: 0,
    };
    let (key, info) = create(&mut admin, full).await;
    let id = info.key_id.clone();
    let got = admin.get_key(proto::GetKeyRequest { key_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.allowed_cidrs, strings(&["10.0.0.0/8", "2001:db8::/32"]));
    assert_eq!(got.owner, "orders");
    assert_eq!(got.anomaly_action(), proto::AnomalyAction::Disable);
    assert_eq!(got.rate_limit.as_ref().map(|l| l.limit), Some(100));
    assert_eq!(got.remaining, Some(500));
    assert_eq!(got.refill.as_ref().map(|r| r.amount), Some(500));
    assert!(got.not_before.is_some() && got.last_refill_at.is_some());

    let r = verify(&mut v, &key, "10.1.1.1", &["orders:read"]).await;
    assert_eq!((r.code(), r.remaining), (VerifyCode::Valid, Some(499)));
    let got = admin.get_key(proto::GetKeyRequest { key_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.remaining, Some(499), "spending is visible in GetKey");
    let usage = got.usage.unwrap();
    assert_eq!((usage.valid_count, usage.last_used_ip.as_str()), (1, "10.1.1.1"));
    assert!(usage.last_used_at.is_some());

    // UpdateKey: only masked fields change; a masked field left unset is cleared.
    let updated = admin
        .update_key(proto::UpdateKeyRequest {
            key_id: id.clone(),
            name: "Orders reader".into(),
            scopes: strings(&["orders:read"]),
            metadata: [("ignored".to_string(), "x".to_string())].into(),
            update_mask: mask(&["name", "scopes", "allowed_cidrs", "rate_limit"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Orders reader");
    assert_eq!(updated.scopes, strings(&["orders:read"]));
    assert!(updated.allowed_cidrs.is_empty() && updated.rate_limit.is_none());
    assert_eq!(updated.metadata.get("team").map(String::as_str), Some("orders"), "metadata was not in the mask");
    assert!(updated.updated_at.is_some());
    assert_eq!(verify(&mut v, &key, "", &["orders:read"]).await.code(), VerifyCode::Valid);
    assert_eq!(verify(&mut v, &key, "", &["orders:write"]).await.code(), VerifyCode::InsufficientScope);
    let updated = admin
        .update_key(proto::UpdateKeyRequest {
            key_id: id.clone(),
            remaining: Some(7),
            update_mask: mask(&["remaining"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.remaining, Some(7));

    // DisableKey / EnableKey.
    let disabled = admin
        .disable_key(proto::DisableKeyRequest { key_id: id.clone(), reason: "incident 42".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((disabled.state(), disabled.disable_reason.as_str()), (KeyState::Disabled, "incident 42"));
    assert_eq!(verify(&mut v, &key, "", &[]).await.code(), VerifyCode::Disabled);
    let enabled = admin.enable_key(proto::EnableKeyRequest { key_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(enabled.state(), KeyState::Active);
    assert!(enabled.disabled_at.is_none());
    assert_eq!(verify(&mut v, &key, "", &[]).await.code(), VerifyCode::Valid);

    // ListKeys filters, with paging under the same filters.
    for (i, scopes) in [["orders:write"], ["billing:read"], ["orders:*"]].iter().enumerate() {
        let req = proto::CreateKeyRequest { scopes: strings(scopes), prefix: "ord".into(), ..named(&format!("w{i}")) };
        create(&mut admin, req).await;
    }
    let (_, other) = create(&mut admin, named("Orders elsewhere")).await;
    admin.revoke_key(proto::RevokeKeyRequest { key_id: other.key_id, reason: String::new() }).await.unwrap();
    let list = |req: proto::ListKeysRequest| {
        let mut admin = admin.clone();
        async move {
            let (mut names, mut req) = (Vec::new(), req);
            loop {
                let page = admin.list_keys(req.clone()).await.unwrap().into_inner();
                names.extend(page.keys.into_iter().map(|k| k.name));
                if page.next_page_token.is_empty() {
                    return names;
                }
                req.page_token = page.next_page_token;
            }
        }
    };
    let by_scope = proto::ListKeysRequest { scope: "orders:write".into(), page_size: 1, ..Default::default() };
    assert_eq!(list(by_scope).await, strings(&["w0", "w2"]));
    let by_name = proto::ListKeysRequest { name_contains: "ORDERS".into(), ..Default::default() };
    assert_eq!(list(by_name).await, strings(&["Orders reader", "Orders elsewhere"]));
    let by_state = proto::ListKeysRequest { state: KeyState::Revoked as i32, ..Default::default() };
    assert_eq!(list(by_state).await, strings(&["Orders elsewhere"]));
    let by_prefix = proto::ListKeysRequest { prefix: "ord".into(), page_size: 2, ..Default::default() };
    assert_eq!(list(by_prefix).await, strings(&["Orders reader", "w0", "w1", "w2"]));
    let page = admin
        .list_keys(proto::ListKeysRequest { prefix: "ord".into(), page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let err = admin
        .list_keys(proto::ListKeysRequest { page_token: page.next_page_token, page_size: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{}", err.message());

    // Revoked keys are final.
    admin.revoke_key(proto::RevokeKeyRequest { key_id: id.clone(), reason: String::new() }).await.unwrap();
    let err = admin.enable_key(proto::EnableKeyRequest { key_id: id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = admin
        .update_key(proto::UpdateKeyRequest {
            key_id: id,
            name: "x".into(),
            update_mask: mask(&["name"]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

enum Call {
    Create(proto::CreateKeyRequest),
    Update(proto::UpdateKeyRequest),
    Disable(proto::DisableKeyRequest),
    Enable(proto::EnableKeyRequest),
    List(proto::ListKeysRequest),
    Verify(proto::VerifyKeyRequest),
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let (_, info) = create(&mut admin, named("target")).await;
    let id = info.key_id;
    let create_with = |f: fn(&mut proto::CreateKeyRequest)| {
        let mut req = named("x");
        f(&mut req);
        Call::Create(req)
    };
    let update = |paths: &[&str], f: fn(&mut proto::UpdateKeyRequest)| {
        let mut req = proto::UpdateKeyRequest { key_id: id.clone(), update_mask: mask(paths), ..Default::default() };
        f(&mut req);
        Call::Update(req)
    };
    #[rustfmt::skip]
    let table: Vec<(Call, &str)> = vec![
        (create_with(|r| r.allowed_cidrs = strings(&["10.0.0.0/33"])), "allowed_cidrs"),
        (create_with(|r| r.allowed_cidrs = strings(&["10.0.0.1/8"])), "allowed_cidrs"),
        (create_with(|r| r.allowed_cidrs = strings(&["fe80::zz"])), "allowed_cidrs"),
        (create_with(|r| r.not_before = Some(Timestamp { seconds: 1, nanos: -1 })), "not_before"),
        (create_with(|r| { r.not_before = Some(at(100)); r.expires_at = Some(at(50)); }), "not_before"),
        (create_with(|r| r.rate_limit = Some(proto::RateLimit { limit: 0, window: Some(secs(1)) })), "rate_limit.limit"),
        (create_with(|r| r.rate_limit = Some(proto::RateLimit { limit: 10, window: None })), "rate_limit.window"),
        (create_with(|r| r.rate_limit = Some(proto::RateLimit { limit: 10, window: Some(secs(-1)) })), "rate_limit.window"),
        (create_with(|r| r.rate_limit = Some(proto::RateLimit { limit: 10, window: Some(secs(90_000)) })), "rate_limit.window"),
        (create_with(|r| r.remaining = Some(u64::MAX)), "remaining"),
        (create_with(|r| r.refill = Some(proto::Refill { amount: 0, interval: Some(secs(60)) })), "refill.amount"),
        (create_with(|r| r.refill = Some(proto::Refill { amount: 5, interval: None })), "refill.interval"),
        (create_with(|r| r.scopes = strings(&["orders:*:read"])), "scopes"),
        (update(&[], |_| {}), "update_mask"),
        (update(&["digest"], |_| {}), "update_mask"),
        (update(&["name"], |_| {}), "name"),
        (update(&["scopes"], |r| r.scopes = strings(&["a b"])), "scopes"),
        (update(&["allowed_cidrs"], |r| r.allowed_cidrs = strings(&["nope"])), "allowed_cidrs"),
        (update(&["expires_at"], |r| r.expires_at = Some(at(-60))), "expires_at"),
        (update(&["rate_limit"], |r| r.rate_limit = Some(proto::RateLimit { limit: 2_000_000, window: Some(secs(1)) })), "rate_limit.limit"),
        (update(&["refill"], |r| r.refill = Some(proto::Refill { amount: 1, interval: Some(secs(0)) })), "refill.interval"),
        (update(&["name"], |r| { r.key_id = "not-a-uuid".into(); r.name = "x".into(); }), "key_id"),
        (Call::Disable(proto::DisableKeyRequest { key_id: String::new(), reason: String::new() }), "key_id"),
        (Call::Disable(proto::DisableKeyRequest { key_id: id.clone(), reason: "r".repeat(600) }), "reason"),
        (Call::Enable(proto::EnableKeyRequest { key_id: "123".into() }), "key_id"),
        (Call::List(proto::ListKeysRequest { prefix: "Bad".into(), ..Default::default() }), "prefix"),
        (Call::List(proto::ListKeysRequest { scope: "a::b".into(), ..Default::default() }), "scope"),
        (Call::List(proto::ListKeysRequest { state: 42, ..Default::default() }), "state"),
        (Call::List(proto::ListKeysRequest { page_token: "forged".into(), ..Default::default() }), "page_token"),
        (Call::Verify(proto::VerifyKeyRequest { client_ip: "10.0.0.256".into(), ..Default::default() }), "client_ip"),
        (Call::Verify(proto::VerifyKeyRequest { cost: Some(1_000_001), ..Default::default() }), "cost"),
        (Call::Verify(proto::VerifyKeyRequest { required_scopes: strings(&[""]), ..Default::default() }), "required_scopes"),
    ];
    for (call, field) in table {
        let status = match call {
            Call::Create(r) => admin.create_key(r).await.map(drop),
            Call::Update(r) => admin.update_key(r).await.map(drop),
            Call::Disable(r) => admin.disable_key(r).await.map(drop),
            Call::Enable(r) => admin.enable_key(r).await.map(drop),
            Call::List(r) => admin.list_keys(r).await.map(drop),
            Call::Verify(r) => v.verify_key(r).await.map(drop),
        }
        .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(&format!("invalid {field}:")), "{field}: {}", status.message());
    }
    // None of it changed the target.
    let got = admin.get_key(proto::GetKeyRequest { key_id: id }).await.unwrap().into_inner();
    assert_eq!((got.name.as_str(), got.state()), ("target", KeyState::Active));
    assert!(got.updated_at.is_none());
}

#[tokio::test]
async fn the_update_permission_is_needed_and_keyward_scopes_cannot_be_escalated() {
    let kw = Instance::started().await;
    let mut root = kw.root_keys().await;
    let (reader, _) = kw.create_key("reader", &["keyward:keys:read"]).await;
    let (updater, _) = kw.create_key("updater", &["keyward:keys:update", "keyward:keys:read"]).await;
    let (_, info) = create(&mut root, named("target")).await;
    let id = info.key_id;
    let rename = proto::UpdateKeyRequest {
        key_id: id.clone(),
        name: "renamed".into(),
        update_mask: mask(&["name"]),
        ..Default::default()
    };
    let mut as_reader = kw.keys(Some(&reader)).await;
    assert_eq!(as_reader.update_key(rename.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    let disable = proto::DisableKeyRequest { key_id: id.clone(), reason: String::new() };
    assert_eq!(as_reader.disable_key(disable).await.unwrap_err().code(), Code::PermissionDenied);
    let mut as_updater = kw.keys(Some(&updater)).await;
    assert_eq!(as_updater.update_key(rename).await.unwrap().into_inner().name, "renamed");
    let escalate = proto::UpdateKeyRequest {
        key_id: id,
        scopes: strings(&["keyward:keys:create"]),
        update_mask: mask(&["scopes"]),
        ..Default::default()
    };
    assert_eq!(as_updater.update_key(escalate).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn refills_follow_the_servers_clock() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let req = proto::CreateKeyRequest {
        refill: Some(proto::Refill { amount: 2, interval: Some(secs(3600)) }),
        ..named("hourly")
    };
    let (key, info) = create(&mut admin, req).await;
    assert_eq!(info.remaining, Some(2), "starts full");
    let codes = [
        verify(&mut v, &key, "", &[]).await.code(),
        verify(&mut v, &key, "", &[]).await.code(),
        verify(&mut v, &key, "", &[]).await.code(),
    ];
    assert_eq!(codes, [VerifyCode::Valid, VerifyCode::Valid, VerifyCode::QuotaExceeded]);
    kw.advance_clock(3000);
    assert_eq!(verify(&mut v, &key, "", &[]).await.code(), VerifyCode::QuotaExceeded, "not yet an hour");
    kw.advance_clock(700);
    let got = admin.get_key(proto::GetKeyRequest { key_id: info.key_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.remaining, Some(2), "the due refill shows in GetKey");
    let refilled_at = got.last_refill_at.unwrap().seconds - info.last_refill_at.unwrap().seconds;
    assert_eq!(refilled_at, 3600, "refills keep their cadence");
    let r = verify(&mut v, &key, "", &[]).await;
    assert_eq!((r.code(), r.remaining), (VerifyCode::Valid, Some(1)));
    // Unused uses do not pile up over several intervals.
    kw.advance_clock(5 * 3600);
    let got = admin.get_key(proto::GetKeyRequest { key_id: info.key_id }).await.unwrap().into_inner();
    assert_eq!(got.remaining, Some(2));
}
