//! A throwaway etcd cluster for the cluster bench: N members on free loopback ports, each with a
//! temporary data directory and fast elections (`--heartbeat-interval 50 --election-timeout
//! 500`), killed on drop. Members can be paused (SIGSTOP) and resumed (SIGCONT) to take quorum
//! away and give it back.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::error::{BenchError, Result};

/// How long the members get to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One etcd process.
struct Member {
    child: Child,
    client_url: String,
}

/// A running etcd cluster; every member is killed (SIGKILL) and its directory removed on drop.
pub struct EtcdCluster {
    // Field order is drop order: the processes go before their directory.
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("finding a free port"))?;
    let port = listener.local_addr().map_err(BenchError::io("finding a free port"))?.port();
    Ok(port)
}

/// Sends a signal to a process with kill(1); false when it could not be sent.
fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().is_ok_and(|s| s.success())
}

impl EtcdCluster {
    /// Starts `n` members and waits until each answers `/health` with a leader.
    pub fn start(n: usize) -> Result<Self> {
        let version = Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !version.is_ok_and(|s| s.success()) {
            return Err(BenchError::EtcdMissing);
        }
        let dir = tempfile::Builder::new()
            .prefix("keyward-bench-etcd-")
            .tempdir()
            .map_err(BenchError::io("creating a temporary directory"))?;
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let peers: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let initial_cluster = peers.join(",");
        let mut cluster = Self { members: Vec::with_capacity(n), _dir: dir };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = cluster._dir.path().join(format!("m{i}"));
            let child = Command::new("etcd")
                .arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "keyward-bench"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(BenchError::io("starting etcd"))?;
            cluster.members.push(Member { child, client_url });
        }
        cluster.wait_healthy(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// The members' client URLs, comma-separated (keyward's `--etcd`).
    pub fn client_urls(&self) -> String {
        self.members.iter().map(|m| m.client_url.as_str()).collect::<Vec<_>>().join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Pauses member `i` (SIGSTOP): it holds its ports but answers nothing.
    pub fn pause(&self, i: usize) -> bool {
        signal(self.members[i].child.id(), "STOP")
    }

    /// Resumes member `i` (SIGCONT).
    pub fn resume(&self, i: usize) -> bool {
        signal(self.members[i].child.id(), "CONT")
    }

    /// Waits until every member reports a leader on `/health`.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for m in &mut self.members {
            loop {
                if let Ok(Some(status)) = m.child.try_wait() {
                    return Err(BenchError::EtcdExited(status));
                }
                if healthy(&m.client_url) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::EtcdTimeout(m.client_url.clone()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            // A stopped process dies of SIGKILL too; resume it anyway so nothing lingers.
            let _ = m.child.kill();
            signal(m.child.id(), "CONT");
            let _ = m.child.wait();
        }
    }
}

/// `GET /health` on a client URL answers `"health":"true"` (a leader, a quorum).
fn healthy(client_url: &str) -> bool {
    let Some(addr) = client_url.strip_prefix("http://") else { return false };
    let Ok(mut stream) = TcpStream::connect(addr) else { return false };
    let timeout = Some(Duration::from_secs(1));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.replace(' ', "").contains("\"health\":\"true\"")
}
