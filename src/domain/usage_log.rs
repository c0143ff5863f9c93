//! The usage log: one record per verification (key, code, client address, caller, time,
//! latency). The hot path only offers a record to a bounded queue and never waits; one writer
//! takes what is queued in batches and writes each batch as one group-committed write, pruning
//! by age and count as it goes. When the queue is full the record is dropped and counted, and
//! the count reaches the audit trail (`usage.dropped`), so no record is lost silently.
//!
//! The anomaly detector is fed here too: the writer hands each batch to it before writing.
//! With the usage log off and the detector on, the same queue and writer run and only feed
//! the detector (nothing is written).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use super::{
    anomaly::Detector,
    audit::{Actor, AuditAction, AuditEvent},
    clock::Clock,
    error::{Error, Result},
    key::KeyId,
    policy::VerifyCode,
    ports::Store,
};

/// One verification, as the usage log keeps it. Never holds the presented key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub at: SystemTime,
    /// The key verified: set when the presented key named an existing key (even with a wrong
    /// secret); `None` for a malformed key or an unknown id.
    pub key_id: Option<KeyId>,
    pub code: VerifyCode,
    /// The `client_ip` the caller reported.
    pub client_ip: Option<IpAddr>,
    /// The key of the service that asked.
    pub caller: Option<KeyId>,
    /// Time keyward took to answer, HSM included.
    pub latency: Duration,
}

/// The usage log's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageLogConfig {
    pub enabled: bool,
    /// Records waiting to be written at most; beyond it records are dropped and counted.
    pub queue_capacity: usize,
    /// Records written per batch at most.
    pub batch: usize,
    /// How long the writer gathers records before it writes them (unless a batch fills up
    /// first): the most a crash can lose of the usage log, besides what is queued.
    pub linger: Duration,
    /// Records older than this are pruned (`None`: kept whatever their age).
    pub max_age: Option<Duration>,
    /// Records kept at most, the oldest pruned first (`None`: no limit).
    pub max_records: Option<u64>,
    /// Drops are audited at most this often (one event with the count).
    pub report_every: Duration,
}

impl Default for UsageLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_capacity: 100_000,
            batch: 8192,
            linger: Duration::from_millis(200),
            max_age: Some(Duration::from_secs(30 * 86_400)),
            max_records: Some(10_000_000),
            report_every: Duration::from_secs(1),
        }
    }
}

/// What a write may prune, decided by the domain: records from before `older_than`, and the
/// oldest beyond `max_records`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub older_than: Option<SystemTime>,
    pub max_records: Option<u64>,
}

/// Filters of a usage query, all optional and combined with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub key: Option<KeyId>,
    pub code: Option<VerifyCode>,
    pub client_ip: Option<IpAddr>,
    pub since: Option<SystemTime>,
    /// Exclusive.
    pub until: Option<SystemTime>,
    pub newest_first: bool,
}

impl UsageQuery {
    pub fn matches(&self, r: &UsageRecord) -> bool {
        self.key.is_none_or(|k| r.key_id == Some(k))
            && self.code.is_none_or(|c| r.code == c)
            && self.client_ip.is_none_or(|ip| r.client_ip == Some(ip))
            && self.since.is_none_or(|t| r.at >= t)
            && self.until.is_none_or(|t| r.at < t)
    }
}

/// One key's verifications over a time range, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub total: u64,
    pub by_code: BTreeMap<VerifyCode, u64>,
    /// Per reported client address (`None`: none reported): all verifications, and the valid ones.
    pub by_client_ip: BTreeMap<Option<IpAddr>, (u64, u64)>,
    pub first_at: Option<SystemTime>,
    pub last_at: Option<SystemTime>,
    /// Set when the scan stopped at its limit before the end of the range: the counts cover
    /// `[since, resume_at)`; ask again from `resume_at` for the rest.
    pub resume_at: Option<SystemTime>,
}

impl KeyUsage {
    pub fn add(&mut self, at: SystemTime, code: VerifyCode, client_ip: Option<IpAddr>) {
        self.total += 1;
        *self.by_code.entry(code).or_default() += 1;
        let ip = self.by_client_ip.entry(client_ip).or_default();
        ip.0 += 1;
        if code == VerifyCode::Valid {
            ip.1 += 1;
        }
        self.first_at = Some(self.first_at.map_or(at, |t| t.min(at)));
        self.last_at = Some(self.last_at.map_or(at, |t| t.max(at)));
    }
}

