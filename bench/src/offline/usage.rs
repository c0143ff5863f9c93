//! `keyward-bench usage`: what the usage log costs. Offline, the writer's ceiling (records/s
//! through the store, group commit included) and disk bytes per record in a scratch database;
//! then VerifyKey throughput with the log off and on, in alternating rounds of the same run,
//! each round a real `keyward serve` on the instance's data directory (stop the server first).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use keyward::{
    app::Options,
    domain::{
        key::KeyId,
        policy::VerifyCode,
        ports::{AUDIT_MAC_LEN, AuditSealer, HsmError, Store, StoreError},
        usage_log::{MAX_QUERY_SCAN, MAX_USAGE_SCAN, Retention, UsageQuery, UsageRecord},
    },
    store::SledStore,
};

use crate::{
    error::{BenchError, Result},
    figures::Figures,
    host::Server,
    target,
};

pub struct UsageBench {
    /// Records written to the scratch database.
    pub records: u64,
    pub rounds: usize,
    pub round: Duration,
    pub concurrency: usize,
    pub connections: usize,
}

/// The scratch database seals nothing.
struct NoSealer;

impl AuditSealer for NoSealer {
    fn seal(&self, _: &[u8]) -> Result<[u8; AUDIT_MAC_LEN], HsmError> {
        Err(HsmError::Refused("the usage bench writes no audit events".into()))
    }
    fn check(&self, _: &[u8], _: &[u8; AUDIT_MAC_LEN]) -> Result<bool, HsmError> {
        Ok(false)
    }
}

/// Plausible traffic: 1,000 keys, 250 client addresses, mostly valid.
fn record(n: u64, keys: &[KeyId], caller: KeyId) -> UsageRecord {
    let code = if n % 20 == 0 { VerifyCode::Invalid } else { VerifyCode::Valid };
    UsageRecord {
        at: SystemTime::now(),
        key_id: Some(keys[(n as usize * 7919) % keys.len()]),
        code,
        client_ip: Some(IpAddr::from([10, 0, (n % 250) as u8, 7])),
        caller: Some(caller),
        latency: Duration::from_micros(150 + n % 300),
    }
}

/// Writes `n` records into a scratch store in `dir` in writer-sized batches.
pub async fn disk_figures(dir: &Path, n: u64, out: &mut impl FnMut(String)) -> Result<()> {
    const BATCH: u64 = 4096;
    let store = SledStore::open(dir, Arc::new(NoSealer))?;
    let empty = store.size_on_disk()?;
    let keys: Vec<KeyId> = (0..1000).map(|_| KeyId::new_v7()).collect();
    let caller = KeyId::new_v7();
    let started = Instant::now();
    let mut written = 0;
    while written < n {
        let batch = (written..(written + BATCH).min(n)).map(|i| record(i, &keys, caller)).collect::<Vec<_>>();
        written += batch.len() as u64;
        store.append_usage(batch, Retention::default()).await?;
    }
    let took = started.elapsed();
    let bytes = store.size_on_disk()?.saturating_sub(empty);
    let query =
        |i: usize| UsageQuery { key: Some(keys[i * 7919 % keys.len()]), newest_first: true, ..Default::default() };
    let time = |f: &dyn Fn(usize) -> Result<usize, StoreError>| -> Result<(Figures, usize)> {
        let (mut latencies, mut returned, started) = (Vec::new(), 0, Instant::now());
        for i in 0..200 {
            let t = Instant::now();
            returned += f(i)?;
            latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        Ok((Figures::new(latencies, 0, started.elapsed()), returned / 200))
    };
    let (newest, per_page) = time(&|i| Ok(store.query_usage(&query(i), None, 100, MAX_QUERY_SCAN)?.0.len()))?;
    let (counts, per_key) =
        time(&|i| Ok(store.key_usage(keys[i * 7919 % keys.len()], None, None, MAX_USAGE_SCAN)?.total as usize))?;
    store.close();
    out(format!(
        "usage log writer: {written} records in {BATCH}-record durable batches in {:.1} s = {:.0} records/s",
        took.as_secs_f64(),
        written as f64 / took.as_secs_f64()
    ));
    out(format!(
        "usage log on disk: {bytes} bytes for {written} records = {:.0} bytes per record",
        bytes as f64 / written as f64
    ));
    out(newest.report(&format!("QueryUsage store query, one key's newest 100 ({per_page} returned) among {written}")));
    out(counts.report(&format!("KeyUsage store count, one key's whole history ({per_key} records) among {written}")));
    Ok(())
}

/// The instance's configuration with `[section] enabled` set as given, written to `out`.
pub(crate) fn config_enabling(base: &Path, section: &str, enabled: bool, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(base).unwrap_or_default();
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|source| BenchError::ConfigRead { path: base.to_owned(), source })?;
    let entry = table.entry(section).or_insert_with(|| toml::Value::Table(Default::default()));
    let toml::Value::Table(entry) = entry else {
        return Err(BenchError::SectionNotTable { section: section.to_owned(), path: base.to_owned() });
    };
    entry.insert("enabled".into(), toml::Value::Boolean(enabled));
    std::fs::write(out, toml::to_string(&table)?).map_err(BenchError::io(format!("writing {}", out.display())))
}

/// VerifyKey with the usage log off and on, alternating rounds; returns (off, on).
pub fn on_off(opts: &Options, b: &UsageBench, admin_key: &str) -> Result<(Figures, Figures)> {
    let scratch = opts.data_dir.join("bench-usage");
    std::fs::create_dir_all(&scratch).map_err(BenchError::io(format!("creating {}", scratch.display())))?;
    let configs: Vec<PathBuf> = [false, true]
        .iter()
        .map(|on| {
            // Beside the instance's configuration: its relative paths (the dev PIN file) stay right.
            let dir = opts.config.parent().unwrap_or(&opts.data_dir);
            let path = dir.join(format!("bench-usage-log-{}.toml", if *on { "on" } else { "off" }));
            config_enabling(&opts.config, "usage_log", *on, &path).map(|()| path)
        })
        .collect::<Result<_, _>>()?;
    let runtime = keyward::app::runtime()?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..b.rounds.max(1) {
        for (i, config) in configs.iter().enumerate() {
            let (server, addr) = Server::start(opts, config, &scratch.join("addr"))?;
            let figures = runtime.block_on(target::verify(&addr, admin_key, b.concurrency, b.connections, b.round))?;
            drop(server);
            eprintln!(
                "round {}: usage log {}: {:.0}/s",
                round + 1,
                if i == 1 { "on" } else { "off" },
                figures.per_second()
            );
            if i == 1 { on.push(figures) } else { off.push(figures) }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    for config in &configs {
        let _ = std::fs::remove_file(config);
    }
    Ok((Figures::combine(off), Figures::combine(on)))
}
