//! Cluster mode: the `Store` port on etcd, so that many keyward nodes share one key state. Key
//! records, the master state and the audit chain live in etcd (`layout`); every mutation with
//! its audit events is one etcd transaction comparing the revisions it read (`writer`, `stage`).
//! Each node serves reads from memory (`view`), kept current by a watch and proven current every
//! heartbeat (`follower`); a node that cannot prove it fails closed. The node's local sled
//! database keeps its copy of the audit chain and its usage log.

mod follower;
mod layout;
mod presence;
mod stage;
mod trim;
mod view;
mod writer;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio_util::sync::CancellationToken;

pub use self::layout::Layout;
use self::{
    follower::Follower,
    stage::{Abort, Stage},
    view::NodeView,
    writer::{MAX_TXN_OPS, Writer, WriterParts},
};
use crate::{
    domain::{
        audit::{AuditEvent, AuditQuery, ChainReport, RecordedEvent},
        cluster::{ClusterMember, ClusterStatus as NodeStatus},
        error::Error,
        key::{KeyId, KeyRecord},
        ports::{AuditSealer, DigestSwap, KeyChange, MasterState, Store, StoreError, Updated},
        usage::UsageDelta,
        usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
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

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Unavailable(format!("cannot read {what} {}: {e}", path.display())))
}

/// What a node knows about itself and the cluster, for operators.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    pub node_id: String,
    /// The etcd revision the node's view has applied.
    pub revision: i64,
    /// Time since the view was last proven current (`None`: never).
    pub staleness: Option<Duration>,
    pub current: bool,
    /// The keyward nodes that announce themselves in etcd, by id.
    pub nodes: Vec<String>,
    pub keys: usize,
    pub audit_head: u64,
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
            followed: true,
        });
        let follower = Mutex::new(Some(follower));
        Ok(Self(Arc::new(Inner { client, settings, layout, view, writer, local: Some(local), follower })))
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
            followed: false,
        });
        let follower = Mutex::new(None);
        Ok(Self(Arc::new(Inner { client, settings, layout, view, writer, local: None, follower })))
    }

    /// Whether `settings.prefix` already holds a cluster (its marker or master state), read
    /// from etcd.
    pub async fn holds_cluster(settings: &NodeSettings) -> Result<bool, StoreError> {
        let mut kv = Self::client(settings).await?.kv_client();
        let layout = Layout::new(settings.prefix.clone());
        let options = etcd_client::GetOptions::new().with_count_only();
        for name in [layout.cluster(), layout.master()] {
            let found = tokio::time::timeout(settings.request_timeout, kv.get(name, Some(options.clone())))
                .await
                .map_err(|_| StoreError::Unavailable("etcd did not answer in time (no quorum?)".into()))?
                .map_err(|e| StoreError::Unavailable(format!("etcd: {e}")))?;
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
            about: presence::about(&self.0.settings.node_id, &address),
            ttl: presence::ttl(self.0.settings.max_staleness),
        };
        let trimmer = trim::Trimmer {
            client: self.0.client.clone(),
            layout: self.0.layout.clone(),
            keep: self.0.settings.audit_keep_events,
            request_timeout: self.0.settings.request_timeout,
        };
        tokio::join!(follower.run(cancel.clone()), presence.run(cancel.clone()), trimmer.run(cancel));
    }

    /// The master key state as the cluster changes it (another node's rotation included).
    pub fn master_updates(&self) -> tokio::sync::watch::Receiver<Option<MasterState>> {
        self.0.view.master_updates()
    }

    pub fn status(&self) -> ClusterStatus {
        let view = &self.0.view;
        ClusterStatus {
            node_id: self.0.settings.node_id.clone(),
            revision: view.applied(),
            staleness: view.staleness(),
            current: view.is_current(),
            nodes: view.nodes(),
            keys: view.key_count(),
            audit_head: view.head().seq,
        }
    }

    /// The etcd members, from etcd's MemberList, within the request timeout (etcd answers it
    /// only with a leader: this node asks for one).
    pub async fn members(&self) -> Result<Vec<ClusterMember>, StoreError> {
        let mut cluster = self.0.client.cluster_client();
        let timeout = self.0.settings.request_timeout;
        let listed = tokio::time::timeout(timeout, cluster.member_list())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "etcd did not list its members within {} ms (no quorum?)",
                    timeout.as_millis()
                ))
            })?
            .map_err(|e| StoreError::Unavailable(format!("etcd: {e}")))?;
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

