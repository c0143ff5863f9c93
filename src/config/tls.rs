//! `[tls]`: the TLS files of the gRPC listener, the flags over them, and their consistency checks.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, human};

/// TLS on the gRPC listener (see `crate::tls`); `--tls-cert`, `--tls-key` and `--client-ca` win.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server's certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether every client must present a certificate. Default `required`.
    pub client_auth: Option<ClientAuth>,
    /// How often the files are checked for changes (`"off"`: only on SIGHUP).
    #[serde(with = "human::off")]
    pub reload_interval: Option<Duration>,
    /// A verified client certificate's SAN (URI or DNS name) → the key id it stands for.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub identities: std::collections::BTreeMap<String, String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            client_auth: None,
            reload_interval: Some(Duration::from_secs(5)),
            identities: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate from `client_ca`.
    Required,
    /// A certificate, if presented, must chain to `client_ca`; clients without one may still
    /// authenticate with a bearer key.
    Optional,
}

/// The TLS files given on the command line, over `[tls]`.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// What the server needs to serve TLS, checked for consistency (the files are read later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With the client authentication it requires.
    pub client_ca: Option<(PathBuf, ClientAuth)>,
    pub reload_interval: Option<Duration>,
}

impl TlsSection {
    /// The TLS settings with the flags over the file, or `None` for plaintext. Refuses
    /// combinations that cannot work (a key without a certificate, mTLS without TLS...).
    pub fn settings(&self, flags: &TlsFlags) -> Result<Option<TlsSettings>, ConfigError> {
        let cert = flags.cert.clone().or_else(|| self.cert.clone());
        let key = flags.key.clone().or_else(|| self.key.clone());
        let client_ca = flags.client_ca.clone().or_else(|| self.client_ca.clone());
        let invalid = |reason: &str| Err(ConfigError::Invalid(format!("TLS: {reason}")));
        if self.client_auth.is_some() && client_ca.is_none() {
            return invalid("tls.client_auth needs tls.client_ca (or --client-ca)");
        }
        if !self.identities.is_empty() && client_ca.is_none() {
            return invalid(
                "tls.identities needs tls.client_ca (or --client-ca): only verified client certificates stand for keys",
            );
        }
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if client_ca.is_some() => {
                return invalid(
                    "a client CA (tls.client_ca, --client-ca) needs the server's own certificate and key: set \
                     tls.cert and tls.key (or --tls-cert and --tls-key)",
                );
            }
            (None, None) => return Ok(None),
            (Some(_), None) => return invalid("a certificate without its private key: set tls.key (or --tls-key)"),
            (None, Some(_)) => {
                return invalid("a private key without its certificate: set tls.cert (or --tls-cert)");
            }
        };
        let client_ca = client_ca.map(|ca| (ca, self.client_auth.unwrap_or(ClientAuth::Required)));
        Ok(Some(TlsSettings { cert, key, client_ca, reload_interval: self.reload_interval }))
    }
}
