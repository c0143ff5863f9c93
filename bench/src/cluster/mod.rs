//! `keyward-bench cluster`: cluster mode on etcd against single-node sled mode, in the same run.
//! Starts its own etcd members, a cluster of keyward nodes on them and a single-node instance,
//! then measures VerifyKey on one node against the single node, revocation propagation from
//! node A to node B, CreateKey and RevokeKey throughput, and how fast a node fails closed when
//! etcd loses quorum and comes back when it regains it.

use std::{path::PathBuf, time::Duration};

use keyward::app::Options;

use crate::{
    error::{BenchError, Result},
    etcd::EtcdCluster,
    host::{self, SelfHost, Server},
    suite::report::Machine,
    target::Target,
};

pub(crate) mod measure;
pub mod report;

use report::{ClusterReport, ClusterSettings};

/// etcd members the bench starts: the smallest cluster that survives one loss.
pub const ETCD_MEMBERS: usize = 3;

/// How the cluster bench runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterOptions {
    /// keyward nodes in the cluster (at least 2: A revokes, B is polled).
    pub nodes: usize,
    /// How long VerifyKey runs on each instance, and CreateKey and RevokeKey each.
    pub duration: Duration,
    /// Calls in flight at once for VerifyKey, CreateKey and RevokeKey.
    pub concurrency: usize,
    /// HTTP/2 connections per instance.
    pub connections: usize,
    /// Keys revoked on A and polled on B, one after another.
    pub revocations: usize,
    /// Concurrent VerifyKey pollers on B per revocation.
    pub pollers: usize,
    /// Times quorum is taken away and given back.
    pub fail_cycles: usize,
    /// How long VerifyKey is watched after the node failed closed (no VALID may come).
    pub hold: Duration,
    /// The small run (CI): set by `--quick`, reported.
    pub quick: bool,
}

impl ClusterOptions {
    /// The defaults of the full run.
    pub fn full() -> Self {
        Self {
            nodes: 3,
            duration: Duration::from_secs(5),
            concurrency: 16,
            connections: 4,
            revocations: 1000,
            pollers: 4,
            fail_cycles: 5,
            hold: Duration::from_secs(1),
            quick: false,
        }
    }

    /// `--quick`: a run of a few seconds that still yields every figure.
    pub fn quick(self) -> Self {
        Self {
            duration: Duration::from_secs(1),
            revocations: self.revocations.min(50),
            fail_cycles: 1,
            hold: Duration::from_millis(500),
            quick: true,
            ..self
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.nodes < 2 {
            return Err(BenchError::Usage("--nodes must be at least 2 (A revokes, B is polled)"));
        }
        if self.concurrency == 0 || self.connections == 0 || self.pollers == 0 || self.duration.is_zero() {
            return Err(BenchError::Usage("--concurrency, --connections, --pollers and --seconds must be at least 1"));
        }
        if self.revocations == 0 || self.fail_cycles == 0 {
            return Err(BenchError::Usage("--revocations and --fail-cycles must be at least 1"));
        }
        Ok(())
    }
}

/// Everything the bench started; dropped in field order: keyward first (its nodes leave etcd
/// cleanly), then etcd, then the directories.
struct Hosts {
    nodes: Vec<(Server, String)>,
    single: SelfHost,
    etcd: EtcdCluster,
    cluster_root_key: PathBuf,
    _cluster_dir: tempfile::TempDir,
}

impl Hosts {
    /// Starts etcd, `keyward init --dev --etcd` and `nodes` `keyward serve --etcd` on one data
    /// directory, and a single-node instance on sled.
    fn start(nodes: usize) -> Result<Self> {
        let etcd = EtcdCluster::start(ETCD_MEMBERS)?;
        let dir = host::temp_dir()?;
        let data_dir = dir.path().join("data");
        let urls = etcd.client_urls();
        host::init_dev(&data_dir, &["--etcd".into(), urls.clone()])?;
        let opts = Options::new(data_dir.clone(), None, true);
        let mut started = Vec::with_capacity(nodes);
        for i in 1..=nodes {
            let extra = ["--etcd".to_owned(), urls.clone(), "--node-id".into(), format!("n{i}")];
            let addr_file = dir.path().join(format!("addr-n{i}"));
            started.push(Server::start_with(&opts, &opts.config, &addr_file, &extra)?);
        }
        let single = SelfHost::start()?;
        let cluster_root_key = data_dir.join("root.key");
        Ok(Self { nodes: started, single, etcd, cluster_root_key, _cluster_dir: dir })
    }
}

/// `keyward-bench cluster`: starts everything, measures, stops everything.
pub fn run(options: &ClusterOptions) -> Result<ClusterReport> {
    options.check()?;
    let hosts = Hosts::start(options.nodes)?;
    let cluster_key = crate::commands::read_key_file(&hosts.cluster_root_key)?;
    let single_key = crate::commands::read_key_file(&hosts.single.root_key_file)?;
    let runtime = keyward::app::runtime()?;
    let result = runtime.block_on(async {
        let connect = async |addr: &str, key: &str| Target::connect(addr, key, options.connections).await;
        let single = connect(&hosts.single.addr, &single_key).await?;
        let a = connect(&hosts.nodes[0].1, &cluster_key).await?;
        let b = connect(&hosts.nodes[1].1, &cluster_key).await?;
        let progress = |what: &str| eprintln!("keyward-bench cluster: {what}");
        progress("VerifyKey, single node and node A in alternating rounds");
        let verify = measure::verify(&single, &a, options).await?;
        progress("CreateKey and RevokeKey, single node and node A");
        let mutations = measure::mutations(&single, &a, options).await?;
        progress(&format!("revocation propagation, {} keys revoked on A and polled on B", options.revocations));
        let propagation = measure::propagation(&a, b, options).await?;
        progress(&format!("fail-closed: 2 of 3 etcd members stopped, then resumed, {} times", options.fail_cycles));
        let fail_closed = measure::fail_closed(&hosts.etcd, &a, options).await?;
        Ok::<_, BenchError>((verify, mutations, propagation, fail_closed))
    });
    drop(runtime);
    drop(hosts);
    let (verify, (create, revoke), propagation, fail_closed) = result?;
    let settings = ClusterSettings {
        nodes: options.nodes,
        etcd_members: ETCD_MEMBERS,
        concurrency: options.concurrency,
        connections: options.connections,
        seconds: options.duration.as_secs_f64(),
        revocations: options.revocations,
        pollers: options.pollers,
        fail_cycles: options.fail_cycles,
        quick: options.quick,
    };
    Ok(ClusterReport::new(Machine::this(), settings, verify, create, revoke, propagation, fail_closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_keeps_every_figure_but_shrinks_the_run() {
        let quick = ClusterOptions::full().quick();
        assert_eq!((quick.nodes, quick.revocations, quick.fail_cycles, quick.quick), (3, 50, 1, true));
        assert_eq!(quick.duration, Duration::from_secs(1));
        assert!(quick.check().is_ok());
    }

    #[test]
    fn options_that_cannot_measure_are_refused() {
        let one_node = ClusterOptions { nodes: 1, ..ClusterOptions::full() };
        assert!(one_node.check().unwrap_err().to_string().contains("--nodes"));
        let no_pollers = ClusterOptions { pollers: 0, ..ClusterOptions::full() };
        assert!(no_pollers.check().is_err());
        let nothing_to_revoke = ClusterOptions { revocations: 0, ..ClusterOptions::full() };
        assert!(nothing_to_revoke.check().is_err());
    }
}
