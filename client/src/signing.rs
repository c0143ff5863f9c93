//! [`RequestSigner`]: signs outgoing HTTP requests with a keyward signing key (RFC 9421 HTTP
//! Message Signatures, `hmac-sha256`, with a `created` time and a fresh nonce; RFC 9530
//! `Content-Digest` for a body), and [`SigningSecret`], the key's secret in memory.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac};
use http::{HeaderValue, Request, header::HOST};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The label of the signature this crate adds (`Signature-Input: sig1=…`).
pub const SIGNATURE_LABEL: &str = "sig1";

/// A signing key's secret (`CreateKeyResponse.signing_secret`): wiped when dropped, never printed.
///
/// ```
/// use keyward_client::SigningSecret;
///
/// let secret = SigningSecret::new(vec![7; 32]);
/// assert_eq!(format!("{secret:?}"), "SigningSecret(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Zeroizing<Vec<u8>>);

impl SigningSecret {
    /// Wraps the secret's bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        SigningSecret(Zeroizing::new(secret.into()))
    }

    /// The secret from its hexadecimal form (64 digits for keyward's 32 bytes), as an operator
    /// may keep it in a file; surrounding whitespace is ignored.
    pub fn from_hex(hex: &str) -> Result<Self, SignError> {
        let hex = hex.trim();
        if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignError::BadSecret);
        }
        let digit = |b: u8| (b as char).to_digit(16).expect("checked above") as u8;
        let bytes = hex.as_bytes().chunks(2).map(|pair| digit(pair[0]) << 4 | digit(pair[1])).collect::<Vec<_>>();
        Ok(SigningSecret::new(bytes))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// `@authority` (or `@target-uri`) is covered but the request has neither an absolute URI
    /// nor a `Host` header.
    #[error("the request has no authority (an absolute URI or a Host header)")]
    NoAuthority,
    /// `@scheme` or `@target-uri` is covered but the request's URI has no scheme.
    #[error("the request's URI has no scheme")]
    NoScheme,
    /// A covered header field is not in the request.
    #[error("the covered header field `{0}` is not in the request")]
    MissingHeader(String),
    /// A covered component this signer does not produce.
    #[error(
        "`{0}` is not a component this signer covers (derived: @method, @authority, @scheme, @target-uri, @path, @query; or a header field name)"
    )]
    UnsupportedComponent(String),
    /// The key id is not a plain token keyward gave out (letters, digits, `-`).
    #[error("the key id is not one keyward gave out")]
    BadKeyId,
    /// The secret's text is not hexadecimal.
    #[error("the signing secret is not hexadecimal")]
    BadSecret,
}

/// What was signed: the signature base (the exact bytes the MAC covers) and the signature, as
/// keyward's `VerifySignature` takes them ([`crate::Client::verify_signature`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    /// The RFC 9421 signature base, its last line `"@signature-params": …`.
    pub signature_base: Vec<u8>,
    /// The HMAC-SHA256 of the base.
    pub signature: Vec<u8>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The base is what the request shows anyway; the signature is a bearer proof for as long
        // as its nonce is unused, so it is not printed.
        f.debug_struct("Signed")
            .field("signature_base", &String::from_utf8_lossy(&self.signature_base))
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// Signs outgoing requests with one keyward signing key.
///
/// Each request gets `Signature-Input` and `Signature` headers (label `sig1`) covering the
/// configured components (by default `@method`, `@authority` and `@target-uri`), with
/// `created` (now), `keyid`, `alg="hmac-sha256"` and a random 128-bit `nonce`; a request with a
/// body also gets `Content-Digest` (`sha-256`), and the signature covers it: keyward refuses a
/// signed request with a body whose signature does not.
///
/// ```
/// use keyward_client::{RequestSigner, SigningSecret};
///
/// // The key id and secret from CreateKey with kind KEY_KIND_SIGNING.
/// let signer = RequestSigner::new("01a2095b-a07a-7423-8736-f821a5735572", SigningSecret::new(vec![7; 32]));
/// let mut request = http::Request::post("https://api.example.com/orders?page=2")
///     .header("content-type", "application/json")
///     .body(br#"{"order": 42}"#.to_vec())
///     .unwrap();
/// signer.sign(&mut request).unwrap();
/// assert!(request.headers()["signature-input"].to_str().unwrap().starts_with(
///     r#"sig1=("@method" "@authority" "@target-uri" "content-digest");created="#
/// ));
/// assert!(request.headers().contains_key("content-digest"));
/// ```
#[derive(Debug, Clone)]
pub struct RequestSigner {
    key_id: String,
    secret: SigningSecret,
    components: Vec<String>,
}

