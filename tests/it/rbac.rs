//! The permission matrix: every RPC × every kind of caller gets the status the RBAC table of
//! docs/permissions.md documents; and no admin can hand out `keyward:` permissions it lacks.

use std::time::{Duration, SystemTime};

use keyward::{domain::key_format, proto};
use prost_types::{FieldMask, Timestamp};
use tonic::{Code, Status};

use crate::common::Instance;

#[derive(Clone, Copy, Debug)]
enum Rpc {
    CreateKey,
    GetKey,
    ListKeys,
    UpdateKey,
    DisableKey,
    EnableKey,
    RevokeKey,
    RotateKey,
    SweepKeys,
    SweepKeysDryRun,
    ReportLeak,
    VerifyKey,
    VerifySignature,
    GetMasterKeyStatus,
    RotateMasterKey,
    RetireMasterKey,
    QueryEvents,
    VerifyChain,
    ExportEvents,
    TailEvents,
    GetCheckpoint,
    KeyUsage,
    QueryUsage,
    GetClusterStatus,
}

/// One row of the RBAC table in docs/permissions.md.
struct Row {
    rpc: Rpc,
    /// Each of these scopes alone grants the call.
    granted_by: &'static [&'static str],
    /// A wildcard below `keyward:*` that grants it, if any.
    wildcard: Option<&'static str>,
    /// What a permitted caller gets for the minimal request `call` sends.
    permitted: &'static [Code],
}

/// Every permission scope keyward knows.
const PERMISSIONS: [&str; 13] = [
    "keyward:verify",
    "keyward:keys:create",
    "keyward:keys:read",
    "keyward:keys:update",
    "keyward:keys:revoke",
    "keyward:keys:rotate",
    "keyward:self:rotate",
    "keyward:master:read",
    "keyward:master:rotate",
    "keyward:audit:read",
    "keyward:leaks:report",
    "keyward:cluster:read",
    // Not a permission of any RPC: holding it grants nothing.
    "keyward:unknown:thing",
];

const OK: &[Code] = &[Code::Ok];
const KEYS: Option<&str> = Some("keyward:keys:*");
const MASTER: Option<&str> = Some("keyward:master:*");
const AUDIT: Option<&str> = Some("keyward:audit:*");

