//! Server reflection answers in both protocol versions: v1 (current clients) and v1alpha
//! (grpcurl 1.8 and other older clients, exercised by the grpcurl test).

use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::common::Instance;

#[tokio::test]
async fn reflection_v1_lists_keywards_services() {
    let kw = Instance::started().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", kw.addr())).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected response: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in
        ["keyward.v1.KeyService", "keyward.v1.VerifyService", "keyward.v1.ClusterService", "grpc.health.v1.Health"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}
