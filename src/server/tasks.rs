//! The server's background tasks: usage facts and refused calls written every interval, the
//! usage-log writer, the anomaly detector's evaluation, the master key re-digest, and the
//! sweeper. Each loops until it is dropped
//! (the server's cancellation token ends it).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use super::Domain;
use crate::{
    domain::ports::MasterState,
    domain::{anomaly::AnomalyWatch, audit::Actor, keys::KeyAdmin, master::MasterKeys, verification::Verifier},
    hsm::Pkcs11Hsm,
    metrics,
    store::Engine,
};

/// A background task as the server's `JoinSet` runs it.
pub(super) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every `every`: writes usage facts, and audits the calls refused since the last time.
pub(super) async fn flush_usage_every(services: Domain, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = services.verify.flush_usage().await {
            tracing::warn!(error = %e, "writing usage facts failed; this batch is dropped");
        }
        if let Err(e) = services.auth.flush_auth_failures().await {
            tracing::warn!(error = %e, "auditing refused calls failed; they are counted again next time");
        }
    }
}

/// The usage log's writer: one batch after another, as records arrive.
pub(super) async fn write_usage_log(verifier: Arc<Verifier<Pkcs11Hsm, Engine>>) {
    loop {
        match verifier.write_usage_log().await {
            Ok(w) => report_usage_write(&w),
            Err(e) => {
                tracing::warn!(error = %e, "writing the usage log failed; the batch is counted as dropped");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The usage queue's depth and drops after a write, as metrics.
pub(super) fn report_usage_write(w: &crate::domain::usage_log::UsageWrite) {
    let m = metrics::get().usage_queue();
    m.depth.set(w.depth as i64);
    if w.dropped > 0 {
        m.dropped.inc_by(w.dropped);
    }
}

/// Once a window (the first one window after startup): the anomaly detector closes the window
/// and records what it found; each recorded anomaly is counted and logged (no secret in it).
pub(super) async fn detect_anomalies_every(anomaly: Arc<AnomalyWatch<Pkcs11Hsm, Engine>>) {
    let every = anomaly.window().max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for recorded in anomaly.evaluate().await {
            metrics::get().key_anomaly(recorded.kind.label());
            tracing::warn!(key_id = %recorded.key, kind = %recorded.kind, disabled = recorded.disabled, "key anomaly recorded");
        }
    }
}

/// The background re-digest after a master key rotation.
pub(super) async fn run_migrations(master: Arc<MasterKeys<Pkcs11Hsm, Engine>>) {
    master.run_migrations().await
}

/// Cluster mode: takes every master key state another node writes, once this node's HSM
/// connection has the master and wrapping key versions it names (they are on the shared token).
pub(super) async fn follow_master(
    services: Domain,
    hsm: Pkcs11Hsm,
    mut updates: tokio::sync::watch::Receiver<Option<MasterState>>,
) {
    while updates.changed().await.is_ok() {
        let Some(state) = updates.borrow_and_update().clone() else { continue };
        if state == services.master.master_state() {
            continue;
        }
        for version in state.live().map(|v| v.version) {
            let mut wait = Duration::from_millis(100);
            while let Err(e) = hsm.pick_up_master_key(version).await {
                tracing::warn!(%version, error = %e, "cannot find a master key version another node made; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        for version in state.live_wrap_keys() {
            let mut wait = Duration::from_millis(100);
            while let Err(e) = hsm.pick_up_wrap_key(version).await {
                tracing::warn!(%version, error = %e, "cannot find a wrapping key version another node made; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        for retired in state.wrap_keys.iter().filter(|w| w.retired_at.is_some()) {
            hsm.forget_wrap_key(retired.version);
        }
        services.master.adopt(state);
    }
}

/// Runs the sweeper every `every`, the first time one interval after startup.
pub(super) async fn sweep_every_interval(keys: Arc<KeyAdmin<Pkcs11Hsm, Engine>>, every: Duration, store: Engine) {
    let every = every.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // In a cluster the leader sweeps for every node.
        if store.cluster().is_some_and(|c| !c.leads()) {
            continue;
        }
        match keys.sweep(Actor::System("sweeper".into()), false, &Default::default()).await {
            Ok(r) if r.expired.is_empty() && r.disabled.is_empty() => {}
            Ok(r) => tracing::info!(expired = r.expired.len(), disabled = r.disabled.len(), "sweep done"),
            Err(e) => tracing::warn!(error = %e, "sweep failed; retrying at the next interval"),
        }
    }
}
