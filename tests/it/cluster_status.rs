//! `ClusterService/GetClusterStatus`: a single node says so and nothing more; a cluster node
//! (one real etcd member, started here) names itself, its revision, staleness, the nodes and
//! etcd members it sees, and keeps answering while it fails closed, which is when operators
//! need it.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keyward::proto::{self, ClusterMode};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::common::{BIN, Instance, require_softhsm, require_tool, scrape};

const INSTALL_ETCD: &str = "./scripts/install-deps.sh (or sudo apt-get install etcd-server etcd-client)";

/// One etcd member on loopback ports, in a temporary directory; killed on drop.
struct Etcd {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

impl Etcd {
    async fn start() -> Self {
        let etcd = require_tool("etcd", INSTALL_ETCD);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new(etcd)
            .args(["--name", "a", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("a={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        let etcd = Self { child, url, dir };
        etcd.wait_healthy().await;
        etcd
    }

    async fn wait_healthy(&self) {
        let etcdctl = require_tool("etcdctl", INSTALL_ETCD);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = Command::new(&etcdctl)
                .args(["--endpoints", &self.url, "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .expect("running etcdctl");
            if health.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy in 30 s: {}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} etcd");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keyward init --dev --etcd URL` in a fresh directory; the node is not started.
fn init_cluster(etcd: &Etcd) -> Instance {
    require_softhsm();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let datadir = tmp.path().join("data");
    let out = Command::new(BIN)
        .args(["init", "--dev", "--data-dir", datadir.to_str().unwrap(), "--etcd", &etcd.url])
        .output()
        .expect("running keyward init");
    assert!(out.status.success(), "keyward init --etcd failed: {}", String::from_utf8_lossy(&out.stderr));
    append_log(&tmp.path().join("keyward.log"), &out.stderr);
    Instance::initialized(tmp, datadir)
}

fn append_log(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

async fn status(kw: &Instance) -> Result<proto::ClusterStatus, tonic::Status> {
    let mut client = kw.cluster(Some(&kw.root_key)).await;
    client.get_cluster_status(proto::GetClusterStatusRequest {}).await.map(|r| r.into_inner())
}

async fn health(kw: &Instance, service: &str) -> ServingStatus {
    let request = HealthCheckRequest { service: service.into() };
    let answer = kw.health().await.check(request).await.expect("health answers");
    answer.into_inner().status()
}

/// Polls the health of `service` until it is `wanted`, for at most 3 s; returns the last one.
async fn health_until(kw: &Instance, service: &str, wanted: ServingStatus) -> ServingStatus {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = health(kw, service).await;
        if now == wanted || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `keyward_cluster_current` and `keyward_cluster_staleness_seconds`, scraped.
async fn cluster_metrics(kw: &Instance) -> (f64, f64) {
    let response = scrape::http(kw.metrics_addr().expect("metrics are served"), "GET", "/metrics").await;
    let metrics = scrape::parse(&response.body);
    (metrics.value("keyward_cluster_current", &[]), metrics.value("keyward_cluster_staleness_seconds", &[]))
}

/// Polls `status` until `done` holds, for at most `within`; returns the last status.
async fn status_until(
    kw: &Instance,
    within: Duration,
    done: impl Fn(&proto::ClusterStatus) -> bool,
) -> proto::ClusterStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = status(kw).await.expect("GetClusterStatus answers");
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_single_node_answers_mode_single_node_and_nothing_else() {
    let kw = Instance::started().await;
    let s = status(&kw).await.expect("GetClusterStatus on a single node");
    assert_eq!(s, proto::ClusterStatus { mode: ClusterMode::SingleNode.into(), ..Default::default() });
    assert_eq!(health(&kw, "keyward.v1.ClusterService").await, ServingStatus::Serving);
    let status = kw.cluster(None).await.get_cluster_status(proto::GetClusterStatusRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "it needs a credential like every keyward.v1 call");
}

#[tokio::test]
async fn a_cluster_node_reports_itself_and_etcd_and_keeps_answering_while_it_fails_closed() {
    let etcd = Etcd::start().await;
    let mut kw = init_cluster(&etcd);
    // A short etcd call timeout, so that a status asked of a cut-off node answers quickly.
    kw.configure("cluster", "request_timeout_ms", "500");
    kw.serve_args = vec!["--node-id".into(), "n1".into()];
    kw.metrics = true;
    kw.start().await;

    // The node's presence key appears shortly after it starts serving.
    let s = status_until(&kw, Duration::from_secs(10), |s| s.nodes.contains(&"n1".to_owned())).await;
    assert_eq!(s.mode(), ClusterMode::Cluster);
    assert_eq!(s.node_id, "n1");
    assert_eq!(s.nodes, vec!["n1"]);
    assert!(s.current, "{s:?}");
    assert_eq!(s.max_staleness_ms, 1000);
    assert!(s.staleness_ms.is_some_and(|ms| ms <= 1000), "{s:?}");
    assert!(s.revision > 0, "{s:?}");
    assert_eq!(s.keys, 1, "the root key");
    assert!(s.audit_head >= 1, "init's event: {s:?}");
    let members: Vec<(String, Vec<String>)> =
        s.etcd_members.iter().map(|m| (m.name.clone(), m.client_urls.clone())).collect();
    assert_eq!(members, vec![("a".to_owned(), vec![etcd.url.clone()])]);
    assert_eq!(s.etcd_members_error, "");

    // A mutation acknowledged by the node is in its view: one more key, a later revision.
    let (key, _) = kw.create_key("orders", &["orders:read"]).await;
    let after = status(&kw).await.unwrap();
    assert_eq!(after.keys, 2);
    assert!(after.revision > s.revision && after.audit_head > s.audit_head, "{s:?} then {after:?}");
    let (operator, _) = kw.create_key("ops", &["keyward:cluster:read"]).await;

    // etcd stops answering: the node fails closed, and its status still answers, saying so.
    etcd.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let verified = kw
            .root_verifier()
            .await
            .verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() })
            .await;
        match verified {
            Err(status) if status.code() == Code::Unavailable && status.message().contains("cannot prove") => break,
            other => assert!(Instant::now() < deadline, "VerifyKey still answers {other:?} with etcd stopped"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its caller is checked on the node's last known view (this key's first call: no cache).
    let mut client = kw.cluster(Some(&operator)).await;
    let stale = client.get_cluster_status(proto::GetClusterStatusRequest {}).await;
    let stale = stale.expect("GetClusterStatus answers while the node fails closed").into_inner();
    assert_eq!(stale.mode(), ClusterMode::Cluster);
    assert!(!stale.current, "{stale:?}");
    assert!(stale.staleness_ms.is_some_and(|ms| ms > 1000), "{stale:?}");
    assert!(stale.etcd_members.is_empty(), "{stale:?}");
    assert!(stale.etcd_members_error.contains("etcd"), "{stale:?}");
    // Health follows currency within its 200 ms poll.
    for service in ["", "keyward.v1.VerifyService", "keyward.v1.KeyService"] {
        assert_eq!(
            health_until(&kw, service, ServingStatus::NotServing).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    assert_eq!(health(&kw, "keyward.v1.ClusterService").await, ServingStatus::Serving);
    // The metrics say so too, and the staleness they show keeps growing.
    let first = cluster_metrics(&kw).await;
    assert_eq!(first.0, 0.0, "keyward_cluster_current while failing closed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = cluster_metrics(&kw).await;
    assert!(later.1 > first.1 + 1.0 && later.1 > 1.0, "keyward_cluster_staleness_seconds: {first:?} then {later:?}");

    // etcd back: the node proves itself current again, without a restart.
    etcd.signal("CONT");
    let back = status_until(&kw, Duration::from_secs(10), |s| s.current && !s.etcd_members.is_empty()).await;
    assert!(back.current && back.etcd_members.len() == 1, "{back:?}");
    assert_eq!(back.keys, 3);
    let verified = kw
        .root_verifier()
        .await
        .verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() })
        .await
        .map(|r| r.into_inner().code());
    assert!(matches!(verified, Ok(proto::VerifyCode::Valid)), "{verified:?}");
}
