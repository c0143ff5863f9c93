//! The web console (`--console-listen`, `[console]`, docs/console.md): server-rendered HTML
//! pages over HTTP/1.1 (hyper) for the people who run keyward: keys, usage, audit and the
//! master key. An adapter at the edge like `grpc`: every page and action calls the same domain
//! services with the signed-in key as the caller, so permissions and audit are those of the
//! gRPC API. What it owns:
//!
//! - `session`: the in-memory sign-in sessions (random ids, idle timeout, CSRF tokens);
//! - `web`: requests and responses (cookies, forms, security headers, static assets);
//! - `routes`: the router and the sign-in (audited as `console.sign_in` / `console.sign_out`);
//!   `keys` (the list), `key_page`, `key_forms` (create), `key_actions` (update, rotate,
//!   disable, enable, revoke; `form_fields` reads their fields), `audit` (with `chain_check`,
//!   the whole-chain check in the background), `master`: the pages and actions;
//! - `view` and `chart`: the HTML (maud) and the usage chart (SVG).

mod audit;
mod chain_check;
mod chart;
mod form_fields;
mod key_actions;
mod key_forms;
mod key_page;
mod keys;
mod master;
mod routes;
mod session;
mod view;
mod web;

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::Request;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

pub use self::session::Sessions;
use crate::{
    domain::{
        Services,
        policy::RotationRules,
        ports::{Hsm, Store},
    },
    listener::{Accepted, Listener},
    tls::{TlsReloader, http1_only},
};

/// A TLS handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers not read by then close the connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The console's settings (`[console]`).
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// A session unused this long is signed out.
    pub idle_timeout: Duration,
    /// Sessions kept at once; a sign-in beyond it is refused until one ends.
    pub max_sessions: usize,
    /// Keys and events per page.
    pub page_size: u32,
    /// A page not answered by then gets 503.
    pub request_timeout: Duration,
    /// When keys are due for rotation (the badges).
    pub rotation: RotationRules,
}

/// The console: the domain services it calls, its sessions and settings.
pub struct Console<H, S> {
    services: Services<H, S>,
    sessions: Sessions,
    settings: ConsoleSettings,
    /// Served over TLS: cookies are `Secure` and HSTS is sent.
    tls: bool,
    /// The audit page's whole-chain check.
    chain_check: Arc<chain_check::ChainCheck>,
}

impl<H: Hsm, S: Store> Console<H, S> {
    pub fn new(services: Services<H, S>, settings: ConsoleSettings, tls: bool) -> Self {
        let sessions = Sessions::new(settings.idle_timeout, settings.max_sessions);
        Self { services, sessions, settings, tls, chain_check: Arc::default() }
    }
}

/// Serves the console on `listener` until `shutdown` resolves; open connections then finish
/// their request for up to a few seconds.
pub async fn serve<H: Hsm, S: Store>(
    listener: Listener,
    tls: Option<Arc<TlsReloader>>,
    console: Console<H, S>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let console = Arc::new(console);
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
                tracing::warn!(error = %e, "accepting a console connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let console = console.clone();
        let stopping = stopping.clone();
        let tls = tls.as_ref().map(|tls| http1_only(&tls.current()));
        connections.spawn(async move {
            match (io, tls) {
                (Accepted::Tcp(tcp), Some(config)) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, console, stopping).await,
                        Ok(Err(e)) => tracing::info!(?peer, error = %e, "console TLS handshake failed"),
                        Err(_) => tracing::info!(?peer, "console TLS handshake timed out"),
                    }
                }
                (Accepted::Tcp(tcp), None) => serve_connection(tcp, peer, console, stopping).await,
                (Accepted::Unix(unix), _) => serve_connection(unix, None, console, stopping).await,
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained =
        tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection<H: Hsm, S: Store, IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    peer: Option<SocketAddr>,
    console: Arc<Console<H, S>>,
    mut stopping: watch::Receiver<bool>,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let console = console.clone();
        async move { Ok::<_, Infallible>(routes::respond(&console, request, peer).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
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
        tracing::debug!(error = %e, "console connection ended");
    }
}
