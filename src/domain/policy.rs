//! Verification rules that depend only on a genuine key's record and the request: state,
//! validity window, IP allowlist and scopes. Only called after the HSM has confirmed the secret.
//! Rate limits and quotas, which hold state, come after these (`ratelimit`, `quota`).

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use super::{
    key::{KeyRecord, KeyState},
    scope,
};

/// The outcome of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VerifyCode {
    Valid,
    /// Malformed, unknown or wrong secret: nothing more is told.
    Invalid,
    Revoked,
    Disabled,
    NotYetValid,
    Expired,
    IpNotAllowed,
    InsufficientScope,
    RateLimited,
    QuotaExceeded,
    /// VerifySignature: the nonce was already seen for this key inside its window.
    Replayed,
    /// VerifySignature: `created` too far from now, or `expires` passed.
    SignatureExpired,
    /// VerifySignature: the signature parameters are missing, malformed or not allowed.
    BadSignatureParams,
}

impl VerifyCode {
    pub const ALL: [VerifyCode; 13] = [
        VerifyCode::Valid,
        VerifyCode::Invalid,
        VerifyCode::Revoked,
        VerifyCode::Disabled,
        VerifyCode::NotYetValid,
        VerifyCode::Expired,
        VerifyCode::IpNotAllowed,
        VerifyCode::InsufficientScope,
        VerifyCode::RateLimited,
        VerifyCode::QuotaExceeded,
        VerifyCode::Replayed,
        VerifyCode::SignatureExpired,
        VerifyCode::BadSignatureParams,
    ];

    /// The code's name on the wire without its prefix (`VALID`, `RATE_LIMITED`): the label of
    /// the verification metrics.
    pub fn name(self) -> &'static str {
        match self {
            VerifyCode::Valid => "VALID",
            VerifyCode::Invalid => "INVALID",
            VerifyCode::Revoked => "REVOKED",
            VerifyCode::Disabled => "DISABLED",
            VerifyCode::NotYetValid => "NOT_YET_VALID",
            VerifyCode::Expired => "EXPIRED",
            VerifyCode::IpNotAllowed => "IP_NOT_ALLOWED",
            VerifyCode::InsufficientScope => "INSUFFICIENT_SCOPE",
            VerifyCode::RateLimited => "RATE_LIMITED",
            VerifyCode::QuotaExceeded => "QUOTA_EXCEEDED",
            VerifyCode::Replayed => "REPLAYED",
            VerifyCode::SignatureExpired => "SIGNATURE_EXPIRED",
            VerifyCode::BadSignatureParams => "BAD_SIGNATURE_PARAMS",
        }
    }
}

/// The rotation policy's installation-wide settings; each key carries its own `max_age`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationRules {
    /// A key verifies with `rotation_due` from this long before it reaches its `max_age`.
    pub warning: Duration,
    /// A key stops verifying (`Expired`) this long after it reaches its `max_age`.
    pub grace: Duration,
}

impl Default for RotationRules {
    fn default() -> Self {
        Self { warning: Duration::from_secs(14 * 86_400), grace: Duration::from_secs(7 * 86_400) }
    }
}

impl RotationRules {
    /// When the key stops verifying because it was not rotated in time.
    pub fn max_age_deadline(&self, r: &KeyRecord) -> Option<SystemTime> {
        r.rotate_by().map(|at| at + self.grace)
    }

