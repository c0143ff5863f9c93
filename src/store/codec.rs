//! Encoding of stored records: one version byte, then a prost message. New fields get new tags;
//! a new version byte is for changes prost cannot absorb.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use prost::Message;

use crate::domain::{
    audit::{Actor, AuditAction, AuditEvent},
    key::{DIGEST_LEN, Digest, KeyId, KeyRecord, KeyState, MasterKeyVersion},
    ports::{MasterState, StoreError},
};

const V1: u8 = 1;

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
}

#[derive(Clone, PartialEq, Message)]
struct StoredDigest {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
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
}

#[derive(Clone, PartialEq, Message)]
struct StoredMaster {
    #[prost(uint32, tag = "1")]
    current: u32,
    #[prost(message, optional, tag = "2")]
    self_test: Option<StoredDigest>,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("undecodable {what} record"))
}

/// Nanoseconds since the Unix epoch (i64 reaches the year 2262).
fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
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
    StoredDigest { version: d.version.0, mac: d.mac.to_vec() }
}

fn decode_digest(d: Option<StoredDigest>, what: &str) -> Result<Digest, StoreError> {
    let d = d.ok_or_else(|| corrupt(what))?;
    let mac = <[u8; DIGEST_LEN]>::try_from(d.mac.as_slice()).map_err(|_| corrupt(what))?;
    Ok(Digest { version: MasterKeyVersion(d.version), mac })
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
        },
        created_at: to_nanos(r.created_at),
        expires_at: r.expires_at.map(to_nanos),
        revoked_at: r.revoked_at.map(to_nanos),
        revoke_reason: r.revoke_reason.clone(),
        metadata: r.metadata.clone(),
        created_by: r.created_by.map(|id| id.as_bytes().to_vec()),
        digest: Some(encode_digest(&r.digest)),
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
            _ => return Err(corrupt("key")),
        },
        created_at: from_nanos(s.created_at),
        expires_at: s.expires_at.map(from_nanos),
        revoked_at: s.revoked_at.map(from_nanos),
        revoke_reason: s.revoke_reason,
        metadata: s.metadata,
        created_by: s.created_by.map(|b| key_id(&b, "key")).transpose()?,
        digest: decode_digest(s.digest, "key")?,
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
    })
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
    })
}

pub fn encode_master(m: &MasterState) -> Vec<u8> {
    wrap(&StoredMaster { current: m.current.0, self_test: Some(encode_digest(&m.self_test)) })
}

pub fn decode_master(bytes: &[u8]) -> Result<MasterState, StoreError> {
    let s: StoredMaster = unwrap(bytes, "master")?;
    Ok(MasterState { current: MasterKeyVersion(s.current), self_test: decode_digest(s.self_test, "master")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_nanosecond_times() {
        let record = KeyRecord {
            id: KeyId::new_v7(),
            name: "svc".into(),
            prefix: "kw".into(),
            scopes: vec!["a:*".into()],
            state: KeyState::Revoked,
            created_at: SystemTime::now(),
            expires_at: Some(SystemTime::now() + Duration::from_nanos(123_456_789)),
            revoked_at: Some(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
            revoke_reason: Some("leaked".into()),
            metadata: [("team".to_string(), "a".to_string())].into(),
            created_by: Some(KeyId::new_v7()),
            digest: Digest { version: MasterKeyVersion(2), mac: [9; 32] },
        };
        assert_eq!(decode_key(&encode_key(&record)).unwrap(), record);
        let event = AuditEvent {
            at: SystemTime::now(),
            actor: Actor::System("init".into()),
            action: AuditAction::KeyRevoked,
            target: Some(record.id),
            client_addr: Some("127.0.0.1:1".into()),
            reason: None,
        };
        assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt_not_panics() {
        assert!(matches!(decode_key(&[]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_key(&[2, 0]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_key(&[1, 0xff, 0xff]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_master(&[1]), Err(StoreError::Corrupt(_))));
    }
}
