//! `keyward-bench rotation`: RotateKey latency, and a master key rotation of many keys under a
//! VerifyKey load (how long until every key verifies under the new version, and what VerifyKey
//! does meanwhile). Uses the connections and load of `target`.

use std::{sync::Arc, time::Duration};

use keyward::proto;

use crate::{
    error::{BenchError, Result},
    figures::Figures,
    target::{Load, Presented, Target, plain_key, window},
};

/// What `bench rotation` runs with.
pub struct RotationOptions {
    /// Keys made, then rotated once each, for the RotateKey figures.
    pub rotations: usize,
    /// Keys the server holds (at least) when its master key rotates.
    pub keys: usize,
    /// RotateKey and VerifyKey calls in flight.
    pub concurrency: usize,
    /// HTTP/2 connections the calls share.
    pub connections: usize,
    /// CreateKey calls in flight while making keys.
    pub create_concurrency: usize,
    /// How long the VerifyKey baseline runs.
    pub baseline: Duration,
}

/// How often the end of a re-digest is looked for.
const POLL: Duration = Duration::from_millis(100);

/// Live (not revoked) keys: those under the current version plus those still pending (a digest
/// whose outer version is older cannot need the current one).
fn live_keys(status: &proto::MasterKeyStatus) -> u64 {
    let current = status.versions.iter().find(|v| v.version == status.current_version);
    current.map_or(0, |v| v.keys_using) + status.keys_pending
}

fn named(name: &str) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest { name: name.into(), ..plain_key() }
}

/// Key and master key rotation: RotateKey latency on `rotations` fresh keys; then, with at least
/// `keys` keys on the server, a VerifyKey baseline, and a master key rotation under the same
/// VerifyKey load: how long until every key verifies under the new version, and what VerifyKey
/// does meanwhile. Each figure goes to `out` as soon as it is known.
///
/// The end of the re-digest is watched with GetMasterKeyStatus `skip_counts` every 100 ms (a
/// read of the master state); the full status, which reads every key record, is asked for once
/// at the end to confirm no key is pending, and its cost is reported as its own figure.
pub async fn rotation(target: &str, admin_key: &str, o: &RotationOptions, out: &mut impl FnMut(String)) -> Result<()> {
    let target = Target::connect(target, admin_key, o.connections).await?;
    let (conn, create) = (o.connections.max(1), o.create_concurrency.max(1));
    let load = format!("x{} over {conn} connections", o.concurrency.max(1));

    if o.rotations > 0 {
        let (ids, made) = target.create_many(&named("bench-rotate"), o.rotations, create).await?;
        out(made.report(&format!("CreateKey, {} keys to rotate, x{create} over {conn} connections", o.rotations)));
        let (rotated, error) = target.rotate_each(ids, o.concurrency).await?;
        out(rotated.report(&format!("RotateKey, {} keys each rotated once, {load}", o.rotations)));
        if let Some(e) = error {
            out(format!("RotateKey, first error: {e}"));
        }
    }

    let (status, _) = target.master_status(false).await?;
    if status.migration.is_some() {
        return Err(BenchError::RedigestRunning);
    }
    let presented = Presented {
        key: Arc::new(target.create(plain_key()).await?),
        client_ip: String::new(),
        required_scopes: vec!["bench:read".into()],
    };
    // Present now: those counted and the presented key.
    let present = usize::try_from(live_keys(&status)).unwrap_or(usize::MAX).saturating_add(1);
    if present < o.keys {
        let missing = o.keys - present;
        let (_, made) = target.create_many(&named("bench-fill"), missing, create).await?;
        out(made.report(&format!(
            "CreateKey, {missing} keys to reach {} ({present} present), x{create} over {conn} connections",
            o.keys
        )));
    }

    // What one full status call costs the server, idle.
    let mut scans = Vec::new();
    let mut status = proto::MasterKeyStatus::default();
    for _ in 0..3 {
        let (s, took) = target.master_status(false).await?;
        scans.push(took.as_micros() as u32);
        status = s;
    }
    let (keys, from) = (live_keys(&status), status.current_version);
    let scan = Figures::new(scans, 0, Duration::ZERO);
    out(format!(
        "GetMasterKeyStatus with counts, {keys} live keys (it reads them all), idle: p50 {:.1} ms max {:.1} ms; \
         master key v{}, {} keys not on a plain v{} digest",
        scan.quantile_ms(0.5),
        scan.quantile_ms(1.0),
        status.current_version,
        status.keys_not_plain,
        status.current_version
    ));

    target.run(&presented, o.concurrency, Duration::from_millis(500)).await?; // warm-up
    let before = target.run(&presented, o.concurrency, o.baseline).await?;
    out(before.report(&format!("VerifyKey before the master key rotation, {keys} keys, {load}")));

    let load_run = target.start_load(&presented, o.concurrency);
    tokio::time::sleep(Duration::from_millis(500)).await; // the load in its stride
    let rotated_at = load_run.now();
    let watched = watch_master_rotation(&target, &load_run).await;
    let calls = load_run.stop().await?;
    let w = watched?;
    let to = w.to;
    out(format!(
        "master key rotation v{from} -> v{to}, {keys} keys, under VerifyKey {load}: every key verifies under v{to} \
         {:.2} s after the RotateMasterKey call (not yet at {:.2} s; the call took {:.1} ms); keys pending then: {}",
        (w.done_at - rotated_at).as_secs_f64(),
        (w.running_at - rotated_at).as_secs_f64(),
        w.rotate_took.as_secs_f64() * 1000.0,
        w.pending
    ));
    let during = window(&calls, rotated_at, w.done_at);
    out(during.report(&format!("VerifyKey during the re-digest, {keys} keys, {load}")));
    out(format!(
        "VerifyKey during / before the re-digest, {keys} keys, {load}: {:.1} % of the throughput; \
         p50 {:.2}x, p99 {:.2}x the latency",
        100.0 * during.per_second() / before.per_second(),
        during.quantile_ms(0.5) / before.quantile_ms(0.5),
        during.quantile_ms(0.99) / before.quantile_ms(0.99)
    ));
    if w.pending != 0 {
        return Err(BenchError::KeysPending(w.pending));
    }
    Ok(())
}

