//! OpenTelemetry traces: keyward's spans (one per gRPC call, one per HSM operation) exported by
//! OTLP over gRPC, configured by the standard environment variables (`OTEL_EXPORTER_OTLP_*`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER*`, `OTEL_BSP_*`), and
//! W3C trace context (`traceparent`) taken from incoming calls.
//!
//! Only spans reach the exporter: log events are left out, so nothing a log line says (key ids,
//! error texts) becomes a span event. Span attributes are set in `grpc::layer` and `hsm::observe`
//! from fixed sets.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::filter_fn};

use super::BoxedLayer;

/// Set once traces are exported: until then incoming trace context is not even parsed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer provider; `shutdown` exports what is still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Traces are on when an OTLP endpoint is named and the SDK is not disabled.
fn wanted() -> bool {
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    endpoint.is_some() && !disabled
}

/// `service.name` is `keyward` unless the environment names it.
fn resource() -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    let builder = Resource::builder();
    if named { builder.build() } else { builder.with_service_name("keyward").build() }
}

/// The provider and the tracing layer feeding it, if the environment asks for traces.
pub(super) fn from_env() -> Result<Option<(Traces, BoxedLayer)>, String> {
    if !wanted() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("the OTLP trace exporter: {e}"))?;
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource()).build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("keyward"))
        .with_filter(filter_fn(|meta| meta.is_span() && meta.target().starts_with("keyward")))
        .boxed();
    ENABLED.store(true, Ordering::SeqCst);
    Ok(Some((Traces { provider }, layer)))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes the caller's trace (W3C `traceparent` in `headers`) the parent of `span`.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn a_traceparent_header_is_read_as_the_remote_parent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
    }
}
