//! The end client: curl, an HTTP client independent of keyward and of the test's own stack.

use std::collections::HashMap;

use crate::common::require_tool;

/// What curl received: the status, the headers (lower-case names, every value) and the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, Vec<String>>,
    pub body: String,
}

impl Reply {
    /// The single value of header `name`; fails if it is missing or repeated.
    pub fn header(&self, name: &str) -> &str {
        match self.headers.get(name).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("expected one `{name}` header, got {other:?} in {self:#?}"),
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:#?}"))
    }
}

/// `GET url` with these request headers, over HTTP/1.1; fails if curl gets no answer.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(url, headers).await.unwrap_or_else(|e| panic!("curl {url} failed: {e}"))
}

/// `get`, or why curl got no answer (e.g. nothing listens yet).
pub async fn try_get(url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    try_send("GET", url, headers, None).await
}

/// `method url` with these request headers and this body (curl sets `content-length`).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    try_send(method, url, headers, body).await.unwrap_or_else(|e| panic!("curl {method} {url} failed: {e}"))
}

async fn try_send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Result<Reply, String> {
    let curl = require_tool("curl", "sudo apt-get install curl");
    let mut command = tokio::process::Command::new(curl);
    command.args(["--silent", "--show-error", "--include", "--http1.1", "--max-time", "10", "--request", method]);
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    if let Some(body) = body {
        command.arg("--data-binary").arg(body);
    }
    let out = command.arg(url).output().await.expect("running curl");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse(&String::from_utf8(out.stdout).expect("a UTF-8 answer")))
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{raw:?}"));
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("a header line: {line:?}"));
        headers.entry(name.trim().to_ascii_lowercase()).or_default().push(value.trim().to_owned());
    }
    Reply { status, headers, body: body.to_owned() }
}