/// When a master key rotation was seen to be complete (times from the load's origin).
struct Watched {
    to: u32,
    rotate_took: Duration,
    /// When the last look that found it still running was sent.
    running_at: Duration,
    /// When the look that found it complete was sent.
    done_at: Duration,
    /// Keys not under the new version after it (the full status, read once at the end).
    pending: u64,
}

/// Rotates the master key and polls the master state until the re-digest has ended.
async fn watch_master_rotation(target: &Target, load: &Load) -> Result<Watched> {
    let rotated_at = load.now();
    let rotating = target.master_client().rotate_master_key(target.request(proto::RotateMasterKeyRequest {})).await;
    let mut status = rotating.map_err(|s| BenchError::call("RotateMasterKey", &s))?.into_inner();
    let rotate_took = load.now() - rotated_at;
    let to = status.current_version;
    let (mut checked_at, mut running_at) = (rotated_at + rotate_took, rotated_at);
    while status.migration.is_some() {
        running_at = checked_at;
        tokio::time::sleep(POLL).await;
        checked_at = load.now();
        status = target.master_status(true).await?.0;
    }
    let pending = target.master_status(false).await?.0.keys_pending;
    Ok(Watched { to, rotate_took, running_at, done_at: checked_at, pending })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_those_under_the_current_version_and_those_pending() {
        let version = |version, keys_using, current| proto::MasterKeyVersionInfo {
            version,
            keys_using,
            current,
            ..Default::default()
        };
        // Mid re-digest: 30 keys wrapped under v2 (needing v1 and v2), 70 still under v1 alone.
        let status = proto::MasterKeyStatus {
            current_version: 2,
            versions: vec![version(1, 100, false), version(2, 30, true)],
            keys_pending: 70,
            ..Default::default()
        };
        assert_eq!(live_keys(&status), 100);
    }
}
