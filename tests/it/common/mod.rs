//! The integration-test fixture: a real `keyward` binary serving a real SoftHSM2 token and a
//! real sled database in a temporary directory, on `127.0.0.1:0`.
//!
//! Each instance is its own process: SoftHSM2 reads `SOFTHSM2_CONF` when a process initializes
//! it, so per-test tokens need per-test processes.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

pub mod cluster;
pub mod etcd;
pub mod raw;
pub mod scrape;

use keyward::proto::{
    self, audit_service_client::AuditServiceClient, cluster_service_client::ClusterServiceClient,
    key_service_client::KeyServiceClient, master_key_service_client::MasterKeyServiceClient,
    verify_service_client::VerifyServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// For opening a stopped instance's database to read it: no HSM, so any write is refused.
pub struct NoSealer;

impl keyward::domain::ports::AuditSealer for NoSealer {
    fn seal(&self, _: &[u8]) -> Result<[u8; 32], keyward::domain::ports::HsmError> {
        Err(keyward::domain::ports::HsmError::Unavailable("opened for reading only".into()))
    }
    fn check(&self, _: &[u8], _: &[u8; 32]) -> Result<bool, keyward::domain::ports::HsmError> {
        Err(keyward::domain::ports::HsmError::Unavailable("opened for reading only".into()))
    }
}

/// Fails (never skips) when SoftHSM2 is missing, saying how to install it.
pub fn require_softhsm() -> PathBuf {
    keyward::config::find_softhsm_module().unwrap_or_else(|| {
        panic!(
            "SoftHSM2 is not installed: the integration tests need a real PKCS#11 token.\n\
             Install it with `sudo apt-get install softhsm2` (or run ./scripts/test.sh, which does)."
        )
    })
}

/// Fails when a command-line tool the test drives is missing, saying how to install it.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    find_tool(tool)
        .unwrap_or_else(|| panic!("`{tool}` is not installed; install it with `{install}` (or run ./scripts/test.sh)"))
}

/// A command-line tool on PATH (or where pip puts tools), if installed.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([dirs_home().join(".local/bin"), dirs_home().join(".pyenv/shims")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type KeyClient = KeyServiceClient<InterceptedService<Channel, Bearer>>;
pub type VerifyClient = VerifyServiceClient<InterceptedService<Channel, Bearer>>;
pub type MasterClient = MasterKeyServiceClient<InterceptedService<Channel, Bearer>>;
pub type AuditClient = AuditServiceClient<InterceptedService<Channel, Bearer>>;
pub type ClusterClient = ClusterServiceClient<InterceptedService<Channel, Bearer>>;

/// A keyward data directory and, while started, its server process.
pub struct Instance {
    /// `None` when several instances share a data directory whose owner keeps it.
    _tmp: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
    /// Where the server's address files go: beside the data directory, unless several
    /// servers share it.
    run_dir: PathBuf,
    pub root_key: String,
    pub log_file: PathBuf,
    server: Option<Child>,
    addr: Option<SocketAddr>,
    /// The gRPC listener's address as the server wrote it (`unix:/path` for a Unix socket).
    listening: Option<String>,
    /// The HTTP forward-auth listener's address as the server wrote it, when it serves one.
    http_listening: Option<String>,
    /// `--http-listen` of `serve` (forward-auth off when `None`).
    pub http_listen: Option<String>,
    /// Serve the web console on `127.0.0.1:0` (`--console-listen`).
    pub console: bool,
    /// The web console's address as the server wrote it, when it serves one.
    console_listening: Option<String>,
    starts: u32,
    /// `RUST_LOG` for the server: `trace` unless a load test asks for less.
    pub log_filter: &'static str,
    /// Serve metrics on `127.0.0.1:0` (`--metrics-listen`).
    pub metrics: bool,
    metrics_addr: Option<SocketAddr>,
    /// `--listen` of `serve`.
    pub listen: String,
    /// More arguments for `serve` (e.g. `--tls-cert`), after the fixture's own.
    pub serve_args: Vec<String>,
    /// Run the server without the capabilities that let root ignore file permissions
    /// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`), so that `chmod` binds it as it binds
    /// any other user. No effect when the tests do not run as root.
    pub unprivileged: bool,
}

