//! Load shedding: a server-wide cap on calls in flight. A call beyond it is answered
//! `RESOURCE_EXHAUSTED` at once, never queued (tower's `ConcurrencyLimit` would queue it), and
//! counted in `keyward_rpc_shed`.
//!
//! A call holds its place until its response body ends, so a streaming call (`TailEvents`,
//! `ExportEvents`) holds one for as long as it streams. Health checks are exempt: a saturated
//! server is busy, not dead, and its orchestrator must still hear so.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::metrics;

/// Calls to these paths are never shed.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// Sheds calls beyond `max_in_flight` (0: no limit).
#[derive(Clone, Debug)]
pub struct ShedLayer {
    permits: Option<Arc<Semaphore>>,
}

impl ShedLayer {
    pub fn new(max_in_flight: usize) -> Self {
        let max = max_in_flight.min(Semaphore::MAX_PERMITS);
        Self { permits: (max > 0).then(|| Arc::new(Semaphore::new(max))) }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed { inner, permits: self.permits.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    permits: Option<Arc<Semaphore>>,
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<ShedBody>;
    type Error = S::Error;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = match &self.permits {
            Some(permits) if !request.uri().path().starts_with(EXEMPT_PREFIX) => {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        metrics::get().rpc_shed();
                        tracing::debug!("call shed: too many calls in flight");
                        let status = tonic::Status::resource_exhausted(
                            "the server is at its limit of calls in flight (server.max_in_flight); retry with backoff",
                        );
                        return ShedFuture::Shed { response: Some(status.into_http()) };
                    }
                }
            }
            _ => None,
        };
        ShedFuture::Call { inner: self.inner.call(request), permit }
    }
}

pin_project! {
    /// A response body that holds its call's place until it ends.
    pub struct ShedBody {
        #[pin]
        inner: tonic::body::Body,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl Body for ShedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() || frame.as_ref().is_some_and(|f| f.as_ref().map_or(true, Frame::is_trailers)) {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The future of a call that was let through, or the ready answer of one that was shed.
    #[project = ShedFutureProj]
    pub enum ShedFuture<F> {
        Call { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        Shed { response: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> Future for ShedFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = Result<http::Response<ShedBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShedFutureProj::Call { inner, permit } => {
                let result = ready!(inner.poll(cx));
                let permit = permit.take();
                Poll::Ready(result.map(|r| r.map(|inner| ShedBody { inner, permit })))
            }
            ShedFutureProj::Shed { response } => {
                let response = response.take().expect("a shed answer polled after it completed");
                Poll::Ready(Ok(response.map(|inner| ShedBody { inner, permit: None })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use tokio::sync::oneshot;

    use super::*;

    /// Calls waiting in `held`, each answered when its sender fires.
    type Waiting = Arc<tokio::sync::Mutex<Vec<oneshot::Sender<()>>>>;

    /// A service whose calls answer OK with an empty body once their sender in `Waiting` fires.
    fn held() -> (
        impl Service<http::Request<()>, Response = http::Response<tonic::body::Body>, Error = Infallible, Future: Send>
        + Clone,
        Waiting,
    ) {
        let waiting = Waiting::default();
        let w = waiting.clone();
        let svc = tower::service_fn(move |_req: http::Request<()>| {
            let w = w.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                w.lock().await.push(tx);
                let _ = rx.await;
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        (svc, waiting)
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn code(response: &http::Response<ShedBody>) -> Option<&str> {
        response.headers().get("grpc-status").map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn calls_beyond_the_limit_are_refused_at_once_and_places_free_when_bodies_end() {
        let (svc, waiting) = held();
        let mut shed = ShedLayer::new(2).layer(svc);
        let first = tokio::spawn(shed.call(request("/keyward.v1.VerifyService/VerifyKey")));
        let second = tokio::spawn(shed.call(request("/keyward.v1.KeyService/GetKey")));
        while waiting.lock().await.len() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = shed.call(request("/keyward.v1.VerifyService/VerifyKey")).await.unwrap();
        assert_eq!(code(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        // Health is exempt.
        let health = tokio::spawn(shed.call(request("/grpc.health.v1.Health/Check")));
        while waiting.lock().await.len() < 3 {
            tokio::task::yield_now().await;
        }
        for tx in waiting.lock().await.drain(..) {
            tx.send(()).unwrap();
        }
        let first = first.await.unwrap().unwrap();
        assert_eq!(code(&first), None, "let through");
        health.await.unwrap().unwrap();
        // The second call's body has not ended: its place is still taken.
        let second = second.await.unwrap().unwrap();
        drop(first.into_body().collect().await.unwrap());
        let again = tokio::spawn(shed.call(request("/keyward.v1.VerifyService/VerifyKey")));
        while waiting.lock().await.is_empty() {
            tokio::task::yield_now().await;
        }
        let refused = shed.call(request("/keyward.v1.VerifyService/VerifyKey")).await.unwrap();
        assert_eq!(code(&refused), Some("8"), "the second call and the new one hold both places");
        drop(second);
        waiting.lock().await.pop().unwrap().send(()).unwrap();
        assert_eq!(code(&again.await.unwrap().unwrap()), None);
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let svc = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut shed = ShedLayer::new(0).layer(svc);
        let responses: Vec<_> = (0..100).map(|_| shed.call(request("/keyward.v1.KeyService/GetKey"))).collect();
        for r in responses {
            assert_eq!(code(&r.await.unwrap()), None);
        }
    }
}
