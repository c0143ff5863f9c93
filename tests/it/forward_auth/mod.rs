//! HTTP forward-auth (`keyward serve --http-listen`, `/v1/authorize`) with a real keyward: asked
//! directly, and through real nginx (`auth_request`) and Caddy (`forward_auth`) running the
//! configurations in deploy/, in front of an upstream that echoes the headers it was given; and
//! over Unix sockets. The helpers here: a small HTTP/1.1 client (TCP or Unix socket), the echo
//! upstream, the gateways' processes and the keys every gateway test uses.

mod caddy;
mod direct;
mod nginx;
mod signed;
mod tls;
mod unix;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use keyward::proto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::common::Instance;

/// Where a request goes.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// An HTTP response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The JSON body's `error`.
    pub fn error(&self) -> String {
        let body: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON body ({e}): {:?} (status {})", self.body, self.status));
        body["error"].as_str().unwrap_or_default().to_owned()
    }

    /// The request headers the echo upstream saw (lower-case names), from its JSON body.
    pub fn upstream_saw(&self) -> BTreeMap<String, String> {
        assert_eq!(self.status, 200, "the upstream answered: {self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not the echo upstream's body ({e}): {self:?}"))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
pub async fn request(target: &Target, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(target, method, path, headers, None).await
}

/// `request` with a body (its `content-length` is set here).
pub async fn send(target: &Target, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    match target {
        Target::Tcp(addr) => {
            let stream =
                tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
            exchange(stream, method, path, headers, body).await
        }
        Target::Unix(path_) => {
            let stream = tokio::net::UnixStream::connect(path_)
                .await
                .unwrap_or_else(|e| panic!("connecting to {}: {e}", path_.display()));
            exchange(stream, method, path, headers, body).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.unwrap_or_default()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 30 s");
    match read {
        Ok(_) => {}
        // A gateway that refuses without reading the body may reset the connection once its
        // answer is out (Caddy does, for a request with `connection: close`).
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && body.is_some() && !raw.is_empty() => {}
        Err(e) => panic!("reading the response: {e}"),
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Reply { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// An upstream that answers every request with the request headers it saw, as a JSON object.
pub async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                    let mut seen = BTreeMap::new();
                    for (name, value) in request.headers() {
                        seen.insert(name.as_str().to_owned(), value.to_str().unwrap_or("<not text>").to_owned());
                    }
                    let body = serde_json::to_string(&seen).unwrap();
                    let mut response = http::Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// A free loopback port (bound, read and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// A deploy/ file with its placeholders replaced; fails if one is left.
pub fn render(file: &str, values: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (placeholder, value) in values {
        assert!(text.contains(placeholder), "{file} has no {placeholder}");
        text = text.replace(placeholder, value);
    }
    // Placeholders are `@NAME@`, upper case, outside comments.
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let left = line
            .split('@')
            .skip(1)
            .step_by(2)
            .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        assert!(left.is_none(), "{file}: placeholder {left:?} not replaced in {line:?}");
    }
    text
}

/// A gateway process (nginx, Caddy) this test started: killed when dropped.
pub struct Gateway {
    child: Child,
    name: &'static str,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts `command` (its output into `log`) and waits until it accepts connections on
    /// `addr`.
    pub async fn start(name: &'static str, mut command: Command, log: PathBuf, addr: SocketAddr) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut gateway = Self { child, name, log, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = gateway.child.try_wait().unwrap() {
                panic!("{name} exited with {status}:\n{}", gateway.logs());
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {addr} within 30 s:\n{}", gateway.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gateway
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a request through the gateway.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(&Target::Tcp(self.addr), "GET", path, headers).await
    }

    /// Sends a request with a body through the gateway.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        send(&Target::Tcp(self.addr), method, path, headers, Some(body)).await
    }
}

impl Drop for Gateway {
    /// SIGTERM first: a SIGKILLed nginx master leaves its workers running (and listening).
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to the process this gateway started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{} log:\n{}", self.name, self.logs());
        }
    }
}

/// The keys a gateway test uses.
pub struct Keys {
    /// The gateway's own key (`keyward:verify`).
    pub gateway: String,
    /// A client key with `orders:read`, and its id.
    pub client: String,
    pub client_id: String,
    /// A client key allowed one request an hour.
    pub limited: String,
}

impl Keys {
    pub async fn create(kw: &Instance) -> Self {
        let (gateway, _) = kw.create_key("gateway", &["keyward:verify"]).await;
        let (client, client_id) = kw.create_key("orders-client", &["orders:read"]).await;
        let limited = kw
            .root_keys()
            .await
            .create_key(proto::CreateKeyRequest {
                name: "limited".into(),
                scopes: vec!["orders:read".into()],
                rate_limit: Some(proto::RateLimit {
                    limit: 1,
                    window: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
                }),
                ..Default::default()
            })
            .await
            .expect("CreateKey")
            .into_inner()
            .key;
        Self { gateway, client, client_id, limited }
    }
}

/// A client key with `orders:read` and a quota of `uses`.
pub async fn create_metered(kw: &Instance, uses: u64) -> String {
    kw.root_keys()
        .await
        .create_key(proto::CreateKeyRequest {
            name: "metered".into(),
            scopes: vec!["orders:read".into()],
            remaining: Some(uses),
            ..Default::default()
        })
        .await
        .expect("CreateKey")
        .into_inner()
        .key
}

/// A started keyward with forward-auth on a loopback port.
pub async fn keyward_with_http() -> Instance {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.http_listen = Some("127.0.0.1:0".into());
    kw.start().await;
    kw
}

/// Revokes `key_id` as root.
pub async fn revoke(kw: &Instance, key_id: &str) {
    kw.root_keys()
        .await
        .revoke_key(proto::RevokeKeyRequest { key_id: key_id.into(), reason: "test".into() })
        .await
        .expect("RevokeKey");
}

/// The gateway matrix every real gateway passes: allow with identity headers (a forged one
/// replaced, the key not passed on), 401 for a missing, bad or revoked key, 403 for a missing
/// scope, 429 with Retry-After for a rate-limited key.
pub async fn gateway_matrix(kw: &Instance, keys: &Keys, gateway: &Gateway) {
    let bearer = format!("Bearer {}", keys.client);
    let allowed = gateway
        .get("/orders/1", &[("authorization", &bearer), ("x-keyward-key-id", "forged"), ("x-keyward-owner", "forged")])
        .await;
    let seen = allowed.upstream_saw();
    assert_eq!(seen.get("x-keyward-key-id"), Some(&keys.client_id), "{seen:?}");
    assert_eq!(seen.get("x-keyward-key-name").map(String::as_str), Some("orders-client"));
    assert_eq!(seen.get("x-keyward-scopes").map(String::as_str), Some("orders:read"));
    // A key without an owner: the client's forged owner is dropped (nginx removes the empty
    // header, Caddy passes it on empty).
    assert_eq!(seen.get("x-keyward-owner").map(String::as_str).unwrap_or(""), "", "{seen:?}");
    assert_eq!(seen.get("authorization"), None, "the client's key never reaches the upstream");
    assert_eq!(seen.get("x-keyward-gateway-key"), None, "nor the gateway's key");

    let allowed = gateway.get("/other", &[("x-api-key", &keys.client)]).await;
    assert_eq!(allowed.upstream_saw().get("x-keyward-key-id"), Some(&keys.client_id), "the key in x-api-key");
    assert_eq!(allowed.upstream_saw().get("x-api-key"), None);

    for (what, headers, code) in [
        ("no key", vec![], "missing_key"),
        ("a bad key", vec![("authorization", "Bearer kw_not_a_key")], "invalid_key"),
        ("a scheme that is not Bearer", vec![("authorization", "Basic dXNlcjpwYXNz")], "missing_key"),
    ] {
        let refused = gateway.get("/orders/1", &headers).await;
        assert_eq!((refused.status, refused.error()), (401, code.to_owned()), "{what}: {refused:?}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"), "{what}: {refused:?}");
    }

    let refused = gateway.get("/admin/users", &[("authorization", &bearer)]).await;
    assert_eq!((refused.status, refused.error()), (403, "insufficient_scope".into()), "needs `admin`: {refused:?}");
    let forged_scopes =
        gateway.get("/admin/users", &[("authorization", &bearer), ("x-keyward-required-scopes", "orders:read")]).await;
    assert_eq!(forged_scopes.status, 403, "the client cannot choose the scopes: {forged_scopes:?}");

    let limited = format!("Bearer {}", keys.limited);
    assert_eq!(gateway.get("/orders/1", &[("authorization", &limited)]).await.status, 200);
    let refused = gateway.get("/orders/1", &[("authorization", &limited)]).await;
    assert_eq!((refused.status, refused.error()), (429, "rate_limited".into()), "{refused:?}");
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");

    revoke(kw, &keys.client_id).await;
    let refused = gateway.get("/orders/1", &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, 401, "a revoked key is refused on the next request: {refused:?}");
}

#[test]
fn the_gateway_docs_show_the_deploy_files_the_tests_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (doc, file) in [
        ("docs/gateways/nginx.md", "deploy/nginx/keyward.conf"),
        ("docs/gateways/caddy.md", "deploy/caddy/Caddyfile"),
        ("docs/gateways/traefik.md", "deploy/traefik/keyward.yml"),
    ] {
        let doc_text = std::fs::read_to_string(root.join(doc)).unwrap();
        let file_text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(doc_text.contains(&file_text), "{doc} must show {file} as it is (copy it into the doc again)");
    }
}
