//! Wire types ⇄ domain types, in one place.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;

use crate::{
    domain::{
        anomaly::{AnomalyAction, AnomalyKind},
        audit::{Actor, AuditAction, AuditQuery, RecordedEvent},
        cluster::ClusterStatus,
        error::{Error, Result},
        key::{KeyId, KeyRecord, KeyState, RateLimit, Refill},
        keys::NewKey,
        listing::ListFilter,
        master::MasterStatus,
        policy::VerifyCode,
        signing::{KeyKind, WrapKeyVersion},
        update::KeyPatch,
        usage_log::{KeyUsage, UsageQuery, UsageRecord},
        verification::Verification,
    },
    proto,
};

pub fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range the Timestamp spec allows.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

fn time(field: &'static str, ts: Option<Timestamp>) -> Result<Option<SystemTime>> {
    let Some(ts) = ts else { return Ok(None) };
    let in_range = (MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) && (0..1_000_000_000).contains(&ts.nanos);
    in_range
        .then(|| SystemTime::try_from(ts).ok())
        .flatten()
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp (years 1-9999, nanos 0-999999999)"))
}

/// A protobuf Duration as a std one; negative or malformed ones are refused, naming `field`.
fn duration(field: &'static str, d: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(d) = d else { return Ok(None) };
    let valid = d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos);
    valid
        .then(|| Duration::new(d.seconds as u64, d.nanos as u32))
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "must be a non-negative duration"))
}

/// A duration that must be present and non-negative, else `None`.
pub fn optional_duration(field: &'static str, d: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    duration(field, d)
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
}

fn rate_limit(l: Option<proto::RateLimit>) -> Result<Option<RateLimit>> {
    let Some(l) = l else { return Ok(None) };
    let window =
        duration("rate_limit.window", l.window)?.ok_or_else(|| Error::invalid("rate_limit.window", "is required"))?;
    Ok(Some(RateLimit { limit: l.limit, window }))
}

fn refill(r: Option<proto::Refill>) -> Result<Option<Refill>> {
    let Some(r) = r else { return Ok(None) };
    let interval =
        duration("refill.interval", r.interval)?.ok_or_else(|| Error::invalid("refill.interval", "is required"))?;
    Ok(Some(Refill { amount: r.amount, interval }))
}

pub fn new_key(req: proto::CreateKeyRequest) -> Result<NewKey> {
    Ok(NewKey {
        expires_at: time("expires_at", req.expires_at)?,
        not_before: time("not_before", req.not_before)?,
        rate_limit: rate_limit(req.rate_limit)?,
        refill: refill(req.refill)?,
        max_age: duration("max_age", req.max_age)?,
        remaining: req.remaining,
        allowed_cidrs: req.allowed_cidrs,
        name: req.name,
        prefix: req.prefix,
        scopes: req.scopes,
        metadata: req.metadata.into_iter().collect(),
        owner: req.owner,
        anomaly_action: anomaly_action(req.anomaly_action)?,
        kind: key_kind(req.kind)?,
    })
}

/// A key kind from the wire: UNSPECIFIED is a bearer key; an unknown number is refused.
fn key_kind(raw: i32) -> Result<KeyKind> {
    match proto::KeyKind::try_from(raw) {
        Ok(proto::KeyKind::Unspecified | proto::KeyKind::Bearer) => Ok(KeyKind::Bearer),
        Ok(proto::KeyKind::Signing) => Ok(KeyKind::Signing),
        Err(_) => Err(Error::invalid("kind", "is not a KeyKind")),
    }
}

/// An anomaly action from the wire: UNSPECIFIED is the default (ALERT); an unknown number is refused.
fn anomaly_action(raw: i32) -> Result<AnomalyAction> {
    match proto::AnomalyAction::try_from(raw) {
        Ok(proto::AnomalyAction::Unspecified | proto::AnomalyAction::Alert) => Ok(AnomalyAction::Alert),
        Ok(proto::AnomalyAction::Disable) => Ok(AnomalyAction::Disable),
        Err(_) => Err(Error::invalid("anomaly_action", "is not an AnomalyAction")),
    }
}

