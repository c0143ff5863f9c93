//! `/v1/authorize`: one forward-auth question from nginx (`auth_request`), Caddy
//! (`forward_auth`) or Traefik (`ForwardAuth`), translated to the gateway core and back. The
//! gateway proves itself with `X-Keyward-Gateway-Key` (or its mTLS certificate); the end
//! client's key, the original method, URI and client address come in the copied request headers;
//! the answer is 200 with identity headers, or the client's denial (401, 403, 429), or a
//! gateway-side failure with error codes of its own (`gateway_unauthenticated`, …).

use std::sync::Arc;

pub use crate::http1::Connection;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::{
    domain::{
        access::{Caller, RequestContext},
        auth::Authenticator,
        error::Error,
        ports::{Hsm, Store},
    },
    gateway::{self, Allowed, Decision, Denial, Gatekeeper, GatewayRequest},
    tls::{Identities, Resolution},
};

/// The header carrying the gateway's own key (one holding `keyward:verify`). Not
/// `Authorization`: the gateway copies the end client's headers, whose `Authorization` is
/// usually the client's key.
pub const GATEWAY_KEY_HEADER: &str = "x-keyward-gateway-key";
/// Space-separated scopes the route needs, set by the gateway's configuration per location.
pub const REQUIRED_SCOPES_HEADER: &str = "x-keyward-required-scopes";
/// The query parameter that adds required scopes (repeatable, or space-separated).
pub const SCOPE_PARAM: &str = "scope";
pub const FORWARDED_METHOD: &str = "x-forwarded-method";
pub const FORWARDED_URI: &str = "x-forwarded-uri";
pub const FORWARDED_FOR: &str = "x-forwarded-for";
/// The original request's `Content-Length` and `Transfer-Encoding` (gateways send keyward no
/// body, and drop these): whether it has a body.
pub const FORWARDED_CONTENT_LENGTH: &str = "x-forwarded-content-length";
pub const FORWARDED_TRANSFER_ENCODING: &str = "x-forwarded-transfer-encoding";
/// A refusal's error code (as in its JSON body), for gateways that drop the body (nginx).
pub const ERROR_HEADER: &str = "x-keyward-error";
/// Uses left on a key with a quota, in an allowed answer.
pub const RATE_LIMIT_REMAINING: &str = "x-ratelimit-remaining";

pub type Body = Full<Bytes>;

/// The forward-auth endpoint over the domain.
pub struct ForwardAuth<H, S> {
    auth: Arc<Authenticator<H, S>>,
    gatekeeper: Gatekeeper<H, S>,
    identities: Arc<Identities>,
}

impl<H: Hsm, S: Store> ForwardAuth<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, gatekeeper: Gatekeeper<H, S>, identities: Arc<Identities>) -> Self {
        Self { auth, gatekeeper, identities }
    }

    /// Whether keyward can answer: the HSM is reachable and (cluster mode) the store current.
    pub fn serving(&self) -> bool {
        self.auth.is_healthy() && self.auth.store_current()
    }

    /// The answer to one forward-auth request.
    pub async fn authorize<B>(&self, request: &Request<B>, connection: &Connection) -> Response<Body> {
        let headers = request.headers();
        let caller = match self.gateway(headers, connection).await {
            Ok(caller) => caller,
            Err(e) => return failure(&e, true),
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let method = header(FORWARDED_METHOD).unwrap_or(request.method().as_str());
        let gateway_request = GatewayRequest {
            method,
            path: header(FORWARDED_URI).unwrap_or(""),
            authority: header("x-forwarded-host").unwrap_or(""),
            scheme: header("x-forwarded-proto").unwrap_or(""),
            header: &header,
            // With the header, the client is its rightmost entry (or the one the trusted
            // proxies vouch for); without it, whoever connected.
            direct_client: if headers.contains_key(FORWARDED_FOR) { None } else { connection.peer.map(|p| p.ip()) },
            route_scopes: required_scopes(headers, request.uri().query()),
            has_body: has_body(&header),
            body: gateway::Body::NotForwarded,
        };
        match self.gatekeeper.decide(&caller, gateway_request).await {
            Ok(Decision::Allow(allowed)) => allow(&allowed),
            Ok(Decision::Deny(denial)) => deny(denial),
            Err(e) => failure(&e, false),
        }
    }

    /// The gateway asking: its key in `X-Keyward-Gateway-Key`, else its client certificate.
    async fn gateway(&self, headers: &HeaderMap, connection: &Connection) -> Result<Caller, Error> {
        let ctx = RequestContext { client_addr: connection.peer };
        if let Some(value) = headers.get(GATEWAY_KEY_HEADER) {
            let key = value.to_str().map(str::trim).unwrap_or("");
            return self.auth.authenticate(Some(key), &ctx).await;
        }
        match connection.client_cert.as_ref().map(|cert| self.identities.resolve(cert)) {
            None => self.auth.authenticate(None, &ctx).await,
            Some(Resolution::Key(id)) => self.auth.authenticate_identity(id, &ctx).await,
            Some(Resolution::Unmapped) => Err(Error::Unauthenticated("the client certificate stands for no key")),
            Some(Resolution::Ambiguous) => {
                Err(Error::Unauthenticated("the client certificate's names are mapped to different keys"))
            }
        }
    }
}

