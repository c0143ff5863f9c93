//! [`VerifyKeyLayer`]: a tower layer that lets a request through only with a key keyward finds
//! valid, for HTTP services (axum, hyper) and tonic servers alike.

mod client_ip;
mod headers;
mod reply;

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

pub use self::{client_ip::connection_ip, headers::KeyHeader};
use self::{
    headers::presented_key,
    reply::{Refusal, is_grpc},
};
use crate::{Client, Verification, VerifiedKey, VerifyOptions};

/// The response body of a [`VerifyKeyService`]: the inner service's body, or the layer's own
/// small answer when it refused the request.
pub type VerifyKeyBody<B> = Either<B, Full<Bytes>>;

/// Finds the end client's address in a request (see [`VerifyKeyLayer::client_ip`]).
pub type ClientIpFn = dyn Fn(&Parts) -> Option<IpAddr> + Send + Sync;

/// A tower [`Layer`] that asks keyward about the key of every request before the service sees it.
///
/// For each request it:
/// 1. reads the key from the first [`KeyHeader`] that holds one (default:
///    `authorization: Bearer …`, then `x-api-key`);
/// 2. asks keyward (with the layer's required scopes, the client address and cost);
/// 3. on VALID, puts the [`VerifiedKey`] in the request extensions and calls the service;
///    otherwise answers itself, without calling the service.
///
/// | verdict | HTTP | gRPC | `error` |
/// | --- | --- | --- | --- |
/// | no key header | 401, `www-authenticate: Bearer` | `UNAUTHENTICATED` | `missing_key` |
/// | invalid, revoked, expired, disabled, not yet valid | 401, `www-authenticate: Bearer` | `UNAUTHENTICATED` | `invalid_key` |
/// | insufficient scope | 403 | `PERMISSION_DENIED` | `insufficient_scope` |
/// | IP not allowed | 403 | `PERMISSION_DENIED` | `ip_not_allowed` |
/// | rate limited | 429, `retry-after` | `RESOURCE_EXHAUSTED` | `rate_limited` |
/// | quota exceeded | 429 | `RESOURCE_EXHAUSTED` | `quota_exceeded` |
/// | keyward unreachable, or no verdict | 503 | `UNAVAILABLE` | `keyward_unavailable` |
///
/// An HTTP answer has the body `{"error":"<code>"}` (`content-type: application/json`). A
/// request whose `content-type` is `application/grpc` (or `application/grpc+…`) is answered
/// the gRPC way: HTTP 200 with `grpc-status` and `grpc-message: <code>` in a trailers-only
/// response. The layer fails closed: without a verdict from keyward, nothing passes.
///
/// Per-route scopes: give each route its own layer, with axum's `route_layer`:
///
/// ```no_run
/// # async fn run(client: keyward_client::Client) {
/// use axum::{Router, routing::get};
/// use keyward_client::{VerifiedKey, VerifyKeyLayer};
///
/// async fn orders(key: VerifiedKey) -> String {
///     format!("orders for {}", key.name)
/// }
///
/// let app: Router = Router::new()
///     .route("/orders", get(orders))
///     .route_layer(VerifyKeyLayer::new(client).require_scopes(["orders:read"]));
/// # }
/// ```
///
/// The client address is taken from the connection by default ([`connection_ip`]); with axum,
/// serve the app with `into_make_service_with_connect_info::<SocketAddr>()` so that it is known.
#[derive(Clone)]
pub struct VerifyKeyLayer {
    settings: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    client: Client,
    key_headers: Vec<KeyHeader>,
    required_scopes: Vec<String>,
    cost: Option<u32>,
    client_ip: Arc<ClientIpFn>,
}

impl std::fmt::Debug for VerifyKeyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKeyLayer")
            .field("key_headers", &self.settings.key_headers)
            .field("required_scopes", &self.settings.required_scopes)
            .field("cost", &self.settings.cost)
            .finish_non_exhaustive()
    }
}

impl VerifyKeyLayer {
    /// A layer that asks keyward through `client`, with the default key headers, no required
    /// scope, the default cost, and the connection's address as the client's.
    pub fn new(client: Client) -> Self {
        VerifyKeyLayer {
            settings: Arc::new(Settings {
                client,
                key_headers: KeyHeader::defaults(),
                required_scopes: Vec::new(),
                cost: None,
                client_ip: Arc::new(connection_ip),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(Arc::make_mut(&mut self.settings));
        self
    }

    /// Every request must hold all of `scopes` (else 403 / `PERMISSION_DENIED`).
    #[must_use]
    pub fn require_scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.with(|s| s.required_scopes = scopes)
    }

    /// Where to look for the key, in order; the first header holding one wins.
    #[must_use]
    pub fn key_headers(self, headers: impl IntoIterator<Item = KeyHeader>) -> Self {
        let headers: Vec<KeyHeader> = headers.into_iter().collect();
        self.with(|s| s.key_headers = headers)
    }

    /// Uses each request spends from a key with a quota (default 1; 0 checks without spending).
    #[must_use]
    pub fn cost(self, cost: u32) -> Self {
        self.with(|s| s.cost = Some(cost))
    }

    /// How to find the end client's address (sent to keyward for IP allowlists and its usage
    /// log). The default, [`connection_ip`], is the peer of the connection. Behind a proxy,
    /// give a function that reads the address the proxy adds, trusting only your own proxies.
    ///
    /// ```no_run
    /// # fn run(client: keyward_client::Client) {
    /// use keyward_client::VerifyKeyLayer;
    ///
    /// // Behind exactly one trusted proxy that sets x-real-ip.
    /// let layer = VerifyKeyLayer::new(client).client_ip(|parts| {
    ///     parts.headers.get("x-real-ip")?.to_str().ok()?.parse().ok()
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn client_ip(self, find: impl Fn(&Parts) -> Option<IpAddr> + Send + Sync + 'static) -> Self {
        let find: Arc<ClientIpFn> = Arc::new(find);
        self.with(|s| s.client_ip = find)
    }
}

impl Settings {
    /// The verified key of a request, or why it is refused.
    async fn check(&self, parts: &Parts) -> Result<VerifiedKey, Refusal> {
        let key = presented_key(&self.key_headers, &parts.headers).ok_or(Refusal::MissingKey)?;
        let options =
            VerifyOptions { scopes: self.required_scopes.clone(), client_ip: (self.client_ip)(parts), cost: self.cost };
        match self.client.verify(key, options).await {
            Ok(Verification::Valid(verified)) => Ok(verified),
            Ok(Verification::Denied { reason, retry_after }) => Err(Refusal::of(reason, retry_after)),
            Err(error) => {
                let refusal = Refusal::of_error(&error);
                if refusal == Refusal::Unavailable {
                    tracing::warn!(%error, "keyward gave no verdict; refusing the request");
                }
                Err(refusal)
            }
        }
    }
}

impl<S> Layer<S> for VerifyKeyLayer {
    type Service = VerifyKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyKeyService { inner, settings: self.settings.clone() }
    }
}

/// The service [`VerifyKeyLayer`] wraps around yours.
#[derive(Clone)]
pub struct VerifyKeyService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> std::fmt::Debug for VerifyKeyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKeyService").finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for VerifyKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<VerifyKeyBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            match settings.check(&parts).await {
                Ok(verified) => {
                    parts.extensions.insert(verified);
                    let response = inner.call(Request::from_parts(parts, body)).await?;
                    Ok(response.map(Either::Left))
                }
                Err(refusal) => {
                    let response =
                        if is_grpc(&parts.headers) { refusal.grpc_response() } else { refusal.http_response() };
                    Ok(response.map(Either::Right))
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