/// What one writer pass did, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageWrite {
    pub written: usize,
    pub pruned: u64,
    /// Records dropped (queue full or a failed write) and not yet counted in a metric.
    pub dropped: u64,
    /// Records still queued.
    pub depth: usize,
}

/// The bounded queue between verifications and the writer.
struct UsageQueue {
    tx: flume::Sender<UsageRecord>,
    rx: flume::Receiver<UsageRecord>,
    /// Dropped and not yet audited.
    unreported: AtomicU64,
    /// Dropped and not yet handed to the metrics.
    uncounted: AtomicU64,
    last_report: Mutex<Option<Instant>>,
    /// A record taken off the queue while the writer lingers: kept here rather than in the
    /// writer's task, so that a shutdown that stops the task still writes it.
    held: Mutex<Option<UsageRecord>>,
}

impl UsageQueue {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = flume::bounded(capacity.max(1));
        Self {
            tx,
            rx,
            unreported: AtomicU64::new(0),
            uncounted: AtomicU64::new(0),
            last_report: Mutex::new(None),
            held: Mutex::new(None),
        }
    }

    /// Queues `record`, or drops and counts it if the queue is full. Never waits.
    pub fn offer(&self, record: UsageRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped(1);
        }
    }

    fn dropped(&self, n: u64) {
        self.unreported.fetch_add(n, Ordering::Relaxed);
        self.uncounted.fetch_add(n, Ordering::Relaxed);
    }

    /// Waits for a record (for `wait` at most: an empty batch then), then lets records gather
    /// for `linger` (unless a batch is already there) and takes up to `max`. Sleeping rather
    /// than receiving one by one keeps the writer from waking on every verification.
    async fn take(&self, max: usize, wait: Duration, linger: Duration) -> Vec<UsageRecord> {
        let Ok(Ok(first)) = tokio::time::timeout(wait, self.rx.recv_async()).await else { return Vec::new() };
        if self.rx.len() + 1 < max {
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
            tokio::time::sleep(linger).await;
            return self.drain(max);
        }
        let mut batch = Vec::with_capacity(self.rx.len().min(max) + 1);
        batch.push(first);
        batch.extend(self.rx.try_iter().take(max.saturating_sub(1)));
        batch
    }

    /// What is held and queued, up to `max`, without waiting.
    fn drain(&self, max: usize) -> Vec<UsageRecord> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut batch: Vec<_> = held.into_iter().collect();
        batch.extend(self.rx.try_iter().take(max.saturating_sub(batch.len())));
        batch
    }

    /// The drop count to audit now, if any and if the last report is old enough.
    fn report_due(&self, every: Duration) -> Option<u64> {
        let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < every) || self.unreported.load(Ordering::Relaxed) == 0 {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

/// Usage records one KeyUsage call reads at most before it answers with `resume_at`.
pub const MAX_USAGE_SCAN: usize = 2_000_000;
/// Entries one QueryUsage page reads at most, even with a short page.
pub const MAX_QUERY_SCAN: usize = 10_000;

/// The usage log's writing side: the queue verifications offer records to, and the writer
/// passes that empty it into the store.
pub(crate) struct UsageLog<S> {
    queue: UsageQueue,
    config: UsageLogConfig,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    /// The anomaly detector each batch is handed to, if it is on.
    detector: Option<Arc<Detector>>,
}

impl<S: Store> UsageLog<S> {
    /// The usage log's queue and writer, or `None` with both the log and the detector off.
    pub fn new(
        config: UsageLogConfig,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        detector: Option<Arc<Detector>>,
    ) -> Option<Self> {
        (config.enabled || detector.is_some()).then(|| Self {
            queue: UsageQueue::new(config.queue_capacity),
            config,
            store,
            clock,
            detector,
        })
    }

    /// Queues a verification's usage record; never waits (see `UsageQueue::offer`).
    pub fn offer(&self, record: UsageRecord) {
        self.queue.offer(record);
    }

    /// The writer's pass: waits for records (a report interval at most), writes up to a batch
    /// of them in one durable write with retention applied, and audits drops when due. Records
    /// of a failed write are counted as dropped.
    pub async fn write(&self) -> Result<UsageWrite> {
        let cfg = &self.config;
        let batch = self.queue.take(cfg.batch, cfg.report_every, cfg.linger).await;
        self.write_batch(batch).await
    }

    async fn write_batch(&self, batch: Vec<UsageRecord>) -> Result<UsageWrite> {
        let (queue, cfg) = (&self.queue, &self.config);
        let now = self.clock.now();
        let retention =
            Retention { older_than: cfg.max_age.and_then(|age| now.checked_sub(age)), max_records: cfg.max_records };
        if let Some(detector) = &self.detector
            && !batch.is_empty()
        {
            let store = &self.store;
            detector.observe(&batch, &|id| {
                store.get_key(id).ok().flatten().map(|r| r.usage.last_used_at.unwrap_or(r.created_at))
            });
        }
        let written = if cfg.enabled { batch.len() } else { 0 };
        let mut result = Ok(0);
        if written > 0 {
            result = self.store.append_usage(batch, retention).await;
            if result.is_err() {
                queue.dropped(written as u64);
            }
        }
        let audited = self.report_drops(now).await;
        let pruned = result.map_err(Error::from)?;
        audited?;
        Ok(UsageWrite { written, pruned, dropped: queue.uncounted.swap(0, Ordering::Relaxed), depth: queue.rx.len() })
    }

    /// Writes one `usage.dropped` event for the records dropped since the last one, when due.
    async fn report_drops(&self, now: SystemTime) -> Result<()> {
        let Some(n) = self.queue.report_due(self.config.report_every) else { return Ok(()) };
        let event = AuditEvent {
            at: now,
            actor: Actor::System("usage-log".into()),
            action: AuditAction::UsageDropped,
            target: None,
            client_addr: None,
            reason: Some(format!("{n} usage records dropped: the usage log could not keep up")),
            changes: Vec::new(),
            code: None,
        };
        if let Err(e) = self.store.append_events(vec![event]).await {
            // Counted again, for the next report.
            self.queue.unreported.fetch_add(n, Ordering::Relaxed);
            return Err(e.into());
        }
        Ok(())
    }

    /// Writes what is queued and reports drops at once (shutdown).
    pub async fn flush(&self) -> Result<UsageWrite> {
        *self.queue.last_report.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut total = UsageWrite::default();
        loop {
            let batch = self.queue.drain(self.config.batch);
            let done = batch.is_empty();
            let w = self.write_batch(batch).await?;
            total.written += w.written;
            total.pruned += w.pruned;
            total.dropped += w.dropped;
            if done {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> UsageRecord {
        UsageRecord {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(n),
            key_id: None,
            code: VerifyCode::Invalid,
            client_ip: None,
            caller: None,
            latency: Duration::from_micros(n),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_reports_once_per_interval() {
        let q = UsageQueue::new(2);
        for n in 0..5 {
            q.offer(record(n));
        }
        let wait = Duration::from_millis(10);
        assert_eq!(q.take(10, wait, wait).await, vec![record(0), record(1)]);
        assert_eq!(q.report_due(Duration::from_secs(60)), Some(3));
        q.offer(record(5));
        q.offer(record(6));
        q.offer(record(7));
        assert_eq!(q.report_due(Duration::from_secs(60)), None, "reported less than an interval ago");
        assert_eq!(q.unreported.load(Ordering::Relaxed), 1);
        assert_eq!(q.uncounted.load(Ordering::Relaxed), 4);
        assert_eq!(q.take(1, wait, wait).await, vec![record(5)]);
        assert_eq!(q.take(5, wait, wait).await, vec![record(6)]);
        assert_eq!(q.take(1, wait, wait).await, vec![], "nothing queued: an empty batch after the wait");
    }

    #[tokio::test]
    async fn a_writer_stopped_while_lingering_leaves_its_record_to_the_final_drain() {
        let q = UsageQueue::new(10);
        q.offer(record(1));
        let lingering = tokio::time::timeout(
            Duration::from_millis(20),
            q.take(10, Duration::from_secs(1), Duration::from_secs(60)),
        );
        assert!(lingering.await.is_err(), "still lingering when stopped");
        q.offer(record(2));
        assert_eq!(q.drain(10), vec![record(1), record(2)], "the record the writer took is not lost");
    }

    #[test]
    fn key_usage_counts_by_code_and_address() {
        let mut u = KeyUsage::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        u.add(t, VerifyCode::Valid, Some(ip));
        u.add(t + Duration::from_secs(5), VerifyCode::RateLimited, Some(ip));
        u.add(t - Duration::from_secs(5), VerifyCode::Valid, None);
        assert_eq!(u.total, 3);
        assert_eq!(u.by_code[&VerifyCode::Valid], 2);
        assert_eq!(u.by_client_ip[&Some(ip)], (2, 1));
        assert_eq!(u.by_client_ip[&None], (1, 1));
        assert_eq!((u.first_at, u.last_at), (Some(t - Duration::from_secs(5)), Some(t + Duration::from_secs(5))));
    }
}
