//! The master key state in `meta`: the current version, every version with its creation,
//! retirement and self-test digest, the re-digest under way, and the signing-secret wrapping
//! key versions.

use std::time::SystemTime;

use prost::Message;

use super::{StoredDigest, corrupt, decode_digest, encode_digest, from_nanos, key_id, to_nanos, unwrap, wrap};
use crate::domain::{
    key::MasterKeyVersion,
    ports::{MasterState, MasterVersion, Migration, StoreError, WrapKey},
    signing::{FIRST_WRAP_KEY, WrapKeyVersion},
};

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
    /// Empty in databases from before wrapping key rotation: only v1, made at init (or by
    /// `serve` on an older token), live.
    #[prost(message, repeated, tag = "5")]
    wrap_keys: Vec<StoredWrapKey>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredWrapKey {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(int64, tag = "2")]
    created_at: i64,
    #[prost(int64, optional, tag = "3")]
    retired_at: Option<i64>,
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
    /// Absent (0) in migrations recorded before wrapping key rotation.
    #[prost(uint64, tag = "5")]
    rewrapped: u64,
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
            rewrapped: g.rewrapped,
        }),
        wrap_keys: m
            .wrap_keys
            .iter()
            .map(|w| StoredWrapKey {
                version: w.version.0,
                created_at: to_nanos(w.created_at),
                retired_at: w.retired_at.map(to_nanos),
            })
            .collect(),
    })
}

/// What a database from before wrapping key rotation has: wrapping key v1, live.
fn first_wrap_key() -> Vec<WrapKey> {
    vec![WrapKey { version: FIRST_WRAP_KEY, created_at: SystemTime::UNIX_EPOCH, retired_at: None }]
}

pub fn decode_master(bytes: &[u8]) -> Result<MasterState, StoreError> {
    let s: StoredMaster = unwrap(bytes, "master")?;
    let current = MasterKeyVersion(s.current);
    if s.versions.is_empty() {
        // Written before master key rotation: one version, made at init.
        // (`first` also gives wrapping key v1, live.)
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
                rewrapped: g.rewrapped,
            })
        })
        .transpose()?;
    if !versions.iter().any(|v| v.version == current) {
        return Err(corrupt("master"));
    }
    let mut wrap_keys: Vec<WrapKey> = s
        .wrap_keys
        .into_iter()
        .map(|w| WrapKey {
            version: WrapKeyVersion(w.version),
            created_at: from_nanos(w.created_at),
            retired_at: w.retired_at.map(from_nanos),
        })
        .collect();
    if wrap_keys.is_empty() {
        wrap_keys = first_wrap_key();
    }
    Ok(MasterState { current, versions, migration, wrap_keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::{Digest, KeyId};

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
            rewrapped: 3,
        });
        state.wrap_keys[0].retired_at = Some(SystemTime::now());
        state.wrap_keys.push(WrapKey { version: WrapKeyVersion(2), created_at: SystemTime::now(), retired_at: None });
        assert_eq!(decode_master(&encode_master(&state)).unwrap(), state);
        assert_eq!(state.wrap_current(), WrapKeyVersion(2));

        // Written before wrapping key rotation: wrapping key v1 live, the migration's re-wraps 0.
        let mut old: StoredMaster = unwrap(&encode_master(&state), "master").unwrap();
        old.wrap_keys.clear();
        if let Some(m) = old.migration.as_mut() {
            m.rewrapped = 0;
        }
        let read = decode_master(&wrap(&old)).unwrap();
        assert_eq!(read.wrap_keys, first_wrap_key());
        assert_eq!((read.wrap_current(), read.migration.unwrap().rewrapped), (FIRST_WRAP_KEY, 0));
        let legacy =
            wrap(&StoredMaster { current: 1, self_test: Some(encode_digest(&digest(1))), ..Default::default() });
        let read = decode_master(&legacy).unwrap();
        assert_eq!(
            (read.current, read.versions.len(), read.versions[0].self_test.clone()),
            (MasterKeyVersion(1), 1, digest(1))
        );
        assert_eq!(read.wrap_keys, first_wrap_key());
    }
}
