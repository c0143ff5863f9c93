//! [`Refusal`]: why the layer answers a request itself, and that answer in HTTP (status, JSON
//! body, `www-authenticate`, `retry-after`) or gRPC (a trailers-only response).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::{DenyReason, Error};

/// Why a request does not reach the service. Each has a stable error code, the same as
/// keyward's gateway integrations use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    MissingKey,
    /// Invalid, revoked, expired, disabled or not yet valid: all look the same to the client.
    InvalidKey,
    InsufficientScope,
    IpNotAllowed,
    RateLimited(Option<Duration>),
    QuotaExceeded(Option<Duration>),
    /// keyward gave no verdict: the request is refused (fail closed).
    Unavailable,
}

impl Refusal {
    pub(crate) fn of(reason: DenyReason, retry_after: Option<Duration>) -> Self {
        match reason {
            DenyReason::Invalid
            | DenyReason::Revoked
            | DenyReason::Expired
            | DenyReason::Disabled
            | DenyReason::NotYetValid
            | DenyReason::Replayed
            | DenyReason::SignatureExpired
            | DenyReason::BadSignatureParams => Refusal::InvalidKey,
            DenyReason::InsufficientScope => Refusal::InsufficientScope,
            DenyReason::IpNotAllowed => Refusal::IpNotAllowed,
            DenyReason::RateLimited => Refusal::RateLimited(retry_after),
            DenyReason::QuotaExceeded => Refusal::QuotaExceeded(retry_after),
        }
    }

    /// A call to keyward that gave no verdict. keyward answers `INVALID_ARGUMENT` for a
    /// presented key it will not even parse (an oversized one, say) and `RESOURCE_EXHAUSTED`
    /// when it blocks a source after too many failures; anything else means no verdict, and
    /// the request is refused as unavailable.
    pub(crate) fn of_error(error: &Error) -> Self {
        match error.status().map(tonic::Status::code) {
            Some(tonic::Code::InvalidArgument) => Refusal::InvalidKey,
            Some(tonic::Code::ResourceExhausted) => Refusal::RateLimited(None),
            _ => Refusal::Unavailable,
        }
    }

    /// The stable error code of the JSON body (and the gRPC message).
    pub(crate) fn error_code(self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing_key",
            Refusal::InvalidKey => "invalid_key",
            Refusal::InsufficientScope => "insufficient_scope",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::QuotaExceeded(_) => "quota_exceeded",
            Refusal::Unavailable => "keyward_unavailable",
        }
    }

    pub(crate) fn http_status(self) -> StatusCode {
        match self {
            Refusal::MissingKey | Refusal::InvalidKey => StatusCode::UNAUTHORIZED,
            Refusal::InsufficientScope | Refusal::IpNotAllowed => StatusCode::FORBIDDEN,
            Refusal::RateLimited(_) | Refusal::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn grpc_code(self) -> tonic::Code {
        match self {
            Refusal::MissingKey | Refusal::InvalidKey => tonic::Code::Unauthenticated,
            Refusal::InsufficientScope | Refusal::IpNotAllowed => tonic::Code::PermissionDenied,
            Refusal::RateLimited(_) | Refusal::QuotaExceeded(_) => tonic::Code::ResourceExhausted,
            Refusal::Unavailable => tonic::Code::Unavailable,
        }
    }

    fn retry_after(self) -> Option<Duration> {
        match self {
            Refusal::RateLimited(wait) | Refusal::QuotaExceeded(wait) => wait,
            _ => None,
        }
    }

    fn add_headers(self, headers: &mut HeaderMap) {
        if self.http_status() == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        }
    }

    /// The answer to a plain HTTP request: the status, its headers, `{"error":"<code>"}`.
    pub(crate) fn http_response(self) -> Response<Full<Bytes>> {
        let body = format!("{{\"error\":\"{}\"}}", self.error_code());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.http_status();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.add_headers(response.headers_mut());
        response
    }

    /// The answer to a gRPC call: HTTP 200 with `grpc-status` and `grpc-message` (the error
    /// code) in the headers and no body (a trailers-only response), plus `retry-after` for
    /// `RESOURCE_EXHAUSTED` and `www-authenticate` for `UNAUTHENTICATED`.
    pub(crate) fn grpc_response(self) -> Response<Full<Bytes>> {
        let mut response = tonic::Status::new(self.grpc_code(), self.error_code()).into_http::<Full<Bytes>>();
        self.add_headers(response.headers_mut());
        response
    }
}

