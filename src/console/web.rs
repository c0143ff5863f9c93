//! The console's HTTP plumbing: a request read whole (query, form, cookies, origin headers),
//! responses with the security headers every page carries, and the static assets.

use std::{net::SocketAddr, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use maud::Markup;

pub type Body = Full<Bytes>;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keyward_console";
/// The most bytes of form body read.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Every page's Content-Security-Policy: scripts and styles only from the console itself, no
/// inline script, no framing, forms posting only back to it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../../assets/console/console.css");
const JS: &str = include_str!("../../assets/console/console.js");
/// Where the assets are served; the version in the path lets them be cached for long.
pub const CSS_PATH: &str = "/assets/console-2.css";
pub const JS_PATH: &str = "/assets/console-2.js";

/// A request as the console's handlers see it.
pub struct Req {
    pub method: Method,
    pub path: String,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    headers: HeaderMap,
    pub peer: Option<SocketAddr>,
    pub started: Instant,
}

impl Req {
    /// Reads `request` (its form body too, up to a limit).
    pub async fn read(request: http::Request<Incoming>, peer: Option<SocketAddr>) -> Result<Self, StatusCode> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let query = parts.uri.query().map(parse_pairs).unwrap_or_default();
        let form = if parts.method == Method::POST {
            // The sign-in form carries a key: the raw body is wiped once parsed (as are the
            // parsed values, with the request).
            let bytes: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(
                Limited::new(body, MAX_FORM_BYTES)
                    .collect()
                    .await
                    .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)?
                    .to_bytes()
                    .into(),
            );
            let form_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
            if !form_type && !bytes.is_empty() {
                return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
            }
            form_urlencoded::parse(&bytes).into_owned().collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query,
            form,
            headers: parts.headers,
            peer,
            started,
        })
    }

    /// A query parameter, trimmed; empty when absent.
    pub fn query(&self, name: &str) -> &str {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).unwrap_or("")
    }

    /// A form field; empty when absent.
    pub fn field(&self, name: &str) -> &str {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    /// The session cookie's value, if sent.
    pub fn session_cookie(&self) -> Option<&str> {
        self.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
            line.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == SESSION_COOKIE).then_some(value)
            })
        })
    }

    /// Whether a POST comes from the console's own pages as far as the browser says: a
    /// cross-site `Sec-Fetch-Site`, or an `Origin` that is not this host, refuse it. (The CSRF
    /// token is checked besides.)
    pub fn same_origin(&self) -> bool {
        let header = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = header("sec-fetch-site")
            && !matches!(site, "same-origin" | "none")
        {
            return false;
        }
        match (header("origin"), header("host")) {
            (None, _) => true,
            (Some(origin), Some(host)) => {
                origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) == Some(host)
            }
            (Some(_), None) => false,
        }
    }
}

impl Drop for Req {
    /// The sign-in form carries a key: its text is wiped with the request.
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (_, value) in &mut self.form {
            value.zeroize();
        }
    }
}

fn parse_pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes()).into_owned().collect()
}

/// Adds the headers every response carries, and the server time spent (`Server-Timing`).
pub fn finish(mut response: Response<Body>, tls: bool, started: Instant) -> Response<Body> {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` with the console's own forms,
    // which the origin check would refuse.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let micros = started.elapsed().as_micros();
    let timing = format!("app;dur={}.{:03}", micros / 1000, micros % 1000);
    if let Ok(v) = HeaderValue::from_str(&timing) {
        h.insert("server-timing", v);
    }
    response
}

/// An HTML page.
pub fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(markup.into_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// A 303 to `location` (after a POST, or to the sign-in page).
pub fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Plain text, for errors before any page can be rendered.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The `Set-Cookie` value that signs a session in, or (`None`) out.
/// A session cookie lasts until the browser closes; the server ends it sooner when idle.
pub fn session_cookie(id: Option<&str>, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let text = match id {
        Some(id) => format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).expect("a cookie of hex and fixed text")
}

/// The static assets, cached for a year (their paths carry a version).
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        CSS_PATH => (CSS, "text/css; charset=utf-8"),
        JS_PATH => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    Some(response)
}

/// Parameters for links that keep the current filters.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.append_pair(k, v);
    }
    out.finish()
}