/// KeyInfo's anomaly action: the default (ALERT) is left unset, as a request leaves it.
fn proto_anomaly_action(a: AnomalyAction) -> proto::AnomalyAction {
    match a {
        AnomalyAction::Alert => proto::AnomalyAction::Unspecified,
        AnomalyAction::Disable => proto::AnomalyAction::Disable,
    }
}

fn proto_anomaly_kind(k: AnomalyKind) -> proto::AnomalyKind {
    match k {
        AnomalyKind::NewNetworks => proto::AnomalyKind::NewNetworks,
        AnomalyKind::RateSpike => proto::AnomalyKind::RateSpike,
        AnomalyKind::FailureSpike => proto::AnomalyKind::FailureSpike,
        AnomalyKind::IdleKeyUsed => proto::AnomalyKind::IdleKeyUsed,
    }
}

pub fn key_patch(req: proto::UpdateKeyRequest) -> Result<KeyPatch> {
    Ok(KeyPatch {
        mask: req.update_mask.map(|m| m.paths).unwrap_or_default(),
        expires_at: time("expires_at", req.expires_at)?,
        not_before: time("not_before", req.not_before)?,
        rate_limit: rate_limit(req.rate_limit)?,
        refill: refill(req.refill)?,
        max_age: duration("max_age", req.max_age)?,
        remaining: req.remaining,
        allowed_cidrs: req.allowed_cidrs,
        name: req.name,
        scopes: req.scopes,
        metadata: req.metadata.into_iter().collect(),
        owner: req.owner,
        anomaly_action: anomaly_action(req.anomaly_action)?,
    })
}

pub fn list_filter(req: &proto::ListKeysRequest) -> Result<ListFilter> {
    let state = match proto::KeyState::try_from(req.state) {
        Ok(proto::KeyState::Unspecified) => None,
        Ok(proto::KeyState::Active) => Some(KeyState::Active),
        Ok(proto::KeyState::Disabled) => Some(KeyState::Disabled),
        Ok(proto::KeyState::Revoked) => Some(KeyState::Revoked),
        Ok(proto::KeyState::Rotated) => Some(KeyState::Rotated),
        Err(_) => return Err(Error::invalid("state", "is not a KeyState")),
    };
    ListFilter::new(state, &req.prefix, &req.name_contains, &req.scope)?
        .with_master_version(req.master_key_version)
        .with_owner(&req.owner)
}

fn key_state(state: KeyState) -> proto::KeyState {
    match state {
        KeyState::Active => proto::KeyState::Active,
        KeyState::Disabled => proto::KeyState::Disabled,
        KeyState::Revoked => proto::KeyState::Revoked,
        KeyState::Rotated => proto::KeyState::Rotated,
    }
}

pub fn key_info(r: &KeyRecord) -> proto::KeyInfo {
    proto::KeyInfo {
        key_id: r.id.to_string(),
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        scopes: r.scopes.clone(),
        state: key_state(r.state) as i32,
        created_at: Some(timestamp(r.created_at)),
        expires_at: r.expires_at.map(timestamp),
        revoked_at: r.revoked_at.map(timestamp),
        metadata: r.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        revoke_reason: r.revoke_reason.clone().unwrap_or_default(),
        allowed_cidrs: r.allowed_cidrs.iter().map(|n| n.to_string()).collect(),
        not_before: r.not_before.map(timestamp),
        rate_limit: r.rate_limit.map(|l| proto::RateLimit { limit: l.limit, window: Some(proto_duration(l.window)) }),
        remaining: r.quota.map(|q| q.remaining),
        refill: r
            .quota
            .and_then(|q| q.refill)
            .map(|f| proto::Refill { amount: f.amount, interval: Some(proto_duration(f.interval)) }),
        last_refill_at: r.quota.map(|q| timestamp(q.refilled_at)),
        usage: Some(proto::Usage {
            last_used_at: r.usage.last_used_at.map(timestamp),
            last_used_ip: r.usage.last_used_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            valid_count: r.usage.valid_count,
            rejected_count: r.usage.rejected_count,
        }),
        disabled_at: r.disabled_at.map(timestamp),
        disable_reason: r.disable_reason.clone().unwrap_or_default(),
        updated_at: r.updated_at.map(timestamp),
        rotated_from: r.rotated_from.map(|id| id.to_string()).unwrap_or_default(),
        rotated_to: r.rotated_to.map(|id| id.to_string()).unwrap_or_default(),
        rotated_at: r.rotated_at.map(timestamp),
        rotation_deadline: r.rotation_deadline.map(timestamp),
        max_age: r.max_age.map(proto_duration),
        rotate_by: r.rotate_by().map(timestamp),
        master_key_versions: r.digest.versions().map(|v| v.0).collect(),
        owner: r.owner.clone().unwrap_or_default(),
        anomaly_action: proto_anomaly_action(r.anomaly_action) as i32,
        kind: match r.kind() {
            KeyKind::Bearer => proto::KeyKind::Unspecified,
            KeyKind::Signing => proto::KeyKind::Signing,
        } as i32,
        anomalies: r
            .anomalies
            .iter()
            .map(|a| proto::KeyAnomaly {
                kind: proto_anomaly_kind(a.kind) as i32,
                at: Some(timestamp(a.at)),
                evidence: a.evidence.clone(),
            })
            .collect(),
    }
}

