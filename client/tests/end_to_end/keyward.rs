//! A real keyward for the end-to-end tests: `keyward init --dev` and `keyward serve --dev` on
//! `127.0.0.1:0`, with a fresh SoftHSM2 token in a temporary directory.
//!
//! The server is this test executable itself, run as a child process through the ignored test
//! `keyward_server_process`, which hands its arguments to keyward's own command line (the
//! `keyward` library is a dev-dependency): no separately built binary is needed, and each
//! server is its own process (SoftHSM2 reads its configuration once per process).

use std::{
    ffi::OsString,
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keyward_client::{
    BearerInterceptor,
    proto::{self, key_service_client::KeyServiceClient},
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// The environment variable that carries keyward's arguments to the server process, separated
/// by U+001F.
pub const SERVER_ARGS: &str = "KEYWARD_CLIENT_TEST_SERVER_ARGS";

/// Runs keyward's command line from `SERVER_ARGS` and exits with its status. Called by the
/// ignored test that is the server process's entry point; does nothing when the variable is
/// not set (a plain `cargo test -- --ignored`).
pub fn run_server_from_env() {
    let Some(args) = std::env::var_os(SERVER_ARGS) else { return };
    let args = args.into_string().expect("UTF-8 arguments");
    let argv: Vec<OsString> =
        std::iter::once("keyward".into()).chain(args.split('\u{1f}').map(OsString::from)).collect();
    let code = keyward::cli::run_from(argv);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

/// Fails (never skips) when SoftHSM2 is missing, saying how to install it.
fn require_softhsm() {
    assert!(
        keyward::config::find_softhsm_module().is_some(),
        "SoftHSM2 is not installed: the end-to-end tests need a real PKCS#11 token.\n\
         Install it with `sudo apt-get install softhsm2` (or run scripts/install-deps.sh, which does)."
    );
}

/// `keyward ARGS` as a child process of this test executable.
fn keyward(args: &[&str], log: &std::path::Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test executable"));
    command
        .args(["--exact", "keyward_server_process", "--ignored", "--nocapture", "--test-threads=1", "-q"])
        .env(SERVER_ARGS, args.join("\u{1f}"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::OpenOptions::new().create(true).append(true).open(log).expect("the log file"));
    command
}

/// A keyward data directory and, while started, its server.
pub struct Keyward {
    tmp: tempfile::TempDir,
    pub root_key: String,
    server: Option<Child>,
    addr: Option<SocketAddr>,
    starts: u32,
    /// More arguments for `serve` (e.g. `--tls-cert`), taken at the next start.
    pub serve_args: Vec<String>,
}

impl Keyward {
    /// `keyward init --dev` then `keyward serve --dev`.
    pub async fn started() -> Self {
        require_softhsm();
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let data_dir = tmp.path().join("data");
        let status =
            keyward(&["init", "--dev", "--data-dir", data_dir.to_str().unwrap()], &tmp.path().join("keyward.log"))
                .status()
                .expect("running keyward init");
        let mut instance =
            Keyward { tmp, root_key: String::new(), server: None, addr: None, starts: 0, serve_args: Vec::new() };
        assert!(status.success(), "keyward init --dev failed; log:\n{}", instance.logs());
        instance.root_key = fs::read_to_string(data_dir.join("root.key")).expect("root.key").trim().to_owned();
        instance.start().await;
        instance
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.tmp.path().join("keyward.log")).unwrap_or_default()
    }

    /// Starts the server and waits until it serves.
    pub async fn start(&mut self) {
        assert!(self.server.is_none(), "already started");
        self.starts += 1;
        let addr_file = self.tmp.path().join(format!("addr.{}", self.starts));
        let data_dir = self.data_dir();
        let mut args = vec![
            "serve",
            "--dev",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--addr-file",
            addr_file.to_str().unwrap(),
        ];
        args.extend(self.serve_args.iter().map(String::as_str));
        let mut child = keyward(&args, &self.tmp.path().join("keyward.log")).spawn().expect("spawning keyward serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = fs::read_to_string(&addr_file).ok().and_then(|t| t.trim().parse().ok()) {
                self.addr = Some(addr);
                self.server = Some(child);
                return;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("keyward serve exited with {status}; log:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "keyward serve did not start in 30 s; log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits until the server has exited.
    pub async fn stop(&mut self) {
        let mut child = self.server.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "keyward did not stop within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `text` to `name` beside the data directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.tmp.path().join(name);
        fs::write(&path, text).expect("writing a test file");
        path.to_str().unwrap().to_owned()
    }

    /// Sets `[section] key = value` (`value` is a TOML literal) in keyward.toml, for the next start.
    pub fn configure(&self, section: &str, key: &str, value: &str) {
        let path = self.data_dir().join("keyward.toml");
        let mut doc: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
        let parsed: toml::Table = format!("v = {value}").parse().expect("a TOML value");
        let table = doc.entry(section).or_insert_with(|| toml::Value::Table(Default::default()));
        table.as_table_mut().expect("a table").insert(key.into(), parsed["v"].clone());
        fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    }

    /// The running server's port.
    pub fn port(&self) -> u16 {
        self.addr.expect("started").port()
    }

    /// `http://127.0.0.1:<port>` of the running server.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    /// The admin API as root, through the crate's own bearer interceptor.
    pub async fn admin(&self) -> KeyServiceClient<InterceptedService<Channel, BearerInterceptor>> {
        let channel = Channel::from_shared(self.endpoint()).unwrap().connect().await.expect("connecting to keyward");
        KeyServiceClient::with_interceptor(channel, BearerInterceptor::new(self.root_key.as_str()).unwrap())
    }

    /// Creates a key from `request` as root; returns (key, key id).
    pub async fn create(&self, request: proto::CreateKeyRequest) -> (String, String) {
        let created = self.admin().await.create_key(request).await.expect("CreateKey").into_inner();
        (created.key, created.info.expect("the new key's info").key_id)
    }

    /// Creates a key with `scopes`; returns (key, key id).
    pub async fn create_key(&self, name: &str, scopes: &[&str]) -> (String, String) {
        self.create(proto::CreateKeyRequest {
            name: name.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    pub async fn revoke(&self, key_id: &str) {
        self.admin()
            .await
            .revoke_key(proto::RevokeKeyRequest { key_id: key_id.into(), reason: "test".into() })
            .await
            .expect("RevokeKey");
    }

    /// A key for the services under test to call keyward with (`keyward:verify`).
    pub async fn service_key(&self) -> String {
        self.create_key("service", &["keyward:verify"]).await.0
    }
}

impl Drop for Keyward {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
