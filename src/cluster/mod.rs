//! Cluster mode: the `Store` port on etcd, so that many keyward nodes share one key state. Key
//! records, the master state and the audit chain live in etcd (`layout`); every mutation with
//! its audit events is one etcd transaction comparing the revisions it read (`writer`, `stage`).
//! Each node serves reads from memory (`view`), kept current by a watch and proven current every
//! heartbeat (`follower`); a node that cannot prove it fails closed. The node's local sled
//! database keeps its copy of the audit chain and its usage log.

mod follower;
mod layout;
mod port;
mod presence;
mod stage;
mod trim;
mod view;
mod writer;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio_util::sync::CancellationToken;

pub use self::layout::Layout;
use self::{
    follower::Follower,
    stage::{Abort, Stage},
    view::NodeView,
    writer::{Writer, WriterParts},
};
use crate::{
    domain::{
        cluster::ClusterMember,
        ports::{AuditSealer, MasterState, StoreError},
    },
    store::SledStore,
};

/// How a node reaches etcd and how strict it is about being current.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node_id: String,
    pub heartbeat: Duration,
    pub max_staleness: Duration,
    pub request_timeout: Duration,
    /// The newest audit events etcd keeps (older ones are trimmed behind a checkpoint).
    pub audit_keep_events: u64,
    /// TLS to etcd: the CA file, and this node's client certificate and key files if any.
    pub tls: Option<(PathBuf, Option<(PathBuf, PathBuf)>)>,
    /// etcd authentication: the user and the file whose first line is its password.
    pub auth: Option<(String, PathBuf)>,
}

/// An etcd client error, as the store reports it: retry later.
fn etcd_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

/// `call` given at most `timeout`: its etcd error, or a timeout naming `what`, as `Unavailable`.
async fn within<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(etcd_error),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer {what} within {} ms (no quorum?)",
            timeout.as_millis()
        ))),
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Unavailable(format!("cannot read {what} {}: {e}", path.display())))
}

struct Inner {
    client: Client,
    settings: NodeSettings,
    layout: Layout,
    view: Arc<NodeView>,
    writer: Writer,
    /// The node's own sled database (audit copy, usage log); absent for `init`.
    local: Option<SledStore>,
    /// Taken by `follow` (the server runs it as a background task).
    follower: Mutex<Option<Follower>>,
    /// Whether this node holds the leader key (it runs the sweeper).
    leads: Arc<AtomicBool>,
}

/// The cluster-mode store of one node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterStore(Arc<Inner>);

fn no_local() -> StoreError {
    StoreError::Unavailable("this store was opened for init: it has no local database".into())
}

