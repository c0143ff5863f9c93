//! Verification rules that depend only on a genuine key's record and the request: state,
//! validity window, IP allowlist and scopes. Only called after the HSM has confirmed the secret.
//! Rate limits and quotas, which hold state, come after these (`ratelimit`, `quota`).

use std::{net::IpAddr, time::SystemTime};

use ipnet::IpNet;

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
    Disabled,
    NotYetValid,
    Expired,
    IpNotAllowed,
    InsufficientScope,
    RateLimited,
    QuotaExceeded,
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

/// Checks, in order: revoked → disabled → not yet valid → expired → IP allowlist → scopes.
/// `Valid` here means the stateful checks (rate limit, quota) come next.
pub fn evaluate(
    record: &KeyRecord,
    now: SystemTime,
    client_ip: Option<IpAddr>,
    required_scopes: &[String],
) -> VerifyCode {
    match record.state {
        KeyState::Revoked => return VerifyCode::Revoked,
        KeyState::Disabled => return VerifyCode::Disabled,
        KeyState::Active => {}
    }
    if record.not_before.is_some_and(|at| now < at) {
        return VerifyCode::NotYetValid;
    }
    if record.expires_at.is_some_and(|at| now >= at) {
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
        let digest = Digest { version: MasterKeyVersion(1), mac: [0; 32] };
        let scopes = vec!["orders:*".into(), "billing:read".into()];
        KeyRecord::new(KeyId::new_v7(), "svc".into(), "kw".into(), scopes, SystemTime::UNIX_EPOCH, digest)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let need = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut r = record();
        assert_eq!(evaluate(&r, now, None, &need(&["orders:read", "billing:read"])), VerifyCode::Valid);
        assert_eq!(evaluate(&r, now, None, &need(&["billing:write"])), VerifyCode::InsufficientScope);
        r.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(evaluate(&r, now, ip("192.0.2.1"), &need(&["billing:write"])), VerifyCode::IpNotAllowed);
        assert_eq!(evaluate(&r, now, ip("10.1.2.3"), &need(&["billing:write"])), VerifyCode::InsufficientScope);
        r.expires_at = Some(now);
        assert_eq!(evaluate(&r, now, ip("192.0.2.1"), &[]), VerifyCode::Expired);
        assert_eq!(evaluate(&r, now - Duration::from_secs(1), ip("10.0.0.1"), &[]), VerifyCode::Valid);
        r.not_before = Some(now + Duration::from_secs(1));
        assert_eq!(evaluate(&r, now, ip("192.0.2.1"), &[]), VerifyCode::NotYetValid);
        r.state = KeyState::Disabled;
        assert_eq!(evaluate(&r, now, None, &[]), VerifyCode::Disabled);
        r.state = KeyState::Revoked;
        assert_eq!(evaluate(&r, now, None, &[]), VerifyCode::Revoked);
    }

    #[test]
    fn not_before_is_inclusive_and_expiry_exclusive() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(50);
        let mut r = record();
        r.not_before = Some(at);
        r.expires_at = Some(at + Duration::from_secs(10));
        assert_eq!(evaluate(&r, at - Duration::from_nanos(1), None, &[]), VerifyCode::NotYetValid);
        assert_eq!(evaluate(&r, at, None, &[]), VerifyCode::Valid);
        assert_eq!(evaluate(&r, at + Duration::from_secs(10), None, &[]), VerifyCode::Expired);
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