/// A QueryEvents request's filters; each malformed one is named.
pub fn audit_query(req: &proto::QueryEventsRequest) -> Result<AuditQuery> {
    let key = (!req.key_id.is_empty()).then(|| crate::domain::validate::key_id("key_id", &req.key_id)).transpose()?;
    let actor = match req.actor.split_once(':') {
        _ if req.actor.is_empty() => None,
        Some(("key", id)) => Some(Actor::Key(crate::domain::validate::key_id("actor", id)?)),
        Some(("system", name)) if !name.is_empty() => Some(Actor::System(name.to_owned())),
        _ => return Err(Error::invalid("actor", "must be `key:<key id>` or `system:<name>`")),
    };
    let action = match req.action.as_str() {
        "" => None,
        a => Some(AuditAction::parse(a).ok_or_else(|| Error::invalid("action", "is not an audit action"))?),
    };
    let code = match req.code.as_str() {
        "" => None,
        c if c.len() <= 64 && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => Some(c.to_owned()),
        _ => return Err(Error::invalid("code", "must be a status name such as `UNAUTHENTICATED`")),
    };
    Ok(AuditQuery {
        key,
        code,
        actor,
        action,
        since: time("since", req.since)?,
        until: time("until", req.until)?,
        newest_first: req.newest_first,
    })
}

/// A verify code from the wire; `UNSPECIFIED` is `None` (no filter), an unknown number is refused.
fn verify_code_filter(field: &'static str, raw: i32) -> Result<Option<VerifyCode>> {
    if raw == 0 {
        return Ok(None);
    }
    VerifyCode::ALL
        .into_iter()
        .find(|c| verify_code(*c) as i32 == raw)
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is not a verify code"))
}

/// A QueryUsage request's filters; each malformed one is named.
pub fn usage_query(req: &proto::QueryUsageRequest) -> Result<UsageQuery> {
    let key = (!req.key_id.is_empty()).then(|| crate::domain::validate::key_id("key_id", &req.key_id)).transpose()?;
    let client_ip = crate::domain::validate::client_ip(&req.client_ip)?;
    Ok(UsageQuery {
        key,
        code: verify_code_filter("code", req.code)?,
        client_ip,
        since: time("since", req.since)?,
        until: time("until", req.until)?,
        newest_first: req.newest_first,
    })
}

pub fn usage_record(r: &UsageRecord) -> proto::UsageRecord {
    proto::UsageRecord {
        at: Some(timestamp(r.at)),
        key_id: r.key_id.map(|id| id.to_string()).unwrap_or_default(),
        code: verify_code(r.code).into(),
        client_ip: r.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        caller: r.caller.map(|id| id.to_string()).unwrap_or_default(),
        latency: Some(proto_duration(r.latency)),
    }
}

/// The KeyUsage window from the wire.
pub fn usage_window(req: &proto::KeyUsageRequest) -> Result<(Option<SystemTime>, Option<SystemTime>)> {
    Ok((time("since", req.since)?, time("until", req.until)?))
}

/// Client addresses a KeyUsage answer lists by default and at most.
const DEFAULT_CLIENT_IPS: usize = 100;
const MAX_CLIENT_IPS: usize = 1000;

