//! [`Client`] and its [`ClientBuilder`]: a connection to keyward's VerifyService (TLS, mTLS,
//! the caller's own key, timeouts, lazy connection, the opt-in cache).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use zeroize::Zeroizing;

use crate::{
    ApiKey, BearerInterceptor, CacheConfig, Error, Verification, VerifyOptions,
    cache::VerdictCache,
    proto::{self, verify_service_client::VerifyServiceClient},
};

/// How long connecting may take unless set otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one verification may take unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of keyward's VerifyService. Cheap to clone: clones share one connection (and the
/// cache, if any).
///
/// ```no_run
/// # async fn run() -> Result<(), keyward_client::Error> {
/// use keyward_client::{Client, Verification, VerifyOptions};
///
/// let client = Client::builder("http://127.0.0.1:50051")
///     .caller_key(std::env::var("KEYWARD_CALLER_KEY").unwrap_or_default())
///     .connect()
///     .await?;
/// let options = VerifyOptions { scopes: vec!["orders:read".into()], ..Default::default() };
/// match client.verify("kw_presented_by_the_end_client", options).await? {
///     Verification::Valid(key) => println!("key {} ({})", key.id, key.name),
///     Verification::Denied { reason, retry_after } => println!("refused: {reason:?} {retry_after:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    verify: VerifyServiceClient<InterceptedService<Channel, BearerInterceptor>>,
    cache: Option<Arc<VerdictCache>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("cache", &self.cache.as_ref().map(|c| c.config())).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to keyward at `endpoint` (`http://host:port`, or `https://` with a CA set on the
    /// builder) with default settings and no caller key: keyward then accepts the client only
    /// through an mTLS identity. Most callers want [`Client::builder`] and
    /// [`ClientBuilder::caller_key`].
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Client::builder(endpoint).connect().await
    }

    /// A builder for a client of keyward at `endpoint`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// Asks keyward about `key`, the key presented by an end client.
    ///
    /// A refused key is `Ok(Verification::Denied { .. })`; `Err` means there is no verdict
    /// (keyward unreachable, the caller's own key refused, ...): fail closed on it.
    ///
    /// Without a cache every call asks keyward. With one ([`ClientBuilder::cache`]), a VALID
    /// verdict for the same key and options may come from memory.
    pub async fn verify(&self, key: &str, options: VerifyOptions) -> Result<Verification, Error> {
        let slot = self.cache.as_ref().map(|cache| (cache, cache.slot(key, &options)));
        if let Some((cache, slot)) = &slot {
            if let Some(verified) = cache.get(slot) {
                return Ok(Verification::Valid(verified));
            }
        }
        let request = proto::VerifyKeyRequest {
            key: key.to_owned(),
            client_ip: options.client_ip.map(|ip| ip.to_canonical().to_string()).unwrap_or_default(),
            required_scopes: options.scopes,
            cost: options.cost,
        };
        let response = self.verify.clone().verify_key(request).await?.into_inner();
        let verification = Verification::try_from(response)?;
        if let (Some((cache, slot)), Verification::Valid(verified)) = (slot, &verification) {
            cache.insert(slot, verified.clone());
        }
        Ok(verification)
    }

    /// Asks keyward about a signed request (RFC 9421, `hmac-sha256`): its signature base (the
    /// exact bytes that were signed, ending with the `"@signature-params"` line) and its
    /// signature. keyward finds the signing key by the `keyid` parameter, checks the signature
    /// in its HSM, refuses a stale `created` and a nonce it has seen (`DenyReason::Replayed`),
    /// then applies the key's policies as [`Client::verify`] does. Never cached: every signed
    /// request is a new nonce.
    ///
    /// A service that receives signed requests rebuilds the base from the request's covered
    /// components (any RFC 9421 library does); [`crate::RequestSigner`] returns the base it
    /// signed.
    pub async fn verify_signature(
        &self,
        signature_base: &[u8],
        signature: &[u8],
        options: VerifyOptions,
    ) -> Result<Verification, Error> {
        let request = proto::VerifySignatureRequest {
            signature_base: signature_base.to_vec(),
            signature: signature.to_vec(),
            client_ip: options.client_ip.map(|ip| ip.to_canonical().to_string()).unwrap_or_default(),
            required_scopes: options.scopes,
            cost: options.cost,
        };
        let response = self.verify.clone().verify_signature(request).await?.into_inner();
        Verification::try_from(response)
    }
}

/// Settings of a [`Client`]: TLS, mTLS, the caller's own key, timeouts, lazy connection and
/// the opt-in cache.
///
/// ```no_run
/// # async fn run() -> Result<(), keyward_client::Error> {
/// use std::time::Duration;
/// use keyward_client::Client;
///
/// let client = Client::builder("https://keyward.internal:50051")
///     .ca_file("/etc/keyward/ca.pem")
///     .client_identity_files("/etc/orders/client.pem", "/etc/orders/client.key")
///     .timeout(Duration::from_secs(2))
///     .lazy(true)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct ClientBuilder {
    endpoint: String,
    caller_key: Option<ApiKey>,
    ca: Option<Pem>,
    identity: Option<(Pem, Pem)>,
    tls_domain: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    lazy: bool,
    cache: Option<CacheConfig>,
}

/// PEM given in memory, or a file to read when connecting. Private keys are wiped after use.
enum Pem {
    Bytes(Zeroizing<Vec<u8>>),
    File(PathBuf),
}

