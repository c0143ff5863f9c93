//! Client key rotation end to end: RotateKey's overlap, its refusals and permissions, the
//! max_age policy, the sweeper and the reaper, against a real server over a real SoftHSM2 token
//! and sled database. Time moves with the server's development clock (`advance_clock`), which
//! shifts wall time by whole seconds, so every boundary is probed a few seconds either side.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use keyward::{
    domain::key::KeyId,
    proto::{self, KeyState, VerifyCode},
};
use prost_types::{FieldMask, Timestamp};
use tonic::{Code, Status};

use crate::common::{Instance, KeyClient, VerifyClient};

const DAY: i64 = 86_400;
/// Every verification comes from this address, inside the allowlists keys here may have.
const CLIENT_IP: &str = "10.1.2.3";

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fn secs(n: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: n, nanos: 0 }
}

fn plus(t: &Timestamp, seconds: i64) -> Timestamp {
    Timestamp { seconds: t.seconds + seconds, nanos: t.nanos }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn named(name: &str) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest { name: name.into(), ..Default::default() }
}

fn ids(keys: &[proto::KeyInfo]) -> BTreeSet<String> {
    keys.iter().map(|k| k.key_id.clone()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// `init`, each `[section] key = value` written to keyward.toml, then `start`.
async fn started_with(settings: &[(&str, &str, &str)]) -> Instance {
    let mut kw = Instance::init();
    for (section, key, value) in settings {
        kw.configure(section, key, value);
    }
    kw.start().await;
    kw
}

async fn create(admin: &mut KeyClient, req: proto::CreateKeyRequest) -> (String, proto::KeyInfo) {
    let created = admin.create_key(req).await.expect("CreateKey").into_inner();
    (created.key, created.info.unwrap())
}

async fn get(admin: &mut KeyClient, id: &str) -> proto::KeyInfo {
    admin.get_key(proto::GetKeyRequest { key_id: id.into() }).await.expect("GetKey").into_inner()
}

async fn rotate(client: &mut KeyClient, id: &str, grace: Option<i64>) -> Result<proto::RotateKeyResponse, Status> {
    client
        .rotate_key(proto::RotateKeyRequest { key_id: id.into(), grace_period: grace.map(secs) })
        .await
        .map(|r| r.into_inner())
}

/// A rotation expected to succeed: (new key, new key's info, old key's info).
async fn rotated(client: &mut KeyClient, id: &str, grace: Option<i64>) -> (String, proto::KeyInfo, proto::KeyInfo) {
    let r = rotate(client, id, grace).await.expect("RotateKey");
    (r.key, r.info.unwrap(), r.previous.unwrap())
}

async fn verify(v: &mut VerifyClient, key: &str) -> proto::VerifyKeyResponse {
    v.verify_key(proto::VerifyKeyRequest { key: key.into(), client_ip: CLIENT_IP.into(), ..Default::default() })
        .await
        .expect("VerifyKey")
        .into_inner()
}

async fn sweep(admin: &mut KeyClient, dry_run: bool) -> proto::SweepKeysResponse {
    let r = admin.sweep_keys(proto::SweepKeysRequest { dry_run }).await.expect("SweepKeys").into_inner();
    assert_eq!(r.dry_run, dry_run);
    r
}

async fn key_count(admin: &mut KeyClient) -> usize {
    let page = admin
        .list_keys(proto::ListKeysRequest { page_size: 1000, ..Default::default() })
        .await
        .expect("ListKeys")
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.keys.len()
}

fn assert_denied(result: Result<proto::RotateKeyResponse, Status>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
}

#[tokio::test]
async fn a_rotated_key_overlaps_with_its_successor_until_the_grace_period_ends() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let req = proto::CreateKeyRequest {
        prefix: "svc".into(),
        scopes: strings(&["orders:read", "orders:write"]),
        metadata: [("team".to_string(), "orders".to_string())].into(),
        allowed_cidrs: strings(&["10.0.0.0/8"]),
        rate_limit: Some(proto::RateLimit { limit: 100, window: Some(secs(60)) }),
        remaining: Some(100),
        max_age: Some(secs(30 * DAY)),
        ..named("Orders worker")
    };
    let (old_key, old) = create(&mut admin, req).await;
    assert_eq!(verify(&mut v, &old_key).await.code(), VerifyCode::Valid);
    assert_eq!(get(&mut admin, &old.key_id).await.remaining, Some(99));

    let (new_key, new, previous) = rotated(&mut admin, &old.key_id, Some(100)).await;
    assert_ne!(new.key_id, old.key_id);
    assert!(new_key.starts_with("svc_") && new_key != old_key, "a new key string is returned");
    assert_eq!(new.rotated_from, old.key_id);
    assert_eq!(new.state(), KeyState::Active);
    assert_eq!((new.name.as_str(), &new.scopes, &new.metadata), (old.name.as_str(), &old.scopes, &old.metadata));
    assert_eq!(
        (&new.allowed_cidrs, &new.rate_limit, &new.max_age),
        (&old.allowed_cidrs, &old.rate_limit, &old.max_age)
    );
    assert_eq!(new.remaining, Some(99), "the successor keeps the uses left");
    assert_eq!(previous.key_id, old.key_id);
    assert_eq!(previous.state(), KeyState::Rotated);
    assert_eq!(previous.rotated_to, new.key_id);
    let rotated_at = previous.rotated_at.expect("rotated_at");
    assert_eq!(previous.rotation_deadline, Some(plus(&rotated_at, 100)));
    let stored = get(&mut admin, &old.key_id).await;
    assert_eq!((stored.state(), &stored.rotated_to), (KeyState::Rotated, &new.key_id));
    assert_eq!(stored.rotation_deadline, previous.rotation_deadline);
    assert_eq!(get(&mut admin, &new.key_id).await.rotated_from, old.key_id);

    let r = verify(&mut v, &new_key).await;
    assert_eq!(r.code(), VerifyCode::Valid);
    assert_eq!((r.key_id.as_str(), r.name.as_str()), (new.key_id.as_str(), "Orders worker"));
    assert_eq!((&r.scopes, &r.metadata), (&old.scopes, &old.metadata));
    assert!(!r.rotation_pending);
    let r = verify(&mut v, &old_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, true));
    assert_eq!(r.rotation_deadline, previous.rotation_deadline);

    // A few seconds before the deadline the old key still works...
    kw.advance_clock(95);
    let r = verify(&mut v, &old_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, true), "just before the deadline");
    // ... and a few seconds after it, it is expired; the new key carries on.
    kw.advance_clock(10);
    assert_eq!(verify(&mut v, &old_key).await.code(), VerifyCode::Expired, "just after the deadline");
    let r = verify(&mut v, &new_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, false));
    assert_eq!(get(&mut admin, &old.key_id).await.state(), KeyState::Rotated);
}