fn missing(id: KeyId) -> Abort {
    Abort::Domain(Error::NotFound(format!("key {id}")))
}

/// Key records read a page at a time from the view.
struct Scan<'a> {
    view: &'a NodeView,
    after: Option<KeyId>,
    page: VecDeque<KeyRecord>,
    failed: Option<StoreError>,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<KeyRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.page.is_empty() && !self.done {
            if let Err(e) = self.view.require_current() {
                self.done = true;
                return Some(Err(e));
            }
            self.page = self.view.keys_after(self.after, 256).into();
            self.done = self.page.is_empty();
        }
        let record = self.page.pop_front()?;
        self.after = Some(record.id);
        Some(Ok(record))
    }
}

/// Digest swaps per transaction (each swap is a compare and a put).
const SWAPS_PER_WRITE: usize = MAX_TXN_OPS / 2 - 4;

impl Store for ClusterStore {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.0.view.require_current()?;
        Ok(self.0.view.key(id))
    }

    fn get_key_last_known(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.0.view.key(id))
    }

    async fn cluster_status(&self) -> Option<NodeStatus> {
        let members = self.members().await.map_err(|e| match e {
            StoreError::Unavailable(why) => why,
            other => other.to_string(),
        });
        let s = self.status();
        Some(NodeStatus {
            node_id: s.node_id,
            revision: s.revision,
            staleness: s.staleness,
            current: s.current,
            max_staleness: self.0.settings.max_staleness,
            nodes: s.nodes,
            audit_head: s.audit_head,
            keys: s.keys as u64,
            members,
        })
    }

    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_ {
        Scan { view: &self.0.view, after, page: VecDeque::new(), failed: None, done: false }
    }

    async fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        self.write(move |t| {
            if t.key(record.id)?.is_some() {
                return Err(Abort::Domain(Error::AlreadyExists(format!("key {}", record.id))));
            }
            t.put_key(record.clone());
            t.append(event.clone());
            Ok(())
        })
        .await
        .map_err(StoreError::from)
    }

    async fn update_key<F>(&self, id: KeyId, change: F) -> Result<Updated, Error>
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static,
    {
        Ok(self
            .write(move |t| {
                let before = t.key(id)?.ok_or_else(|| missing(id))?;
                match change(&before).map_err(Abort::Domain)? {
                    None => Ok(Updated { after: before.clone(), before }),
                    Some((after, event)) => {
                        t.put_key(after.clone());
                        if let Some(event) = event {
                            t.append(event);
                        }
                        Ok(Updated { before, after })
                    }
                }
            })
            .await?)
    }

    async fn rotate_key<F>(&self, id: KeyId, change: F) -> Result<(Updated, KeyRecord), Error>
    where
        F: Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord, Vec<AuditEvent>), Error> + Send + 'static,
    {
        Ok(self
            .write(move |t| {
                let before = t.key(id)?.ok_or_else(|| missing(id))?;
                let (after, successor, events) = change(&before).map_err(Abort::Domain)?;
                if t.key(successor.id)?.is_some() {
                    return Err(Abort::Domain(Error::AlreadyExists(format!("key {}", successor.id))));
                }
                t.put_key(after.clone());
                t.put_key(successor.clone());
                events.into_iter().for_each(|e| t.append(e));
                Ok((Updated { before, after }, successor))
            })
            .await?)
    }

    async fn replace_digests(
        &self,
        swaps: Vec<DigestSwap>,
        master: Option<(MasterState, Option<AuditEvent>)>,
    ) -> Result<usize, StoreError> {
        let mut chunks: Vec<Vec<DigestSwap>> = swaps.chunks(SWAPS_PER_WRITE).map(<[DigestSwap]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        let mut replaced = 0;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let master = if i == last { master.clone() } else { None };
            replaced += self
                .write(move |t| {
                    let mut replaced = 0;
                    for swap in &chunk {
                        let Some(mut record) = t.key(swap.id)? else { continue };
                        if record.digest != swap.expected {
                            continue;
                        }
                        record.digest = swap.new.clone();
                        t.put_key(record);
                        replaced += 1;
                    }
                    if let Some((state, event)) = &master {
                        t.master()?;
                        t.put_master(state.clone());
                        if let Some(event) = event {
                            t.append(event.clone());
                        }
                    }
                    Ok(replaced)
                })
                .await?;
        }
        Ok(replaced)
    }

    async fn set_master(&self, master: MasterState, event: AuditEvent) -> Result<(), StoreError> {
        // The state this change was made from: another node's change since then refuses it.
        let expected = self.0.view.master().map(|(m, _)| m);
        self.write(move |t| {
            if t.master()? != expected {
                let why = "the master key state changed on another node meanwhile; retry";
                return Err(Abort::Domain(Error::FailedPrecondition(why.into())));
            }
            t.put_master(master.clone());
            t.append(event.clone());
            Ok(())
        })
        .await
        .map_err(StoreError::from)
    }

    async fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> Result<(), StoreError> {
        for chunk in batch.chunks(SWAPS_PER_WRITE) {
            let chunk = chunk.to_vec();
            self.write(move |t| {
                for (id, delta) in &chunk {
                    let Some(mut record) = t.key(*id)? else { continue };
                    record.usage.absorb(delta);
                    t.put_key(record);
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn append_events(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        for chunk in events.chunks(MAX_TXN_OPS / 2) {
            let chunk = chunk.to_vec();
            self.write(move |t| {
                chunk.iter().for_each(|e| t.append(e.clone()));
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn append_usage(&self, records: Vec<UsageRecord>, retention: Retention) -> Result<u64, StoreError> {
        self.local_or_err()?.append_usage(records, retention).await
    }

    fn key_usage(
        &self,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        max_scan: usize,
    ) -> Result<KeyUsage, StoreError> {
        self.local_or_err()?.key_usage(key, since, until, max_scan)
    }

    fn query_usage(
        &self,
        query: &UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Vec<u8>>), StoreError> {
        self.local_or_err()?.query_usage(query, cursor, limit, max_scan)
    }

    fn master(&self) -> Result<Option<MasterState>, StoreError> {
        Ok(self.0.view.master().map(|(m, _)| m))
    }

    async fn initialize(&self, master: MasterState, root: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        let marker = format!(
            "{{\"format\":1,\"created_at_unix\":{}}}",
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
        )
        .into_bytes();
        self.write(move |t| {
            t.create_cluster(marker.clone())?;
            t.put_master(master.clone());
            t.put_key(root.clone());
            t.append(event.clone());
            Ok(())
        })
        .await
        .map_err(StoreError::from)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.local_or_err()?.audit_after(after, limit)
    }

    fn query_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<Vec<u8>>), StoreError> {
        self.local_or_err()?.query_audit(query, cursor, limit, max_scan)
    }

    fn is_current(&self) -> bool {
        self.0.view.is_current()
    }

    fn nodes_sharing(&self) -> u32 {
        self.0.view.node_count()
    }

    fn audit_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.0.local {
            Some(local) => local.audit_durable(),
            None => tokio::sync::watch::Sender::new(0).subscribe(),
        }
    }

    fn verify_chain(&self, from: u64, to: Option<u64>) -> Result<ChainReport, StoreError> {
        self.local_or_err()?.verify_chain(from, to)
    }
}
