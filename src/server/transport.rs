//! The listeners' transport: TLS from the flags over `[tls]`, with the mTLS identities, on every
//! TCP listener (gRPC and HTTP forward-auth); plaintext on a non-loopback address only when
//! allowed. A Unix socket always serves plaintext: it is local, and its file mode (0660) decides
//! who may connect.

use std::sync::Arc;

use super::Serving;
use crate::{
    app::AppError,
    config::{self, Config, ListenAddr},
    tls::{Identities, TlsReloader},
};

/// TLS (from the flags over `[tls]`), if configured, and the mTLS identities. The TLS files are
/// read here, so a bad one stops startup with what is wrong with it.
pub(super) fn choose(
    serving: &Serving,
    config: &Config,
) -> Result<(Option<Arc<TlsReloader>>, Arc<Identities>), AppError> {
    let settings = config.tls.settings(&serving.tls)?;
    let identities = Arc::new(Identities::from_config(&config.tls.identities)?);
    let Some(settings) = settings else { return Ok((None, identities)) };
    let tls = TlsReloader::load(settings)?;
    if !identities.is_empty() {
        tracing::info!(identities = identities.len(), "client certificate identities mapped to keys");
    }
    Ok((Some(Arc::new(tls)), identities))
}

/// The TLS the listener on `addr` serves (`what` names it: "gRPC", "HTTP forward-auth"): the
/// configured TLS on TCP, none on a Unix socket; refuses plaintext on a non-loopback address
/// unless allowed.
pub(super) fn for_listener(
    tls: &Option<Arc<TlsReloader>>,
    addr: &ListenAddr,
    serving: &Serving,
    config: &Config,
    what: &str,
) -> Result<Option<Arc<TlsReloader>>, AppError> {
    if let ListenAddr::Unix(_) = addr {
        if tls.is_some() {
            tracing::info!(address = %addr, "{what} on a Unix socket serves plaintext; TLS applies to the TCP listeners");
        }
        return Ok(None);
    }
    if tls.is_some() {
        return Ok(tls.clone());
    }
    let allowed = serving.allow_plaintext || config.server.allow_plaintext;
    if !config::plaintext_allowed(addr, allowed) {
        return Err(AppError::Refused(format!(
            "refusing to serve plaintext {what} on {addr}, a non-loopback address: bearer keys would cross the \
             network in clear. Configure TLS (--tls-cert and --tls-key, or [tls]), listen on loopback or a Unix \
             socket, or, behind a TLS-terminating proxy, pass --allow-plaintext (or set server.allow_plaintext)"
        )));
    }
    if !addr.is_local() {
        tracing::warn!(address = %addr, "serving plaintext {what} on a non-loopback address (allowed explicitly)");
    }
    Ok(None)
}

/// The transport's name for the "serving" log line.
pub(super) fn describe(tls: Option<&TlsReloader>) -> &'static str {
    match tls {
        None => "plaintext",
        Some(tls) => match tls.settings().client_ca {
            None => "TLS",
            Some((_, config::ClientAuth::Required)) => "mTLS, client certificate required",
            Some((_, config::ClientAuth::Optional)) => "mTLS, client certificate optional",
        },
    }
}