pub fn key_usage(key: KeyId, u: KeyUsage, max_client_ips: i32) -> Result<proto::KeyUsageResponse> {
    let max = match max_client_ips {
        0 => DEFAULT_CLIENT_IPS,
        n if n > 0 && n as usize <= MAX_CLIENT_IPS => n as usize,
        _ => return Err(Error::invalid("max_client_ips", "must be 0 (default 100) to 1000")),
    };
    let mut ips: Vec<_> = u.by_client_ip.into_iter().collect();
    ips.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    let others = ips.split_off(ips.len().min(max));
    Ok(proto::KeyUsageResponse {
        key_id: key.to_string(),
        total: u.total,
        by_code: u
            .by_code
            .into_iter()
            .map(|(code, count)| proto::CodeCount { code: verify_code(code).into(), count })
            .collect(),
        by_client_ip: ips
            .into_iter()
            .map(|(ip, (count, valid))| proto::ClientIpCount {
                client_ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                count,
                valid,
            })
            .collect(),
        other_client_ips: others.len() as u64,
        other_client_ip_count: others.iter().map(|(_, (count, _))| count).sum(),
        first_at: u.first_at.map(timestamp),
        last_at: u.last_at.map(timestamp),
        resume_at: u.resume_at.map(timestamp),
    })
}

pub fn audit_event(e: &RecordedEvent) -> proto::AuditEvent {
    let ev = &e.event;
    proto::AuditEvent {
        seq: e.seq,
        at: Some(timestamp(ev.at)),
        actor: ev.actor.to_string(),
        action: ev.action.as_str().to_owned(),
        key_id: ev.target.map(|id| id.to_string()).unwrap_or_default(),
        client_addr: ev.client_addr.clone().unwrap_or_default(),
        reason: ev.reason.clone().unwrap_or_default(),
        changes: ev
            .changes
            .iter()
            .map(|c| proto::FieldChange { field: c.field.clone(), before: c.before.clone(), after: c.after.clone() })
            .collect(),
        mac: e.mac.map(|m| m.to_vec()).unwrap_or_default(),
        code: ev.code.clone().unwrap_or_default(),
        node: e.node.clone().unwrap_or_default(),
    }
}

pub fn master_status(s: &MasterStatus) -> proto::MasterKeyStatus {
    let state = &s.state;
    proto::MasterKeyStatus {
        current_version: state.current.0,
        versions: state
            .versions
            .iter()
            .map(|v| proto::MasterKeyVersionInfo {
                version: v.version.0,
                created_at: Some(timestamp(v.created_at)),
                retired_at: v.retired_at.map(timestamp),
                keys_using: s.keys_using.get(&v.version).copied().unwrap_or(0),
                current: v.version == state.current,
                signing_keys_using: s.secrets_using.get(&WrapKeyVersion(v.version.0)).copied().unwrap_or(0),
                wrap_key_live: state.is_wrap_live(WrapKeyVersion(v.version.0)),
            })
            .collect(),
        migration: state.migration.as_ref().map(|m| proto::MasterKeyMigration {
            to_version: m.to.0,
            started_at: Some(timestamp(m.started_at)),
            keys_done: m.wrapped,
            signing_secrets_done: m.rewrapped,
        }),
        keys_pending: s.keys_pending,
        keys_not_plain: s.keys_not_plain,
        current_wrap_version: state.wrap_current().0,
        signing_keys_pending: s.secrets_pending,
    }
}

/// A node's cluster status; `None` (a single node): mode single-node, nothing else.
pub fn cluster_status(s: Option<&ClusterStatus>) -> proto::ClusterStatus {
    let Some(s) = s else {
        return proto::ClusterStatus { mode: proto::ClusterMode::SingleNode.into(), ..Default::default() };
    };
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (etcd_members, etcd_members_error) = match &s.members {
        Ok(members) => (
            members
                .iter()
                .map(|m| proto::EtcdMember { name: m.name.clone(), client_urls: m.client_urls.clone() })
                .collect(),
            String::new(),
        ),
        Err(why) => (Vec::new(), why.clone()),
    };
    proto::ClusterStatus {
        mode: proto::ClusterMode::Cluster.into(),
        leader: s.leader,
        node_id: s.node_id.clone(),
        revision: s.revision,
        staleness_ms: s.staleness.map(millis),
        current: s.current,
        max_staleness_ms: millis(s.max_staleness),
        nodes: s.nodes.clone(),
        audit_head: s.audit_head,
        keys: s.keys,
        etcd_members,
        etcd_members_error,
    }
}

