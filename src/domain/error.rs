//! The domain's error: what went wrong, in terms a caller can act on. Never holds a secret.

use std::borrow::Cow;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed; `field` names the offending request field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: Cow<'static, str> },
    /// The caller presented no credential, or one that does not verify.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller is known but lacks the permission.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (HSM, store) cannot serve right now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Too many failed verifications or authentications from this source (brute-force
    /// defence); answered before any HSM operation. A `RESOURCE_EXHAUSTED` status.
    #[error("too many failed attempts from this source: retry after {}s", whole_secs(.0))]
    Blocked(std::time::Duration),
}

/// A wait in whole seconds, rounded up (never 0 for a wait that is not over).
fn whole_secs(d: &std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
