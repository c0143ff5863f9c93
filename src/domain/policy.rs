//! Verification rules: what a genuine key's record and a request's needs say about the key.
//! Only called after the HSM has confirmed the secret.

use std::time::SystemTime;

use super::{
    key::{KeyRecord, KeyState},
    scope,
};

/// The outcome of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyCode {
    Valid,
    /// Malformed, unknown or wrong secret: nothing more is told.
    Invalid,
    Revoked,
    Expired,
    InsufficientScope,
}

/// Checks, in order: revoked → expired → scopes.
pub fn evaluate(record: &KeyRecord, now: SystemTime, required_scopes: &[String]) -> VerifyCode {
    if record.state == KeyState::Revoked {
        return VerifyCode::Revoked;
    }
    if record.expires_at.is_some_and(|at| now >= at) {
        return VerifyCode::Expired;
    }
    if !required_scopes.iter().all(|req| scope::any_grants(&record.scopes, req)) {
        return VerifyCode::InsufficientScope;
    }
    VerifyCode::Valid
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::key::{Digest, KeyId, MasterKeyVersion};

    fn record() -> KeyRecord {
        KeyRecord {
            id: KeyId::new_v7(),
            name: "svc".into(),
            prefix: "kw".into(),
            scopes: vec!["orders:*".into(), "billing:read".into()],
            state: KeyState::Active,
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            revoked_at: None,
            revoke_reason: None,
            metadata: Default::default(),
            created_by: None,
            digest: Digest { version: MasterKeyVersion(1), mac: [0; 32] },
        }
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut r = record();
        let need = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(evaluate(&r, now, &need(&["orders:read", "billing:read"])), VerifyCode::Valid);
        assert_eq!(evaluate(&r, now, &need(&["billing:write"])), VerifyCode::InsufficientScope);
        r.expires_at = Some(now);
        assert_eq!(evaluate(&r, now, &need(&["billing:write"])), VerifyCode::Expired);
        assert_eq!(evaluate(&r, now - Duration::from_secs(1), &[]), VerifyCode::Valid);
        r.state = KeyState::Revoked;
        assert_eq!(evaluate(&r, now, &[]), VerifyCode::Revoked);
    }
}