/// Whole seconds to wait, rounded up (never 0 for a wait that is not over).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Whether `headers` are a gRPC call's (`content-type: application/grpc`, `application/grpc+proto`...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct == "application/grpc" || ct.starts_with("application/grpc+") || ct.starts_with("application/grpc;")
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    async fn body(response: Response<Full<Bytes>>) -> String {
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn every_unusable_key_is_invalid_key_and_the_rest_keep_their_code() {
        for reason in [
            DenyReason::Invalid,
            DenyReason::Revoked,
            DenyReason::Expired,
            DenyReason::Disabled,
            DenyReason::NotYetValid,
        ] {
            assert_eq!(Refusal::of(reason, None), Refusal::InvalidKey);
        }
        assert_eq!(Refusal::of(DenyReason::InsufficientScope, None).http_status(), StatusCode::FORBIDDEN);
        assert_eq!(Refusal::of(DenyReason::IpNotAllowed, None).error_code(), "ip_not_allowed");
        assert_eq!(Refusal::of(DenyReason::QuotaExceeded, None).error_code(), "quota_exceeded");
    }

    #[tokio::test]
    async fn a_missing_key_is_401_with_a_bearer_challenge() {
        let response = Refusal::MissingKey.http_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(body(response).await, r#"{"error":"missing_key"}"#);
    }

    #[tokio::test]
    async fn rate_limited_is_429_with_the_wait_rounded_up() {
        let response = Refusal::of(DenyReason::RateLimited, Some(Duration::from_millis(1_200))).http_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "2");
        assert!(response.headers().get("www-authenticate").is_none());
        assert_eq!(body(response).await, r#"{"error":"rate_limited"}"#);
    }

    #[test]
    fn grpc_refusals_are_trailers_only_with_the_matching_code() {
        for (refusal, code) in [
            (Refusal::MissingKey, "16"),
            (Refusal::InvalidKey, "16"),
            (Refusal::InsufficientScope, "7"),
            (Refusal::RateLimited(Some(Duration::from_secs(3))), "8"),
            (Refusal::Unavailable, "14"),
        ] {
            let response = refusal.grpc_response();
            assert_eq!(response.status(), StatusCode::OK, "gRPC errors travel in an HTTP 200");
            assert_eq!(response.headers()["content-type"], "application/grpc");
            assert_eq!(response.headers()["grpc-status"], code, "{refusal:?}");
            assert_eq!(response.headers()["grpc-message"], refusal.error_code());
        }
        assert_eq!(Refusal::RateLimited(Some(Duration::from_secs(3))).grpc_response().headers()["retry-after"], "3");
    }

    #[test]
    fn errors_without_a_verdict_fail_closed() {
        let status = |code| Error::Status(tonic::Status::new(code, "x"));
        assert_eq!(Refusal::of_error(&status(tonic::Code::Unavailable)), Refusal::Unavailable);
        assert_eq!(Refusal::of_error(&status(tonic::Code::PermissionDenied)), Refusal::Unavailable);
        assert_eq!(Refusal::of_error(&Error::UnexpectedResponse("x")), Refusal::Unavailable);
        assert_eq!(Refusal::of_error(&status(tonic::Code::InvalidArgument)), Refusal::InvalidKey);
        assert_eq!(Refusal::of_error(&status(tonic::Code::ResourceExhausted)), Refusal::RateLimited(None));
        assert_eq!(Refusal::Unavailable.http_response().status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let with = |ct: &'static str| HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static(ct))]);
        assert!(is_grpc(&with("application/grpc")));
        assert!(is_grpc(&with("application/grpc+proto")));
        assert!(!is_grpc(&with("application/grpc-web")));
        assert!(!is_grpc(&with("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }
}
