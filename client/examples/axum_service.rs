//! An axum service whose routes need a key that keyward finds valid.
//!
//! ```text
//! KEYWARD_ENDPOINT=http://127.0.0.1:50051 KEYWARD_CALLER_KEY=kw_... \
//!     cargo run -p keyward-client --example axum_service -- 127.0.0.1:8080
//! curl -H "authorization: Bearer $KEY" http://127.0.0.1:8080/whoami
//! curl -H "x-api-key: $KEY" http://127.0.0.1:8080/orders      # needs orders:read
//! ```
//!
//! `KEYWARD_CALLER_KEY` is this service's own key: it must hold `keyward:verify`. The service
//! prints the address it listens on, then serves until stopped.
//!
//! Routes: `GET /healthz` (open), `GET /whoami` (any valid key) and `GET /orders` (a key
//! holding `orders:read`). The end-to-end tests (tests/end_to_end/) serve this same router.

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use keyward_client::{Client, VerifiedKey, VerifyKeyLayer};
use serde_json::{Value, json};

/// The service's routes, each behind its own [`VerifyKeyLayer`].
pub fn router(client: Client) -> Router {
    let orders = Router::new()
        .route("/orders", get(orders))
        .route_layer(VerifyKeyLayer::new(client.clone()).require_scopes(["orders:read"]));
    let whoami = Router::new().route("/whoami", get(whoami)).route_layer(VerifyKeyLayer::new(client));
    Router::new().route("/healthz", get(|| async { "ok" })).merge(orders).merge(whoami)
}

/// Who called: what the layer handed over (never the key itself).
async fn whoami(key: VerifiedKey) -> Json<Value> {
    Json(json!({
        "key_id": key.id,
        "name": key.name,
        "scopes": key.scopes,
        "owner": key.owner,
        "metadata": key.metadata,
    }))
}

async fn orders(key: VerifiedKey) -> Json<Value> {
    Json(json!({ "orders": [], "for": key.name }))
}

/// Serves [`router`] on `listener`, with connection info so that keyward learns each client's
/// address.
pub async fn serve(listener: tokio::net::TcpListener, client: Client) -> std::io::Result<()> {
    axum::serve(listener, router(client).into_make_service_with_connect_info::<SocketAddr>()).await
}

#[allow(dead_code)] // The tests include this file for `router` and `serve`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("KEYWARD_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let caller_key =
        std::env::var("KEYWARD_CALLER_KEY").map_err(|_| "set KEYWARD_CALLER_KEY to a key holding keyward:verify")?;
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    // Lazy: the service starts even while keyward is down, and answers 503 until it is back.
    let client = Client::builder(endpoint).caller_key(caller_key).lazy(true).connect().await?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, client).await?;
    Ok(())
}
