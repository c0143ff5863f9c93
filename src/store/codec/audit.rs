//! Audit records: an event (`StoredEvent`) and, once sealed into the chain, the event's bytes
//! with their MAC under the `V2_SEALED` version byte.

use prost::Message;

use super::{corrupt, from_nanos, key_id, to_nanos, unwrap, wrap};
use crate::domain::{
    audit::{Actor, AuditAction, AuditEvent, FieldChange},
    ports::StoreError,
};

/// An audit record sealed into the chain: the event's V1 bytes and their MAC.
const V2_SEALED: u8 = 2;

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
    /// Cluster mode: the node that sealed the event (covered by its MAC).
    #[prost(string, optional, tag = "10")]
    node: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredSealed {
    /// The event as `encode_event` wrote it (version byte included): the bytes the MAC covers.
    #[prost(bytes = "vec", tag = "1")]
    event: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
}

pub fn encode_event(e: &AuditEvent) -> Vec<u8> {
    encode_event_by(e, None)
}

/// `encode_event`, naming the cluster node that seals the event.
pub fn encode_event_by(e: &AuditEvent, node: Option<&str>) -> Vec<u8> {
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
        node: node.map(str::to_owned),
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
    /// Cluster mode: the node that sealed it.
    pub node: Option<String>,
}

pub fn decode_audit(bytes: &[u8]) -> Result<AuditRecord, StoreError> {
    match bytes.first() {
        Some(&V2_SEALED) => {
            let sealed = StoredSealed::decode(&bytes[1..]).map_err(|_| corrupt("audit"))?;
            let mac = <[u8; 32]>::try_from(sealed.mac.as_slice()).map_err(|_| corrupt("audit"))?;
            let (event, node) = decode_event_by(&sealed.event)?;
            Ok(AuditRecord { event, event_bytes: sealed.event, mac: Some(mac), node })
        }
        _ => {
            let (event, node) = decode_event_by(bytes)?;
            Ok(AuditRecord { event, event_bytes: bytes.to_vec(), mac: None, node })
        }
    }
}

pub fn decode_event(bytes: &[u8]) -> Result<AuditEvent, StoreError> {
    decode_event_by(bytes).map(|(event, _)| event)
}

/// The event and the cluster node that sealed it, if it names one.
fn decode_event_by(bytes: &[u8]) -> Result<(AuditEvent, Option<String>), StoreError> {
    let s: StoredEvent = unwrap(bytes, "audit")?;
    let node = s.node.clone();
    let actor = match (s.actor_key, s.actor_system) {
        (Some(k), None) => Actor::Key(key_id(&k, "audit")?),
        (None, Some(name)) => Actor::System(name),
        _ => return Err(corrupt("audit")),
    };
    let event = AuditEvent {
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
    };
    Ok((event, node))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::key::KeyId;

    #[test]
    fn events_round_trip() {
        let event = AuditEvent {
            at: SystemTime::now(),
            actor: Actor::System("init".into()),
            action: AuditAction::KeyRevoked,
            target: Some(KeyId::new_v7()),
            client_addr: Some("127.0.0.1:1".into()),
            reason: None,
            changes: vec![FieldChange { field: "scopes".into(), before: "[a]".into(), after: "[a, b]".into() }],
            code: Some("UNAUTHENTICATED".into()),
        };
        assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
        let sealed = decode_audit(&encode_sealed(encode_event(&event), &[7; 32])).unwrap();
        assert_eq!((sealed.event, sealed.mac), (event.clone(), Some([7; 32])));
        let before_the_chain = decode_audit(&encode_event(&event)).unwrap();
        assert_eq!((before_the_chain.event, before_the_chain.mac), (event, None));
    }

    #[test]
    fn console_session_events_round_trip_with_their_action_names() {
        let admin = KeyId::new_v7();
        for (action, name) in
            [(AuditAction::ConsoleSignIn, "console.sign_in"), (AuditAction::ConsoleSignOut, "console.sign_out")]
        {
            let event = AuditEvent {
                at: SystemTime::now(),
                actor: Actor::Key(admin),
                action,
                target: Some(admin),
                client_addr: Some("192.0.2.7:41000".into()),
                reason: None,
                changes: Vec::new(),
                code: None,
            };
            assert_eq!(action.as_str(), name);
            assert_eq!(AuditAction::parse(name), Some(action));
            let bytes = encode_event(&event);
            assert_eq!(decode_event(&bytes).unwrap(), event);
            let sealed = decode_audit(&encode_sealed(bytes, &[9; 32])).unwrap();
            assert_eq!((sealed.event, sealed.mac), (event, Some([9; 32])));
        }
    }
}
