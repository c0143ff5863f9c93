//! OpenTelemetry traces: an OTLP collector stand-in (a tonic `TraceService`) in the test,
//! keyward exporting to it, a caller's `traceparent` as the parent of keyward's spans.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keyward::proto::{self, VerifyCode};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

use crate::common::Instance;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attrs = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            let service = string_attr(&attrs, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Listens on 127.0.0.1:0 on a thread and runtime of its own (the test's thread blocks
    /// while it waits for keyward to exit, and keyward exports at exit); returns the endpoint URL.
    fn start(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = TcpIncoming::from(listener);
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
            });
        });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) until `done` holds for the spans received so far.
    async fn wait_for(&self, kw: &Instance, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the collector never received {what}; it has {spans:#?}\nkeyward's log:\n{}",
                kw.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    })
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every text in a span a secret could hide in: name, attributes, events and their attributes.
fn texts(span: &Span) -> Vec<String> {
    fn value(v: &Option<AnyValue>) -> String {
        format!("{v:?}")
    }
    let mut out = vec![span.name.clone()];
    out.extend(span.attributes.iter().map(|kv| format!("{}={}", kv.key, value(&kv.value))));
    for event in &span.events {
        out.push(event.name.clone());
        out.extend(event.attributes.iter().map(|kv| format!("{}={}", kv.key, value(&kv.value))));
    }
    out
}

async fn verify_with_traceparent(kw: &Instance, key: &str) -> proto::VerifyKeyResponse {
    let mut request = Request::new(proto::VerifyKeyRequest { key: key.into(), ..Default::default() });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    kw.root_verifier().await.verify_key(request).await.expect("VerifyKey").into_inner()
}

fn is_verify_call(r: &Received) -> bool {
    r.span.name == "keyward.v1.VerifyService/VerifyKey" && hex(&r.span.trace_id) == TRACE_ID
}

#[tokio::test]
async fn a_verification_is_traced_as_a_child_of_the_callers_span() {
    let collector = Collector::default();
    let endpoint = collector.start();
    let mut kw = Instance::init();
    kw.start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_SERVICE_NAME", "keyward-it"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await;
    let (key, key_id) = kw.create_key("svc", &[]).await;
    assert_eq!(verify_with_traceparent(&kw, &key).await.code(), VerifyCode::Valid);

    let spans = collector
        .wait_for(&kw, "the VerifyKey span and its HSM span", |spans| {
            let call = spans.iter().find(|r| is_verify_call(r));
            call.is_some_and(|c| spans.iter().any(|r| r.span.parent_span_id == c.span.span_id))
        })
        .await;
    let call = spans.iter().find(|r| is_verify_call(r)).unwrap();
    assert_eq!(call.service, "keyward-it", "OTEL_SERVICE_NAME names the service");
    assert_eq!(hex(&call.span.parent_span_id), PARENT_ID, "the caller's span is the parent");
    assert_eq!(string_attr(&call.span.attributes, "rpc.method").as_deref(), Some("VerifyKey"));
    assert_eq!(string_attr(&call.span.attributes, "rpc.service").as_deref(), Some("keyward.v1.VerifyService"));
    assert_eq!(int_attr(&call.span.attributes, "rpc.grpc.status_code"), Some(0));
    let hsm = spans.iter().find(|r| r.span.parent_span_id == call.span.span_id).unwrap();
    assert_eq!(hsm.span.name, "hsm verify");
    assert_eq!(hex(&hsm.span.trace_id), TRACE_ID);
    assert_eq!(string_attr(&hsm.span.attributes, "hsm.operation").as_deref(), Some("verify"));

    let secret_part = &key[key.len() - 20..];
    for received in &spans {
        for text in texts(&received.span) {
            for needle in [key.as_str(), secret_part, &kw.root_key, &key_id, "authorization", "Bearer"] {
                assert!(!text.contains(needle), "span {:?} holds {needle:?}: {text}", received.span.name);
            }
        }
    }
}

#[tokio::test]
async fn spans_still_buffered_are_exported_at_shutdown() {
    let collector = Collector::default();
    let endpoint = collector.start();
    let mut kw = Instance::init();
    // Batches would wait ten minutes: only the shutdown flush can deliver them in time.
    kw.start_with_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;
    let (key, _) = kw.create_key("svc", &[]).await;
    assert_eq!(verify_with_traceparent(&kw, &key).await.code(), VerifyCode::Valid);
    assert!(!collector.spans().iter().any(is_verify_call), "exported before shutdown");
    assert_eq!(kw.stop().await.code(), Some(0));
    let spans = collector.wait_for(&kw, "the VerifyKey span", |spans| spans.iter().any(is_verify_call)).await;
    let call = spans.iter().find(|r| is_verify_call(r)).unwrap();
    assert_eq!(call.service, "keyward", "service.name defaults to keyward");
}
