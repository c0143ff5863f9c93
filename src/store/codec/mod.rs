//! Encoding of stored records: one version byte, then a prost message. New fields get new tags;
//! a new version byte is for changes prost cannot absorb. By what is encoded: `key` (key
//! records), `audit` (events and sealed audit records), `master` (the master key state); here the
//! pieces they share (version byte, times, key ids, digests).

mod audit;
mod key;
mod master;

use std::time::{Duration, SystemTime};

use prost::Message;

pub use self::{
    audit::{AuditRecord, decode_audit, decode_event, encode_event, encode_event_by, encode_sealed},
    key::{decode_key, encode_key},
    master::{decode_master, encode_master},
};
use crate::domain::{
    key::{DIGEST_LEN, Digest, KeyId, MasterKeyVersion},
    ports::StoreError,
};

const V1: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct StoredDigest {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    mac: Vec<u8>,
    #[prost(uint32, repeated, tag = "3")]
    wrapped: Vec<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_and_garbage_are_corrupt_not_panics() {
        assert!(matches!(decode_key(&[]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_key(&[2, 0]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_key(&[1, 0xff, 0xff]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_master(&[1]), Err(StoreError::Corrupt(_))));
    }
}
