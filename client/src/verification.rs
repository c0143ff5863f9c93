//! The typed verdict of a verification ([`Verification`], [`VerifiedKey`], [`DenyReason`]),
//! what a caller asks for ([`VerifyOptions`]), and the mapping from keyward's wire answer.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::{Error, proto};

/// What a verification asks for besides the key.
///
/// ```
/// use keyward_client::VerifyOptions;
///
/// let options = VerifyOptions {
///     scopes: vec!["orders:read".into()],
///     client_ip: Some("203.0.113.7".parse().unwrap()),
///     ..Default::default()
/// };
/// assert_eq!(options.cost, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Every scope listed must be granted by the key (a key holding `orders:*` grants
    /// `orders:read`), else the verdict is [`DenyReason::InsufficientScope`].
    pub scopes: Vec<String>,
    /// The end client's address as your service saw it. Needed for keys with an IP allowlist
    /// (without it they are [`DenyReason::IpNotAllowed`]) and kept in keyward's usage log.
    pub client_ip: Option<IpAddr>,
    /// Uses this verification spends from a key with a quota (0 to 1 000 000; `None` means 1,
    /// 0 checks without spending).
    pub cost: Option<u32>,
}

/// keyward's verdict on a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The key is genuine, active, allowed from this address, holds every required scope and
    /// is within its rate limit and quota (one use, or `cost`, was spent).
    Valid(VerifiedKey),
    /// The key is refused.
    Denied {
        /// Why.
        reason: DenyReason,
        /// With [`DenyReason::RateLimited`]: how long until a call may pass again.
        retry_after: Option<Duration>,
    },
}

impl Verification {
    /// The verified key, when the verdict is [`Verification::Valid`].
    pub fn valid(self) -> Option<VerifiedKey> {
        match self {
            Verification::Valid(key) => Some(key),
            Verification::Denied { .. } => None,
        }
    }

    /// Whether the verdict is [`Verification::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Verification::Valid(_))
    }
}

/// Why keyward refused a key. keyward checks in this order and reports the first that fails:
/// the key itself (`Invalid`), then `Revoked`, `Disabled`, `NotYetValid`, `Expired`,
/// `IpNotAllowed`, `InsufficientScope`, `RateLimited`, `QuotaExceeded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Malformed, unknown, or a wrong secret; keyward tells nothing more.
    Invalid,
    /// Revoked for good.
    Revoked,
    /// Past its expiry, its rotation grace period, or its maximum age.
    Expired,
    /// Paused (it may be enabled again).
    Disabled,
    /// Its `not_before` time has not come yet.
    NotYetValid,
    /// It lacks a required scope.
    InsufficientScope,
    /// It has an IP allowlist and the client address is missing or outside it.
    IpNotAllowed,
    /// Over its rate limit (see `retry_after`).
    RateLimited,
    /// Its remaining uses are fewer than the request's cost.
    QuotaExceeded,
    /// A signed request whose nonce was already seen (VerifySignature).
    Replayed,
    /// A signed request whose `created` is too far from now, or past its `expires`.
    SignatureExpired,
    /// A signed request whose signature parameters are missing or malformed.
    BadSignatureParams,
}

impl DenyReason {
    /// Whether the key itself is not usable (invalid, revoked, expired, disabled, not yet
    /// valid): an HTTP service answers 401 for these, and tells the client nothing more.
    pub fn is_unusable_key(self) -> bool {
        matches!(
            self,
            DenyReason::Invalid
                | DenyReason::Revoked
                | DenyReason::Expired
                | DenyReason::Disabled
                | DenyReason::NotYetValid
        )
    }
}

/// A key keyward found valid, as handed to your code (by [`Client::verify`](crate::Client::verify),
/// or in the request extensions by [`VerifyKeyLayer`](crate::VerifyKeyLayer)).
///
/// It never holds the key string itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedKey {
    /// The key's id (a UUIDv7, lowercase hyphenated): stable, safe to log.
    pub id: String,
    /// The key's name.
    pub name: String,
    /// The scopes the key holds (not only the required ones).
    pub scopes: Vec<String>,
    /// The team that owns the key, if any.
    pub owner: Option<String>,
    /// The key's metadata.
    pub metadata: HashMap<String, String>,
    /// When the key expires, if it does.
    pub expires_at: Option<SystemTime>,
    /// Uses left after this verification, for a key with a quota.
    pub remaining: Option<u64>,
    /// The key was rotated and works only until `rotation_deadline`: tell its holder to switch.
    pub rotation_pending: bool,
    /// The key is near its maximum age: it should be rotated before `rotation_deadline`.
    pub rotation_due: bool,
    /// When the key stops verifying for its rotation or its age, if it will.
    pub rotation_deadline: Option<SystemTime>,
}

fn system_time(timestamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    timestamp.and_then(|t| SystemTime::try_from(t).ok())
}

impl TryFrom<proto::VerifyKeyResponse> for Verification {
    type Error = Error;

    fn try_from(response: proto::VerifyKeyResponse) -> Result<Self, Error> {
        use proto::VerifyCode;
        let code =
            VerifyCode::try_from(response.code).map_err(|_| Error::UnexpectedResponse("an unknown verify code"))?;
        let reason = match code {
            VerifyCode::Valid => {
                if !response.valid || response.key_id.is_empty() {
                    return Err(Error::UnexpectedResponse("a VALID answer without its key"));
                }
                return Ok(Verification::Valid(VerifiedKey {
                    id: response.key_id,
                    name: response.name,
                    scopes: response.scopes,
                    owner: Some(response.owner).filter(|o| !o.is_empty()),
                    metadata: response.metadata,
                    expires_at: system_time(response.expires_at),
                    remaining: response.remaining,
                    rotation_pending: response.rotation_pending,
                    rotation_due: response.rotation_due,
                    rotation_deadline: system_time(response.rotation_deadline),
                }));
            }
            VerifyCode::Unspecified => return Err(Error::UnexpectedResponse("no verify code")),
            VerifyCode::Invalid => DenyReason::Invalid,
            VerifyCode::Revoked => DenyReason::Revoked,
            VerifyCode::Expired => DenyReason::Expired,
            VerifyCode::Disabled => DenyReason::Disabled,
            VerifyCode::NotYetValid => DenyReason::NotYetValid,
            VerifyCode::InsufficientScope => DenyReason::InsufficientScope,
            VerifyCode::IpNotAllowed => DenyReason::IpNotAllowed,
            VerifyCode::RateLimited => DenyReason::RateLimited,
            VerifyCode::QuotaExceeded => DenyReason::QuotaExceeded,
            VerifyCode::Replayed => DenyReason::Replayed,
            VerifyCode::SignatureExpired => DenyReason::SignatureExpired,
            VerifyCode::BadSignatureParams => DenyReason::BadSignatureParams,
        };
        let retry_after = response.retry_after.and_then(|d| Duration::try_from(d).ok());
        Ok(Verification::Denied { reason, retry_after })
    }
}

#[cfg(test)]
#[path = "verification_tests.rs"]
mod tests;
