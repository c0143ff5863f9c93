//! A raw HTTP/2 gRPC client (h2, no tonic): sends whatever bytes and headers a test asks for,
//! and reports exactly what the server answered.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::SendRequest;

/// What the server did with one request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A gRPC answer: `grpc-status` (in the headers or the trailers) and the response messages'
    /// bytes (with their 5-byte frame headers).
    Grpc(i32, Vec<u8>),
    /// An HTTP answer without `grpc-status` (e.g. 431 for headers too large).
    Http(u16),
    /// The stream was reset, or the connection failed, before an answer.
    Reset(String),
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        match self {
            Outcome::Grpc(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// A request as bytes on the wire.
pub struct RawRequest {
    pub path: String,
    /// Header name and value bytes, besides `content-type` (`application/grpc` unless given) and `te`.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn new(path: &str, body: Vec<u8>) -> Self {
        Self { path: path.to_owned(), headers: Vec::new(), body }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// One gRPC message frame: uncompressed flag, big-endian length, the message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// An HTTP/2 connection (prior knowledge, as gRPC over h2c).
pub async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connecting to keyward");
    let (send, connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Sends `request` on `send` and reads the whole answer.
pub async fn call(send: &SendRequest<Bytes>, addr: SocketAddr, request: RawRequest) -> Outcome {
    exchange(send, addr, request).await.0
}

/// `call`, for the `grpc-status` and the (percent-decoded) `grpc-message`.
pub async fn call_with_message(
    send: &SendRequest<Bytes>,
    addr: SocketAddr,
    request: RawRequest,
) -> (Option<i32>, String) {
    let (outcome, message) = exchange(send, addr, request).await;
    (outcome.code(), message)
}

/// Sends `request`'s headers and never ends its body (a client stalled mid-request, so the call
/// can only wait), then reads the answer: `grpc-status` and `grpc-message`.
pub async fn call_stalled(send: &SendRequest<Bytes>, addr: SocketAddr, request: RawRequest) -> (Option<i32>, String) {
    let (outcome, message) = exchange_with(send, addr, request, true).await;
    (outcome.code(), message)
}

async fn exchange(send: &SendRequest<Bytes>, addr: SocketAddr, request: RawRequest) -> (Outcome, String) {
    exchange_with(send, addr, request, false).await
}

async fn exchange_with(
    send: &SendRequest<Bytes>,
    addr: SocketAddr,
    request: RawRequest,
    stall: bool,
) -> (Outcome, String) {
    let mut builder = http::Request::builder().method("POST").uri(format!("http://{addr}{}", request.path));
    let mut has_content_type = false;
    for (name, value) in &request.headers {
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        builder = builder.header(name.as_str(), http::HeaderValue::from_bytes(value).expect("a header value"));
    }
    if !has_content_type {
        builder = builder.header("content-type", "application/grpc");
    }
    let http_request = builder.header("te", "trailers").body(()).unwrap();
    let mut send = match send.clone().ready().await {
        Ok(send) => send,
        Err(e) => return (Outcome::Reset(format!("connection: {e}")), String::new()),
    };
    let (response, mut stream) = match send.send_request(http_request, request.body.is_empty() && !stall) {
        Ok(sent) => sent,
        Err(e) => return (Outcome::Reset(format!("send: {e}")), String::new()),
    };
    if !request.body.is_empty() {
        // An error here (the server answered and reset early) shows in the response below.
        let _ = stream.send_data(Bytes::from(request.body), !stall);
    }
    let response = match response.await {
        Ok(response) => response,
        Err(e) => return (Outcome::Reset(reason(&e)), String::new()),
    };
    if let Some(code) = grpc_status(response.headers()) {
        return (Outcome::Grpc(code, Vec::new()), grpc_message(response.headers()));
    }
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(e) => return (Outcome::Reset(reason(&e)), String::new()),
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => match grpc_status(&trailers) {
            Some(code) => (Outcome::Grpc(code, data), grpc_message(&trailers)),
            None => (Outcome::Http(status), String::new()),
        },
        Ok(None) => (Outcome::Http(status), String::new()),
        Err(e) => (Outcome::Reset(reason(&e)), String::new()),
    }
}

fn reason(e: &h2::Error) -> String {
    match e.reason() {
        Some(reason) => format!("{reason:?}"),
        None => e.to_string(),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn grpc_message(headers: &http::HeaderMap) -> String {
    tonic::Status::from_header_map(headers).map(|s| s.message().to_owned()).unwrap_or_default()
}