impl Instance {
    /// `keyward init --dev` in a fresh temporary directory.
    pub fn init() -> Self {
        require_softhsm();
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let data_dir = tmp.path().join("data");
        let log_file = tmp.path().join("keyward.log");
        let out = Self::run_keyward(&["init", "--dev", "--data-dir", data_dir.to_str().unwrap()], &log_file);
        assert!(out.status.success(), "keyward init --dev failed: {}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let instance = Self::initialized(tmp, data_dir);
        assert_eq!(printed, instance.root_key, "init prints the root key it wrote to root.key");
        instance
    }

    /// The development instance `keyward init --dev` made in `tmp`'s `data_dir` (not started);
    /// its log file is `tmp/keyward.log`.
    pub fn initialized(tmp: tempfile::TempDir, data_dir: PathBuf) -> Self {
        let log_file = tmp.path().join("keyward.log");
        let run_dir = data_dir.parent().expect("a data directory inside the temporary one").to_owned();
        let mut instance = Self::sharing(data_dir, run_dir, log_file);
        instance._tmp = Some(tmp);
        instance
    }

    /// A server (not started) of a data directory that something else owns and that other
    /// servers may share: its address files go in `run_dir` and its log in `log_file`.
    pub fn sharing(data_dir: PathBuf, run_dir: PathBuf, log_file: PathBuf) -> Self {
        let root_key = fs::read_to_string(data_dir.join("root.key")).unwrap().trim().to_owned();
        Self {
            _tmp: None,
            data_dir,
            run_dir,
            root_key,
            log_file,
            server: None,
            addr: None,
            listening: None,
            http_listening: None,
            http_listen: None,
            console: false,
            console_listening: None,
            starts: 0,
            log_filter: "trace",
            metrics: false,
            metrics_addr: None,
            listen: "127.0.0.1:0".into(),
            serve_args: Vec::new(),
            unprivileged: false,
        }
    }

    /// `init` then `start`, logging at info: for tests that load the server, where trace
    /// logging would be most of the work.
    pub async fn started_quiet() -> Self {
        let mut instance = Self::init();
        instance.log_filter = "info";
        instance.start().await;
        instance
    }

    /// `init` then `start`.
    pub async fn started() -> Self {
        let mut instance = Self::init();
        instance.start().await;
        instance
    }

    fn run_keyward(args: &[&str], log_file: &Path) -> Output {
        let out = Command::new(BIN).args(args).env("RUST_LOG", "trace").output().expect("running keyward");
        append(log_file, &out.stderr);
        out
    }

    /// Runs `keyward <args>` to completion (stderr also appended to the log file).
    pub fn keyward(&self, args: &[&str]) -> Output {
        Self::run_keyward(args, &self.log_file)
    }

    /// Sets `[section] key = value` (`value` is a TOML literal, e.g. `"\"2h\""` or `50`) in the
    /// instance's keyward.toml; it takes effect at the next start.
    pub fn configure(&self, section: &str, key: &str, value: &str) {
        let path = self.data_dir.join("keyward.toml");
        let mut doc: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
        let parsed: toml::Table = format!("v = {value}").parse().expect("a TOML value");
        let table = doc.entry(section).or_insert_with(|| toml::Value::Table(Default::default()));
        table.as_table_mut().expect("a table").insert(key.into(), parsed["v"].clone());
        fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    }

    pub fn data_dir_str(&self) -> &str {
        self.data_dir.to_str().unwrap()
    }

    /// Starts `keyward serve --dev` on port 0 and waits until it serves.
    pub async fn start(&mut self) {
        self.start_with_env(&[]).await
    }

    /// `start`, with these variables added to the server's environment.
    pub async fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.server.is_none(), "already started");
        self.starts += 1;
        let addr_file = self.run_dir.join(format!("addr.{}", self.starts));
        let metrics_addr_file = self.run_dir.join(format!("metrics-addr.{}", self.starts));
        let http_addr_file = self.run_dir.join(format!("http-addr.{}", self.starts));
        let console_addr_file = self.run_dir.join(format!("console-addr.{}", self.starts));
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_file).unwrap();
        // SAFETY: geteuid only reads the process's effective user id.
        let mut command = if self.unprivileged && unsafe { libc::geteuid() } == 0 {
            let mut setpriv = Command::new(require_tool("setpriv", "sudo apt-get install util-linux"));
            setpriv.args(["--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--", BIN]);
            setpriv
        } else {
            Command::new(BIN)
        };
        command
            .args(["serve", "--dev", "--data-dir", self.data_dir_str(), "--listen", &self.listen, "--addr-file"])
            .arg(&addr_file)
            .arg("--metrics-addr-file")
            .arg(&metrics_addr_file)
            .arg("--http-addr-file")
            .arg(&http_addr_file)
            .args(&self.serve_args);
        if let Some(http) = &self.http_listen {
            command.args(["--http-listen", http]);
        }
        if self.metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        if self.console {
            command.args(["--console-listen", "127.0.0.1:0", "--console-addr-file"]).arg(&console_addr_file);
        }
        let child = command
            .envs(env.iter().copied())
            .env("RUST_LOG", self.log_filter)
            .env("KEYWARD_DEV_CLOCK_OFFSET_FILE", self.clock_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning keyward serve");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Written whole (renamed into place): a TCP address, or `unix:/path`.
            if let Ok(text) = fs::read_to_string(&addr_file) {
                self.addr = text.trim().parse().ok();
                self.listening = Some(text.trim().to_owned());
                // Written before the gRPC address, when metrics and forward-auth are served at all.
                self.metrics_addr = fs::read_to_string(&metrics_addr_file).ok().map(|t| t.trim().parse().unwrap());
                self.http_listening = fs::read_to_string(&http_addr_file).ok().map(|t| t.trim().to_owned());
                self.console_listening = fs::read_to_string(&console_addr_file).ok().map(|t| t.trim().to_owned());
                return;
            }
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("keyward serve exited with {status}; log:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "keyward serve did not start in 30 s; log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn clock_file(&self) -> PathBuf {
        self.data_dir.with_file_name("clock-offset")
    }

    /// Moves the server's clock forward by `secs` (it reads the offset on every use).
    pub fn advance_clock(&self, secs: i64) {
        let now: i64 = fs::read_to_string(self.clock_file()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        fs::write(self.clock_file(), (now + secs).to_string()).unwrap();
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the server was started, on TCP")
    }

    /// The gRPC listener's address as the server reported it (`unix:/path` for a Unix socket).
    pub fn listening(&self) -> &str {
        self.listening.as_deref().expect("the server was started")
    }

    /// The HTTP forward-auth listener's TCP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listening().parse().expect("forward-auth served on TCP")
    }

    /// The HTTP forward-auth listener's address as the server reported it.
    pub fn http_listening(&self) -> &str {
        self.http_listening.as_deref().expect("the server was started with http_listen")
    }

    /// The web console's TCP address.
    pub fn console_addr(&self) -> SocketAddr {
        self.console_listening.as_deref().expect("the server was started with console").parse().expect("TCP")
    }

    /// The bound metrics address, if the running server serves metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// SIGTERM, then waits for the exit status. Async, so that the test's own connections can
    /// answer the server's GOAWAY meanwhile (a blocked test runtime would hold the server in its
    /// drain period).
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.server.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "keyward did not stop within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`"HUP"`, `"TERM"`...) to the running server.
    pub fn signal(&self, signal: &str) {
        let pid = self.server.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let mut child = self.server.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The running server's process id.
    pub fn pid(&self) -> u32 {
        self.server.as_ref().expect("running").id()
    }

    /// Whether the server process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// A grpc.health.v1 client.
    pub async fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel().await)
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Envoy's ext_authz API on this instance, calling as the gateway key `bearer`.
    pub async fn ext_authz(
        &self,
        bearer: Option<&str>,
    ) -> envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        InterceptedService<Channel, Bearer>,
    > {
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::with_interceptor(
            self.channel().await,
            Self::bearer(bearer),
        )
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr())).unwrap().connect().await.expect("connecting to keyward")
    }

    pub fn bearer(key: Option<&str>) -> Bearer {
        Bearer(key.map(|k| format!("Bearer {k}").parse().expect("an ASCII key")))
    }

    pub async fn keys(&self, bearer: Option<&str>) -> KeyClient {
        KeyServiceClient::with_interceptor(self.channel().await, Self::bearer(bearer))
    }

    pub async fn verifier(&self, bearer: Option<&str>) -> VerifyClient {
        VerifyServiceClient::with_interceptor(self.channel().await, Self::bearer(bearer))
    }

    pub async fn master(&self, bearer: Option<&str>) -> MasterClient {
        MasterKeyServiceClient::with_interceptor(self.channel().await, Self::bearer(bearer))
    }

    pub async fn audit(&self, bearer: Option<&str>) -> AuditClient {
        AuditServiceClient::with_interceptor(self.channel().await, Self::bearer(bearer))
    }

    pub async fn cluster(&self, bearer: Option<&str>) -> ClusterClient {
        ClusterServiceClient::with_interceptor(self.channel().await, Self::bearer(bearer))
    }

    pub async fn root_keys(&self) -> KeyClient {
        self.keys(Some(&self.root_key)).await
    }

    pub async fn root_verifier(&self) -> VerifyClient {
        self.verifier(Some(&self.root_key)).await
    }

    /// Creates a key with these scopes as root; returns (key, key id).
    pub async fn create_key(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let created = self
            .root_keys()
            .await
            .create_key(proto::CreateKeyRequest {
                name: name.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("CreateKey")
            .into_inner();
        (created.key, created.info.unwrap().key_id)
    }

    /// Verifies `key` as root; returns the response.
    pub async fn verify(&self, key: &str, required: &[&str]) -> proto::VerifyKeyResponse {
        self.root_verifier()
            .await
            .verify_key(proto::VerifyKeyRequest {
                key: key.into(),
                required_scopes: required.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("VerifyKey")
            .into_inner()
    }

    pub async fn code(&self, key: &str, required: &[&str]) -> proto::VerifyCode {
        self.verify(key, required).await.code()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// The environment for running SoftHSM2 tools (pkcs11-tool) against an instance's token.
pub fn softhsm_env(instance: &Instance) -> (String, String) {
    let conf = instance.data_dir.join("softhsm/softhsm2.conf");
    let pin = fs::read_to_string(instance.data_dir.join("softhsm/user.pin")).unwrap().trim().to_owned();
    (conf.to_str().unwrap().to_owned(), pin)
}

/// Runs `keyward serve --dev` on this data directory expecting it to refuse: returns its exit
/// status and stderr. Kills it (and fails) if it is still running after 30 s.
pub fn serve_expecting_refusal(instance: &Instance, dev: bool, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    if dev {
        args.push("--dev");
    }
    serve_expecting_refusal_with(instance, &args, env)
}

/// `serve_expecting_refusal` with these arguments after `serve --data-dir DIR`.
pub fn serve_expecting_refusal_with(instance: &Instance, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", instance.data_dir_str()])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyward serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs pkcs11-tool against the instance's token, logged in.
pub fn pkcs11_tool(instance: &Instance, args: &[&str]) -> Output {
    let tool = require_tool("pkcs11-tool", "sudo apt-get install opensc");
    let module = require_softhsm();
    let (conf, pin) = softhsm_env(instance);
    Command::new(tool)
        .arg("--module")
        .arg(module)
        .args(["--token-label", "keyward-dev", "--login", "--pin", &pin])
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("running pkcs11-tool")
}
