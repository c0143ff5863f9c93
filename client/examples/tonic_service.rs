//! A tonic gRPC server (here the standard `grpc.health.v1.Health` service) behind
//! [`VerifyKeyLayer`]: every call needs a key holding `health:read`.
//!
//! ```text
//! KEYWARD_ENDPOINT=http://127.0.0.1:50051 KEYWARD_CALLER_KEY=kw_... \
//!     cargo run -p keyward-client --example tonic_service -- 127.0.0.1:50052
//! grpcurl -plaintext -H "authorization: Bearer $KEY" 127.0.0.1:50052 grpc.health.v1.Health/Check
//! ```
//!
//! Without a key the call fails with `UNAUTHENTICATED`, without the scope with
//! `PERMISSION_DENIED`, when rate limited with `RESOURCE_EXHAUSTED`, and while keyward is
//! unreachable with `UNAVAILABLE`. A tonic client presents its key with
//! [`keyward_client::BearerInterceptor`]. The end-to-end tests serve this same server.

use keyward_client::{Client, VerifyKeyLayer};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

/// The scope every call needs.
pub const REQUIRED_SCOPE: &str = "health:read";

/// Serves the health service on `listener`, each call checked by keyward through `client`.
pub async fn serve(listener: TcpListener, client: Client) -> Result<(), tonic::transport::Error> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder()
        .layer(VerifyKeyLayer::new(client).require_scopes([REQUIRED_SCOPE]))
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

#[allow(dead_code)] // The tests include this file for `serve`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("KEYWARD_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let caller_key =
        std::env::var("KEYWARD_CALLER_KEY").map_err(|_| "set KEYWARD_CALLER_KEY to a key holding keyward:verify")?;
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50052".into());
    let client = Client::builder(endpoint).caller_key(caller_key).lazy(true).connect().await?;
    let listener = TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    serve(listener, client).await?;
    Ok(())
}