impl Pem {
    fn read(&self, what: &'static str) -> Result<Zeroizing<Vec<u8>>, Error> {
        match self {
            Pem::Bytes(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path).map(Zeroizing::new).map_err(|source| Error::ReadFile {
                what,
                path: path.clone(),
                source,
            }),
        }
    }
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("caller_key", &self.caller_key)
            .field("tls", &(self.ca.is_some() || self.identity.is_some()))
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("lazy", &self.lazy)
            .field("cache", &self.cache)
            .finish()
    }
}

impl ClientBuilder {
    /// Default settings for keyward at `endpoint`: no TLS unless the endpoint is `https://`,
    /// no caller key, [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_TIMEOUT`], eager connection,
    /// no cache.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientBuilder {
            endpoint: endpoint.into(),
            caller_key: None,
            ca: None,
            identity: None,
            tls_domain: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            lazy: false,
            cache: None,
        }
    }

    /// The caller's own key, sent as `authorization: Bearer …` with every call. It must hold
    /// `keyward:verify`. Kept in an [`ApiKey`]: wiped on drop, never printed.
    pub fn caller_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.caller_key = Some(key.into());
        self
    }

    /// The CA certificate(s) (PEM) that keyward's server certificate must chain to. Turns on TLS.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Bytes(Zeroizing::new(pem.into())));
        self
    }

    /// Like [`ca_pem`](Self::ca_pem), read from a file when connecting.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca = Some(Pem::File(path.as_ref().to_owned()));
        self
    }

    /// mTLS: the client certificate chain and its private key (both PEM). keyward maps the
    /// certificate to a key of its own (see its TLS docs); no caller key is then needed.
    pub fn client_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((Pem::Bytes(Zeroizing::new(cert.into())), Pem::Bytes(Zeroizing::new(key.into()))));
        self
    }

    /// Like [`client_identity_pem`](Self::client_identity_pem), read from files when connecting.
    pub fn client_identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some((Pem::File(cert.as_ref().to_owned()), Pem::File(key.as_ref().to_owned())));
        self
    }

    /// The name keyward's certificate must carry, when it is not the endpoint's host.
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        self.tls_domain = Some(name.into());
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one verification may take; past it the call fails with `DEADLINE_EXCEEDED`
    /// (or `CANCELLED`), which [`Error::is_unavailable`] counts as keyward being unavailable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect on first use instead of in [`connect`](Self::connect): a service can then
    /// start while keyward is down (its requests fail closed until keyward is back).
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Opt in to caching VALID verdicts, within `config`'s bound. Off by default: read
    /// [`CacheConfig`] for what a cache costs (a revoked key is accepted for up to `ttl`).
    pub fn cache(mut self, config: CacheConfig) -> Self {
        self.cache = Some(config);
        self
    }

    /// Builds the client; connects now unless [`lazy`](Self::lazy).
    pub async fn connect(self) -> Result<Client, Error> {
        let endpoint = self.endpoint()?;
        let channel =
            if self.lazy { endpoint.connect_lazy() } else { endpoint.connect().await.map_err(Error::Connect)? };
        let bearer = match self.caller_key {
            Some(key) => BearerInterceptor::new(key)?,
            None => BearerInterceptor::none(),
        };
        let cache = self.cache.map(VerdictCache::new).transpose()?;
        Ok(Client { verify: VerifyServiceClient::with_interceptor(channel, bearer), cache })
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout);
        let https = endpoint.uri().scheme_str() == Some("https");
        if https || self.ca.is_some() || self.identity.is_some() {
            if !https {
                return Err(Error::Config("TLS settings need an https:// endpoint".into()));
            }
            let Some(ca) = &self.ca else {
                return Err(Error::Config("an https:// endpoint needs the CA (ca_pem or ca_file)".into()));
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&*ca.read("CA certificate")?));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(&*cert.read("client certificate")?, &*key.read("client key")?));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| Error::Config(format!("TLS: {e}")))?;
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tls_settings_need_https_and_https_needs_a_ca() {
        let plain_with_ca = Client::builder("http://127.0.0.1:1").ca_pem("x").lazy(true).connect().await;
        assert!(matches!(plain_with_ca, Err(Error::Config(m)) if m.contains("https://")));
        let https_without_ca = Client::builder("https://127.0.0.1:1").lazy(true).connect().await;
        assert!(matches!(https_without_ca, Err(Error::Config(m)) if m.contains("CA")));
    }

    #[tokio::test]
    async fn a_missing_ca_file_is_named() {
        let result = Client::builder("https://127.0.0.1:1").ca_file("/nonexistent/ca.pem").lazy(true).connect().await;
        assert!(matches!(result, Err(Error::ReadFile { what: "CA certificate", .. })));
    }

    #[tokio::test]
    async fn a_bad_endpoint_is_a_config_error() {
        assert!(matches!(Client::connect("not a uri").await, Err(Error::Config(_))));
    }

    #[tokio::test]
    async fn the_builder_never_prints_the_caller_key() {
        let builder = Client::builder("http://127.0.0.1:1").caller_key("kw_secretvalue");
        assert!(!format!("{builder:?}").contains("secretvalue"));
    }

    #[tokio::test]
    async fn a_lazy_client_to_a_closed_port_is_unavailable_on_use() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let client = Client::builder("http://127.0.0.1:1").lazy(true).connect().await.unwrap();
        let error = client.verify("kw_x", VerifyOptions::default()).await.unwrap_err();
        assert!(error.is_unavailable(), "{error:?}");
    }
}