#[tokio::test]
async fn a_zero_grace_period_ends_the_old_key_at_once_and_none_means_24_hours() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;

    let (old_key, old) = create(&mut admin, named("now")).await;
    let (new_key, _, previous) = rotated(&mut admin, &old.key_id, Some(0)).await;
    assert_eq!(previous.rotation_deadline, previous.rotated_at);
    assert_eq!(verify(&mut v, &old_key).await.code(), VerifyCode::Expired);
    assert_eq!(verify(&mut v, &new_key).await.code(), VerifyCode::Valid);

    let (old_key, old) = create(&mut admin, named("default")).await;
    let (_, _, previous) = rotated(&mut admin, &old.key_id, None).await;
    let rotated_at = previous.rotated_at.unwrap();
    assert!((rotated_at.seconds - now_secs()).abs() < 60, "rotated now: {rotated_at:?}");
    assert_eq!(previous.rotation_deadline, Some(plus(&rotated_at, DAY)));
    kw.advance_clock(DAY - 5);
    let r = verify(&mut v, &old_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, true));
    kw.advance_clock(10);
    assert_eq!(verify(&mut v, &old_key).await.code(), VerifyCode::Expired);
}

#[tokio::test]
async fn the_default_grace_period_comes_from_the_configuration() {
    let kw = started_with(&[("rotation", "grace_period", "\"2h\"")]).await;
    let mut admin = kw.root_keys().await;
    let (_, old) = create(&mut admin, named("configured")).await;
    let (_, _, previous) = rotated(&mut admin, &old.key_id, None).await;
    assert_eq!(previous.rotation_deadline, Some(plus(&previous.rotated_at.unwrap(), 7200)));
    let (_, old) = create(&mut admin, named("explicit")).await;
    let (_, _, previous) = rotated(&mut admin, &old.key_id, Some(60)).await;
    assert_eq!(previous.rotation_deadline, Some(plus(&previous.rotated_at.unwrap(), 60)), "the request wins");
}

