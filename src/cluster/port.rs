//! The `Store` port on the cluster: reads come from the node's view (failing closed when it is
//! not proven current), writes go through the node's writer as etcd transactions, and the audit
//! trail and usage log are read from the node's own database.

use std::{collections::VecDeque, time::SystemTime};

use super::{ClusterStore, stage::Abort, view::NodeView, writer::MAX_TXN_OPS};
use crate::domain::{
    audit::{AuditEvent, AuditQuery, ChainReport, RecordedEvent},
    cluster::ClusterStatus as NodeStatus,
    error::Error,
    key::{KeyId, KeyRecord},
    key_index::KeyIndex,
    ports::{DigestSwap, KeyChange, MasterState, Store, StoreError, Updated},
    usage::UsageDelta,
    usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
};

fn missing(id: KeyId) -> Abort {
    Abort::Domain(Error::NotFound(format!("key {id}")))
}

/// Key records read a page at a time from the view.
struct Scan<'a> {
    view: &'a NodeView,
    after: Option<KeyId>,
    page: VecDeque<KeyRecord>,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<KeyRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
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

    fn key_index(&self) -> Result<&KeyIndex, StoreError> {
        self.0.view.require_current()?;
        Ok(self.0.view.index())
    }

    fn get_key_last_known(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.0.view.key(id))
    }

    async fn cluster_status(&self) -> Option<NodeStatus> {
        let members = self.members().await.map_err(|e| match e {
            StoreError::Unavailable(why) => why,
            other => other.to_string(),
        });
        let view = &self.0.view;
        Some(NodeStatus {
            node_id: self.0.settings.node_id.clone(),
            revision: view.applied(),
            staleness: view.staleness(),
            current: view.is_current(),
            max_staleness: self.0.settings.max_staleness,
            nodes: view.nodes(),
            audit_head: view.head().seq,
            keys: view.key_count() as u64,
            members,
            leader: self.leads(),
        })
    }

    fn scan_keys(&self, after: Option<KeyId>) -> impl Iterator<Item = Result<KeyRecord, StoreError>> + '_ {
        Scan { view: &self.0.view, after, page: VecDeque::new(), done: false }
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
                        if !swap.apply(&mut record) {
                            continue;
                        }
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
