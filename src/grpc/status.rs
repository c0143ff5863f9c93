//! The one mapping from domain errors to gRPC statuses.

use tonic::{Code, Status};

use crate::domain::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::ResourceExhausted(_) | Error::Blocked(_) => Code::ResourceExhausted,
        };
        if code == Code::Unavailable {
            tracing::warn!(error = %e, "request could not be served");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid("expires_at", "must be in the future"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid expires_at: must be in the future");
    }

    #[test]
    fn a_blocked_source_is_resource_exhausted_with_the_wait_in_whole_seconds() {
        let status = Status::from(Error::Blocked(std::time::Duration::from_millis(3_200)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "too many failed attempts from this source: retry after 4s");
    }
}