/// Whether the original request has a body, from what the gateway forwards of its length
/// (or, from a gateway that copies them, its own `Content-Length` and `Transfer-Encoding`).
fn has_body<'a>(header: &dyn Fn(&str) -> Option<&'a str>) -> bool {
    let sized = |name| header(name).map(str::trim).is_some_and(|l| !l.is_empty() && l != "0");
    let chunked = |name| header(name).is_some_and(|t| !t.trim().is_empty());
    sized(FORWARDED_CONTENT_LENGTH)
        || chunked(FORWARDED_TRANSFER_ENCODING)
        || sized("content-length")
        || chunked("transfer-encoding")
}

/// The scopes of every `X-Keyward-Required-Scopes` header and `scope` query parameter, each
/// space-separated, without repeats.
pub fn required_scopes(headers: &HeaderMap, query: Option<&str>) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    let from_headers =
        headers.get_all(REQUIRED_SCOPES_HEADER).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned);
    let from_query = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').filter(|(name, _)| *name == SCOPE_PARAM).map(|(_, value)| value))
        .map(form_decode);
    for list in from_headers.chain(from_query) {
        for scope in list.split_whitespace() {
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
    }
    scopes
}

/// A query value, form-decoded (a malformed escape is kept as written: the scope it is in then
/// fails validation, a clear 400).
fn form_decode(value: &str) -> String {
    String::from_utf8_lossy(&crate::gateway::form_decode(value)).into_owned()
}