impl ClusterStore {
    async fn client(settings: &NodeSettings) -> Result<Client, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.request_timeout)
            .with_keep_alive(settings.heartbeat.max(Duration::from_millis(500)), settings.request_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((ca, identity)) = &settings.tls {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "cluster.ca_file")?));
            if let Some((cert, key)) = identity {
                let key = zeroize::Zeroizing::new(read(key, "cluster.key_file")?);
                tls = tls.identity(Identity::from_pem(read(cert, "cluster.cert_file")?, key.as_slice()));
            }
            options = options.with_tls(tls);
        }
        if let Some((user, file)) = &settings.auth {
            let text = zeroize::Zeroizing::new(read(file, "cluster.password_file")?);
            let password = std::str::from_utf8(&text)
                .map_err(|_| StoreError::Unavailable("cluster.password_file is not UTF-8".into()))?
                .lines()
                .next()
                .unwrap_or_default();
            options = options.with_user(user.clone(), password);
        }
        tokio::time::timeout(settings.request_timeout * 2, Client::connect(&settings.endpoints, Some(options)))
            .await
            .map_err(|_| StoreError::Unavailable(format!("cannot reach etcd at {}", settings.endpoints.join(","))))?
            .map_err(|e| StoreError::Unavailable(format!("cannot reach etcd at {}: {e}", settings.endpoints.join(","))))
    }

    /// Connects a serving node: loads the cluster's state (and brings `local`'s audit copy up to
    /// it) before it returns; `follow` then keeps it current.
    pub async fn connect(
        settings: NodeSettings,
        local: SledStore,
        sealer: Arc<dyn AuditSealer>,
    ) -> Result<Self, StoreError> {
        let client = Self::client(&settings).await?;
        let layout = Layout::new(settings.prefix.clone());
        let view = Arc::new(NodeView::new(settings.max_staleness));
        let follower = Follower {
            client: client.clone(),
            layout: layout.clone(),
            view: view.clone(),
            local: local.clone(),
            heartbeat: settings.heartbeat,
            max_staleness: settings.max_staleness,
            request_timeout: settings.request_timeout,
        };
        follower.load().await?;
        if view.master().is_none() {
            return Err(StoreError::Unavailable(format!(
                "etcd holds no keyward cluster under {:?}: run `keyward init --etcd …` first",
                settings.prefix
            )));
        }
        let writer = Writer::start(WriterParts {
            kv: client.kv_client(),
            layout: layout.clone(),
            view: view.clone(),
            sealer,
            request_timeout: settings.request_timeout,
            node_id: settings.node_id.clone(),
            local: Some(local.clone()),
        });
        let follower = Mutex::new(Some(follower));
        let leads = Arc::default();
        Ok(Self(Arc::new(Inner { client, settings, layout, view, writer, local: Some(local), follower, leads })))
    }

    /// Connects for `init`: writes only, no watch, no local database.
    pub async fn connect_for_init(settings: NodeSettings, sealer: Arc<dyn AuditSealer>) -> Result<Self, StoreError> {
        let client = Self::client(&settings).await?;
        let layout = Layout::new(settings.prefix.clone());
        let view = Arc::new(NodeView::new(settings.max_staleness));
        let writer = Writer::start(WriterParts {
            kv: client.kv_client(),
            layout: layout.clone(),
            view: view.clone(),
            sealer,
            request_timeout: settings.request_timeout,
            node_id: settings.node_id.clone(),
            local: None,
        });
        let follower = Mutex::new(None);
        let leads = Arc::default();
        Ok(Self(Arc::new(Inner { client, settings, layout, view, writer, local: None, follower, leads })))
    }

    /// Whether `settings.prefix` already holds a cluster (its marker or master state), read
    /// from etcd.
    pub async fn holds_cluster(settings: &NodeSettings) -> Result<bool, StoreError> {
        let mut kv = Self::client(settings).await?.kv_client();
        let layout = Layout::new(settings.prefix.clone());
        let options = etcd_client::GetOptions::new().with_count_only();
        for name in [layout.cluster(), layout.master()] {
            let found = within(settings.request_timeout, "a read", kv.get(name, Some(options.clone()))).await?;
            if found.count() > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Follows etcd until cancelled (the watch, the heartbeat, the node's presence). Run once.
    pub async fn follow(self, address: String, cancel: CancellationToken) {
        let follower = self.0.follower.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(follower) = follower else { return };
        let presence = presence::Presence {
            client: self.0.client.clone(),
            name: self.0.layout.node(&self.0.settings.node_id),
            leader: self.0.layout.leader(),
            node_id: self.0.settings.node_id.clone(),
            about: presence::about(&self.0.settings.node_id, &address),
            ttl: presence::ttl(self.0.settings.max_staleness),
            leads: self.0.leads.clone(),
        };
        let trimmer = trim::Trimmer {
            client: self.0.client.clone(),
            layout: self.0.layout.clone(),
            keep: self.0.settings.audit_keep_events,
            request_timeout: self.0.settings.request_timeout,
        };
        tokio::join!(follower.run(cancel.clone()), presence.run(cancel.clone()), trimmer.run(cancel));
    }

    /// Whether this node leads the cluster's periodic work now (the sweeper runs on the leader
    /// only).
    pub fn leads(&self) -> bool {
        self.0.leads.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The master key state as the cluster changes it (another node's rotation included).
    pub fn master_updates(&self) -> tokio::sync::watch::Receiver<Option<MasterState>> {
        self.0.view.master_updates()
    }

    /// The etcd members, from etcd's MemberList, within the request timeout (etcd answers it
    /// only with a leader: this node asks for one).
    pub async fn members(&self) -> Result<Vec<ClusterMember>, StoreError> {
        let mut cluster = self.0.client.cluster_client();
        let listed = within(self.0.settings.request_timeout, "its member list", cluster.member_list()).await?;
        Ok(listed
            .members()
            .iter()
            .map(|m| ClusterMember { name: m.name().to_owned(), client_urls: m.client_urls().to_vec() })
            .collect())
    }

    /// The node's own database.
    pub fn local(&self) -> Option<&SledStore> {
        self.0.local.as_ref()
    }

    fn local_or_err(&self) -> Result<&SledStore, StoreError> {
        self.0.local.as_ref().ok_or_else(no_local)
    }

    /// Flushes the local database.
    pub fn close(&self) {
        if let Some(local) = &self.0.local {
            local.close();
        }
    }

    async fn write<T, F>(&self, body: F) -> Result<T, Abort>
    where
        F: Fn(&mut Stage<'_>) -> Result<T, Abort> + Send + 'static,
        T: Send + 'static,
    {
        self.0.writer.submit(body).await
    }
}
