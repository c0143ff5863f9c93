//! Key records: everything `KeyRecord` holds (digest, state, validity, policies, quota, usage
//! counters, rotation links, owner) as a `StoredKey` message.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use prost::Message;

use super::{StoredDigest, corrupt, decode_digest, encode_digest, from_nanos, key_id, to_nanos, unwrap, wrap};
use crate::domain::{
    anomaly::{AnomalyAction, AnomalyKind, KeyAnomaly},
    key::{KeyRecord, KeyState, Quota, RateLimit, Refill, Usage},
    ports::StoreError,
    signing::{FIRST_WRAP_KEY, WrapKeyVersion, WrappedSecret},
};

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
    /// Absent in records written before anomaly detection (and for the default): alert.
    #[prost(uint32, optional, tag = "27")]
    anomaly_action: Option<u32>,
    /// Absent in records written before anomaly detection: none.
    #[prost(message, repeated, tag = "28")]
    anomalies: Vec<StoredAnomaly>,
    /// Absent for a bearer key, and in every record written before signing keys.
    #[prost(message, optional, tag = "29")]
    signing: Option<StoredWrappedSecret>,
}

/// A signing key's secret, wrapped by the HSM's wrapping key `version` (master key rotation
/// moves it to newer ones). Absent (0) reads as v1, the only version before that rotation.
#[derive(Clone, PartialEq, Message)]
struct StoredWrappedSecret {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    blob: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredAnomaly {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(int64, tag = "2")]
    at: i64,
    #[prost(string, tag = "3")]
    evidence: String,
}

fn anomaly_kind_number(kind: AnomalyKind) -> u32 {
    match kind {
        AnomalyKind::NewNetworks => 1,
        AnomalyKind::RateSpike => 2,
        AnomalyKind::FailureSpike => 3,
        AnomalyKind::IdleKeyUsed => 4,
    }
}

fn decode_anomaly(a: StoredAnomaly) -> Result<KeyAnomaly, StoreError> {
    let kind = match a.kind {
        1 => AnomalyKind::NewNetworks,
        2 => AnomalyKind::RateSpike,
        3 => AnomalyKind::FailureSpike,
        4 => AnomalyKind::IdleKeyUsed,
        _ => return Err(corrupt("key")),
    };
    Ok(KeyAnomaly { kind, at: from_nanos(a.at), evidence: a.evidence })
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
        // The default is written as nothing, as before the field existed.
        anomaly_action: match r.anomaly_action {
            AnomalyAction::Alert => None,
            AnomalyAction::Disable => Some(2),
        },
        anomalies: r
            .anomalies
            .iter()
            .map(|a| StoredAnomaly {
                kind: anomaly_kind_number(a.kind),
                at: to_nanos(a.at),
                evidence: a.evidence.clone(),
            })
            .collect(),
        signing: r.signing.as_ref().map(|w| StoredWrappedSecret { version: w.version.0, blob: w.blob.clone() }),
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
        anomaly_action: match s.anomaly_action {
            None | Some(1) => AnomalyAction::Alert,
            Some(2) => AnomalyAction::Disable,
            Some(_) => return Err(corrupt("key")),
        },
        anomalies: s.anomalies.into_iter().map(decode_anomaly).collect::<Result<_, _>>()?,
        signing: s
            .signing
            .map(|w| WrappedSecret { version: WrapKeyVersion(w.version.max(FIRST_WRAP_KEY.0)), blob: w.blob }),
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::key::{Digest, KeyId, MasterKeyVersion};

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
        record.anomaly_action = AnomalyAction::Disable;
        record.anomalies = AnomalyKind::ALL
            .iter()
            .enumerate()
            .map(|(n, kind)| KeyAnomaly {
                kind: *kind,
                at: SystemTime::UNIX_EPOCH + Duration::from_nanos(n as u64 * 1_000_000_007),
                evidence: format!("evidence {n}"),
            })
            .collect();
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        record.signing = Some(WrappedSecret { version: WrapKeyVersion(3), blob: vec![7; 40] });
        let decoded = decode_key(&encode_key(&record)).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.kind(), crate::domain::signing::KeyKind::Signing);
        // A wrapped secret without its version (never written so, but proto3 leaves 0 out) is v1.
        let mut stored = StoredKey::decode(&encode_key(&record)[1..]).unwrap();
        stored.signing.as_mut().unwrap().version = 0;
        let read = decode_key(&wrap(&stored)).unwrap().signing.unwrap();
        assert_eq!((read.version, read.blob), (FIRST_WRAP_KEY, vec![7; 40]));
    }

    /// A record written before signing keys (no field 29) decodes as a bearer key, and a bearer
    /// key is written as it was then.
    #[test]
    fn records_from_before_signing_keys_decode_as_bearer_keys() {
        let digest = Digest::plain(MasterKeyVersion(1), [3; 32]);
        let record = KeyRecord::new(KeyId::new_v7(), "old".into(), "kw".into(), vec![], SystemTime::now(), digest);
        let bytes = encode_key(&record);
        assert_eq!(StoredKey::decode(&bytes[1..]).unwrap().signing, None, "a bearer key adds no bytes");
        let decoded = decode_key(&bytes).unwrap();
        assert_eq!((decoded.kind(), decoded.signing), (crate::domain::signing::KeyKind::Bearer, None));
    }

    /// A record written before anomaly detection (no fields 27 and 28) decodes with the default
    /// policy and no anomalies; and a record with the defaults is written as it was then.
    #[test]
    fn records_from_before_anomaly_detection_decode_with_the_defaults() {
        let digest = Digest::plain(MasterKeyVersion(1), [3; 32]);
        let record = KeyRecord::new(KeyId::new_v7(), "old".into(), "kw".into(), vec![], SystemTime::now(), digest);
        let bytes = encode_key(&record);
        let mut old = StoredKey::decode(&bytes[1..]).unwrap();
        assert_eq!((old.anomaly_action, old.anomalies.len()), (None, 0), "defaults add no bytes");
        old.anomaly_action = None;
        let mut before = vec![1u8];
        old.encode(&mut before).unwrap();
        let decoded = decode_key(&before).unwrap();
        assert_eq!(decoded.anomaly_action, AnomalyAction::Alert);
        assert!(decoded.anomalies.is_empty());
        let mut unknown = old.clone();
        unknown.anomalies.push(StoredAnomaly { kind: 99, at: 0, evidence: String::new() });
        let mut bytes = vec![1u8];
        unknown.encode(&mut bytes).unwrap();
        assert!(decode_key(&bytes).is_err(), "an unknown kind is a corrupt record, not a silent default");
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
}
