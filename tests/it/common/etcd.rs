//! A real etcd cluster for the tests: N `/usr/bin/etcd` members on free loopback ports, each
//! with its own temporary data directory and log file, which a test can SIGKILL, SIGSTOP,
//! SIGCONT and restart one by one.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions};

/// Where Debian's `etcd-server` package puts etcd.
const ETCD: &str = "/usr/bin/etcd";
/// How long a member may take to join and serve a linearizable read.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Fails (never skips) when etcd is missing, saying how to install it.
pub fn require_etcd() -> PathBuf {
    let path = Path::new(ETCD);
    if path.is_file() {
        return path.to_owned();
    }
    // Elsewhere on PATH is fine too (e.g. an etcd release unpacked by hand).
    super::find_tool("etcd")
        .unwrap_or_else(|| panic!("etcd not found: run scripts/install-deps.sh (Debian package etcd-server)"))
}

/// One etcd member: its ports, its data directory, and its process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
    process: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// N etcd members forming one cluster; every member is killed when it is dropped.
pub struct EtcdCluster {
    etcd: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    _tmp: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers a linearizable read. Ports are
    /// found free just before etcd binds them; if another process takes one meanwhile, the
    /// whole cluster is started again on new ports (up to 3 times).
    pub async fn start(n: usize) -> Self {
        assert!(n >= 1, "an etcd cluster has at least one member");
        let etcd = require_etcd();
        let mut failure = String::new();
        for _attempt in 0..3 {
            let mut cluster = Self::spawn(etcd.clone(), n);
            match cluster.wait_ready(START_TIMEOUT).await {
                Ok(()) => return cluster,
                Err(why) if why.contains("address already in use") => failure = why,
                Err(why) => panic!("etcd did not start: {why}"),
            }
        }
        panic!("etcd did not start (its ports kept being taken): {failure}")
    }

    fn spawn(etcd: PathBuf, n: usize) -> Self {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: tmp.path().join(format!("m{i}.etcd")),
                log_file: tmp.path().join(format!("m{i}.log")),
                process: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");
        let mut cluster = Self { etcd, members, initial_cluster, _tmp: tmp };
        for i in 0..n {
            cluster.spawn_member(i);
        }
        cluster
    }

    fn spawn_member(&mut self, i: usize) {
        let member = &self.members[i];
        assert!(member.process.is_none(), "etcd member {i} is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&member.log_file).expect("an etcd log file");
        let child = Command::new(&self.etcd)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url()])
            .args(["--advertise-client-urls", &member.client_url()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            // Ignored by a member that restarts on its data directory: it rejoins.
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "keyward-test"])
            // Fast elections, so that losing a member costs the tests little time.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        self.members[i].process = Some(child);
    }

    /// Polls a linearizable read through every client endpoint until it succeeds; `Err` with the
    /// members' logs if a member exits or `within` passes.
    async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            for (i, member) in self.members.iter_mut().enumerate() {
                if let Some(child) = member.process.as_mut() {
                    if let Some(status) = child.try_wait().expect("etcd's status") {
                        member.process = None;
                        return Err(format!("etcd member {i} exited with {status}; logs:\n{}", self.logs()));
                    }
                }
            }
            if linearizable_get(&self.endpoints(), Duration::from_secs(1)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no linearizable read within {within:?}; logs:\n{}", self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The members' client URLs (`http://127.0.0.1:PORT`), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The client URLs comma-separated, as `--etcd` takes them.
    pub fn urls(&self) -> String {
        self.endpoints().join(",")
    }

    /// A client of every member.
    pub async fn client(&self) -> Client {
        connect(&self.endpoints()).await
    }

    /// A client of member `i` only.
    pub async fn member_client(&self, i: usize) -> Client {
        connect(&[self.members[i].client_url()]).await
    }

    /// The member that leads the cluster now (asked of each running member until one knows).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if member.process.is_none() {
                    continue;
                }
                let mut client = connect(&[member.client_url()]).await;
                let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), client.status()).await else {
                    continue;
                };
                let own_id = status.header().map(|h| h.member_id());
                if status.leader() != 0 && own_id == Some(status.leader()) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd member leads after 10 s; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.members[i].process.take().unwrap_or_else(|| panic!("etcd member {i} is not running"));
        child.kill().expect("SIGKILL etcd");
        child.wait().expect("reaping etcd");
    }

    /// SIGSTOP member `i`: it keeps its sockets but answers nothing.
    pub fn stop(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT member `i` after `stop`.
    pub fn cont(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        let child = self.members[i].process.as_ref().unwrap_or_else(|| panic!("etcd member {i} is not running"));
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) on a child this cluster spawned and has not reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "signal {signal} to etcd member {i}: {}", std::io::Error::last_os_error());
    }

    /// Starts member `i` again (after `kill`) on its data directory and ports; it rejoins the
    /// cluster. Waits until the cluster answers a linearizable read through that member.
    pub async fn restart(&mut self, i: usize) {
        self.spawn_member(i);
        let endpoint = vec![self.members[i].client_url()];
        let deadline = Instant::now() + START_TIMEOUT;
        while linearizable_get(&endpoint, Duration::from_secs(1)).await.is_err() {
            if let Some(status) = self.members[i].process.as_mut().and_then(|c| c.try_wait().expect("etcd's status")) {
                panic!("restarted etcd member {i} exited with {status}; logs:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "restarted etcd member {i} did not serve in 30 s; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for member in &self.members {
            let text = fs::read_to_string(&member.log_file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!("--- etcd {} (last {} lines) ---\n{}\n", member.name, tail.len(), tail.join("\n")));
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.process.take() {
                // SIGKILL ends a stopped process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `n` distinct ports nothing listens on now (the OS's picks for port 0, all held until every
/// one is picked, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound address").port()).collect()
}

/// A client of these endpoints with short timeouts (the tests' calls must not hang).
pub async fn connect(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
    Client::connect(endpoints, Some(options)).await.expect("an etcd client (it connects lazily)")
}

/// One linearizable (the default, not serializable) read of a key that may not exist, under
/// `timeout` for connecting and reading.
pub async fn linearizable_get(endpoints: &[String], timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let mut client = Client::connect(endpoints, Some(ConnectOptions::new().with_connect_timeout(timeout)))
            .await
            .map_err(|e| e.to_string())?;
        client.get("keyward-test/probe", None).await.map(|_| ()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("no answer within {timeout:?}"))?
}
