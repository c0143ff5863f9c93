//! The store engine a server runs on, chosen by configuration: sled on a single node (the
//! default), or etcd in cluster mode. `Engine` passes every `Store` call to the one chosen, so
//! the domain never knows which it runs on.

use std::time::SystemTime;

use super::SledStore;
use crate::{
    cluster::ClusterStore,
    domain::{
        audit::{AuditEvent, AuditQuery, ChainReport, RecordedEvent},
        cluster::ClusterStatus,
        error::Error,
        key::{KeyId, KeyRecord},
        key_index::KeyIndex,
        ports::{DigestSwap, KeyChange, MasterState, Store, StoreError, Updated},
        usage::UsageDelta,
        usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
    },
};

#[derive(Clone)]
pub enum Engine {
    Single(SledStore),
    Cluster(ClusterStore),
}

impl Engine {
    /// The node's own sled database: the whole store on a single node, the audit copy and usage
    /// log in cluster mode.
    pub fn local(&self) -> Option<&SledStore> {
        match self {
            Engine::Single(s) => Some(s),
            Engine::Cluster(c) => c.local(),
        }
    }

    pub fn cluster(&self) -> Option<&ClusterStore> {
        match self {
            Engine::Single(_) => None,
            Engine::Cluster(c) => Some(c),
        }
    }

    pub fn close(&self) {
        match self {
            Engine::Single(s) => s.close(),
            Engine::Cluster(c) => c.close(),
        }
    }
}

/// Calls `$call` on whichever engine `$self` is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Engine::Single($s) => $call,
            Engine::Cluster($s) => $call,
        }
    };
}

impl Store for Engine {
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        each!(self, s => s.get_key(id))
    }

    fn key_index(&self) -> Result<&KeyIndex, StoreError> {
        each!(self, s => s.key_index())
    }

    fn get_key_last_known(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        each!(self, s => s.get_key_last_known(id))
    }

    async fn cluster_status(&self) -> Option<ClusterStatus> {
        match self {
            Engine::Single(_) => None,
            Engine::Cluster(c) => c.cluster_status().await,
        }
    }

    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_ {
        let keys: Box<dyn Iterator<Item = Result<KeyRecord, StoreError>> + '_> =
            each!(self, s => Box::new(s.scan_keys(after)));
        keys
    }

    async fn insert_key(&self, record: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        each!(self, s => s.insert_key(record, event).await)
    }

    async fn update_key<F>(&self, id: KeyId, change: F) -> Result<Updated, Error>
    where
        F: Fn(&KeyRecord) -> KeyChange + Send + 'static,
    {
        each!(self, s => s.update_key(id, change).await)
    }

    async fn rotate_key<F>(&self, id: KeyId, change: F) -> Result<(Updated, KeyRecord), Error>
    where
        F: Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord, Vec<AuditEvent>), Error> + Send + 'static,
    {
        each!(self, s => s.rotate_key(id, change).await)
    }

    async fn replace_digests(
        &self,
        swaps: Vec<DigestSwap>,
        master: Option<(MasterState, Option<AuditEvent>)>,
    ) -> Result<usize, StoreError> {
        each!(self, s => s.replace_digests(swaps, master).await)
    }

    async fn set_master(&self, master: MasterState, event: AuditEvent) -> Result<(), StoreError> {
        each!(self, s => s.set_master(master, event).await)
    }

    async fn record_usage(&self, batch: Vec<(KeyId, UsageDelta)>) -> Result<(), StoreError> {
        each!(self, s => s.record_usage(batch).await)
    }

    async fn append_events(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        each!(self, s => s.append_events(events).await)
    }

    async fn append_usage(&self, records: Vec<UsageRecord>, retention: Retention) -> Result<u64, StoreError> {
        each!(self, s => s.append_usage(records, retention).await)
    }

    fn key_usage(
        &self,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        max_scan: usize,
    ) -> Result<KeyUsage, StoreError> {
        each!(self, s => s.key_usage(key, since, until, max_scan))
    }

    fn query_usage(
        &self,
        query: &UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Vec<u8>>), StoreError> {
        each!(self, s => s.query_usage(query, cursor, limit, max_scan))
    }

    fn master(&self) -> Result<Option<MasterState>, StoreError> {
        each!(self, s => s.master())
    }

    async fn initialize(&self, master: MasterState, root: KeyRecord, event: AuditEvent) -> Result<(), StoreError> {
        each!(self, s => s.initialize(master, root, event).await)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        each!(self, s => s.audit_after(after, limit))
    }

    fn query_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<RecordedEvent>, Option<Vec<u8>>), StoreError> {
        each!(self, s => s.query_audit(query, cursor, limit, max_scan))
    }

    fn writes_confirmed(&self) -> bool {
        each!(self, s => s.writes_confirmed())
    }

    fn is_current(&self) -> bool {
        each!(self, s => s.is_current())
    }

    fn nodes_sharing(&self) -> u32 {
        each!(self, s => s.nodes_sharing())
    }

    fn audit_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        each!(self, s => s.audit_durable())
    }

    fn verify_chain(&self, from: u64, to: Option<u64>) -> Result<ChainReport, StoreError> {
        each!(self, s => s.verify_chain(from, to))
    }
}
