//! Prometheus metrics: one process-wide registry that the gRPC edge and the adapters record
//! into, served as OpenMetrics text on `GET /metrics` when `metrics_listen` is set.
//!
//! The registry is global (like a logger) so that the HSM and store adapters record without the
//! domain carrying a metrics handle; the domain itself imports nothing from here. Recording costs
//! a few atomic operations and is done whether or not metrics are served. No label ever holds a
//! key, secret, digest, PIN or key id: every label value is from a fixed set.

mod http;
mod keys;

use std::{
    sync::{LazyLock, Mutex, OnceLock},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

pub use self::{
    http::serve,
    keys::{KEY_COUNT_INTERVAL, StateCounts, count_keys_every},
};

/// A gRPC call: `service` and `method` come from keyward's descriptor sets (anything else is
/// `unknown`), `code` is the gRPC status code name (`OK`, `INVALID_ARGUMENT`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: &'static str,
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HsmErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabel {
    check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

fn hsm_histogram() -> Histogram {
    // 10 µs .. ~0.33 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// The hook for the usage queue (being built separately): `metrics::get().usage_queue()`
/// registers these on first use, so they appear only once something reports them.
pub struct UsageQueueMetrics {
    /// Usage records waiting to be written.
    pub depth: Gauge,
    /// Usage records dropped because the queue was full.
    pub dropped: Counter,
}

/// Cluster mode's metrics, registered on first use (single-node mode never shows them).
pub struct ClusterMetrics {
    /// Seconds since the node last proved its view current (etcd's state as of then).
    pub staleness: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the node's view is proven current within `cluster.max_staleness_ms`.
    pub current: Gauge,
    /// Watches restarted (lost connection, cancelled, compacted).
    pub watch_restarts: Counter,
    /// Full reloads of the cluster's state (at start, and after a compacted watch).
    pub reloads: Counter,
    /// From a key being revoked or disabled (its record's time) to this node applying it.
    pub revocation_propagation: Histogram,
    /// The etcd revision the node's view has applied.
    pub revision: Gauge,
    /// etcd transactions run again after a lost compare.
    pub write_conflicts: Counter,
}

/// Every metric keyward exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    rpc_shed: Counter,
    verify_outcomes: Family<CodeLabel, Counter>,
    hsm_duration: HistogramFamily<OperationLabel>,
    hsm_errors: Family<HsmErrorLabels, Counter>,
    hsm_reconnects: Family<ResultLabel, Counter>,
    hsm_healthy: Gauge,
    flush_duration: Histogram,
    flush_failures: Counter,
    disk_full: Gauge,
    free_bytes: Gauge,
    restart_needed: Gauge,
    keys: Family<StateLabel, Gauge>,
    brute_force_refused: Family<CheckLabel, Counter>,
    key_anomalies: Family<KindLabel, Counter>,
    usage_queue: OnceLock<UsageQueueMetrics>,
    cluster: OnceLock<ClusterMetrics>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("keyward")),
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            rpc_shed: Counter::default(),
            verify_outcomes: Family::default(),
            hsm_duration: Family::new_with_constructor(hsm_histogram),
            hsm_errors: Family::default(),
            hsm_reconnects: Family::default(),
            hsm_healthy: Gauge::default(),
            flush_duration: rpc_histogram(),
            flush_failures: Counter::default(),
            disk_full: Gauge::default(),
            free_bytes: Gauge::default(),
            restart_needed: Gauge::default(),
            keys: Family::default(),
            brute_force_refused: Family::default(),
            key_anomalies: Family::default(),
            usage_queue: OnceLock::new(),
            cluster: OnceLock::new(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "rpc_requests",
                "gRPC calls finished, by service, method and status code",
                m.rpc_requests.clone(),
            );
            r.register_with_unit(
                "rpc_duration",
                "gRPC call latency, from request to the end of the response",
                Unit::Seconds,
                m.rpc_duration.clone(),
            );
            r.register(
                "rpc_shed",
                "gRPC calls refused RESOURCE_EXHAUSTED because server.max_in_flight calls were in flight",
                m.rpc_shed.clone(),
            );
            r.register("verify_outcomes", "VerifyKey results by verify code", m.verify_outcomes.clone());
            r.register_with_unit(
                "hsm_operation_duration",
                "HSM operation time on a worker thread (queue wait excluded), by operation",
                Unit::Seconds,
                m.hsm_duration.clone(),
            );
            r.register("hsm_errors", "HSM operations that failed, by operation and kind", m.hsm_errors.clone());
            r.register("hsm_reconnects", "HSM reconnect attempts, by result", m.hsm_reconnects.clone());
            r.register(
                "hsm_healthy",
                "1 while the HSM token is reachable, 0 while reconnecting",
                m.hsm_healthy.clone(),
            );
            r.register_with_unit(
                "store_flush_duration",
                "sled group-commit flush (fsync) time",
                Unit::Seconds,
                m.flush_duration.clone(),
            );
            r.register("store_flush_failures", "sled flushes that failed", m.flush_failures.clone());
            r.register(
                "store_disk_full",
                "1 while mutations are refused: free space below store.min_free_bytes, or the database \
                 waiting to be reopened after a write error",
                m.disk_full.clone(),
            );
            r.register_with_unit(
                "store_free_bytes",
                "free space on the database's file system, measured every 500 ms",
                Unit::Bytes,
                m.free_bytes.clone(),
            );
            r.register(
                "store_restart_needed",
                "1 once the database did not confirm a write within store.write_timeout: writes are \
                 refused until keyward is restarted (reads go on)",
                m.restart_needed.clone(),
            );
            r.register("keys", "keys by state, counted in the background every 30 s", m.keys.clone());
            r.register(
                "brute_force_refused",
                "calls refused because their source is blocked after failing too often, by check",
                m.brute_force_refused.clone(),
            );
            r.register(
                "key_anomalies",
                "anomalies recorded on keys by the anomaly detector, by kind",
                m.key_anomalies.clone(),
            );
        }
        m
    }

    /// A finished gRPC call.
    pub fn rpc(&self, labels: &RpcLabels, elapsed: Duration) {
        self.rpc_requests.get_or_create(labels).inc();
        self.rpc_duration.get_or_create(labels).observe(seconds(elapsed));
    }

    /// A call shed because too many were in flight.
    pub fn rpc_shed(&self) {
        self.rpc_shed.inc();
    }

    /// A VerifyKey result; `code` is the verify code's name (`VALID`, `INVALID`, …).
    pub fn verify_outcome(&self, code: &'static str) {
        self.verify_outcomes.get_or_create(&CodeLabel { code }).inc();
    }

    /// An HSM operation's time on the device.
    pub fn hsm_operation(&self, operation: &'static str, elapsed: Duration) {
        self.hsm_duration.get_or_create(&OperationLabel { operation }).observe(seconds(elapsed));
    }

    /// An HSM operation that failed; `kind` is `unavailable`, `failed` or `refused`.
    pub fn hsm_error(&self, operation: &'static str, kind: &'static str) {
        self.hsm_errors.get_or_create(&HsmErrorLabels { operation, kind }).inc();
    }

    pub fn hsm_reconnect(&self, ok: bool) {
        self.hsm_reconnects.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    pub fn hsm_healthy(&self, healthy: bool) {
        self.hsm_healthy.set(i64::from(healthy));
    }

    /// One group-commit flush.
    pub fn store_flush(&self, elapsed: Duration, ok: bool) {
        self.flush_duration.observe(seconds(elapsed));
        if !ok {
            self.flush_failures.inc();
        }
    }

    /// Whether mutations are refused for want of disk space (or a database to reopen).
    pub fn store_disk_full(&self, full: bool) {
        self.disk_full.set(i64::from(full));
    }

    /// Whether the database stopped confirming writes (see `store.write_timeout`).
    pub fn store_restart_needed(&self, needed: bool) {
        self.restart_needed.set(i64::from(needed));
    }

    pub fn store_free_bytes(&self, free: u64) {
        self.free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
    }

    /// A call refused by the brute-force defence; `check` is `verify` (VerifyKey's source) or
    /// `authenticate` (the caller's address).
    pub fn brute_force_refused(&self, check: &'static str) {
        self.brute_force_refused.get_or_create(&CheckLabel { check }).inc();
    }

    /// An anomaly recorded on a key; `kind` is the kind's label (`new_networks`, `rate_spike`,
    /// `failure_spike`, `idle_key_used`).
    pub fn key_anomaly(&self, kind: &'static str) {
        self.key_anomalies.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn set_keys(&self, counts: &StateCounts) {
        for (state, n) in counts.by_state() {
            self.keys.get_or_create(&StateLabel { state }).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The usage queue's depth gauge and drop counter, registered on first call.
    pub fn usage_queue(&self) -> &UsageQueueMetrics {
        self.usage_queue.get_or_init(|| {
            let q = UsageQueueMetrics { depth: Gauge::default(), dropped: Counter::default() };
            let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register("usage_queue_depth", "usage records waiting to be written", q.depth.clone());
            r.register("usage_queue_dropped", "usage records dropped because the queue was full", q.dropped.clone());
            q
        })
    }

    /// Cluster mode's metrics, registered on first call.
    pub fn cluster(&self) -> &ClusterMetrics {
        self.cluster.get_or_init(|| {
            let c = ClusterMetrics {
                staleness: Gauge::default(),
                current: Gauge::default(),
                watch_restarts: Counter::default(),
                reloads: Counter::default(),
                // 1 ms .. ~33 s
                revocation_propagation: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
                revision: Gauge::default(),
                write_conflicts: Counter::default(),
            };
            let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register_with_unit(
                "cluster_staleness",
                "time since this node last proved its view of etcd current (a linearizable read and \
                 the watch caught up with it); past cluster.max_staleness_ms the node fails closed",
                Unit::Seconds,
                c.staleness.clone(),
            );
            r.register(
                "cluster_current",
                "1 while this node's view is proven current, else 0 (failing closed)",
                c.current.clone(),
            );
            r.register(
                "cluster_watch_restarts",
                "etcd watches restarted (lost connection, cancelled, compacted)",
                c.watch_restarts.clone(),
            );
            r.register("cluster_reloads", "full reloads of the cluster's state from etcd", c.reloads.clone());
            r.register_with_unit(
                "cluster_revocation_propagation",
                "from a key's revocation or disabling (its record's time) to this node applying it",
                Unit::Seconds,
                c.revocation_propagation.clone(),
            );
            r.register("cluster_revision", "the etcd revision this node's view has applied", c.revision.clone());
            r.register(
                "cluster_write_conflicts",
                "etcd transactions run again after a lost compare",
                c.write_conflicts.clone(),
            );
            c
        })
    }

    /// Everything, as OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn recorded_values_appear_under_their_names_and_labels() {
        let m = Metrics::new();
        let labels = RpcLabels { service: "keyward.v1.KeyService", method: "CreateKey", code: "OK" };
        m.rpc(&labels, Duration::from_millis(3));
        m.rpc(&labels, Duration::from_millis(5));
        m.verify_outcome("VALID");
        m.hsm_operation("verify", Duration::from_micros(40));
        m.hsm_error("sign", "unavailable");
        m.hsm_healthy(true);
        m.store_flush(Duration::from_millis(1), false);
        m.rpc_shed();
        let text = m.encode();
        let rpc = r#"keyward_rpc_requests_total{service="keyward.v1.KeyService",method="CreateKey",code="OK"}"#;
        assert_eq!(sample(&text, rpc), Some(2.0), "{text}");
        assert_eq!(sample(&text, r#"keyward_verify_outcomes_total{code="VALID"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_hsm_operation_duration_seconds_count{operation="verify"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"keyward_hsm_errors_total{operation="sign",kind="unavailable"}"#), Some(1.0));
        assert_eq!(sample(&text, "keyward_hsm_healthy"), Some(1.0));
        assert_eq!(sample(&text, "keyward_store_flush_failures_total"), Some(1.0));
        assert_eq!(sample(&text, "keyward_rpc_shed_total"), Some(1.0));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_usage_queue_hook_registers_only_when_used() {
        let m = Metrics::new();
        assert!(!m.encode().contains("usage_queue"));
        m.usage_queue().depth.set(3);
        m.usage_queue().dropped.inc();
        let text = m.encode();
        assert_eq!(sample(&text, "keyward_usage_queue_depth"), Some(3.0), "{text}");
        assert_eq!(sample(&text, "keyward_usage_queue_dropped_total"), Some(1.0));
    }
}