#[tokio::test]
async fn revoked_disabled_rotated_unknown_and_malformed_keys_are_refused() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let (_, revoked) = create(&mut admin, named("revoked")).await;
    admin.revoke_key(proto::RevokeKeyRequest { key_id: revoked.key_id.clone(), reason: String::new() }).await.unwrap();
    let (_, disabled) = create(&mut admin, named("disabled")).await;
    admin
        .disable_key(proto::DisableKeyRequest { key_id: disabled.key_id.clone(), reason: String::new() })
        .await
        .unwrap();
    let (_, once) = create(&mut admin, named("once")).await;
    let (_, successor, _) = rotated(&mut admin, &once.key_id, Some(3600)).await;
    let (_, target) = create(&mut admin, named("target")).await;
    let before = key_count(&mut admin).await;

    for (id, what) in [(&revoked.key_id, "revoked"), (&disabled.key_id, "disabled"), (&once.key_id, "rotated")] {
        let err = rotate(&mut admin, id, Some(60)).await.expect_err(what);
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
    }
    let err = rotate(&mut admin, &once.key_id, None).await.unwrap_err();
    assert!(err.message().contains(&successor.key_id), "names the successor: {}", err.message());

    let err = rotate(&mut admin, "not-a-uuid", Some(60)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("invalid key_id:"), "{}", err.message());
    for grace in [367 * DAY, -1] {
        let err = rotate(&mut admin, &target.key_id, Some(grace)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "grace {grace}");
        assert!(err.message().starts_with("invalid grace_period:"), "{}", err.message());
    }
    let err = rotate(&mut admin, &KeyId::new_v7().to_string(), Some(60)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Nothing was rotated, and no successor was made.
    assert_eq!(key_count(&mut admin).await, before);
    let states = [
        (&revoked.key_id, KeyState::Revoked),
        (&disabled.key_id, KeyState::Disabled),
        (&target.key_id, KeyState::Active),
    ];
    for (id, state) in states {
        let got = get(&mut admin, id).await;
        assert_eq!((got.state(), got.rotated_to.as_str()), (state, ""), "{}", got.name);
    }
    assert_eq!(get(&mut admin, &once.key_id).await.rotated_to, successor.key_id);
    // The longest grace period allowed is 366 days.
    let (_, _, previous) = rotated(&mut admin, &target.key_id, Some(366 * DAY)).await;
    assert_eq!(previous.rotation_deadline, Some(plus(&previous.rotated_at.unwrap(), 366 * DAY)));
}

