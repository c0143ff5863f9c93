//! Request deadlines: a call still unanswered at its deadline, the shorter of the caller's
//! `grpc-timeout` and `server.request_timeout_ms`, is answered `DEADLINE_EXCEEDED` and its
//! handler dropped.
//!
//! tonic's own timeout answers `CANCELLED` ("Timeout expired"), which tells the caller the wrong
//! thing: nobody cancelled the call, its time ran out. tonic still arms its timer for a
//! `grpc-timeout` header, around every layer; this layer's timer is armed first (its `call` runs
//! inside tonic's, before tonic's timer is made) with the same duration, and tonic polls the
//! call before its timer, so this answer always wins. Like tonic's, the deadline covers the
//! call until its response headers: a stream, once answering, is not cut.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderMap;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// Answers calls past their deadline; `request_timeout` is the server's own bound.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    request_timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, request_timeout: self.request_timeout }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    request_timeout: Duration,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = match grpc_timeout(request.headers()) {
            Some(asked) => asked.min(self.request_timeout),
            None => self.request_timeout,
        };
        // Armed before the call starts, so before tonic's timer for the same header.
        let sleep = tokio::time::sleep(timeout);
        DeadlineFuture { inner: self.inner.call(request), sleep, timeout }
    }
}

pin_project! {
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        tracing::debug!(timeout_ms = this.timeout.as_millis() as u64, "call past its deadline");
        let status = tonic::Status::deadline_exceeded(format!(
            "the call did not finish within its deadline ({} ms: the shorter of grpc-timeout and \
             server.request_timeout_ms)",
            this.timeout.as_millis()
        ));
        Poll::Ready(Ok(status.into_http()))
    }
}

/// The `grpc-timeout` header as gRPC defines it: at most 8 digits and a unit (H, M, S, m, u, n).
/// Anything else is ignored, as tonic ignores it.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_garbage_is_ignored() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for garbage in ["", "S", "-1S", "xS", "1.5S", "10", "10s", "999999999H", "+1S"] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
