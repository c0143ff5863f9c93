//! The HTTP forward-auth listener (`--http-listen`): HTTP/1.1 (hyper) over TCP, TLS (keyward's
//! own certificate, `crate::tls`) or a Unix socket, serving `/v1/authorize` (`authorize`) and
//! `GET /healthz`. Each connection runs in a task of its own; at shutdown the listener closes
//! at once and open connections finish their request in progress, for up to the grace period.

mod authorize;

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http::Request;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

pub use self::authorize::{
    Connection, ERROR_HEADER, FORWARDED_FOR, FORWARDED_METHOD, FORWARDED_URI, ForwardAuth, GATEWAY_KEY_HEADER,
    RATE_LIMIT_REMAINING, REQUIRED_SCOPES_HEADER, SCOPE_PARAM,
};
use crate::{
    domain::ports::{Hsm, Store},
    listener::{Accepted, Listener},
    tls::{TlsReloader, http1_only},
};

/// The forward-auth endpoint's path.
pub const AUTHORIZE_PATH: &str = "/v1/authorize";
pub const HEALTH_PATH: &str = "/healthz";

/// A TLS handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers not read by then close the connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    let api = Arc::new(api);
    let in_flight =
        Arc::new(Semaphore::new(if limits.max_in_flight == 0 { Semaphore::MAX_PERMITS } else { limits.max_in_flight }));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (io, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a forward-auth connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let served = Served { api: api.clone(), in_flight: in_flight.clone(), limits };
        let stopping = stopping.clone();
        let tls = tls.as_ref().map(|tls| http1_only(&tls.current()));
        connections.spawn(async move {
            match (io, tls) {
                (Accepted::Tcp(tcp), Some(config)) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let client_cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                            let connection = Connection { peer, client_cert };
                            serve_connection(stream, connection, served, stopping).await
                        }
                        Ok(Err(e)) => tracing::info!(?peer, error = %e, "forward-auth TLS handshake failed"),
                        Err(_) => tracing::info!(?peer, "forward-auth TLS handshake timed out"),
                    }
                }
                (Accepted::Tcp(tcp), None) => {
                    serve_connection(tcp, Connection { peer, client_cert: None }, served, stopping).await
                }
                (Accepted::Unix(unix), _) => serve_connection(unix, Connection::default(), served, stopping).await,
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained =
        tokio::time::timeout(limits.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = connections.len(), "forward-auth connections still open after the grace period; closed");
        connections.shutdown().await;
    }
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

/// Serves HTTP/1.1 requests on one connection until the client closes it or the server stops
/// (then the request in progress is answered first).
async fn serve_connection<H: Hsm, S: Store, IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    connection: Connection,
    served: Served<H, S>,
    mut stopping: watch::Receiver<bool>,
) {
    let connection = Arc::new(connection);
    let limits = served.limits;
    let service = service_fn(move |request: Request<Incoming>| {
        let served = served.clone();
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(respond(&served, &request, &connection).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "forward-auth connection ended");
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
