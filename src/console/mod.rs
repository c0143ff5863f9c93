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

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http::Request;
use hyper::{body::Incoming, service::service_fn};

pub use self::session::Sessions;
use crate::{
    domain::{
        Services,
        policy::RotationRules,
        ports::{Hsm, Store},
    },
    http1::{Connection, Http1},
    listener::Listener,
    tls::TlsReloader,
};

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
    let http1 = Http1 { name: "console", max_buf_size: None, shutdown_grace: SHUTDOWN_GRACE };
    http1
        .serve(listener, tls, shutdown, move |connection: Connection| {
            let (console, peer) = (console.clone(), connection.peer);
            service_fn(move |request: Request<Incoming>| {
                let console = console.clone();
                async move { Ok::<_, Infallible>(routes::respond(&console, request, peer).await) }
            })
        })
        .await
}
