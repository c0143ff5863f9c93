//! A client for keyward, the self-hosted API-key service (keys never stored in the clear, master
//! key in an HSM): verify the API keys your service receives, from Rust.
//!
//! - [`Client`]: keyward's VerifyService over gRPC (TLS, mTLS, the caller's own key held in a
//!   zeroizing [`ApiKey`], timeouts, lazy connection). [`Client::verify`] returns a typed
//!   [`Verification`]: [`Verification::Valid`] with the [`VerifiedKey`], or
//!   [`Verification::Denied`] with a [`DenyReason`].
//! - [`VerifyKeyLayer`]: a tower layer for axum, hyper and tonic servers. It reads the key from
//!   the request headers, asks keyward, hands the [`VerifiedKey`] to your handler (request
//!   extensions; with feature `axum`, an extractor) and answers 401/403/429/503 (or the gRPC
//!   codes) itself. It fails closed.
//! - [`BearerInterceptor`]: attaches `authorization: Bearer <key>` to outgoing tonic calls.
//! - [`RequestSigner`]: signs outgoing HTTP requests with a keyward signing key (RFC 9421,
//!   `hmac-sha256`, a nonce, `Content-Digest`); [`Client::verify_signature`] asks keyward about one.
//! - Caching: none unless you opt in with a bound ([`ClientBuilder::cache`], [`CacheConfig`]).
//!
//! # Verifying a key
//!
//! ```no_run
//! # async fn run() -> Result<(), keyward_client::Error> {
//! use keyward_client::{Client, DenyReason, Verification, VerifyOptions};
//!
//! // The service's own key must hold `keyward:verify`.
//! let client = Client::builder("http://127.0.0.1:50051").caller_key("kw_service_key").connect().await?;
//! let options = VerifyOptions {
//!     scopes: vec!["orders:read".into()],
//!     client_ip: Some("203.0.113.7".parse().unwrap()),
//!     cost: None,
//! };
//! match client.verify("kw_key_from_the_request", options).await? {
//!     Verification::Valid(key) => println!("hello {} (owner {:?})", key.name, key.owner),
//!     Verification::Denied { reason: DenyReason::RateLimited, retry_after } => {
//!         println!("slow down for {retry_after:?}")
//!     }
//!     Verification::Denied { reason, .. } => println!("refused: {reason:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Protecting an axum service
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//!
//! use axum::{Router, routing::get};
//! use keyward_client::{Client, VerifiedKey, VerifyKeyLayer};
//!
//! async fn whoami(key: VerifiedKey) -> String {
//!     format!("{} {}", key.id, key.name)
//! }
//!
//! let client = Client::builder("http://127.0.0.1:50051").caller_key("kw_service_key").lazy(true).connect().await?;
//! let app = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route_layer(VerifyKeyLayer::new(client).require_scopes(["whoami:read"]));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // With connect info, the layer sends the client's address to keyward (IP allowlists).
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # Protecting a tonic server
//!
//! ```no_run
//! # async fn run(client: keyward_client::Client, health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) -> Result<(), Box<dyn std::error::Error>> {
//! use keyward_client::VerifyKeyLayer;
//!
//! tonic::transport::Server::builder()
//!     .layer(VerifyKeyLayer::new(client).require_scopes(["health:read"]))
//!     .add_service(health)
//!     .serve("127.0.0.1:50052".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A handler reads the key with `request.extensions().get::<VerifiedKey>()`.
//!
//! The crate's `examples/` hold both services in full, and its README says how to run them.

#![warn(missing_docs)]

mod cache;
mod client;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod interceptor;
mod layer;
mod secret;
mod signing;
mod verification;

/// The generated keyward.v1 messages and gRPC clients, for calls this crate does not wrap (the
/// admin API's `KeyService`, for one). Use them with a [`BearerInterceptor`].
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("keyward.v1");
}

pub use cache::CacheConfig;
pub use client::{Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT};
pub use error::Error;
#[cfg(feature = "axum")]
pub use extract::NotVerified;
pub use interceptor::BearerInterceptor;
pub use layer::{ClientIpFn, KeyHeader, VerifyKeyBody, VerifyKeyLayer, VerifyKeyService, connection_ip};
pub use secret::ApiKey;
pub use signing::{RequestSigner, SIGNATURE_LABEL, SignError, Signed, SigningSecret};
pub use verification::{DenyReason, Verification, VerifiedKey, VerifyOptions};