/// A refusal: `{"error":"<code>"}`, the code also in `X-Keyward-Error`.
fn refusal(status: StatusCode, code: &'static str) -> Response<Body> {
    let mut response = json(status, format!("{{\"error\":\"{code}\"}}"));
    response.headers_mut().insert(HeaderName::from_static(ERROR_HEADER), HeaderValue::from_static(code));
    response
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 200 with who called, for the gateway to copy to the upstream.
fn allow(allowed: &Allowed) -> Response<Body> {
    let mut response = json(StatusCode::OK, String::new());
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    // Every identity header, the owner empty for a key without one: a gateway that copies a
    // header the answer lacks may pass its own placeholder on (Caddy 2.6 does).
    for (name, value) in allowed.identity_headers() {
        let value = value.unwrap_or_default();
        match HeaderValue::from_bytes(value.as_bytes()) {
            Ok(value) => {
                headers.insert(HeaderName::from_static(name), value);
            }
            Err(_) => {
                tracing::warn!(header = name, key_id = %allowed.key_id, "an identity value cannot be an HTTP header value; left out")
            }
        }
    }
    if let Some(remaining) = allowed.remaining {
        headers.insert(HeaderName::from_static(RATE_LIMIT_REMAINING), HeaderValue::from(remaining));
    }
    response
}

/// The client's denial, as the gateway passes it on.
fn deny(denial: Denial) -> Response<Body> {
    let status = StatusCode::from_u16(denial.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = refusal(status, denial.error_code());
    let headers = response.headers_mut();
    if denial.challenges() {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = denial.retry_after_secs() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A failure that is not the end client's: the gateway's own credential (`asking`), a bad
/// question, or keyward unable to answer now.
fn failure(error: &Error, asking: bool) -> Response<Body> {
    let (status, code) = failure_status(error, asking);
    match status {
        StatusCode::SERVICE_UNAVAILABLE => tracing::warn!(error = %error, "forward-auth: keyward cannot answer"),
        _ => tracing::info!(error = %error, status = status.as_u16(), "forward-auth: refused the gateway's request"),
    }
    let mut response = refusal(status, code);
    if let Error::Blocked(wait) = error {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The status and error code of a gateway-side failure.
fn failure_status(error: &Error, asking: bool) -> (StatusCode, &'static str) {
    match error {
        Error::Unauthenticated(_) if asking => (StatusCode::UNAUTHORIZED, "gateway_unauthenticated"),
        Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "gateway_forbidden"),
        Error::Blocked(_) => (StatusCode::TOO_MANY_REQUESTS, "gateway_blocked"),
        Error::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        // Not found and the like cannot come of a verification: failing closed, as unavailable.
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

/// `GET /healthz`: 200 while keyward can answer, 503 otherwise.
pub fn health(serving: bool, method: &Method) -> Response<Body> {
    let (status, body) = if serving {
        (StatusCode::OK, "{\"status\":\"serving\"}")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"not_serving\"}")
    };
    let mut response = json(status, if method == Method::HEAD { String::new() } else { body.to_owned() });
    if method != Method::GET && method != Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        *response.body_mut() = Full::new(Bytes::from_static(b"{\"error\":\"method_not_allowed\"}"));
    }
    response
}

/// 404 for any other path.
pub fn not_found() -> Response<Body> {
    refusal(StatusCode::NOT_FOUND, "not_found")
}

/// 503 for a question beyond the questions answered at once.
pub fn overloaded() -> Response<Body> {
    refusal(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
}

/// 503 for a question not answered within the request timeout.
pub fn timed_out() -> Response<Body> {
    tracing::warn!("forward-auth: a request was not answered within the request timeout");
    refusal(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_come_from_the_header_and_every_scope_parameter_once_each() {
        let mut headers = HeaderMap::new();
        headers.append(REQUIRED_SCOPES_HEADER, HeaderValue::from_static("orders:read  orders:write"));
        headers.append(REQUIRED_SCOPES_HEADER, HeaderValue::from_static("audit"));
        let query = Some("x=1&scope=orders%3Aread+billing&scope=reports&scopes=ignored&scope");
        assert_eq!(required_scopes(&headers, query), ["orders:read", "orders:write", "audit", "billing", "reports"],);
        assert!(required_scopes(&HeaderMap::new(), None).is_empty());
    }

    #[test]
    fn form_decoding_keeps_a_malformed_escape_as_written() {
        assert_eq!(form_decode("a%20b+c"), "a b c");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn gateway_failures_have_codes_of_their_own() {
        let code = |e: Error, asking| {
            let (status, code) = failure_status(&e, asking);
            (status.as_u16(), code)
        };
        assert_eq!(code(Error::Unauthenticated("x"), true), (401, "gateway_unauthenticated"));
        assert_eq!(code(Error::PermissionDenied("x".into()), true), (403, "gateway_forbidden"));
        assert_eq!(code(Error::Unavailable("hsm".into()), false), (503, "unavailable"));
        assert_eq!(code(Error::invalid("required_scopes", "bad"), false), (400, "bad_request"));
        assert_eq!(code(Error::Blocked(std::time::Duration::from_secs(3)), true), (429, "gateway_blocked"));
    }
}