#[tokio::test]
async fn a_key_with_self_rotate_rotates_itself_and_nothing_else() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let (own_key, own) = kw.create_key("self", &["keyward:self:rotate", "keyward:verify"]).await;
    let (_, target) = create(&mut admin, named("target")).await;

    // Empty key_id: the caller's own key.
    let (second_key, second, previous) = rotated(&mut kw.keys(Some(&own_key)).await, "", Some(3600)).await;
    assert_eq!((previous.key_id.as_str(), previous.state()), (own.as_str(), KeyState::Rotated));
    assert_eq!(second.rotated_from, own);
    assert_eq!(second.scopes, strings(&["keyward:self:rotate", "keyward:verify"]));
    // The successor authenticates, and may rotate itself in turn, naming its own id.
    let r = verify(&mut kw.verifier(Some(&second_key)).await, &second_key).await;
    assert_eq!((r.code(), r.key_id.as_str()), (VerifyCode::Valid, second.key_id.as_str()));
    let mut as_second = kw.keys(Some(&second_key)).await;
    let (third_key, third, _) = rotated(&mut as_second, &second.key_id, Some(3600)).await;
    assert_eq!(third.rotated_from, second.key_id);
    assert_eq!(verify(&mut kw.verifier(Some(&third_key)).await, &third_key).await.code(), VerifyCode::Valid);

    // Self-rotation does not reach another key.
    assert_denied(rotate(&mut kw.keys(Some(&third_key)).await, &target.key_id, Some(60)).await, "other key");

    // Without keyward:self:rotate (or keyward:keys:rotate), not even its own key.
    let (plain_key, plain) = kw.create_key("plain", &["keyward:verify", "keyward:keys:read"]).await;
    let mut as_plain = kw.keys(Some(&plain_key)).await;
    assert_denied(rotate(&mut as_plain, "", Some(60)).await, "own key, empty id");
    assert_denied(rotate(&mut as_plain, &plain, Some(60)).await, "own key by id");
    assert_denied(rotate(&mut as_plain, &target.key_id, Some(60)).await, "another key");
    assert_eq!(get(&mut admin, &plain).await.state(), KeyState::Active);
    assert_eq!(get(&mut admin, &target.key_id).await.state(), KeyState::Active);
}

#[tokio::test]
async fn an_admin_rotates_only_keys_whose_keyward_permissions_it_holds() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let (rotator_key, _) = kw.create_key("rotator", &["keyward:keys:rotate", "keyward:keys:read"]).await;
    let (_, creator) = kw.create_key("creator", &["keyward:keys:create"]).await;
    let (_, reader) = kw.create_key("reader", &["keyward:keys:read", "orders:read"]).await;
    let mut as_rotator = kw.keys(Some(&rotator_key)).await;

    // The successor would hold keyward:keys:create, which the rotator does not.
    assert_denied(rotate(&mut as_rotator, &creator, Some(60)).await, "escalation");
    let got = get(&mut admin, &creator).await;
    assert_eq!((got.state(), got.rotated_to.as_str()), (KeyState::Active, ""));
    // A key holding only what the rotator holds (and non-keyward scopes) it may rotate.
    let (_, new, previous) = rotated(&mut as_rotator, &reader, Some(60)).await;
    assert_eq!(previous.state(), KeyState::Rotated);
    assert_eq!(new.scopes, strings(&["keyward:keys:read", "orders:read"]));
}