    /// The earliest time the key stops verifying for its age or a rotation: its effective
    /// expiry besides `expires_at`.
    pub fn deadline(&self, r: &KeyRecord) -> Option<SystemTime> {
        let rotated = if r.state == KeyState::Rotated { r.rotation_deadline } else { None };
        match (rotated, self.max_age_deadline(r)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a valid verification tells the caller about rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotationNotice {
    /// The key was rotated: it verifies only until its `rotation_deadline`.
    pub pending: bool,
    /// The key is within `warning` of its `max_age` (or past it, in the grace).
    pub due: bool,
    /// When the key stops verifying for its rotation or its age, if it will.
    pub deadline: Option<SystemTime>,
}

pub fn rotation_notice(r: &KeyRecord, now: SystemTime, rules: &RotationRules) -> RotationNotice {
    RotationNotice {
        pending: r.state == KeyState::Rotated,
        due: r.rotate_by().is_some_and(|at| now + rules.warning >= at),
        deadline: rules.deadline(r),
    }
}

/// Whether `ip` is inside one of `allowed`; an empty list allows any address, even none.
/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) match IPv4 networks.
pub fn ip_allowed(allowed: &[IpNet], ip: Option<IpAddr>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    let ip = ip.to_canonical();
    allowed.iter().any(|net| net.contains(&ip))
}

/// Checks, in order: revoked → disabled → not yet valid → expired (`expires_at`, the end of a
/// rotated key's overlap, `max_age` plus grace) → IP allowlist → scopes. `Valid` here means the
/// stateful checks (rate limit, quota) come next.
pub fn evaluate(
    record: &KeyRecord,
    now: SystemTime,
    client_ip: Option<IpAddr>,
    required_scopes: &[String],
    rules: &RotationRules,
) -> VerifyCode {
    match record.state {
        KeyState::Revoked => return VerifyCode::Revoked,
        KeyState::Disabled => return VerifyCode::Disabled,
        KeyState::Active | KeyState::Rotated => {}
    }
    if record.not_before.is_some_and(|at| now < at) {
        return VerifyCode::NotYetValid;
    }
    if record.expires_at.is_some_and(|at| now >= at) || rules.deadline(record).is_some_and(|at| now >= at) {
        return VerifyCode::Expired;
    }
    if !ip_allowed(&record.allowed_cidrs, client_ip) {
        return VerifyCode::IpNotAllowed;
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
        let digest = Digest::plain(MasterKeyVersion(1), [0; 32]);
        let scopes = vec!["orders:*".into(), "billing:read".into()];
        KeyRecord::new(KeyId::new_v7(), "svc".into(), "kw".into(), scopes, SystemTime::UNIX_EPOCH, digest)
    }

    const RULES: RotationRules = RotationRules { warning: Duration::from_secs(10), grace: Duration::from_secs(5) };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let need = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut r = record();
        assert_eq!(evaluate(&r, now, None, &need(&["orders:read", "billing:read"]), &RULES), VerifyCode::Valid);
        assert_eq!(evaluate(&r, now, None, &need(&["billing:write"]), &RULES), VerifyCode::InsufficientScope);
        r.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(evaluate(&r, now, ip("192.0.2.1"), &need(&["billing:write"]), &RULES), VerifyCode::IpNotAllowed);
        assert_eq!(evaluate(&r, now, ip("10.1.2.3"), &need(&["billing:write"]), &RULES), VerifyCode::InsufficientScope);
        r.expires_at = Some(now);
        assert_eq!(evaluate(&r, now, ip("192.0.2.1"), &[], &RULES), VerifyCode::Expired);
        assert_eq!(evaluate(&r, now - Duration::from_secs(1), ip("10.0.0.1"), &[], &RULES), VerifyCode::Valid);
        r.not_before = Some(now + Duration::from_secs(1));
        assert_eq!(evaluate(&r, now, ip("192.0.2.1"), &[], &RULES), VerifyCode::NotYetValid);
        r.state = KeyState::Disabled;
        assert_eq!(evaluate(&r, now, None, &[], &RULES), VerifyCode::Disabled);
        r.state = KeyState::Revoked;
        assert_eq!(evaluate(&r, now, None, &[], &RULES), VerifyCode::Revoked);
    }

    #[test]
    fn not_before_is_inclusive_and_expiry_exclusive() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(50);
        let mut r = record();
        r.not_before = Some(at);
        r.expires_at = Some(at + Duration::from_secs(10));
        assert_eq!(evaluate(&r, at - Duration::from_nanos(1), None, &[], &RULES), VerifyCode::NotYetValid);
        assert_eq!(evaluate(&r, at, None, &[], &RULES), VerifyCode::Valid);
        assert_eq!(evaluate(&r, at + Duration::from_secs(10), None, &[], &RULES), VerifyCode::Expired);
    }

    #[test]
    fn a_rotated_key_verifies_until_its_deadline_exclusive() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mut r = record();
        r.state = KeyState::Rotated;
        r.rotation_deadline = Some(at);
        assert_eq!(evaluate(&r, at - Duration::from_nanos(1), None, &[], &RULES), VerifyCode::Valid);
        assert!(rotation_notice(&r, at, &RULES).pending);
        assert_eq!(evaluate(&r, at, None, &[], &RULES), VerifyCode::Expired);
        r.state = KeyState::Active;
        assert_eq!(evaluate(&r, at, None, &[], &RULES), VerifyCode::Valid, "only a rotated key has an overlap");
    }

    #[test]
    fn max_age_warns_then_expires_after_the_grace() {
        let mut r = record();
        r.max_age = Some(Duration::from_secs(100));
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(!rotation_notice(&r, t(89), &RULES).due);
        assert!(rotation_notice(&r, t(90), &RULES).due, "warning is 10 s before max_age");
        assert_eq!(evaluate(&r, t(104), None, &[], &RULES), VerifyCode::Valid, "within the 5 s grace");
        assert_eq!(evaluate(&r, t(105), None, &[], &RULES), VerifyCode::Expired);
        r.max_age = None;
        assert_eq!(evaluate(&r, t(10_000), None, &[], &RULES), VerifyCode::Valid);
        assert!(!rotation_notice(&r, t(10_000), &RULES).due);
    }

    #[test]
    fn allowlists_match_v4_v6_and_mapped_addresses() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(ip_allowed(&nets, ip("10.255.0.1")));
        assert!(ip_allowed(&nets, ip("::ffff:10.0.0.1")));
        assert!(ip_allowed(&nets, ip("2001:db8:1::5")));
        assert!(!ip_allowed(&nets, ip("2001:db9::1")));
        assert!(!ip_allowed(&nets, ip("11.0.0.1")));
        assert!(!ip_allowed(&nets, None), "a key with an allowlist needs a client_ip");
        assert!(ip_allowed(&[], None));
    }
}
