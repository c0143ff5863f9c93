//! The tower layer around every gRPC call: a tracing span (a child of the caller's W3C
//! `traceparent`, when traces are exported) and, when the call ends, `keyward_rpc_*` metrics by
//! service, method and status code.
//!
//! The status code is read where gRPC puts it: in the response headers of a trailers-only
//! response (every error tonic returns), else in the trailers that end the body. A call whose
//! response is dropped before either (client gone) counts as `CANCELLED`; a call past its
//! deadline is answered `DEADLINE_EXCEEDED` (`deadline.rs`) and counted so. Only the
//! path's service and method (from a fixed table), and the code, are recorded: never metadata.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prost::Message;
use tonic::Code;
use tower::{Layer, Service};

use crate::{
    metrics::{self, RpcLabels},
    proto, telemetry,
};

/// A method keyward serves: metric labels and span name.
struct Method {
    service: &'static str,
    method: &'static str,
    /// `service/method`, the span name.
    name: &'static str,
}

const UNKNOWN: Method = Method { service: "unknown", method: "unknown", name: "unknown" };

/// Every method in the descriptor sets the server registers, by HTTP path.
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    let sets = [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set).expect("the embedded descriptor sets are valid");
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                let service_name: &'static str = Box::leak(format!("{package}.{}", service.name()).into_boxed_str());
                for method in &service.method {
                    let method_name: &'static str = Box::leak(method.name().to_owned().into_boxed_str());
                    let name = Box::leak(format!("{service_name}/{method_name}").into_boxed_str());
                    methods.insert(format!("/{name}"), Method { service: service_name, method: method_name, name });
                }
            }
        }
    }
    methods
});

fn method(path: &str) -> &'static Method {
    METHODS.get(path).unwrap_or(&UNKNOWN)
}

/// The name of a gRPC status code, as `grpc-status` carries it by number.
pub fn code_name(code: i32) -> &'static str {
    match Code::from_i32(code) {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Server errors by the OpenTelemetry gRPC conventions (the rest are the caller's doing).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// One call in flight: recorded exactly once, when it ends or is dropped.
struct Call {
    method: &'static Method,
    started: Instant,
    span: tracing::Span,
    recorded: bool,
}

impl Call {
    fn start(path: &str, headers: &HeaderMap) -> Self {
        let method = method(path);
        let span = tracing::info_span!(
            parent: None,
            crate::telemetry::CALL_SPAN,
            otel.name = method.name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        telemetry::set_remote_parent(&span, headers);
        Self { method, started: Instant::now(), span, recorded: false }
    }

    fn finish(mut self, code: i32) {
        self.record(code);
    }

    fn record(&mut self, code: i32) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let labels = RpcLabels { service: self.method.service, method: self.method.method, code: code_name(code) };
        metrics::get().rpc(&labels, self.started.elapsed());
        self.span.record("rpc.grpc.status_code", code);
        if is_server_error(Code::from_i32(code)) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record(Code::Cancelled as i32);
    }
}

/// Observes every call of the service it wraps.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, ResBody> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = Call::start(request.uri().path(), request.headers());
        let inner = call.span.in_scope(|| self.inner.call(request));
        ObservedFuture { inner, call: Some(call) }
    }
}

pin_project! {
    /// The handler's future, polled inside the call's span.
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ObservedFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<ObservedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.call.as_ref().map(|c| c.span.enter());
            ready!(this.inner.poll(cx))
        };
        let call = this.call.take().expect("an ObservedFuture polled after it completed");
        Poll::Ready(match result {
            Ok(response) => {
                let call = match grpc_status(response.headers()) {
                    Some(code) => {
                        call.finish(code);
                        None
                    }
                    None => Some(call),
                };
                Ok(response.map(|inner| ObservedBody { inner, call }))
            }
            Err(e) => {
                call.finish(Code::Unknown as i32);
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body; records the call at its trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(Code::Unknown as i32)),
            Some(Err(_)) | None => Some(Code::Unknown as i32),
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_name_their_method_and_others_are_unknown() {
        let m = method("/keyward.v1.VerifyService/VerifyKey");
        assert_eq!(
            (m.service, m.method, m.name),
            ("keyward.v1.VerifyService", "VerifyKey", "keyward.v1.VerifyService/VerifyKey")
        );
        assert_eq!(method("/grpc.health.v1.Health/Check").method, "Check");
        assert_eq!(method("/keyward.v1.VerifyService/kw_secret_in_a_path").service, "unknown");
        assert_eq!(method("/").name, "unknown");
    }

    #[test]
    fn status_codes_have_their_grpc_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
