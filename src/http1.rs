//! What the HTTP/1.1 listeners (forward-auth `--http-listen`, the console `--console-listen`)
//! share: the accept loop (a failed accept backs off instead of spinning), the TLS handshake
//! with a time limit (ALPN http/1.1 only), a task per connection served by hyper with a limit on
//! reading the request head, and at shutdown the listener closed at once while open connections
//! finish their request in progress, for up to a grace period. Each listener gives the service
//! a connection runs, made from where the connection came from.

use std::{error::Error as StdError, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http_body::Body;
use hyper::{body::Incoming, server::conn::http1, service::HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::{
    listener::{Accepted, Listener},
    tls::{TlsReloader, http1_only},
};

/// A TLS handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers not read by then close the connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection a request came on: the peer's address (TCP) and its verified client
/// certificate (mTLS).
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub peer: Option<SocketAddr>,
    pub client_cert: Option<CertificateDer<'static>>,
}

/// How one HTTP/1.1 listener serves.
#[derive(Clone, Copy, Debug)]
pub struct Http1 {
    /// For the logs: "forward-auth", "console".
    pub name: &'static str,
    /// Bytes of request head a connection may buffer (`None`: hyper's default).
    pub max_buf_size: Option<usize>,
    /// How long open connections may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl Http1 {
    /// Serves `listener` (TLS with `tls`' current configuration when given) until `shutdown`
    /// resolves, each connection with the service `service_for` makes for it.
    pub async fn serve<M, S, B>(
        self,
        listener: Listener,
        tls: Option<Arc<TlsReloader>>,
        shutdown: impl Future<Output = ()> + Send,
        service_for: M,
    ) where
        M: Fn(Connection) -> S + Send + Sync + 'static,
        S: HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let service_for = Arc::new(service_for);
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
                    tracing::warn!(listener = self.name, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (service_for, stopping) = (service_for.clone(), stopping.clone());
            let tls = tls.as_ref().map(|tls| http1_only(&tls.current()));
            connections.spawn(async move {
                match (io, tls) {
                    (Accepted::Tcp(tcp), Some(config)) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let client_cert =
                                    stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                                let service = service_for(Connection { peer, client_cert });
                                self.serve_connection(stream, service, stopping).await
                            }
                            Ok(Err(e)) => {
                                tracing::info!(listener = self.name, ?peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::info!(listener = self.name, ?peer, "TLS handshake timed out"),
                        }
                    }
                    (Accepted::Tcp(tcp), None) => {
                        let service = service_for(Connection { peer, client_cert: None });
                        self.serve_connection(tcp, service, stopping).await
                    }
                    (Accepted::Unix(unix), _) => {
                        self.serve_connection(unix, service_for(Connection::default()), stopping).await
                    }
                }
            });
        }
        drop(listener);
        let _ = stop.send(true);
        let grace = self.shutdown_grace;
        let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                listener = self.name,
                left = connections.len(),
                "connections still open after the grace period; closed"
            );
            connections.shutdown().await;
        }
    }

    /// Serves HTTP/1.1 requests on one connection until the client closes it or the server
    /// stops (then the request in progress is answered first).
    async fn serve_connection<IO, S, B>(self, io: IO, service: S, mut stopping: watch::Receiver<bool>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<BoxError>,
        B: Body + 'static,
        B::Error: Into<BoxError>,
    {
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        if let Some(max) = self.max_buf_size {
            builder.max_buf_size(max);
        }
        let served = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(served);
        let result = tokio::select! {
            result = served.as_mut() => result,
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = self.name, error = %e, "connection ended");
        }
    }
}