pub fn verify_code(code: VerifyCode) -> proto::VerifyCode {
    match code {
        VerifyCode::Valid => proto::VerifyCode::Valid,
        VerifyCode::Invalid => proto::VerifyCode::Invalid,
        VerifyCode::Revoked => proto::VerifyCode::Revoked,
        VerifyCode::Expired => proto::VerifyCode::Expired,
        VerifyCode::InsufficientScope => proto::VerifyCode::InsufficientScope,
        VerifyCode::IpNotAllowed => proto::VerifyCode::IpNotAllowed,
        VerifyCode::RateLimited => proto::VerifyCode::RateLimited,
        VerifyCode::QuotaExceeded => proto::VerifyCode::QuotaExceeded,
        VerifyCode::Disabled => proto::VerifyCode::Disabled,
        VerifyCode::NotYetValid => proto::VerifyCode::NotYetValid,
        VerifyCode::Replayed => proto::VerifyCode::Replayed,
        VerifyCode::SignatureExpired => proto::VerifyCode::SignatureExpired,
        VerifyCode::BadSignatureParams => proto::VerifyCode::BadSignatureParams,
    }
}

pub fn verification(v: Verification) -> proto::VerifyKeyResponse {
    let mut response = proto::VerifyKeyResponse {
        valid: v.code == VerifyCode::Valid,
        code: verify_code(v.code) as i32,
        remaining: v.remaining,
        retry_after: v.retry_after.map(proto_duration),
        rotation_pending: v.rotation.pending,
        rotation_due: v.rotation.due,
        rotation_deadline: v.rotation.deadline.map(timestamp),
        ..Default::default()
    };
    if let Some(r) = v.record {
        response.key_id = r.id.to_string();
        response.name = r.name;
        response.scopes = r.scopes;
        response.metadata = r.metadata.into_iter().collect();
        response.expires_at = r.expires_at.map(timestamp);
        response.owner = r.owner.unwrap_or_default();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_timestamp_is_invalid_argument_naming_the_field() {
        let req = proto::CreateKeyRequest {
            name: "x".into(),
            expires_at: Some(Timestamp { seconds: 1, nanos: -5 }),
            ..Default::default()
        };
        assert!(matches!(new_key(req), Err(Error::InvalidArgument { field: "expires_at", .. })));
    }

    #[test]
    fn timestamps_outside_the_spec_range_are_refused() {
        let req = |seconds| proto::CreateKeyRequest {
            expires_at: Some(Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        };
        assert!(new_key(req(MAX_SECONDS + 1)).is_err());
        assert!(new_key(req(i64::MIN)).is_err());
        assert!(new_key(req(2_000_000_000)).unwrap().expires_at.is_some());
    }

    #[test]
    fn only_valid_sets_valid() {
        use VerifyCode::*;
        let v = |code| Verification {
            code,
            record: None,
            remaining: None,
            retry_after: None,
            rotation: Default::default(),
        };
        let refused = [
            Invalid,
            Revoked,
            Disabled,
            NotYetValid,
            Expired,
            IpNotAllowed,
            InsufficientScope,
            RateLimited,
            QuotaExceeded,
        ];
        for code in refused {
            assert!(!verification(v(code)).valid);
        }
        assert!(verification(v(Valid)).valid);
    }

    #[test]
    fn durations_must_be_present_and_non_negative() {
        let limit = |window| proto::RateLimit { limit: 5, window };
        let neg = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        let field = |r: Result<Option<RateLimit>>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(rate_limit(Some(limit(neg)))), "rate_limit.window");
        assert_eq!(field(rate_limit(Some(limit(None)))), "rate_limit.window");
        let ok = rate_limit(Some(limit(Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 })))).unwrap();
        assert_eq!(ok.unwrap().window, Duration::from_millis(1500));
        let bad_refill = proto::Refill { amount: 1, interval: None };
        assert!(matches!(refill(Some(bad_refill)), Err(Error::InvalidArgument { field: "refill.interval", .. })));
    }
}