#[tokio::test]
async fn max_age_warns_then_expires_and_the_sweeper_records_it_once() {
    let kw = started_with(&[
        ("rotation", "warning", "\"100s\""),
        ("rotation", "max_age_grace", "\"50s\""),
        ("rotation", "sweep_interval", "\"off\""),
    ])
    .await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let aged = |name: &str, age: i64| proto::CreateKeyRequest { max_age: Some(secs(age)), ..named(name) };
    let (key, info) = create(&mut admin, aged("aged", 200)).await;
    let (unlimited_key, unlimited) = create(&mut admin, aged("unlimited", 0)).await;
    let (_, shortened) = create(&mut admin, aged("shortened", 0)).await;
    let (lifted_key, lifted) = create(&mut admin, aged("lifted", 200)).await;
    let created_at = info.created_at.unwrap();
    assert_eq!(info.max_age, Some(secs(200)));
    assert_eq!(info.rotate_by, Some(plus(&created_at, 200)));
    assert_eq!(unlimited.max_age, None, "zero means no limit");

    // UpdateKey's max_age mask sets and clears the limit.
    let set_age = |id: &str, age: Option<i64>| proto::UpdateKeyRequest {
        key_id: id.into(),
        max_age: age.map(secs),
        update_mask: Some(FieldMask { paths: strings(&["max_age"]) }),
        ..Default::default()
    };
    let got = admin.update_key(set_age(&shortened.key_id, Some(100))).await.unwrap().into_inner();
    assert_eq!(got.max_age, Some(secs(100)));
    let got = admin.update_key(set_age(&lifted.key_id, None)).await.unwrap().into_inner();
    assert_eq!((got.max_age, got.rotate_by), (None, None));

    let r = verify(&mut v, &key).await;
    assert_eq!((r.code(), r.rotation_due, r.rotation_pending), (VerifyCode::Valid, false, false));
    assert_eq!(r.rotation_deadline, Some(plus(&created_at, 250)), "max_age + grace");

    kw.advance_clock(120); // in the warning: [100 s, 200 s)
    let r = verify(&mut v, &key).await;
    assert_eq!((r.code(), r.rotation_due), (VerifyCode::Valid, true));
    kw.advance_clock(100); // past max_age, in its grace: [200 s, 250 s)
    let r = verify(&mut v, &key).await;
    assert_eq!((r.code(), r.rotation_due), (VerifyCode::Valid, true));
    kw.advance_clock(40); // past the grace, before any sweep
    assert_eq!(verify(&mut v, &key).await.code(), VerifyCode::Expired);
    assert_eq!(verify(&mut v, &unlimited_key).await.code(), VerifyCode::Valid);
    assert_eq!(verify(&mut v, &lifted_key).await.code(), VerifyCode::Valid);

    let expected = set(&[&info.key_id, &shortened.key_id]);
    let dry = sweep(&mut admin, true).await;
    assert_eq!((ids(&dry.expired), dry.disabled.len()), (expected.clone(), 0));
    assert_eq!(get(&mut admin, &info.key_id).await.expires_at, None, "a dry run changes nothing");

    let done = sweep(&mut admin, false).await;
    assert_eq!((ids(&done.expired), done.disabled.len()), (expected, 0));
    assert_eq!(get(&mut admin, &info.key_id).await.expires_at, Some(plus(&created_at, 250)));
    let shortened_at = shortened.created_at.unwrap();
    assert_eq!(get(&mut admin, &shortened.key_id).await.expires_at, Some(plus(&shortened_at, 150)));
    assert_eq!(verify(&mut v, &key).await.code(), VerifyCode::Expired);

    let again = sweep(&mut admin, false).await;
    assert!(again.expired.is_empty() && again.disabled.is_empty(), "a second sweep finds nothing: {again:?}");
    assert_eq!(get(&mut admin, &unlimited.key_id).await.expires_at, None);
}

#[tokio::test]
async fn the_reaper_disables_unused_keys_but_not_used_ones_nor_the_root_key() {
    let kw = started_with(&[
        ("rotation", "inactive_after", "\"1000s\""),
        ("rotation", "max_age", "\"off\""),
        ("rotation", "sweep_interval", "\"off\""),
        // Usage stays in memory, unwritten: the reaper must count it all the same.
        ("policy", "usage_flush_ms", "3600000"),
    ])
    .await;
    // Root is used only now; every later call is made with `ops`, so root goes unused too.
    let (ops_key, ops) = kw.create_key("ops", &["keyward:keys:read", "keyward:keys:update", "keyward:verify"]).await;
    let (used_key, used) = kw.create_key("used", &[]).await;
    let (unused_key, unused) = kw.create_key("unused", &[]).await;
    let mut admin = kw.keys(Some(&ops_key)).await;
    let mut v = kw.verifier(Some(&ops_key)).await;

    kw.advance_clock(600);
    assert_eq!(verify(&mut v, &used_key).await.code(), VerifyCode::Valid);
    kw.advance_clock(600); // unused and root: 1200 s without use; used and ops: 600 s

    let dry = sweep(&mut admin, true).await;
    assert_eq!((ids(&dry.disabled), dry.expired.len()), (set(&[&unused]), 0));
    assert_eq!(get(&mut admin, &unused).await.state(), KeyState::Active, "a dry run changes nothing");

    let done = sweep(&mut admin, false).await;
    assert_eq!((ids(&done.disabled), done.expired.len()), (set(&[&unused]), 0));
    let got = get(&mut admin, &unused).await;
    assert_eq!(got.state(), KeyState::Disabled);
    assert!(got.disable_reason.contains("unused"), "{:?}", got.disable_reason);
    assert_eq!(verify(&mut v, &unused_key).await.code(), VerifyCode::Disabled);
    assert_eq!(verify(&mut v, &used_key).await.code(), VerifyCode::Valid);
    assert_eq!(verify(&mut v, &kw.root_key).await.code(), VerifyCode::Valid, "the root key is exempt");

    let again = sweep(&mut admin, false).await;
    assert!(again.disabled.is_empty() && again.expired.is_empty(), "{again:?}");

    // Enabling is activity: the key is not reaped again at once, only after another idle period.
    let enabled = admin.enable_key(proto::EnableKeyRequest { key_id: unused.clone() }).await.unwrap().into_inner();
    assert_eq!(enabled.state(), KeyState::Active);
    assert!(sweep(&mut admin, false).await.disabled.is_empty());
    assert_eq!(get(&mut admin, &unused).await.state(), KeyState::Active);
    kw.advance_clock(1010);
    let later = sweep(&mut admin, false).await;
    assert_eq!(ids(&later.disabled), set(&[&unused, &used]));
    assert!(!ids(&later.disabled).contains(&ops));
}