const TABLE: &[Row] = &[
    Row { rpc: Rpc::CreateKey, granted_by: &["keyward:keys:create"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::GetKey, granted_by: &["keyward:keys:read"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::ListKeys, granted_by: &["keyward:keys:read"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::UpdateKey, granted_by: &["keyward:keys:update"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::DisableKey, granted_by: &["keyward:keys:update"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::EnableKey, granted_by: &["keyward:keys:update"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::RevokeKey, granted_by: &["keyward:keys:revoke"], wildcard: KEYS, permitted: OK },
    // Of another key: `keyward:self:rotate` is for the caller's own key only.
    Row { rpc: Rpc::RotateKey, granted_by: &["keyward:keys:rotate"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::SweepKeys, granted_by: &["keyward:keys:update"], wildcard: KEYS, permitted: OK },
    Row { rpc: Rpc::SweepKeysDryRun, granted_by: &["keyward:keys:read"], wildcard: KEYS, permitted: OK },
    Row {
        rpc: Rpc::ReportLeak,
        granted_by: &["keyward:leaks:report"],
        wildcard: Some("keyward:leaks:*"),
        permitted: OK,
    },
    Row { rpc: Rpc::VerifyKey, granted_by: &["keyward:verify"], wildcard: None, permitted: OK },
    Row { rpc: Rpc::VerifySignature, granted_by: &["keyward:verify"], wildcard: None, permitted: OK },
    Row {
        rpc: Rpc::GetMasterKeyStatus,
        granted_by: &["keyward:master:read", "keyward:master:rotate"],
        wildcard: MASTER,
        permitted: OK,
    },
    // A second rotation while the first one's re-digest still runs is refused.
    Row {
        rpc: Rpc::RotateMasterKey,
        granted_by: &["keyward:master:rotate"],
        wildcard: MASTER,
        permitted: &[Code::Ok, Code::FailedPrecondition],
    },
    // Of a version that does not exist.
    Row {
        rpc: Rpc::RetireMasterKey,
        granted_by: &["keyward:master:rotate"],
        wildcard: MASTER,
        permitted: &[Code::NotFound],
    },
    Row { rpc: Rpc::QueryEvents, granted_by: &["keyward:audit:read"], wildcard: AUDIT, permitted: OK },
    Row { rpc: Rpc::VerifyChain, granted_by: &["keyward:audit:read"], wildcard: AUDIT, permitted: OK },
    Row { rpc: Rpc::ExportEvents, granted_by: &["keyward:audit:read"], wildcard: AUDIT, permitted: OK },
    Row { rpc: Rpc::TailEvents, granted_by: &["keyward:audit:read"], wildcard: AUDIT, permitted: OK },
    Row { rpc: Rpc::GetCheckpoint, granted_by: &["keyward:audit:read"], wildcard: AUDIT, permitted: OK },
    Row {
        rpc: Rpc::KeyUsage,
        granted_by: &["keyward:audit:read", "keyward:keys:read"],
        wildcard: AUDIT,
        permitted: OK,
    },
    Row { rpc: Rpc::QueryUsage, granted_by: &["keyward:audit:read"], wildcard: AUDIT, permitted: OK },
    Row {
        rpc: Rpc::GetClusterStatus,
        granted_by: &["keyward:cluster:read"],
        wildcard: Some("keyward:cluster:*"),
        permitted: OK,
    },
];

/// One server, the keys the callers present, and a key to act on.
struct World {
    kw: Instance,
    target_id: String,
}

fn outcome<T>(result: Result<T, Status>) -> Code {
    result.map_or_else(|s| s.code(), |_| Code::Ok)
}

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

impl World {
    /// A fresh key to revoke, rotate or report, so each permitted call can succeed.
    async fn fresh_target(&self) -> (String, String) {
        self.kw.create_key("throwaway", &["orders:read"]).await
    }

    async fn call(&self, rpc: Rpc, bearer: Option<&str>) -> Code {
        let kw = &self.kw;
        let target = self.target_id.clone();
        match rpc {
            Rpc::CreateKey => {
                let req = proto::CreateKeyRequest { name: "made".into(), ..Default::default() };
                outcome(kw.keys(bearer).await.create_key(req).await)
            }
            Rpc::GetKey => outcome(kw.keys(bearer).await.get_key(proto::GetKeyRequest { key_id: target }).await),
            Rpc::ListKeys => outcome(kw.keys(bearer).await.list_keys(proto::ListKeysRequest::default()).await),
            Rpc::UpdateKey => {
                let req = proto::UpdateKeyRequest {
                    key_id: target,
                    name: "renamed".into(),
                    update_mask: Some(FieldMask { paths: vec!["name".into()] }),
                    ..Default::default()
                };
                outcome(kw.keys(bearer).await.update_key(req).await)
            }
            Rpc::DisableKey => {
                let req = proto::DisableKeyRequest { key_id: target, reason: String::new() };
                outcome(kw.keys(bearer).await.disable_key(req).await)
            }
            Rpc::EnableKey => {
                outcome(kw.keys(bearer).await.enable_key(proto::EnableKeyRequest { key_id: target }).await)
            }
            Rpc::RevokeKey => {
                let (_, id) = self.fresh_target().await;
                let req = proto::RevokeKeyRequest { key_id: id, reason: String::new() };
                outcome(kw.keys(bearer).await.revoke_key(req).await)
            }
            Rpc::RotateKey => {
                let (_, id) = self.fresh_target().await;
                let req = proto::RotateKeyRequest { key_id: id, grace_period: None };
                outcome(kw.keys(bearer).await.rotate_key(req).await)
            }
            Rpc::SweepKeys | Rpc::SweepKeysDryRun => {
                let req = proto::SweepKeysRequest { dry_run: matches!(rpc, Rpc::SweepKeysDryRun) };
                outcome(kw.keys(bearer).await.sweep_keys(req).await)
            }
            Rpc::ReportLeak => {
                let (key, _) = self.fresh_target().await;
                let req = proto::ReportLeakRequest { key, source_url: "https://example.com/paste/1".into() };
                outcome(kw.keys(bearer).await.report_leak(req).await)
            }
            Rpc::VerifyKey => {
                let (key, _) = self.fresh_target().await;
                let req = proto::VerifyKeyRequest { key, ..Default::default() };
                outcome(kw.verifier(bearer).await.verify_key(req).await)
            }
            Rpc::VerifySignature => {
                let req = proto::VerifySignatureRequest {
                    signature_base: b"\"@signature-params\": ();keyid=\"unknown\"".to_vec(),
                    ..Default::default()
                };
                outcome(kw.verifier(bearer).await.verify_signature(req).await)
            }
            Rpc::GetMasterKeyStatus => {
                let req = proto::GetMasterKeyStatusRequest { skip_counts: true };
                outcome(kw.master(bearer).await.get_master_key_status(req).await)
            }
            Rpc::RotateMasterKey => {
                outcome(kw.master(bearer).await.rotate_master_key(proto::RotateMasterKeyRequest {}).await)
            }
            Rpc::RetireMasterKey => {
                let req = proto::RetireMasterKeyRequest { version: 999 };
                outcome(kw.master(bearer).await.retire_master_key(req).await)
            }
            Rpc::QueryEvents => {
                outcome(kw.audit(bearer).await.query_events(proto::QueryEventsRequest::default()).await)
            }
            Rpc::VerifyChain => {
                outcome(kw.audit(bearer).await.verify_chain(proto::VerifyChainRequest::default()).await)
            }
            Rpc::ExportEvents => {
                outcome(kw.audit(bearer).await.export_events(proto::ExportEventsRequest::default()).await)
            }
            // Only the call's own status: the stream is dropped at once.
            Rpc::TailEvents => outcome(kw.audit(bearer).await.tail_events(proto::TailEventsRequest::default()).await),
            Rpc::GetCheckpoint => outcome(kw.audit(bearer).await.get_checkpoint(proto::GetCheckpointRequest {}).await),
            Rpc::KeyUsage => {
                let req = proto::KeyUsageRequest { key_id: target, ..Default::default() };
                outcome(kw.audit(bearer).await.key_usage(req).await)
            }
            Rpc::QueryUsage => outcome(kw.audit(bearer).await.query_usage(proto::QueryUsageRequest::default()).await),
            Rpc::GetClusterStatus => {
                outcome(kw.cluster(bearer).await.get_cluster_status(proto::GetClusterStatusRequest {}).await)
            }
        }
    }
}

/// A caller key and the outcome it must get.
struct Caller {
    label: String,
    key: Option<String>,
    expect: &'static [Code],
}

#[tokio::test]
async fn every_rpc_gives_each_kind_of_caller_its_documented_status() {
    // This test makes hundreds of refused calls from one address on purpose: the brute-force
    // defence (tested in brute_force.rs) would rightly block them.
    let mut kw = Instance::init();
    kw.configure("brute_force", "enabled", "false");
    kw.start().await;
    let (_, target_id) = kw.create_key("target", &["orders:read"]).await;
    let world = World { kw, target_id };
    let kw = &world.kw;

    // The keys every row shares, made once.
    let (all, all_id) = kw.create_key("all", &["keyward:*"]).await;
    let (star, _) = kw.create_key("star", &["*"]).await;
    let (revoked, revoked_id) = kw.create_key("revoked", &["keyward:*"]).await;
    kw.root_keys()
        .await
        .revoke_key(proto::RevokeKeyRequest { key_id: revoked_id, reason: String::new() })
        .await
        .unwrap();
    let soon = SystemTime::now() + Duration::from_secs(30);
    let expiring = proto::CreateKeyRequest {
        name: "expiring".into(),
        scopes: scopes(&["keyward:*"]),
        expires_at: Some(Timestamp::from(soon)),
        ..Default::default()
    };
    let expired = kw.root_keys().await.create_key(expiring).await.unwrap().into_inner().key;
    // Well-formed, and naming a real keyward:* key, but with another key's secret.
    let wrong = {
        let other = key_format::parse(&star).unwrap();
        key_format::render("kw", all_id.parse().unwrap(), &other.secret).expose().to_owned()
    };
    let mut exact = std::collections::HashMap::new();
    for scope in PERMISSIONS {
        exact.insert(scope, kw.create_key(scope, &[scope]).await.0);
    }
    let mut wildcards = std::collections::HashMap::new();
    for scope in ["keyward:keys:*", "keyward:master:*", "keyward:audit:*", "keyward:leaks:*", "keyward:cluster:*"] {
        wildcards.insert(scope, kw.create_key(scope, &[scope]).await.0);
    }
    kw.advance_clock(60);

    let denied: &[Code] = &[Code::PermissionDenied];
    let unauthenticated: &[Code] = &[Code::Unauthenticated];
    let mut wrong_outcomes = Vec::new();
    for row in TABLE {
        // Every permission but those that grant this call.
        let others: Vec<&str> = PERMISSIONS.into_iter().filter(|p| !row.granted_by.contains(p)).collect();
        let (missing, _) = kw.create_key("missing", &others).await;
        let mut callers = vec![
            Caller { label: "no credential".into(), key: None, expect: unauthenticated },
            Caller { label: "wrong secret".into(), key: Some(wrong.clone()), expect: unauthenticated },
            Caller { label: "revoked keyward:*".into(), key: Some(revoked.clone()), expect: unauthenticated },
            Caller { label: "expired keyward:*".into(), key: Some(expired.clone()), expect: unauthenticated },
            Caller { label: "`*` (no keyward: scope)".into(), key: Some(star.clone()), expect: denied },
            Caller { label: "every other permission".into(), key: Some(missing), expect: denied },
            Caller { label: "keyward:*".into(), key: Some(all.clone()), expect: row.permitted },
        ];
        for scope in row.granted_by {
            callers.push(Caller { label: scope.to_string(), key: Some(exact[scope].clone()), expect: row.permitted });
        }
        if let Some(scope) = row.wildcard {
            callers.push(Caller { label: scope.into(), key: Some(wildcards[scope].clone()), expect: row.permitted });
        }
        for caller in callers {
            let got = world.call(row.rpc, caller.key.as_deref()).await;
            if !caller.expect.contains(&got) {
                wrong_outcomes
                    .push(format!("{:?} by {}: {got:?}, expected {:?}", row.rpc, caller.label, caller.expect));
            }
        }
    }
    assert!(wrong_outcomes.is_empty(), "unexpected statuses:\n{}", wrong_outcomes.join("\n"));
}

#[tokio::test]
async fn no_admin_can_hand_out_keyward_permissions_it_does_not_hold() {
    let kw = Instance::started().await;
    let (creator, _) = kw.create_key("creator", &["keyward:keys:create"]).await;
    let (updater, _) = kw.create_key("updater", &["keyward:keys:update"]).await;
    let (rotator, _) = kw.create_key("rotator", &["keyward:keys:rotate"]).await;
    let (keys_admin, _) = kw.create_key("keys-admin", &["keyward:keys:*"]).await;
    let (_, plain_id) = kw.create_key("plain", &["orders:read"]).await;
    let (_, master_admin_id) = kw.create_key("master-admin", &["keyward:master:rotate"]).await;

    // CreateKey.
    for (caller, wanted) in [
        (&creator, &["keyward:*"][..]),
        (&creator, &["keyward:keys:read"]),
        (&creator, &["keyward:leaks:report"]),
        (&keys_admin, &["keyward:master:rotate"]),
        (&keys_admin, &["keyward:*"]),
    ] {
        let req = proto::CreateKeyRequest { name: "escalate".into(), scopes: scopes(wanted), ..Default::default() };
        let status = kw.keys(Some(caller)).await.create_key(req).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{wanted:?}");
        assert!(status.message().contains(wanted[0]), "{}", status.message());
    }
    let req =
        proto::CreateKeyRequest { name: "ok".into(), scopes: scopes(&["keyward:keys:read"]), ..Default::default() };
    kw.keys(Some(&keys_admin)).await.create_key(req).await.expect("granting what it holds is fine");

    // UpdateKey: widening a key's scopes is granting them.
    let widen = |scopes_to: &[&str]| proto::UpdateKeyRequest {
        key_id: plain_id.clone(),
        scopes: scopes(scopes_to),
        update_mask: Some(FieldMask { paths: vec!["scopes".into()] }),
        ..Default::default()
    };
    let status = kw.keys(Some(&updater)).await.update_key(widen(&["keyward:*"])).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = kw.keys(Some(&keys_admin)).await.update_key(widen(&["keyward:audit:read"])).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = kw.root_keys().await.get_key(proto::GetKeyRequest { key_id: plain_id.clone() }).await.unwrap();
    assert_eq!(info.into_inner().scopes, vec!["orders:read"], "a refused update changes nothing");

    // RotateKey: the successor carries the old key's scopes.
    let rotate = |id: &str| proto::RotateKeyRequest { key_id: id.into(), grace_period: None };
    let root_id = key_format::parse(&kw.root_key).unwrap().key_id.to_string();
    for id in [&root_id, &master_admin_id] {
        let status = kw.keys(Some(&rotator)).await.rotate_key(rotate(id)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{id}");
    }
    assert_eq!(kw.code(&kw.root_key, &[]).await, proto::VerifyCode::Valid, "the root key was not rotated");
    kw.keys(Some(&rotator)).await.rotate_key(rotate(&plain_id)).await.expect("rotating a plain key is fine");
}

/// The RBAC table of docs/permissions.md says what `TABLE` tests: every RPC there is in the
/// matrix, and each row names every scope the matrix finds granting its RPC.
#[test]
fn the_documented_rbac_table_is_the_tested_one() {
    let doc = include_str!("../../docs/permissions.md");
    let section = &doc[doc.find("## RBAC table").expect("an RBAC table section")..];
    let rows: Vec<(Vec<&str>, &str)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| service"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.contains("keyward:"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[2].split(", ").map(|rpc| rpc.trim_matches('`')).collect(), cells[3])
        })
        .collect();
    let tested: Vec<String> = TABLE.iter().map(|row| format!("{:?}", row.rpc)).collect();
    for (rpcs, _) in &rows {
        for rpc in rpcs {
            assert!(tested.iter().any(|t| t == rpc), "docs/permissions.md lists {rpc}, which the matrix does not test");
        }
    }
    for row in TABLE {
        let name = format!("{:?}", row.rpc);
        let documented = name.strip_suffix("DryRun").unwrap_or(&name);
        let (_, permission) = rows
            .iter()
            .find(|(rpcs, _)| rpcs.contains(&documented))
            .unwrap_or_else(|| panic!("{documented} is missing from the RBAC table of docs/permissions.md"));
        for scope in row.granted_by {
            assert!(
                permission.contains(&format!("`{scope}`")),
                "docs/permissions.md: {documented} should name `{scope}`, it says: {permission}"
            );
        }
    }
}
