//! A small W3C WebDriver client over hyper: starts Debian's `chromedriver` on a free port and
//! drives a headless `chromium` through it (new session, navigation, elements, script,
//! dialogs, cookies, screenshots). Only what the console tests use.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The WebDriver key codes of Tab and Enter, for `Browser::press`.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";
/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and chromium must be installed: `scripts/install-deps.sh` does it.
fn require_browser() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            PathBuf::from(path).exists(),
            "{path} is missing: run scripts/install-deps.sh (it installs Debian's {package}) to run the console's browser tests"
        );
    }
}

/// An HTTP/1.1 request to `addr`, on a connection of its own; returns the status, the
/// headers and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connecting");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("HTTP handshake");
    tokio::spawn(connection);
    let mut builder = http::Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let response = sender.send_request(request).await.expect("an HTTP response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("the response body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// A running chromedriver with one headless browser session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless chromium `width` px wide.
    pub async fn start(width: u32, height: u32) -> Self {
        require_browser();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let (status, _, body) = request(addr, "GET", "/status", &[], None).await;
                if status.is_success() && body.contains("\"ready\":true") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready in 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut browser = Self { driver, addr, session: String::new() };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--force-device-scale-factor=1",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let created = browser.call("POST", "/session", Some(caps)).await;
        browser.session = created["sessionId"].as_str().expect("a session id").to_owned();
        browser.resize(width, height).await;
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let headers: &[(&str, &str)] = &[("content-type", "application/json")];
        let (status, _, text) = request(self.addr, method, path, headers, body).await;
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("WebDriver answered {status}: {text}"));
        assert!(status.is_success(), "WebDriver {method} {path}: {status}: {}", value["value"]);
        value["value"].clone()
    }

    /// A command of this session: `path` after `/session/{id}`.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body).await
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.command("POST", "/window/rect", Some(json!({ "width": width, "height": height }))).await;
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.command("GET", "/url", None).await.as_str().unwrap().to_owned()
    }

    /// The page's visible text.
    /// Read by script, not through an element reference, which goes stale while a form's
    /// answer is loading.
    pub async fn text(&self) -> String {
        let text = self.execute("return document.body ? document.body.innerText : ''").await;
        text.as_str().unwrap_or_default().to_owned()
    }

    pub async fn find(&self, css: &str) -> Element<'_> {
        let found = self.try_find(css).await;
        found.unwrap_or_else(|| panic!("no element matches {css:?}"))
    }

    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let body = json!({ "using": "css selector", "value": css });
        let path = format!("/session/{}/element", self.session);
        let (status, _, text) =
            request(self.addr, "POST", &path, &[("content-type", "application/json")], Some(body.to_string())).await;
        if status == http::StatusCode::NOT_FOUND {
            return None;
        }
        let value: Value = serde_json::from_str(&text).unwrap();
        assert!(status.is_success(), "finding {css:?}: {status}: {text}");
        let id = value["value"][ELEMENT].as_str().unwrap_or_else(|| panic!("finding {css:?}: {text}"));
        Some(Element { browser: self, id: id.to_owned() })
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self.command("POST", "/elements", Some(json!({ "using": "css selector", "value": css }))).await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Element { browser: self, id: e[ELEMENT].as_str().unwrap().to_owned() })
            .collect()
    }

    /// Runs `script` (a function body) in the page.
    pub async fn execute(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// The text of the open dialog (`confirm`), then accepts it.
    pub async fn accept_dialog(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let path = format!("/session/{}/alert/text", self.session);
            let (status, _, text) = request(self.addr, "GET", &path, &[], None).await;
            if status.is_success() {
                let question = serde_json::from_str::<Value>(&text).unwrap()["value"].as_str().unwrap().to_owned();
                self.command("POST", "/alert/accept", Some(json!({}))).await;
                return question;
            }
            assert!(Instant::now() < deadline, "no dialog opened: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's URL satisfies `done` (after a form is sent).
    pub async fn wait_for_url(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if done(&url) && self.execute("return document.readyState").await == "complete" {
                return url;
            }
            assert!(Instant::now() < deadline, "the page stayed at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's text contains `needle`.
    pub async fn wait_for_text(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "the page never said {needle:?}; it says:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Presses `keys` one after the other on the focused element, as a keyboard would (WebDriver
    /// key actions: no element is clicked or targeted). `TAB`, `ENTER`; a space is Space.
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [
                    json!({ "type": "keyDown", "value": c.to_string() }),
                    json!({ "type": "keyUp", "value": c.to_string() }),
                ]
            })
            .collect();
        let body = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] });
        // Each key is released in the sequence: no Release Actions call (it fails while the
        // key press has opened a dialog).
        self.command("POST", "/actions", Some(body)).await;
    }

    /// Reloads the page.
    pub async fn refresh(&self) {
        self.command("POST", "/refresh", Some(json!({}))).await;
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.command("GET", "/cookie", None).await.as_array().unwrap().clone()
    }

    /// A PNG of the whole page at the window's width (the window grows to the page's height).
    pub async fn screenshot(&self, width: u32, path: &std::path::Path) {
        let height = self.execute("return document.documentElement.scrollHeight").await.as_u64().unwrap_or(900);
        self.resize(width, (height as u32).clamp(600, 4000)).await;
        let png = self.command("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    /// Ends the browser session (chromedriver closes chromium), then chromedriver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(mut stream) = std::net::TcpStream::connect(self.addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.browser.command(method, &format!("/element/{}{path}", self.id), body).await
    }

    pub async fn click(&self) {
        self.command("POST", "/click", Some(json!({}))).await;
    }

    pub async fn type_text(&self, text: &str) {
        self.command("POST", "/value", Some(json!({ "text": text }))).await;
    }

    pub async fn text(&self) -> String {
        self.command("GET", "/text", None).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn property(&self, name: &str) -> Value {
        self.command("GET", &format!("/property/{name}"), None).await
    }
}
