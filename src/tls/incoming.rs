//! The TLS acceptor: accepts TCP connections, runs each handshake in a task of its own (so a
//! slow or silent client holds up no one else) with the configuration in force at that moment,
//! and hands finished TLS streams to the gRPC server. tonic's `Connected` impl for
//! `tokio_rustls::server::TlsStream` puts the peer address and the verified client certificate
//! chain into each request (`Request::remote_addr`, `Request::peer_certs`).

use std::{io, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use super::TlsReloader;

/// A handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream of established TLS connections on `listener`. Accepting stops, and the listener
/// closes, once `stop` turns true (shutdown: the server drains but takes no new connection) or
/// the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsStream<tokio::net::TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                _ = stopped(&mut stop) => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
            }
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let client_cert = stream.get_ref().1.peer_certificates().is_some();
                        tracing::debug!(%peer, client_cert, "TLS connection established");
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
