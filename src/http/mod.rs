//! The HTTP forward-auth listener (`--http-listen`): HTTP/1.1 (hyper) over TCP, TLS (keyward's
//! own certificate, `crate::tls`) or a Unix socket, serving `/v1/authorize` (`authorize`) and
//! `GET /healthz`. Each connection runs in a task of its own; at shutdown the listener closes
//! at once and open connections finish their request in progress, for up to the grace period.

mod authorize;

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http::Request;
use hyper::{body::Incoming, service::service_fn};
use tokio::sync::Semaphore;

pub use self::authorize::{
    Connection, ERROR_HEADER, FORWARDED_FOR, FORWARDED_METHOD, FORWARDED_URI, ForwardAuth, GATEWAY_KEY_HEADER,
    RATE_LIMIT_REMAINING, REQUIRED_SCOPES_HEADER, SCOPE_PARAM,
};
use crate::{
    domain::ports::{Hsm, Store},
    http1::Http1,
    listener::Listener,
    tls::TlsReloader,
};

/// The forward-auth endpoint's path.
pub const AUTHORIZE_PATH: &str = "/v1/authorize";
pub const HEALTH_PATH: &str = "/healthz";

/// How the listener serves.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A question not answered by then gets 503.
    pub request_timeout: Duration,
    /// Bytes of request head (request line and headers) a connection may buffer.
    pub max_header_bytes: usize,
    /// How long open connections may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Questions answered at once; beyond, 503 at once (0: no limit). The gRPC listener's
    /// `server.max_in_flight`, counted apart.
    pub max_in_flight: usize,
}

/// Serves `listener` until `shutdown` resolves, then closes it (a Unix socket file goes with
/// it) and lets open connections finish for up to `limits.shutdown_grace`. `tls`: serve TLS
/// (a TCP listener with keyward's TLS configured).
pub async fn serve<H: Hsm, S: Store>(
    listener: Listener,
    tls: Option<Arc<TlsReloader>>,
    api: ForwardAuth<H, S>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let in_flight =
        Arc::new(Semaphore::new(if limits.max_in_flight == 0 { Semaphore::MAX_PERMITS } else { limits.max_in_flight }));
    let served = Served { api: Arc::new(api), in_flight, limits };
    let http1 = Http1 {
        name: "forward-auth",
        max_buf_size: Some(limits.max_header_bytes.max(8192)),
        shutdown_grace: limits.shutdown_grace,
    };
    http1
        .serve(listener, tls, shutdown, move |connection: Connection| {
            let (served, connection) = (served.clone(), Arc::new(connection));
            service_fn(move |request: Request<Incoming>| {
                let (served, connection) = (served.clone(), connection.clone());
                async move { Ok::<_, Infallible>(respond(&served, &request, &connection).await) }
            })
        })
        .await
}

/// What a connection serves: the endpoint, the questions in flight, the limits.
struct Served<H, S> {
    api: Arc<ForwardAuth<H, S>>,
    in_flight: Arc<Semaphore>,
    limits: HttpLimits,
}

impl<H, S> Clone for Served<H, S> {
    fn clone(&self) -> Self {
        Self { api: self.api.clone(), in_flight: self.in_flight.clone(), limits: self.limits }
    }
}

async fn respond<H: Hsm, S: Store>(
    served: &Served<H, S>,
    request: &Request<Incoming>,
    connection: &Connection,
) -> http::Response<authorize::Body> {
    match request.uri().path() {
        AUTHORIZE_PATH => {
            let Ok(_permit) = served.in_flight.try_acquire() else { return authorize::overloaded() };
            tokio::time::timeout(served.limits.request_timeout, served.api.authorize(request, connection))
                .await
                .unwrap_or_else(|_| authorize::timed_out())
        }
        HEALTH_PATH => authorize::health(served.api.serving(), request.method()),
        _ => authorize::not_found(),
    }
}
