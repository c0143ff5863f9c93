//! `keyward-bench anomaly`: what the anomaly detector costs VerifyKey. Alternating rounds of
//! the same run with `[anomaly] enabled` off and on, each round a real `keyward serve` of the
//! instance's data directory (stop the server first); calls carry a `client_ip`, so the detector
//! tracks networks as it would in production. The usage log is on in both (its default).

use std::{path::PathBuf, time::Duration};

use keyward::app::Options;

use super::usage::config_enabling;
use crate::{
    error::{BenchError, Result},
    figures::Figures,
    host::Server,
    target,
};

pub struct AnomalyBench {
    pub rounds: usize,
    pub round: Duration,
    pub concurrency: usize,
    pub connections: usize,
}

/// The client address the calls report.
const CLIENT_IP: &str = "198.51.100.7";

/// VerifyKey with the detector off and on, alternating rounds; returns (off, on).
pub fn on_off(opts: &Options, b: &AnomalyBench, admin_key: &str) -> Result<(Figures, Figures)> {
    let scratch = opts.data_dir.join("bench-anomaly");
    std::fs::create_dir_all(&scratch).map_err(BenchError::io(format!("creating {}", scratch.display())))?;
    let configs: Vec<PathBuf> = [false, true]
        .iter()
        .map(|on| {
            // Beside the instance's configuration: its relative paths (the dev PIN file) stay right.
            let dir = opts.config.parent().unwrap_or(&opts.data_dir);
            let path = dir.join(format!("bench-anomaly-{}.toml", if *on { "on" } else { "off" }));
            config_enabling(&opts.config, "anomaly", *on, &path).map(|()| path)
        })
        .collect::<Result<_, _>>()?;
    let runtime = keyward::app::runtime()?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..b.rounds.max(1) {
        for (i, config) in configs.iter().enumerate() {
            let (server, addr) = Server::start(opts, config, &scratch.join("addr"))?;
            let figures = runtime.block_on(target::verify_from(
                &addr,
                admin_key,
                CLIENT_IP,
                b.concurrency,
                b.connections,
                b.round,
            ))?;
            drop(server);
            eprintln!(
                "round {}: anomaly detector {}: {:.0}/s",
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
