//! Why a gateway refuses a request, as the end client sees it: the HTTP status, the stable error
//! code of the small JSON body, and when to retry. Every adapter (Envoy ext_authz, HTTP
//! forward-auth) answers with these.

use std::time::Duration;

use crate::domain::policy::VerifyCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No key header was present.
    MissingKey,
    /// The key is unknown, revoked, disabled, expired or not yet valid: all look the same.
    InvalidKey,
    InsufficientScope,
    IpNotAllowed,
    RateLimited(Option<Duration>),
    QuotaExceeded(Option<Duration>),
    /// The client's address failed too often (brute-force defence) and is blocked for a while.
    TooManyFailures(Duration),
    /// A signed request's covered `Content-Digest` does not match the body the gateway sent.
    ContentDigestMismatch,
    /// A signed request covers `Content-Digest`, but the gateway sent only part of its body, or
    /// none of it.
    BodyIncomplete,
}

impl Denial {
    /// The denial of a verification's `code`; `None` for a valid key.
    pub fn of(code: VerifyCode, retry_after: Option<Duration>) -> Option<Self> {
        Some(match code {
            VerifyCode::Valid => return None,
            VerifyCode::Invalid
            | VerifyCode::Revoked
            | VerifyCode::Disabled
            | VerifyCode::NotYetValid
            | VerifyCode::Expired
            | VerifyCode::Replayed
            | VerifyCode::SignatureExpired
            | VerifyCode::BadSignatureParams => Denial::InvalidKey,
            VerifyCode::InsufficientScope => Denial::InsufficientScope,
            VerifyCode::IpNotAllowed => Denial::IpNotAllowed,
            VerifyCode::RateLimited => Denial::RateLimited(retry_after),
            VerifyCode::QuotaExceeded => Denial::QuotaExceeded(retry_after),
        })
    }

    /// 401, 403 or 429.
    pub fn http_status(self) -> u16 {
        match self {
            Denial::MissingKey | Denial::InvalidKey | Denial::ContentDigestMismatch | Denial::BodyIncomplete => 401,
            Denial::InsufficientScope | Denial::IpNotAllowed => 403,
            Denial::RateLimited(_) | Denial::QuotaExceeded(_) | Denial::TooManyFailures(_) => 429,
        }
    }

    /// The stable error code of the body.
    pub fn error_code(self) -> &'static str {
        match self {
            Denial::MissingKey => "missing_key",
            Denial::InvalidKey => "invalid_key",
            Denial::InsufficientScope => "insufficient_scope",
            Denial::IpNotAllowed => "ip_not_allowed",
            Denial::RateLimited(_) => "rate_limited",
            Denial::QuotaExceeded(_) => "quota_exceeded",
            Denial::TooManyFailures(_) => "too_many_failures",
            Denial::ContentDigestMismatch => "content_digest_mismatch",
            Denial::BodyIncomplete => "body_incomplete",
        }
    }

    /// The body: `{"error":"<code>"}`.
    pub fn body(self) -> String {
        format!("{{\"error\":\"{}\"}}", self.error_code())
    }

    /// `WWW-Authenticate: Bearer` goes with a 401.
    pub fn challenges(self) -> bool {
        self.http_status() == 401
    }

    /// The `Retry-After` value: whole seconds, rounded up (never 0 for a wait not over).
    pub fn retry_after_secs(self) -> Option<u64> {
        match self {
            Denial::RateLimited(Some(wait)) | Denial::QuotaExceeded(Some(wait)) | Denial::TooManyFailures(wait) => {
                Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            _ => None,
        }
    }
}
