//! `keyward-bench audit`: audit queries at scale, offline on a data directory (the server must
//! be stopped: sled allows one process). Appends synthetic events, sealed by the real HSM and
//! indexed like any others, until the trail holds `--events`; then times QueryEvents' store
//! query for one key's newest 100 events, and reports the disk bytes per event.

use std::time::{Instant, SystemTime};

use keyward::{
    domain::{
        audit::{Actor, AuditAction, AuditEvent, AuditQuery},
        audit_log::MAX_SCAN,
        key::KeyId,
        ports::Store,
    },
    store::SledStore,
};

use crate::{error::Result, figures::Figures};

/// Events per transaction while filling.
const BATCH: usize = 1000;

pub struct AuditBench {
    pub events: u64,
    /// Keys the synthetic events are spread over.
    pub keys: usize,
    pub queries: usize,
}

fn event(target: KeyId, actor: KeyId, n: u64) -> AuditEvent {
    AuditEvent {
        at: SystemTime::now(),
        actor: Actor::Key(actor),
        action: if n % 3 == 0 { AuditAction::KeyUpdated } else { AuditAction::KeyDisabled },
        target: Some(target),
        client_addr: Some("10.0.0.7:51234".into()),
        reason: Some(format!("bench event {n}")),
        changes: Vec::new(),
        code: None,
    }
}

/// Fills the trail, then queries; each figure goes to `out`.
pub async fn run(store: &SledStore, o: &AuditBench, out: &mut impl FnMut(String)) -> Result<()> {
    let last = last_seq(store)?;
    let targets: Vec<KeyId> = (0..o.keys.max(1)).map(|_| KeyId::new_v7()).collect();
    let actor = KeyId::new_v7();
    let missing = o.events.saturating_sub(last);
    if missing > 0 {
        let started = Instant::now();
        let mut written = 0u64;
        while written < missing {
            let n = (missing - written).min(BATCH as u64);
            let batch =
                (0..n).map(|i| event(targets[((written + i) as usize) % targets.len()], actor, written + i)).collect();
            store.append_events(batch).await?;
            written += n;
        }
        let took = started.elapsed();
        out(format!(
            "appended {written} audit events (each sealed by the HSM, indexed) in {:.1} s = {:.0}/s",
            took.as_secs_f64(),
            written as f64 / took.as_secs_f64()
        ));
    }
    let total = last_seq(store)?;
    let bytes = store.size_on_disk()?;
    out(format!(
        "trail: {total} events; database {bytes} bytes on disk = {:.0} bytes per event",
        bytes as f64 / total as f64
    ));

    let mut latencies = Vec::with_capacity(o.queries);
    let mut returned = 0;
    let started = Instant::now();
    for i in 0..o.queries.max(1) {
        let key = targets[(i * 7919) % targets.len()];
        let query = AuditQuery { key: Some(key), newest_first: true, ..Default::default() };
        let t = Instant::now();
        let (events, _) = store.query_audit(&query, None, 100, MAX_SCAN)?;
        latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        returned += events.len();
    }
    let figures = Figures::new(latencies, 0, started.elapsed());
    out(figures.report(&format!(
        "QueryEvents store query, one key's newest 100 of {total} events ({} keys, {:.0} events returned per query)",
        o.keys,
        returned as f64 / o.queries.max(1) as f64
    )));
    Ok(())
}

fn last_seq(store: &SledStore) -> Result<u64> {
    let q = AuditQuery { newest_first: true, ..Default::default() };
    let (events, _) = store.query_audit(&q, None, 1, 1)?;
    Ok(events.first().map_or(0, |e| e.seq))
}
