//! Keeps a node's view in step with etcd: a full load (one revision), then one watch on the
//! whole prefix from the next revision, feeding the key cache, the master state, the node list
//! and the node's local copy of the audit chain. Every heartbeat a linearizable read and a watch
//! progress request prove the view current; a broken watch resumes from its revision, and one
//! whose revision was compacted reloads in full.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::{
    etcd_error,
    layout::{Entry, Layout, range_end},
    trim,
    view::{Head, NodeView, Records},
    within,
};
use crate::{
    domain::ports::StoreError,
    metrics,
    store::{SealedEvent, SledStore, codec},
};

/// Key records read per page of a full load.
const KEY_PAGE: i64 = 1000;
/// Audit events read per page when the local copy catches up.
const EVENT_PAGE: i64 = 500;
/// The longest pause between two attempts to follow again.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Currency reads in flight at once, at most.
const MAX_READS_IN_FLIGHT: usize = 3;

pub struct Follower {
    pub client: Client,
    pub layout: Layout,
    pub view: Arc<NodeView>,
    pub local: SledStore,
    pub heartbeat: Duration,
    pub max_staleness: Duration,
    pub request_timeout: Duration,
}

impl Follower {
    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        within(self.request_timeout, what, call).await
    }

    /// Reads the whole state at one revision, brings the local audit copy up to it, and
    /// replaces the view. The view is proven current as of the start of the read.
    pub async fn load(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let layout = &self.layout;
        let mut kv = self.client.kv_client();
        let first = Txn::new().and_then([
            TxnOp::get(layout.cluster(), None),
            TxnOp::get(layout.master(), None),
            TxnOp::get(layout.audit_head(), None),
            TxnOp::get(layout.nodes_start(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(layout.keys_start(), Some(GetOptions::new().with_range(layout.keys_end()).with_limit(KEY_PAGE))),
        ]);
        let response = self.timed("a full load", kv.txn(first)).await?;
        let rev = response.header().map_or(0, |h| h.revision());
        let mut records = Records::default();
        let mut last_key = None;
        let mut more = false;
        self.view.forget_nodes();
        for op in response.op_responses() {
            let TxnOpResponse::Get(get) = op else { continue };
            more |= get.more();
            for item in get.kvs() {
                if matches!(layout.entry(item.key()), Some(Entry::Key(_))) {
                    last_key = Some(item.key().to_vec());
                }
                self.take(&mut records, item.key(), item.value(), item.mod_revision())?;
            }
        }
        while more {
            let Some(last) = last_key.take() else { break };
            let start = [last.as_slice(), &[0]].concat();
            let options = GetOptions::new().with_range(layout.keys_end()).with_limit(KEY_PAGE).with_revision(rev);
            let page = self.timed("a page of key records", kv.get(start, Some(options))).await?;
            more = page.more();
            for item in page.kvs() {
                last_key = Some(item.key().to_vec());
                self.take(&mut records, item.key(), item.value(), item.mod_revision())?;
            }
        }
        let head = records.head.unwrap_or(Head::EMPTY);
        self.catch_up_audit(head, rev).await?;
        self.view.replace(records, rev);
        self.view.prove(started);
        metrics::get().cluster().reloads.inc();
        Ok(())
    }

    /// One record of a full load into `records`.
    fn take(&self, records: &mut Records, name: &[u8], value: &[u8], rev: i64) -> Result<(), StoreError> {
        match self.layout.entry(name) {
            Some(Entry::Cluster) => records.cluster = rev,
            Some(Entry::Master) => records.master = Some((codec::decode_master(value)?, rev)),
            Some(Entry::AuditHead) => records.head = Some(Head::decode(value, rev)?),
            Some(Entry::Node(id)) => self.view.set_node(id, Some(String::from_utf8_lossy(value).into_owned())),
            Some(Entry::Key(id)) => match codec::decode_key(value) {
                Ok(record) => {
                    records.keys.insert(id, (record, rev));
                }
                Err(e) => {
                    tracing::error!(key_id = %id, error = %e, "a key record in etcd does not decode; the key will not verify")
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// Copies the audit events the local copy lacks, up to `head` as of revision `rev`.
    async fn catch_up_audit(&self, head: Head, rev: i64) -> Result<(), StoreError> {
        let (local_seq, local_mac) = self.local.audit_head();
        if local_seq > head.seq {
            return Err(StoreError::Corrupt(format!(
                "this node's local audit copy ends at event {local_seq} but the cluster's chain at {}: the node's \
                 directory belongs to another cluster (or etcd lost data)",
                head.seq
            )));
        }
        if local_seq == head.seq && local_seq > 0 && local_mac != head.mac {
            return Err(StoreError::Corrupt(
                "this node's local audit copy does not match the cluster's chain: its directory belongs to another cluster"
                    .into(),
            ));
        }
        let mut kv = self.client.kv_client();
        let mut next = local_seq + 1;
        let oldest = trim::oldest_event(&self.client, &self.layout, Some(rev)).await?;
        if let Some(oldest) = oldest.filter(|oldest| next < *oldest) {
            // Events up to `oldest - 1` were trimmed from etcd before this node copied them.
            let checkpoint = trim::checkpoint(&self.client, &self.layout, Some(rev)).await?;
            match checkpoint {
                Some(cp) if local_seq == 0 && cp.seq + 1 == oldest => {
                    tracing::warn!(
                        checkpoint = cp.seq,
                        "this node's audit copy starts at the cluster's checkpoint; the events before it are on the other nodes"
                    );
                    self.local.start_after_checkpoint(cp.seq, cp.mac).await?;
                    next = oldest;
                }
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "this node's audit copy ends at event {local_seq} but etcd keeps the events from {oldest} on \
                         (older ones were trimmed, see cluster.audit_keep_events): move this node's database \
                         (DIR/nodes/ID/db) aside to start its copy again from the cluster's checkpoint"
                    )));
                }
            }
        }
        while next <= head.seq {
            let options =
                GetOptions::new().with_range(self.layout.audit_events_end()).with_limit(EVENT_PAGE).with_revision(rev);
            let page =
                self.timed("a page of audit events", kv.get(self.layout.audit_event(next), Some(options))).await?;
            let mut events = Vec::new();
            for item in page.kvs() {
                if let Some(Entry::AuditEvent(seq)) = self.layout.entry(item.key()) {
                    events.push(SealedEvent { seq, value: item.value().to_vec() });
                }
            }
            let Some(last) = events.last().map(|e| e.seq) else {
                return Err(StoreError::Corrupt(format!(
                    "audit events {next}..={} are missing from etcd (trimmed before this node copied them?)",
                    head.seq
                )));
            };
            self.local.append_replicated(events).await?;
            next = last + 1;
        }
        Ok(())
    }

    /// Follows etcd until cancelled: loads, watches, proves; restarts what breaks.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut reload = self.view.applied() == 0;
        loop {
            let outcome = cancel.run_until_cancelled(self.reporting(self.follow(&mut reload))).await;
            let Some(Err(e)) = outcome else { return };
            metrics::get().cluster().watch_restarts.inc();
            tracing::warn!(error = %e, "following etcd stopped; resuming");
            if cancel.run_until_cancelled(self.reporting(tokio::time::sleep(backoff))).await.is_none() {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if self.view.is_current() {
                backoff = Duration::from_millis(50);
            }
        }
    }

    /// Runs `work`, reporting the view's metrics every heartbeat meanwhile: while etcd cannot
    /// be reached (reconnecting, backing off) too, so that the staleness shown keeps growing.
    async fn reporting<T>(&self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => self.report(),
            }
        }
    }

    /// One watch, from the view's revision, until it breaks.
    async fn follow(&self, reload: &mut bool) -> Result<(), StoreError> {
        if *reload {
            self.load().await?;
            *reload = false;
        }
        let options = WatchOptions::new()
            .with_range(range_end(self.layout.prefix().as_bytes()))
            .with_start_revision(self.view.applied() + 1);
        let mut watch = self.client.watch_client();
        let stream = self.timed("a watch", watch.watch(self.layout.prefix(), Some(options))).await?;
        let (mut requests, mut responses) = stream.split();
        let (proof_tx, mut proofs) = tokio::sync::mpsc::channel::<Option<(Instant, i64)>>(MAX_READS_IN_FLIGHT);
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Currency reads in flight: a new one every heartbeat, up to a few at once, so that one
        // stuck on a hung member does not hold back the proofs of the others.
        let mut reading = 0usize;
        let mut pending: Option<(Instant, i64)> = None;
        // Since when a proof has waited for the watch to catch up.
        let mut pending_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if reading < MAX_READS_IN_FLIGHT {
                        reading += 1;
                        self.spawn_read(proof_tx.clone());
                    }
                }
                Some(proof) = proofs.recv() => {
                    reading = reading.saturating_sub(1);
                    if proof.is_some() && pending_since.is_some_and(|since| since.elapsed() > self.stuck_after()) {
                        // etcd answers reads, yet this watch has not caught up for long: it is
                        // stuck on a member that stopped sending; follow through another one.
                        return Err(StoreError::Unavailable("the watch stopped delivering; restarting it".into()));
                    }
                    if let Some((at, rev)) = proof {
                        pending = Some((at, rev));
                        pending_since.get_or_insert(at);
                        if self.view.applied() < rev {
                            requests.request_progress().await.map_err(etcd_error)?;
                        }
                    }
                }
                message = responses.message() => {
                    let Some(response) = message.map_err(etcd_error)? else {
                        return Err(StoreError::Unavailable("etcd closed the watch".into()));
                    };
                    if response.canceled() {
                        if response.compact_revision() > 0 {
                            *reload = true;
                        }
                        return Err(StoreError::Unavailable(format!("etcd cancelled the watch: {}", response.cancel_reason())));
                    }
                    if !response.created() {
                        let rev = response.header().map_or(0, |h| h.revision());
                        if response.events().is_empty() {
                            self.view.set_applied(rev); // A progress notification: everything up to `rev` was sent.
                        } else {
                            self.apply(response.events()).await?;
                        }
                    }
                }
            }
            if let Some((at, rev)) = pending
                && self.view.applied() >= rev
            {
                self.view.prove(at);
                pending = None;
                pending_since = None;
            }
        }
    }

    /// How long the view may stay unproven while etcd answers reads before the watch is
    /// considered stuck.
    fn stuck_after(&self) -> Duration {
        self.request_timeout + self.heartbeat * 4
    }

    /// A linearizable read's revision (everything etcd committed before `at`), sent to `proofs`.
    fn spawn_read(&self, proofs: tokio::sync::mpsc::Sender<Option<(Instant, i64)>>) {
        let mut kv = self.client.kv_client();
        // A proof older than the staleness bound is worth nothing: no need to wait longer.
        let (name, timeout) = (self.layout.cluster(), self.request_timeout.min(self.max_staleness));
        tokio::spawn(async move {
            let at = Instant::now();
            let read = tokio::time::timeout(timeout, kv.get(name, Some(GetOptions::new().with_count_only()))).await;
            let proof = match read {
                Ok(Ok(response)) => response.header().map(|h| (at, h.revision())),
                _ => None,
            };
            let _ = proofs.send(proof).await;
        });
    }

    fn report(&self) {
        let m = metrics::get().cluster();
        m.staleness.set(self.view.staleness().map_or(f64::INFINITY, |s| s.as_secs_f64()));
        m.current.set(i64::from(self.view.is_current()));
        m.revision.set(self.view.applied());
    }

    /// Applies one watch response's events, in order.
    async fn apply(&self, events: &[etcd_client::Event]) -> Result<(), StoreError> {
        let mut replicated = Vec::new();
        let mut last = 0;
        for event in events {
            let Some(item) = event.kv() else { continue };
            let rev = item.mod_revision();
            last = last.max(rev);
            let put = event.event_type() == EventType::Put;
            match self.layout.entry(item.key()) {
                Some(Entry::Key(id)) if put => match codec::decode_key(item.value()) {
                    Ok(record) => {
                        if let Some(stopped) = self.view.put_key(record, rev) {
                            let delay = SystemTime::now().duration_since(stopped.at).unwrap_or_default();
                            metrics::get().cluster().revocation_propagation.observe(delay.as_secs_f64());
                        }
                    }
                    Err(e) => {
                        tracing::error!(key_id = %id, error = %e, "a key record in etcd does not decode; the key will not verify");
                        self.view.remove_key(id, rev);
                    }
                },
                Some(Entry::Key(id)) => self.view.remove_key(id, rev),
                Some(Entry::Master) if put => self.view.put_master(codec::decode_master(item.value())?, rev),
                Some(Entry::AuditHead) if put => self.view.put_head(Head::decode(item.value(), rev)?),
                Some(Entry::AuditEvent(seq)) if put => {
                    replicated.push(SealedEvent { seq, value: item.value().to_vec() })
                }
                Some(Entry::Cluster) if put => self.view.set_cluster_rev(rev),
                Some(Entry::Node(id)) => {
                    let about = put.then(|| String::from_utf8_lossy(item.value()).into_owned());
                    self.view.set_node(id, about);
                }
                _ => {}
            }
        }
        if !replicated.is_empty() {
            self.local.append_replicated(replicated).await?;
        }
        self.view.set_applied(last);
        Ok(())
    }
}
