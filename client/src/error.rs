//! [`Error`]: why a call to keyward did not produce a verdict.

use std::path::PathBuf;

/// A call to keyward that did not produce a verdict: the client could not be set up, keyward
/// could not be reached, or it refused the request itself (not the key: a refused key is a
/// [`Verification::Denied`](crate::Verification::Denied), not an error).
///
/// No variant ever holds a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint is not a valid URI, or a TLS setting was refused.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A certificate or private key file could not be read.
    #[error("reading the {what} from {}: {source}", path.display())]
    ReadFile {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The key cannot be sent in an HTTP header (it holds characters outside visible ASCII).
    #[error("the key cannot be sent: it holds characters outside visible ASCII")]
    UnsendableKey,
    /// Connecting to keyward failed (only when the client connects eagerly).
    #[error("connecting to keyward: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// keyward answered the call with a gRPC error (or the transport produced one): keyward is
    /// unreachable or overloaded (`UNAVAILABLE`, `DEADLINE_EXCEEDED`), the caller's own key is
    /// not accepted (`UNAUTHENTICATED`, `PERMISSION_DENIED`), or the request was malformed
    /// (`INVALID_ARGUMENT`).
    #[error("keyward answered {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// keyward's answer could not be understood (a newer server with an unknown code, say).
    #[error("keyward's answer could not be read: {0}")]
    UnexpectedResponse(&'static str),
}

impl Error {
    /// The gRPC status keyward (or the transport) answered, if that is what happened.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// Whether keyward could not be reached or did not answer in time: a caller that fails
    /// closed answers 503 (or `UNAVAILABLE`) for these.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Connect(_) => true,
            Error::Status(status) => {
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                )
            }
            _ => false,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}
