//! The gRPC listener's transport: plaintext or TLS from the flags over `[tls]`, with the mTLS
//! identities; plaintext on a non-loopback address only when allowed.

use std::{net::SocketAddr, sync::Arc};

use super::Serving;
use crate::{
    app::AppError,
    config::{self, Config},
    grpc,
    tls::{Identities, TlsReloader},
};

/// Plaintext or TLS, from the flags over `[tls]`, and the mTLS identities; refuses plaintext on
/// a non-loopback address unless allowed. The TLS files are read here, so a bad one stops
/// startup with what is wrong with it.
pub(super) fn choose(
    serving: &Serving,
    config: &Config,
    listen: SocketAddr,
) -> Result<(grpc::Transport, Arc<Identities>), AppError> {
    let settings = config.tls.settings(&serving.tls)?;
    let identities = Arc::new(Identities::from_config(&config.tls.identities)?);
    let Some(settings) = settings else {
        let allowed = serving.allow_plaintext || config.server.allow_plaintext;
        if !config::plaintext_allowed(listen, allowed) {
            return Err(AppError::Refused(format!(
                "refusing to serve plaintext gRPC on {listen}, a non-loopback address: bearer keys would cross the \
                 network in clear. Configure TLS (--tls-cert and --tls-key, or [tls]), listen on loopback, or, \
                 behind a TLS-terminating proxy, pass --allow-plaintext (or set server.allow_plaintext)"
            )));
        }
        if !listen.ip().to_canonical().is_loopback() {
            tracing::warn!(address = %listen, "serving plaintext gRPC on a non-loopback address (allowed explicitly)");
        }
        return Ok((grpc::Transport::Plain, identities));
    };
    let tls = TlsReloader::load(settings)?;
    if !identities.is_empty() {
        tracing::info!(identities = identities.len(), "client certificate identities mapped to keys");
    }
    Ok((grpc::Transport::Tls(Arc::new(tls)), identities))
}

/// The transport's name for the "serving" log line.
pub(super) fn describe(transport: &grpc::Transport) -> &'static str {
    match transport {
        grpc::Transport::Plain => "plaintext",
        grpc::Transport::Tls(tls) => match tls.settings().client_ca {
            None => "TLS",
            Some((_, config::ClientAuth::Required)) => "mTLS, client certificate required",
            Some((_, config::ClientAuth::Optional)) => "mTLS, client certificate optional",
        },
    }
}

/// The TLS configuration SIGHUP and the file watch reload, if TLS is on.
pub(super) fn reloader(transport: &grpc::Transport) -> Option<Arc<TlsReloader>> {
    match transport {
        grpc::Transport::Tls(tls) => Some(tls.clone()),
        grpc::Transport::Plain => None,
    }
}
