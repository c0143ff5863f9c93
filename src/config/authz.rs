//! `[authz]`: how gateways' requests are authorised (Envoy ext_authz, HTTP forward-auth): where
//! the client's key is read, whether it is stripped before the upstream, which proxies'
//! `X-Forwarded-For` entries are trusted, and keyward's own route rules (`[[authz.routes]]`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The header that carries `Bearer <key>`; every other key header carries the bare key.
pub const BEARER_HEADER: &str = "authorization";
/// The most route rules keyward takes (each request is matched against all of them).
pub const MAX_ROUTES: usize = 1_000;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzSection {
    /// Where the client's key is looked for, in order; the first header present wins.
    /// `authorization` is read as `Bearer <key>`, any other header as the bare key.
    pub key_headers: Vec<String>,
    /// Remove the header that carried the key before the upstream sees it (Envoy ext_authz).
    pub strip_key_header: bool,
    /// Proxies in front of the gateway whose `X-Forwarded-For` entries are trusted. 0: the
    /// client is the address the gateway itself saw.
    pub trusted_proxy_hops: usize,
    /// Scopes by method and path, added to those the gateway's route asks for. First match wins.
    pub routes: Vec<RouteRule>,
}

impl Default for AuthzSection {
    fn default() -> Self {
        Self {
            key_headers: vec![BEARER_HEADER.into(), "x-api-key".into()],
            strip_key_header: true,
            trusted_proxy_hops: 0,
            routes: Vec::new(),
        }
    }
}

/// `[[authz.routes]]`: requests whose method and path match need `scopes`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Methods this rule applies to (any when empty), e.g. `["GET", "HEAD"]`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A path glob: `*` matches within one segment, `**` across segments (`/orders/**`). The
    /// query string is not part of the path.
    pub path: String,
    pub scopes: Vec<String>,
}

impl AuthzSection {
    /// Refuses what could never match or would let a key through unnoticed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why: String| Err(ConfigError::Invalid(why));
        if self.key_headers.is_empty() {
            return invalid("authz.key_headers is empty: no request could present a key".into());
        }
        for name in &self.key_headers {
            if http_token(name).is_none() {
                return invalid(format!("authz.key_headers: {name:?} is not a header name"));
            }
        }
        if self.trusted_proxy_hops > 16 {
            return invalid("authz.trusted_proxy_hops: at most 16".into());
        }
        if self.routes.len() > MAX_ROUTES {
            return invalid(format!("authz.routes: at most {MAX_ROUTES} rules"));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !route.path.starts_with('/') {
                return invalid(format!("authz.routes[{i}].path: {:?} does not start with '/'", route.path));
            }
            if route.scopes.is_empty() {
                return invalid(format!("authz.routes[{i}].scopes is empty"));
            }
            if let Some(method) = route.methods.iter().find(|m| http_token(m).is_none()) {
                return invalid(format!("authz.routes[{i}].methods: {method:?} is not a method"));
            }
        }
        Ok(())
    }
}

/// `name` when it is an HTTP token (a header name or a method), else `None`.
fn http_token(name: &str) -> Option<&str> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    (!name.is_empty() && name.chars().all(token)).then_some(name)
}
