//! Wire types ⇄ domain types, in one place.

use std::time::SystemTime;

use prost_types::Timestamp;

use crate::{
    domain::{
        error::{Error, Result},
        key::{KeyRecord, KeyState},
        policy::VerifyCode,
        service::{NewKey, Verification},
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

pub fn new_key(req: proto::CreateKeyRequest) -> Result<NewKey> {
    Ok(NewKey {
        expires_at: time("expires_at", req.expires_at)?,
        name: req.name,
        prefix: req.prefix,
        scopes: req.scopes,
        metadata: req.metadata.into_iter().collect(),
    })
}

fn key_state(state: KeyState) -> proto::KeyState {
    match state {
        KeyState::Active => proto::KeyState::Active,
        KeyState::Revoked => proto::KeyState::Revoked,
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
    }
}

fn verify_code(code: VerifyCode) -> proto::VerifyCode {
    match code {
        VerifyCode::Valid => proto::VerifyCode::Valid,
        VerifyCode::Invalid => proto::VerifyCode::Invalid,
        VerifyCode::Revoked => proto::VerifyCode::Revoked,
        VerifyCode::Expired => proto::VerifyCode::Expired,
        VerifyCode::InsufficientScope => proto::VerifyCode::InsufficientScope,
    }
}

pub fn verification(v: Verification) -> proto::VerifyKeyResponse {
    let mut response = proto::VerifyKeyResponse {
        valid: v.code == VerifyCode::Valid,
        code: verify_code(v.code) as i32,
        ..Default::default()
    };
    if let Some(r) = v.record {
        response.key_id = r.id.to_string();
        response.name = r.name;
        response.scopes = r.scopes;
        response.metadata = r.metadata.into_iter().collect();
        response.expires_at = r.expires_at.map(timestamp);
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
        for code in [VerifyCode::Invalid, VerifyCode::Revoked, VerifyCode::Expired, VerifyCode::InsufficientScope] {
            assert!(!verification(Verification { code, record: None }).valid);
        }
        assert!(verification(Verification { code: VerifyCode::Valid, record: None }).valid);
    }
}
