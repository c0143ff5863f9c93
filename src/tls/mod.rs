//! TLS on the gRPC listener (rustls, ring): the server's certificate and key, and for mTLS the
//! client CA, read from PEM files into a rustls `ServerConfig`. keyward owns the acceptor
//! (`incoming`), so a reload (`reload`) swaps the config new handshakes use while established
//! connections go on; `identity` maps verified client certificates to keys.
//!
//! No private key byte reaches a log or an error: errors about the key file say what is wrong
//! with it, never what it holds.

mod identity;
mod incoming;
mod reload;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use zeroize::Zeroizing;

pub use self::{
    identity::{Identities, Resolution},
    incoming::incoming,
    reload::{Reloaded, TlsReloader, watch},
};
use crate::config::{ClientAuth, TlsSettings};

/// `config` (keyward's TLS configuration in force now) offering HTTP/1.1 instead of h2: for the
/// HTTP/1 listeners (forward-auth, console).
pub fn http1_only(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS file that cannot be used, or a configuration rustls refuses. Says which file and
/// what is wrong; never quotes a private key.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of the configured files as read at one moment.
struct Files {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))
        };
        Ok(Self {
            cert: read(&settings.cert, "certificate")?,
            key: Zeroizing::new(read(&settings.key, "private key")?),
            client_ca: settings.client_ca.as_ref().map(|(ca, _)| read(ca, "client CA")).transpose()?,
        })
    }

    /// Tells one set of contents from another (a hash; the bytes are not kept).
    fn fingerprint(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for part in [Some(&self.cert[..]), Some(&self.key[..]), self.client_ca.as_deref()] {
            let part = part.unwrap_or_default();
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    }

    /// The rustls configuration these files make, and what the certificate says about itself.
    fn build(&self, settings: &TlsSettings) -> Result<(ServerConfig, CertSummary), TlsError> {
        let cert_path = settings.cert.display();
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("{cert_path}: not a PEM certificate chain: {e}")))?;
        let leaf = chain.first().ok_or_else(|| {
            TlsError(format!("{cert_path}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)"))
        })?;
        let summary =
            CertSummary::of(leaf).ok_or_else(|| TlsError(format!("{cert_path}: not an X.509 certificate")))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| {
            let what = match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no unencrypted private key in it (expected PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or \
                     `EC PRIVATE KEY`)"
                }
                _ => "not a valid PEM private key",
            };
            TlsError(format!("{}: {what}", settings.key.display()))
        })?;

        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("protocol versions: {e}")))?;
        let builder = match &settings.client_ca {
            Some((path, auth)) => {
                let pem = self.client_ca.as_deref().unwrap_or_default();
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| TlsError(format!("{}: not a PEM certificate: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| TlsError(format!("{}: not a usable CA: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(TlsError(format!("{}: no CA certificate in it", path.display())));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| TlsError(format!("{}: client CA: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError(format!("{cert_path} with the key {}: {e}", settings.key.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok((config, summary))
    }
}

/// What the log says about a loaded certificate: public facts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub serial: String,
    pub not_after: String,
    /// Time left until it expires; `None` when it already has.
    pub expires_in: Option<Duration>,
}

impl CertSummary {
    fn of(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
        let not_after = &parsed.validity().not_after;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
        let left = not_after.timestamp() - now;
        Some(Self {
            subject: parsed.subject().to_string(),
            serial: parsed.raw_serial_as_string(),
            not_after: not_after.to_string(),
            expires_in: (left > 0).then(|| Duration::from_secs(left as u64)),
        })
    }

    fn log(&self, what: &str) {
        match self.expires_in {
            None => tracing::warn!(subject = %self.subject, serial = %self.serial, not_after = %self.not_after,
                "{what}: the server certificate has expired; clients will refuse it"),
            Some(left) if left < Duration::from_secs(14 * 86_400) => {
                tracing::warn!(subject = %self.subject, serial = %self.serial, not_after = %self.not_after,
                    "{what}: the server certificate expires within 14 days")
            }
            Some(_) => {
                tracing::info!(subject = %self.subject, serial = %self.serial, not_after = %self.not_after, "{what}")
            }
        }
    }
}

/// Warns when the private key file can be read by others than its owner.
fn check_key_permissions(path: &Path) {
    let shared = std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0);
    if shared {
        tracing::warn!(path = %path.display(), "the TLS private key file is readable by other users; chmod 600 it");
    }
}

#[cfg(test)]
mod tests;
