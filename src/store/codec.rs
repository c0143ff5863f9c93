//! Encoding of stored records: one version byte, then a prost message. New fields get new tags;
//! a new version byte is for changes prost cannot absorb.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use prost::Message;

use crate::domain::{
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    key::{DIGEST_LEN, Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion, Quota, RateLimit, Refill, Usage},
    ports::{MasterState, MasterVersion, Migration, StoreError},
};

const V1: u8 = 1;
/// An audit record sealed into the chain: the event's V1 bytes and their MAC.
const V2_SEALED: u8 = 2;

#[derive(Clone, PartialEq, Message)]
struct StoredKey {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    prefix: String,
    #[prost(string, repeated, tag = "4")]
    scopes: Vec<String>,
    #[prost(uint32, tag = "5")]
    state: u32,
    #[prost(int64, tag = "6")]
    created_at: i64,
    #[prost(int64, optional, tag = "7")]
    expires_at: Option<i64>,
    #[prost(int64, optional, tag = "8")]
    revoked_at: Option<i64>,
    #[prost(string, optional, tag = "9")]
    revoke_reason: Option<String>,
    #[prost(btree_map = "string, string", tag = "10")]
    metadata: BTreeMap<String, String>,
    #[prost(bytes = "vec", optional, tag = "11")]
    created_by: Option<Vec<u8>>,
    #[prost(message, optional, tag = "12")]
    digest: Option<StoredDigest>,
    #[prost(string, repeated, tag = "13")]
    allowed_cidrs: Vec<String>,
    #[prost(int64, optional, tag = "14")]
    not_before: Option<i64>,
    #[prost(message, optional, tag = "15")]
    rate_limit: Option<StoredRateLimit>,
    #[prost(message, optional, tag = "16")]
    quota: Option<StoredQuota>,
    #[prost(int64, optional, tag = "17")]
    disabled_at: Option<i64>,
    #[prost(string, optional, tag = "18")]
    disable_reason: Option<String>,
    #[prost(int64, optional, tag = "19")]
    updated_at: Option<i64>,
    #[prost(message, optional, tag = "20")]
    usage: Option<StoredUsage>,
    #[prost(bytes = "vec", optional, tag = "21")]
    rotated_from: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "22")]
    rotated_to: Option<Vec<u8>>,
    #[prost(int64, optional, tag = "23")]
    rotated_at: Option<i64>,
    #[prost(int64, optional, tag = "24")]
    rotation_deadline: Option<i64>,
    #[prost(uint64, optional, tag = "25")]
    max_age_nanos: Option<u64>,
    /// Absent in records written before ownership: no owner.
    #[prost(string, optional, tag = "26")]
    owner: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredRateLimit {
    #[prost(uint32, tag = "1")]
    limit: u32,
    #[prost(uint64, tag = "2")]
    window_nanos: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredQuota {
    #[prost(uint64, tag = "1")]
    remaining: u64,
    #[prost(uint64, optional, tag = "2")]
    refill_amount: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    refill_interval_nanos: Option<u64>,
    #[prost(int64, tag = "4")]
    refilled_at: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredUsage {
    #[prost(int64, optional, tag = "1")]
    last_used_at: Option<i64>,
    #[prost(string, optional, tag = "2")]
    last_used_ip: Option<String>,
    #[prost(uint64, tag = "3")]
    valid_count: u64,
    #[prost(uint64, tag = "4")]
    rejected_count: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StoredChange {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    before: String,
    #[prost(string, tag = "3")]
    after: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredDigest {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
    #[prost(uint32, repeated, tag = "3")]
    wrapped: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredEvent {
    #[prost(int64, tag = "1")]
    at: i64,
    #[prost(bytes = "vec", optional, tag = "2")]
    actor_key: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    actor_system: Option<String>,
    #[prost(string, tag = "4")]
    action: String,
    #[prost(bytes = "vec", optional, tag = "5")]
    target: Option<Vec<u8>>,
    #[prost(string, optional, tag = "6")]
    client_addr: Option<String>,
    #[prost(string, optional, tag = "7")]
    reason: Option<String>,
    #[prost(message, repeated, tag = "8")]
    changes: Vec<StoredChange>,
    #[prost(string, optional, tag = "9")]
    code: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredSealed {
    /// The event as `encode_event` wrote it (version byte included): the bytes the MAC covers.
    #[prost(bytes = "vec", tag = "1")]
    event: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredMaster {
    #[prost(uint32, tag = "1")]
    current: u32,
    /// Databases from before master key rotation: the only version's self-test.
    #[prost(message, optional, tag = "2")]
    self_test: Option<StoredDigest>,
    #[prost(message, repeated, tag = "3")]
    versions: Vec<StoredMasterVersion>,
    #[prost(message, optional, tag = "4")]
    migration: Option<StoredMigration>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredMasterVersion {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(int64, tag = "2")]
    created_at: i64,
    #[prost(int64, optional, tag = "3")]
    retired_at: Option<i64>,
    #[prost(message, optional, tag = "4")]
    self_test: Option<StoredDigest>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredMigration {
    #[prost(uint32, tag = "1")]
    to: u32,
    #[prost(int64, tag = "2")]
    started_at: i64,
    #[prost(bytes = "vec", optional, tag = "3")]
    after: Option<Vec<u8>>,
    #[prost(uint64, tag = "4")]
    wrapped: u64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("undecodable {what} record"))
}

/// Nanoseconds since the Unix epoch (for index keys).
pub fn nanos(t: SystemTime) -> i64 {
    to_nanos(t)
}

/// Nanoseconds since the Unix epoch (i64 reaches the year 2262).
fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // Negated in i128: i64::MIN has no positive counterpart in i64.
        Err(e) => i64::try_from(-(e.duration().as_nanos() as i128)).unwrap_or(i64::MIN),
    }
}

fn from_nanos(n: i64) -> SystemTime {
    if n >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

fn wrap(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(V1);
    msg.encode(&mut out).expect("a Vec grows as needed");
    out
}

fn unwrap<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    match bytes.split_first() {
        Some((&V1, rest)) => M::decode(rest).map_err(|_| corrupt(what)),
        _ => Err(corrupt(what)),
    }
}

fn key_id(bytes: &[u8], what: &str) -> Result<KeyId, StoreError> {
    <[u8; 16]>::try_from(bytes).map(KeyId::from_bytes).map_err(|_| corrupt(what))
}

fn encode_digest(d: &Digest) -> StoredDigest {
    StoredDigest { version: d.version.0, mac: d.mac.to_vec(), wrapped: d.wrapped.iter().map(|v| v.0).collect() }
}

fn decode_digest(d: Option<StoredDigest>, what: &str) -> Result<Digest, StoreError> {
    let d = d.ok_or_else(|| corrupt(what))?;
    let mac = <[u8; DIGEST_LEN]>::try_from(d.mac.as_slice()).map_err(|_| corrupt(what))?;
    Ok(Digest {
        version: MasterKeyVersion(d.version),
        mac,
        wrapped: d.wrapped.into_iter().map(MasterKeyVersion).collect(),
    })
}

pub fn encode_key(r: &KeyRecord) -> Vec<u8> {
    wrap(&StoredKey {
        id: r.id.as_bytes().to_vec(),
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        scopes: r.scopes.clone(),
        state: match r.state {
            KeyState::Active => 1,
            KeyState::Revoked => 2,
            KeyState::Disabled => 3,
            KeyState::Rotated => 4,
        },
        created_at: to_nanos(r.created_at),
        expires_at: r.expires_at.map(to_nanos),
        revoked_at: r.revoked_at.map(to_nanos),
        revoke_reason: r.revoke_reason.clone(),
        metadata: r.metadata.clone(),
        created_by: r.created_by.map(|id| id.as_bytes().to_vec()),
        digest: Some(encode_digest(&r.digest)),
        allowed_cidrs: r.allowed_cidrs.iter().map(|n| n.to_string()).collect(),
        not_before: r.not_before.map(to_nanos),
        rate_limit: r.rate_limit.map(|l| StoredRateLimit { limit: l.limit, window_nanos: duration_nanos(l.window) }),
        quota: r.quota.map(|q| StoredQuota {
            remaining: q.remaining,
            refill_amount: q.refill.map(|r| r.amount),
            refill_interval_nanos: q.refill.map(|r| duration_nanos(r.interval)),
            refilled_at: to_nanos(q.refilled_at),
        }),
        disabled_at: r.disabled_at.map(to_nanos),
        disable_reason: r.disable_reason.clone(),
        updated_at: r.updated_at.map(to_nanos),
        usage: Some(StoredUsage {
            last_used_at: r.usage.last_used_at.map(to_nanos),
            last_used_ip: r.usage.last_used_ip.map(|ip| ip.to_string()),
            valid_count: r.usage.valid_count,
            rejected_count: r.usage.rejected_count,
        }),
        rotated_from: r.rotated_from.map(|id| id.as_bytes().to_vec()),
        rotated_to: r.rotated_to.map(|id| id.as_bytes().to_vec()),
        rotated_at: r.rotated_at.map(to_nanos),
        rotation_deadline: r.rotation_deadline.map(to_nanos),
        max_age_nanos: r.max_age.map(duration_nanos),
        owner: r.owner.clone(),
    })
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn decode_quota(q: StoredQuota) -> Result<Quota, StoreError> {
    let refill = match (q.refill_amount, q.refill_interval_nanos) {
        (Some(amount), Some(nanos)) => Some(Refill { amount, interval: Duration::from_nanos(nanos) }),
        (None, None) => None,
        _ => return Err(corrupt("key")),
    };
    Ok(Quota { remaining: q.remaining, refill, refilled_at: from_nanos(q.refilled_at) })
}

fn decode_usage(u: Option<StoredUsage>) -> Result<Usage, StoreError> {
    let Some(u) = u else { return Ok(Usage::default()) };
    Ok(Usage {
        last_used_at: u.last_used_at.map(from_nanos),
        last_used_ip: u.last_used_ip.map(|ip| ip.parse::<IpAddr>().map_err(|_| corrupt("key"))).transpose()?,
        valid_count: u.valid_count,
        rejected_count: u.rejected_count,
    })
}

pub fn decode_key(bytes: &[u8]) -> Result<KeyRecord, StoreError> {
    let s: StoredKey = unwrap(bytes, "key")?;
    Ok(KeyRecord {
        id: key_id(&s.id, "key")?,
        name: s.name,
        prefix: s.prefix,
        scopes: s.scopes,
        state: match s.state {
            1 => KeyState::Active,
            2 => KeyState::Revoked,
            3 => KeyState::Disabled,
            4 => KeyState::Rotated,
            _ => return Err(corrupt("key")),
        },
        created_at: from_nanos(s.created_at),
        expires_at: s.expires_at.map(from_nanos),
        revoked_at: s.revoked_at.map(from_nanos),
        revoke_reason: s.revoke_reason,
        metadata: s.metadata,
        created_by: s.created_by.map(|b| key_id(&b, "key")).transpose()?,
        digest: decode_digest(s.digest, "key")?,
        allowed_cidrs: s
            .allowed_cidrs
            .iter()
            .map(|n| n.parse().map_err(|_| corrupt("key")))
            .collect::<Result<_, _>>()?,
        not_before: s.not_before.map(from_nanos),
        rate_limit: s.rate_limit.map(|l| RateLimit { limit: l.limit, window: Duration::from_nanos(l.window_nanos) }),
        quota: s.quota.map(decode_quota).transpose()?,
        disabled_at: s.disabled_at.map(from_nanos),
        disable_reason: s.disable_reason,
        updated_at: s.updated_at.map(from_nanos),
        usage: decode_usage(s.usage)?,
        rotated_from: s.rotated_from.map(|b| key_id(&b, "key")).transpose()?,
        rotated_to: s.rotated_to.map(|b| key_id(&b, "key")).transpose()?,
        rotated_at: s.rotated_at.map(from_nanos),
        rotation_deadline: s.rotation_deadline.map(from_nanos),
        max_age: s.max_age_nanos.map(Duration::from_nanos),
        owner: s.owner,
    })
}

pub fn encode_event(e: &AuditEvent) -> Vec<u8> {
    let (actor_key, actor_system) = match &e.actor {
        Actor::Key(id) => (Some(id.as_bytes().to_vec()), None),
        Actor::System(name) => (None, Some(name.clone())),
    };
    wrap(&StoredEvent {
        at: to_nanos(e.at),
        actor_key,
        actor_system,
        action: e.action.as_str().to_owned(),
        target: e.target.map(|id| id.as_bytes().to_vec()),
        client_addr: e.client_addr.clone(),
        reason: e.reason.clone(),
        changes: e
            .changes
            .iter()
            .map(|c| StoredChange { field: c.field.clone(), before: c.before.clone(), after: c.after.clone() })
            .collect(),
        code: e.code.clone(),
    })
}

/// An audit record: `event_bytes` sealed by `mac`.
pub fn encode_sealed(event_bytes: Vec<u8>, mac: &[u8; 32]) -> Vec<u8> {
    let msg = StoredSealed { event: event_bytes, mac: mac.to_vec() };
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(V2_SEALED);
    msg.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// An audit record as stored: the event, its bytes and its MAC (`None` for one written before
/// the chain existed).
pub struct AuditRecord {
    pub event: AuditEvent,
    pub event_bytes: Vec<u8>,
    pub mac: Option<[u8; 32]>,
}

pub fn decode_audit(bytes: &[u8]) -> Result<AuditRecord, StoreError> {
    match bytes.first() {
        Some(&V2_SEALED) => {
            let sealed = StoredSealed::decode(&bytes[1..]).map_err(|_| corrupt("audit"))?;
            let mac = <[u8; 32]>::try_from(sealed.mac.as_slice()).map_err(|_| corrupt("audit"))?;
            Ok(AuditRecord { event: decode_event(&sealed.event)?, event_bytes: sealed.event, mac: Some(mac) })
        }
        _ => Ok(AuditRecord { event: decode_event(bytes)?, event_bytes: bytes.to_vec(), mac: None }),
    }
}

pub fn decode_event(bytes: &[u8]) -> Result<AuditEvent, StoreError> {
    let s: StoredEvent = unwrap(bytes, "audit")?;
    let actor = match (s.actor_key, s.actor_system) {
        (Some(k), None) => Actor::Key(key_id(&k, "audit")?),
        (None, Some(name)) => Actor::System(name),
        _ => return Err(corrupt("audit")),
    };
    Ok(AuditEvent {
        at: from_nanos(s.at),
        actor,
        action: AuditAction::parse(&s.action).ok_or_else(|| corrupt("audit"))?,
        target: s.target.map(|t| key_id(&t, "audit")).transpose()?,
        client_addr: s.client_addr,
        reason: s.reason,
        changes: s
            .changes
            .into_iter()
            .map(|c| FieldChange { field: c.field, before: c.before, after: c.after })
            .collect(),
        code: s.code,
    })
}

pub fn encode_master(m: &MasterState) -> Vec<u8> {
    wrap(&StoredMaster {
        current: m.current.0,
        self_test: None,
        versions: m
            .versions
            .iter()
            .map(|v| StoredMasterVersion {
                version: v.version.0,
                created_at: to_nanos(v.created_at),
                retired_at: v.retired_at.map(to_nanos),
                self_test: Some(encode_digest(&v.self_test)),
            })
            .collect(),
        migration: m.migration.as_ref().map(|g| StoredMigration {
            to: g.to.0,
            started_at: to_nanos(g.started_at),
            after: g.after.map(|id| id.as_bytes().to_vec()),
            wrapped: g.wrapped,
        }),
    })
}

pub fn decode_master(bytes: &[u8]) -> Result<MasterState, StoreError> {
    let s: StoredMaster = unwrap(bytes, "master")?;
    let current = MasterKeyVersion(s.current);
    if s.versions.is_empty() {
        // Written before master key rotation: one version, made at init.
        return Ok(MasterState::first(current, decode_digest(s.self_test, "master")?, SystemTime::UNIX_EPOCH));
    }
    let versions = s
        .versions
        .into_iter()
        .map(|v| {
            Ok(MasterVersion {
                version: MasterKeyVersion(v.version),
                created_at: from_nanos(v.created_at),
                retired_at: v.retired_at.map(from_nanos),
                self_test: decode_digest(v.self_test, "master")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let migration = s
        .migration
        .map(|g| {
            Ok::<_, StoreError>(Migration {
                to: MasterKeyVersion(g.to),
                started_at: from_nanos(g.started_at),
                after: g.after.map(|b| key_id(&b, "master")).transpose()?,
                wrapped: g.wrapped,
            })
        })
        .transpose()?;
    if !versions.iter().any(|v| v.version == current) {
        return Err(corrupt("master"));
    }
    Ok(MasterState { current, versions, migration })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_nanosecond_times() {
        let digest = Digest::plain(MasterKeyVersion(2), [9; 32]);
        let mut record =
            KeyRecord::new(KeyId::new_v7(), "svc".into(), "kw".into(), vec!["a:*".into()], SystemTime::now(), digest);
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        record.state = KeyState::Revoked;
        record.expires_at = Some(SystemTime::now() + Duration::from_nanos(123_456_789));
        record.revoked_at = Some(SystemTime::UNIX_EPOCH - Duration::from_secs(5));
        record.revoke_reason = Some("leaked".into());
        record.metadata = [("team".to_string(), "a".to_string())].into();
        record.created_by = Some(KeyId::new_v7());
        record.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        record.not_before = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7));
        record.rate_limit = Some(RateLimit { limit: 100, window: Duration::from_millis(1500) });
        record.quota = Some(Quota {
            remaining: 42,
            refill: Some(Refill { amount: 100, interval: Duration::from_secs(86_400) }),
            refilled_at: SystemTime::now(),
        });
        record.disabled_at = Some(SystemTime::now());
        record.disable_reason = Some("paused".into());
        record.updated_at = Some(SystemTime::now());
        record.usage = Usage {
            last_used_at: Some(SystemTime::now()),
            last_used_ip: Some("2001:db8::1".parse().unwrap()),
            valid_count: 5,
            rejected_count: 2,
        };
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        record.state = KeyState::Disabled;
        record.quota = Some(Quota { remaining: 0, refill: None, refilled_at: SystemTime::UNIX_EPOCH });
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        record.state = KeyState::Rotated;
        record.rotated_from = Some(KeyId::new_v7());
        record.rotated_to = Some(KeyId::new_v7());
        record.rotated_at = Some(SystemTime::now());
        record.rotation_deadline = Some(SystemTime::now() + Duration::from_secs(86_400));
        record.max_age = Some(Duration::from_secs(90 * 86_400));
        record.digest.wrapped = vec![MasterKeyVersion(1)];
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        let unowned = encode_key(&record);
        record.owner = Some("team-a".into());
        let owned = encode_key(&record);
        assert_eq!(decode_key(&owned).unwrap(), record);
        assert!(owned.len() > unowned.len(), "a record without an owner is written as before ownership existed");
        let event = AuditEvent {
            at: SystemTime::now(),
            actor: Actor::System("init".into()),
            action: AuditAction::KeyRevoked,
            target: Some(record.id),
            client_addr: Some("127.0.0.1:1".into()),
            reason: None,
            changes: vec![FieldChange { field: "scopes".into(), before: "[a]".into(), after: "[a, b]".into() }],
            code: Some("UNAUTHENTICATED".into()),
        };
        assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
    }

    /// Found by review while writing the fuzz targets: the earliest time i64 holds came back one
    /// nanosecond later (its negation saturated at -i64::MAX).
    #[test]
    fn the_extreme_times_round_trip() {
        for n in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
            assert_eq!(to_nanos(from_nanos(n)), n);
        }
        let mut record = KeyRecord::new(
            KeyId::new_v7(),
            "svc".into(),
            "kw".into(),
            vec![],
            from_nanos(i64::MIN),
            Digest::plain(MasterKeyVersion(1), [1; 32]),
        );
        record.expires_at = Some(from_nanos(i64::MAX));
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        assert_eq!(
            to_nanos(SystemTime::UNIX_EPOCH - Duration::from_secs(u64::from(u32::MAX) * 1000)),
            i64::MIN,
            "earlier saturates"
        );
    }

    #[test]
    fn master_state_round_trips_and_reads_the_pre_rotation_form() {
        let digest = |n| Digest::plain(MasterKeyVersion(n), [n as u8; 32]);
        let mut state = MasterState::first(MasterKeyVersion(1), digest(1), SystemTime::now());
        assert_eq!(decode_master(&encode_master(&state)).unwrap(), state);
        state.versions[0].retired_at = Some(SystemTime::now());
        state.versions.push(MasterVersion {
            version: MasterKeyVersion(2),
            created_at: SystemTime::now(),
            retired_at: None,
            self_test: digest(2),
        });
        state.current = MasterKeyVersion(2);
        state.migration = Some(Migration {
            to: MasterKeyVersion(2),
            started_at: SystemTime::now(),
            after: Some(KeyId::new_v7()),
            wrapped: 7,
        });
        assert_eq!(decode_master(&encode_master(&state)).unwrap(), state);
        let legacy =
            wrap(&StoredMaster { current: 1, self_test: Some(encode_digest(&digest(1))), ..Default::default() });
        let read = decode_master(&legacy).unwrap();
        assert_eq!(
            (read.current, read.versions.len(), read.versions[0].self_test.clone()),
            (MasterKeyVersion(1), 1, digest(1))
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt_not_panics() {
        assert!(matches!(decode_key(&[]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_key(&[2, 0]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_key(&[1, 0xff, 0xff]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_master(&[1]), Err(StoreError::Corrupt(_))));
    }
}
