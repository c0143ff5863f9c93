//! Requests tonic cannot decode are the caller's fault: `INVALID_ARGUMENT`, not `INTERNAL`.
//!
//! tonic answers `INTERNAL` when a request's gRPC framing or protobuf is broken (bad UTF-8 in a
//! string field, a truncated frame, an empty body, a compressed-flag without `grpc-encoding`);
//! keyward itself never answers `INTERNAL`. This layer rewrites exactly those answers, which
//! tonic gives before any handler runs (trailers-only), keeping tonic's description: it names
//! the message type and field, never the bytes.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The descriptions tonic (and tonic-prost) give a request they cannot decode.
const DECODE_FAILURES: [&str; 5] = [
    "failed to decode Protobuf message",
    "protocol error:",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "Error decompressing",
];

#[derive(Clone, Copy, Debug, Default)]
pub struct MalformedLayer;

impl<S> Layer<S> for MalformedLayer {
    type Service = Malformed<S>;

    fn layer(&self, inner: S) -> Malformed<S> {
        Malformed { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Malformed<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Malformed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MalformedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        MalformedFuture { inner: self.inner.call(request) }
    }
}

pin_project! {
    pub struct MalformedFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for MalformedFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(rewrite(response)))
    }
}

/// `INVALID_ARGUMENT` in place of a trailers-only `INTERNAL` that says the request was undecodable.
fn rewrite(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    match Status::from_header_map(response.headers()) {
        Some(status)
            if status.code() == Code::Internal && DECODE_FAILURES.iter().any(|d| status.message().starts_with(d)) =>
        {
            tracing::debug!(reason = status.message(), "malformed request");
            Status::invalid_argument(format!("malformed request: {}", status.message())).into_http()
        }
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_message(response: &http::Response<tonic::body::Body>) -> (Code, String) {
        let status = Status::from_header_map(response.headers()).unwrap();
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn undecodable_requests_are_invalid_argument_and_other_answers_are_kept() {
        let decode = Status::internal("failed to decode Protobuf message: VerifyKeyRequest.key: invalid string value");
        let (code, message) = code_and_message(&rewrite(decode.into_http()));
        assert_eq!(code, Code::InvalidArgument);
        assert_eq!(
            message,
            "malformed request: failed to decode Protobuf message: VerifyKeyRequest.key: invalid string value"
        );
        let eof = rewrite(Status::internal("Unexpected EOF decoding stream.").into_http());
        assert_eq!(code_and_message(&eof).0, Code::InvalidArgument);

        let other = rewrite(Status::internal("something else").into_http());
        assert_eq!(code_and_message(&other), (Code::Internal, "something else".to_owned()));
        let denied = rewrite(Status::permission_denied("no").into_http());
        assert_eq!(code_and_message(&denied).0, Code::PermissionDenied);
        let ok = rewrite(http::Response::new(tonic::body::Body::empty()));
        assert!(Status::from_header_map(ok.headers()).is_none());
    }
}
