//! The layer around a plain tower service (as hyper serves one), with no keyward to ask: what it
//! answers without a verdict, and that the service is then never called.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::{ServiceExt as _, service_fn};

use super::*;

/// A layer whose keyward is a closed loopback port: every verification fails as unavailable.
async fn layer_without_keyward() -> VerifyKeyLayer {
    let client = Client::builder("http://127.0.0.1:1").lazy(true).connect().await.unwrap();
    VerifyKeyLayer::new(client)
}

/// Sends `request` through `layer` around a service that counts its calls.
async fn send(layer: VerifyKeyLayer, request: Request<String>) -> (Response<VerifyKeyBody<String>>, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |_: Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::convert::Infallible>(Response::new(String::from("inner"))) }
    });
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    (response, calls.load(Ordering::SeqCst))
}

async fn body(response: Response<VerifyKeyBody<String>>) -> String {
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_request_without_a_key_is_401_and_never_reaches_the_service() {
    let (response, calls) = send(layer_without_keyward().await, Request::new(String::new())).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(body(response).await, r#"{"error":"missing_key"}"#);
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn without_a_verdict_the_request_is_refused_503_fail_closed() {
    let mut request = Request::new(String::new());
    request.headers_mut().insert("x-api-key", HeaderValue::from_static("kw_anything"));
    let (response, calls) = send(layer_without_keyward().await, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(response).await, r#"{"error":"keyward_unavailable"}"#);
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn a_grpc_call_is_refused_with_grpc_status_in_a_trailers_only_response() {
    let mut request = Request::new(String::new());
    request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    request.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer kw_anything"));
    let (response, calls) = send(layer_without_keyward().await, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(response.headers()["grpc-message"], "keyward_unavailable");
    assert_eq!(body(response).await, "", "no body: trailers only");
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn only_the_configured_headers_are_read() {
    let layer =
        layer_without_keyward().await.key_headers([KeyHeader::plain(http::HeaderName::from_static("x-service-key"))]);
    let mut request = Request::new(String::new());
    request.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer kw_anything"));
    let (response, _) = send(layer, request).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "authorization is not in the list");
}