impl RequestSigner {
    /// A signer for the signing key `key_id` (`CreateKeyResponse.info.key_id`) with its
    /// `secret` (`CreateKeyResponse.signing_secret`).
    pub fn new(key_id: impl Into<String>, secret: SigningSecret) -> Self {
        let components = ["@method", "@authority", "@target-uri"].map(String::from).to_vec();
        RequestSigner { key_id: key_id.into(), secret, components }
    }

    /// Covers these components instead of the default ones: derived components (`@method`,
    /// `@authority`, `@scheme`, `@target-uri`, `@path`, `@query`) and header field names.
    /// `content-digest` is added for a request with a body whether it is named or not.
    pub fn covering<I, S>(mut self, components: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.components = components.into_iter().map(|c| c.into().to_ascii_lowercase()).collect();
        self
    }

    /// Signs `request` now, adding its headers; returns what was signed.
    pub fn sign<B: AsRef<[u8]>>(&self, request: &mut Request<B>) -> Result<Signed, SignError> {
        self.sign_at(request, SystemTime::now())
    }

    /// Signs `request` as if at `now` (its `created`), adding its headers.
    pub fn sign_at<B: AsRef<[u8]>>(&self, request: &mut Request<B>, now: SystemTime) -> Result<Signed, SignError> {
        if self.key_id.is_empty() || !self.key_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(SignError::BadKeyId);
        }
        let mut components = self.components.clone();
        let body = request.body().as_ref();
        let digest = (!body.is_empty()).then(|| format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body))));
        if digest.is_some() && !components.iter().any(|c| c == "content-digest") {
            components.push("content-digest".into());
        }
        let mut base = String::new();
        for component in &components {
            let value = match (component.as_str(), &digest) {
                ("content-digest", Some(digest)) => digest.clone(),
                _ => component_value(request, component)?,
            };
            base.push_str(&format!("\"{component}\": {value}\n"));
        }
        let created = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the operating system's random numbers");
        let covered = components.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(" ");
        let params = format!(
            "({covered});created={created};keyid=\"{}\";alg=\"hmac-sha256\";nonce=\"{}\"",
            self.key_id,
            URL_SAFE_NO_PAD.encode(nonce)
        );
        base.push_str(&format!("\"@signature-params\": {params}"));

        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret.0).expect("HMAC takes any key length");
        mac.update(base.as_bytes());
        let signature = mac.finalize().into_bytes().to_vec();
        // The headers change only once everything is signed.
        let headers = request.headers_mut();
        let value = |text: String| HeaderValue::from_str(&text).expect("ASCII parameters");
        if let Some(digest) = digest {
            headers.insert("content-digest", value(digest));
        }
        headers.insert("signature-input", value(format!("{SIGNATURE_LABEL}={params}")));
        headers.insert("signature", value(format!("{SIGNATURE_LABEL}=:{}:", STANDARD.encode(&signature))));
        Ok(Signed { signature_base: base.into_bytes(), signature })
    }
}

/// One component's value in the signature base (RFC 9421 section 2).
fn component_value<B>(request: &Request<B>, component: &str) -> Result<String, SignError> {
    let uri = request.uri();
    let authority = || -> Result<String, SignError> {
        let from_uri = uri.authority().map(|a| a.as_str().to_owned());
        let from_host = || request.headers().get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
        from_uri.or_else(from_host).map(|a| a.to_ascii_lowercase()).ok_or(SignError::NoAuthority)
    };
    let scheme = || uri.scheme_str().map(str::to_ascii_lowercase).ok_or(SignError::NoScheme);
    let path = || if uri.path().is_empty() { "/".to_owned() } else { uri.path().to_owned() };
    let query = || format!("?{}", uri.query().unwrap_or(""));
    Ok(match component {
        "@method" => request.method().as_str().to_owned(),
        "@authority" => authority()?,
        "@scheme" => scheme()?,
        "@path" => path(),
        "@query" => query(),
        "@target-uri" => {
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!("{}://{}{}{query}", scheme()?, authority()?, path())
        }
        derived if derived.starts_with('@') => return Err(SignError::UnsupportedComponent(derived.to_owned())),
        field => {
            if field.is_empty()
                || !field.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            {
                return Err(SignError::UnsupportedComponent(field.to_owned()));
            }
            let values = request
                .headers()
                .get_all(field)
                .iter()
                .map(|v| v.to_str().map(str::trim).map_err(|_| SignError::UnsupportedComponent(field.to_owned())))
                .collect::<Result<Vec<_>, _>>()?;
            if values.is_empty() {
                return Err(SignError::MissingHeader(field.to_owned()));
            }
            values.join(", ")
        }
    })
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