#[tokio::test]
async fn the_background_sweeper_disables_unused_keys_by_itself() {
    let kw =
        started_with(&[("rotation", "inactive_after", "\"100s\""), ("rotation", "sweep_interval", "\"1s\"")]).await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let (_, idle) = kw.create_key("idle", &[]).await;
    let (busy_key, busy) = kw.create_key("busy", &[]).await;
    kw.advance_clock(60);
    assert_eq!(verify(&mut v, &busy_key).await.code(), VerifyCode::Valid);
    kw.advance_clock(60); // idle: 120 s unused; busy: 60 s

    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = get(&mut admin, &idle).await;
        if got.state() == KeyState::Disabled {
            break got;
        }
        assert!(Instant::now() < deadline, "the sweeper did not disable the idle key: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(got.disable_reason.contains("unused"), "{:?}", got.disable_reason);
    assert_eq!(get(&mut admin, &busy).await.state(), KeyState::Active);
}

#[tokio::test]
async fn a_rotation_survives_a_restart() {
    let mut kw = Instance::started().await;
    let (old_key, old) = kw.create_key("restarted", &["orders:read"]).await;
    let (new_key, new, previous) = rotated(&mut kw.root_keys().await, &old, Some(3600)).await;
    let status = kw.stop().await;
    assert!(status.success(), "exit status {status}");
    kw.start().await;

    let mut admin = kw.root_keys().await;
    let got = get(&mut admin, &old).await;
    assert_eq!((got.state(), &got.rotated_to), (KeyState::Rotated, &new.key_id));
    assert_eq!(got.rotation_deadline, previous.rotation_deadline);
    assert_eq!(get(&mut admin, &new.key_id).await.rotated_from, old);
    let mut v = kw.root_verifier().await;
    let r = verify(&mut v, &old_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, true));
    assert_eq!(r.rotation_deadline, previous.rotation_deadline);
    let r = verify(&mut v, &new_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, false));
}

#[tokio::test]
async fn a_successor_is_digested_under_the_current_master_key() {
    let kw = Instance::started().await;
    let mut admin = kw.root_keys().await;
    let mut v = kw.root_verifier().await;
    let (old_key, old) = create(&mut admin, named("before")).await;
    assert_eq!(old.master_key_versions, vec![1]);
    let status = kw
        .master(Some(&kw.root_key))
        .await
        .rotate_master_key(proto::RotateMasterKeyRequest {})
        .await
        .expect("RotateMasterKey")
        .into_inner();
    assert_eq!(status.current_version, 2);

    let (new_key, new, _) = rotated(&mut admin, &old.key_id, Some(3600)).await;
    assert_eq!(new.master_key_versions, vec![2]);
    assert_eq!(verify(&mut v, &new_key).await.code(), VerifyCode::Valid);
    let r = verify(&mut v, &old_key).await;
    assert_eq!((r.code(), r.rotation_pending), (VerifyCode::Valid, true));
}
