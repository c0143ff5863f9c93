//! A keyward cluster for the tests: a 3-member etcd cluster and N `keyward serve --etcd`
//! processes sharing one development data directory (its SoftHSM2 token and keyward.toml),
//! each with its own node id, address and log. Nodes are numbered from 0; node `i` has the
//! node id `n{i+1}`.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use super::{AuditClient, BIN, Instance, KeyClient, VerifyClient, etcd::EtcdCluster, require_softhsm};

/// How long one call to a node may take before the tests count it as unanswered: a node must
/// answer (even `UNAVAILABLE`) from memory, never hang on etcd.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one VerifyKey: its code, or the status code of the failed call
/// (`DEADLINE_EXCEEDED` when it was not answered within [`CALL_TIMEOUT`]).
pub type Outcome = Result<VerifyCode, Code>;

/// Members of every test cluster's etcd: the smallest cluster that survives losing one.
pub const ETCD_MEMBERS: usize = 3;

/// An etcd cluster, one initialized data directory, and its keyward nodes.
pub struct ClusterNodes {
    nodes: Vec<Instance>,
    pub etcd: EtcdCluster,
    pub data_dir: PathBuf,
    pub root_key: String,
    tmp: tempfile::TempDir,
}

impl ClusterNodes {
    /// Starts 3 etcd members, runs `keyward init --dev --etcd` and starts `n` nodes.
    pub async fn start(n: usize) -> Self {
        let mut cluster = Self::initialized(EtcdCluster::start(ETCD_MEMBERS).await);
        for _ in 0..n {
            cluster.add_node();
        }
        for i in 0..n {
            cluster.start_node(i).await;
        }
        cluster
    }

    /// `keyward init --dev --data-dir DIR --etcd URLS` on this etcd cluster; no node yet.
    pub fn initialized(etcd: EtcdCluster) -> Self {
        require_softhsm();
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let data_dir = tmp.path().join("data");
        let out = init(&data_dir, &etcd.urls(), &[]);
        assert!(
            out.status.success(),
            "keyward init --dev --etcd failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            etcd.logs()
        );
        let root_key =
            std::fs::read_to_string(data_dir.join("root.key")).expect("init writes root.key").trim().to_owned();
        Self { nodes: Vec::new(), etcd, data_dir, root_key, tmp }
    }

    /// Adds node `n{len+1}` (not started): `serve --etcd URLS --node-id ID`, logging at info
    /// (trace logging from several nodes would be most of the tests' work).
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let id = node_id(i);
        let run_dir = self.tmp.path().join(format!("run-{id}"));
        std::fs::create_dir_all(&run_dir).expect("a run directory");
        let log_file = self.tmp.path().join(format!("{id}.log"));
        let mut node = Instance::sharing(self.data_dir.clone(), run_dir, log_file);
        node.log_filter = "info";
        node.serve_args = vec!["--etcd".into(), self.etcd.urls(), "--node-id".into(), id];
        self.nodes.push(node);
        i
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, i: usize) -> &Instance {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Instance {
        &mut self.nodes[i]
    }

    /// Starts node `i` (again, after `stop_node` or `kill_node`) and waits until it serves.
    pub async fn start_node(&mut self, i: usize) {
        self.nodes[i].start().await
    }

    /// SIGKILL to node `i` (`start_node` starts it again; `node_mut(i).stop()` is SIGTERM).
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill()
    }

    pub async fn keys(&self, i: usize) -> KeyClient {
        self.nodes[i].root_keys().await
    }

    pub async fn verifier(&self, i: usize) -> VerifyClient {
        self.nodes[i].root_verifier().await
    }

    pub async fn audit(&self, i: usize) -> AuditClient {
        self.nodes[i].audit(Some(&self.root_key)).await
    }

    pub async fn health(&self, i: usize) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
        self.nodes[i].health().await
    }

    /// Creates a key on node `i` as root; returns (key, key id). Panics if refused.
    pub async fn create_key(&self, i: usize, name: &str) -> (String, String) {
        self.create(i, proto::CreateKeyRequest { name: name.into(), ..Default::default() })
            .await
            .unwrap_or_else(|status| panic!("CreateKey on node {i}: {status:?}\n{}", self.logs()))
    }

    /// CreateKey on node `i` as root: (key, key id), or the refusal.
    pub async fn create(&self, i: usize, request: proto::CreateKeyRequest) -> Result<(String, String), tonic::Status> {
        let mut client = self.keys(i).await;
        let created = timed(client.create_key(request)).await?.into_inner();
        Ok((created.key, created.info.expect("CreateKey returns the key's info").key_id))
    }

    /// VerifyKey of `key` on node `i` as root.
    pub async fn verify(&self, i: usize, key: &str) -> Outcome {
        verify_with(&mut self.verifier(i).await, key, None).await
    }

    /// RevokeKey on node `i` as root. Panics if refused.
    pub async fn revoke(&self, i: usize, key_id: &str) {
        let request = proto::RevokeKeyRequest { key_id: key_id.into(), reason: "test".into() };
        let mut client = self.keys(i).await;
        timed(client.revoke_key(request))
            .await
            .unwrap_or_else(|status| panic!("RevokeKey on node {i}: {status:?}\n{}", self.logs()));
    }

    /// Every node's log and the etcd members' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let text = node.logs();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            out.push_str(&format!(
                "--- keyward node {} (last {} lines) ---\n{}\n",
                node_id(i),
                tail.len(),
                tail.join("\n")
            ));
        }
        out + &self.etcd.logs()
    }
}

/// Node `i`'s node id.
pub fn node_id(i: usize) -> String {
    format!("n{}", i + 1)
}

/// `keyward init --dev --data-dir DIR --etcd URLS <extra>` to completion.
pub fn init(data_dir: &Path, urls: &str, extra: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(["init", "--dev", "--data-dir"])
        .arg(data_dir)
        .args(["--etcd", urls])
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .expect("running keyward init")
}

/// VerifyKey of `key` with this client, spending `cost` uses (unset: the default, 1).
pub async fn verify_with(client: &mut VerifyClient, key: &str, cost: Option<u32>) -> Outcome {
    let request = proto::VerifyKeyRequest { key: key.into(), cost, ..Default::default() };
    timed(client.verify_key(request)).await.map(|r| r.into_inner().code()).map_err(|s| s.code())
}

/// A call that gets [`CALL_TIMEOUT`] to answer; `DEADLINE_EXCEEDED` if it does not.
pub async fn timed<T>(call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}"))))
}
