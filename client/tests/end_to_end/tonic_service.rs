//! The tonic example server (examples/tonic_service.rs) behind `VerifyKeyLayer`, called by a
//! tonic client with `BearerInterceptor`, against a real keyward.

use keyward_client::{BearerInterceptor, Client};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{Served, keyward::Keyward, tonic_example};

async fn check(service: &Served, bearer: BearerInterceptor) -> Result<ServingStatus, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::with_interceptor(channel, bearer);
    let response = health.check(HealthCheckRequest { service: String::new() }).await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn grpc_calls_get_grpc_codes_and_a_scoped_key_gets_through() {
    let mut kw = Keyward::started().await;
    let client = Client::builder(kw.endpoint()).caller_key(kw.service_key().await).connect().await.unwrap();
    let service = Served::start(|listener| tonic_example::serve(listener, client)).await;

    let missing = check(&service, BearerInterceptor::none()).await.unwrap_err();
    assert_eq!((missing.code(), missing.message()), (Code::Unauthenticated, "missing_key"));

    let invalid = check(&service, BearerInterceptor::new("kw_notakeyatall").unwrap()).await.unwrap_err();
    assert_eq!((invalid.code(), invalid.message()), (Code::Unauthenticated, "invalid_key"));

    let (unscoped, _) = kw.create_key("unscoped", &[]).await;
    let denied = check(&service, BearerInterceptor::new(unscoped).unwrap()).await.unwrap_err();
    assert_eq!((denied.code(), denied.message()), (Code::PermissionDenied, "insufficient_scope"));

    let (scoped, _) = kw.create_key("scoped", &[tonic_example::REQUIRED_SCOPE]).await;
    let serving = check(&service, BearerInterceptor::new(scoped.as_str()).unwrap()).await;
    assert_eq!(serving.unwrap(), ServingStatus::Serving);

    kw.stop().await;
    let down = check(&service, BearerInterceptor::new(scoped).unwrap()).await.unwrap_err();
    assert_eq!((down.code(), down.message()), (Code::Unavailable, "keyward_unavailable"));
}
