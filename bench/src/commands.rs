//! What each `keyward-bench` command does once its options are parsed: open what it measures
//! (a server, a self-hosted instance, a data directory), run the bench, print the figures.

use std::{
    fs,
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Duration,
};

use keyward::{
    app::{self, Options},
    config::Config,
    domain::key::MasterKeyVersion,
    hsm::Pkcs11Hsm,
    store::SledStore,
};

use crate::{
    cluster,
    drive::Limit,
    error::{BenchError, Result},
    host::SelfHost,
    offline, overload, raw_hsm, rotation,
    suite::{
        self, SuiteOptions, chart,
        report::{Machine, Report, Settings},
    },
    target,
};

/// The master key version the raw HSM figures use.
const FIRST_VERSION: MasterKeyVersion = MasterKeyVersion(1);

/// Reads a key file's first line.
pub fn read_key_file(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).map_err(BenchError::io(format!("reading {}", path.display())))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Opens the instance's token as the server does (`prepare_environment` first: call it before
/// any thread starts), with master key v1 present.
fn open_hsm(opts: &Options) -> Result<(Pkcs11Hsm, Config)> {
    app::prepare_environment(opts)?;
    let config = Config::load(&opts.config, false).map_err(app::AppError::from)?;
    let hsm = Pkcs11Hsm::open(app::pkcs11_config(&config)?)?;
    Ok((hsm, config))
}

/// `keyward-bench verify [--policies]`.
pub fn verify(
    target: &str,
    key_file: &Path,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    policies: bool,
) -> Result<()> {
    let key = read_key_file(key_file)?;
    let runtime = app::runtime()?;
    let what = format!("x{concurrency} over {connections} connections");
    if policies {
        let (plain, all) =
            runtime.block_on(target::verify_policies(target, &key, concurrency, connections, duration, 3))?;
        println!("{}", plain.report(&format!("VerifyKey, no policies, {what}")));
        println!("{}", all.report(&format!("VerifyKey, all policies, {what}")));
        println!("all policies / none: {:.1} % of the throughput", 100.0 * all.per_second() / plain.per_second());
    } else {
        let figures = runtime.block_on(target::verify(target, &key, concurrency, connections, duration))?;
        println!("{}", figures.report(&format!("VerifyKey {what}")));
    }
    Ok(())
}

/// `keyward-bench verify --signing`: VerifySignature against VerifyKey, same run.
pub fn verify_signing(
    target: &str,
    key_file: &Path,
    concurrency: usize,
    connections: usize,
    round: Duration,
) -> Result<()> {
    let key = read_key_file(key_file)?;
    let (keys, signed) =
        app::runtime()?.block_on(crate::signing::verify_signing(target, &key, concurrency, connections, round, 3))?;
    let what = format!("x{concurrency} over {connections} connections");
    println!("{}", keys.report(&format!("VerifyKey, {what}")));
    println!("{}", signed.report(&format!("VerifySignature, {what}")));
    println!(
        "VerifySignature / VerifyKey: {:.1} % of the throughput (goal: at least 70 %)",
        100.0 * signed.per_second() / keys.per_second()
    );
    Ok(())
}

/// `keyward-bench rotation`: prints each figure as soon as it is known.
pub fn rotation(target: &str, key_file: &Path, options: &rotation::RotationOptions) -> Result<()> {
    let key = read_key_file(key_file)?;
    let mut print = |line: String| println!("{line}");
    app::runtime()?.block_on(rotation::rotation(target, &key, options, &mut print))
}

/// `keyward-bench console`: prints each page's figures as soon as they are known.
pub fn console(
    target: &str,
    console: std::net::SocketAddr,
    key_file: &Path,
    options: &crate::console::ConsoleOptions,
) -> Result<()> {
    let key = read_key_file(key_file)?;
    let mut print = |line: String| println!("{line}");
    app::runtime()?.block_on(crate::console::console(target, console, &key, options, &mut print))
}

/// `keyward-bench overload`: prints each phase as soon as it ends.
pub fn overload(target: &str, key_file: &Path, options: &overload::OverloadOptions) -> Result<()> {
    let key = read_key_file(key_file)?;
    let mut print = |line: String| println!("{line}");
    app::runtime()?.block_on(overload::overload(target, &key, options, &mut print))?;
    Ok(())
}

/// `keyward-bench audit`: offline, on a stopped instance's data directory.
pub fn audit(opts: &Options, bench: offline::audit::AuditBench) -> Result<()> {
    let (hsm, _) = open_hsm(opts)?;
    hsm.ensure_token_keys()?;
    let store = SledStore::open(&opts.db_path(), std::sync::Arc::new(hsm.clone()))?;
    let result = app::runtime()
        .map_err(BenchError::from)
        .and_then(|rt| rt.block_on(offline::audit::run(&store, &bench, &mut |line| println!("{line}"))));
    store.close();
    hsm.close();
    result
}

/// `keyward-bench usage`: the usage log's disk figures, then VerifyKey with it off and on.
pub fn usage(opts: &Options, bench: offline::usage::UsageBench) -> Result<()> {
    let key = read_key_file(&opts.data_dir.join("root.key"))?;
    let scratch = opts.data_dir.join("bench-usage-disk");
    let _ = fs::remove_dir_all(&scratch);
    let disk =
        app::runtime()?.block_on(offline::usage::disk_figures(&scratch, bench.records, &mut |l| println!("{l}")));
    let _ = fs::remove_dir_all(&scratch);
    disk?;
    let (off, on) = offline::usage::on_off(opts, &bench, &key)?;
    let what = format!("x{} over {} connections", bench.concurrency, bench.connections);
    println!("{}", off.report(&format!("VerifyKey, usage log off, {what}")));
    println!("{}", on.report(&format!("VerifyKey, usage log on, {what}")));
    println!("usage log on / off: {:.1} % of the throughput", 100.0 * on.per_second() / off.per_second());
    Ok(())
}

/// `keyward-bench anomaly`: VerifyKey with the anomaly detector off and on, same run.
pub fn anomaly(opts: &Options, bench: offline::anomaly::AnomalyBench) -> Result<()> {
    let key = read_key_file(&opts.data_dir.join("root.key"))?;
    let (off, on) = offline::anomaly::on_off(opts, &bench, &key)?;
    let what = format!("x{} over {} connections", bench.concurrency, bench.connections);
    println!("{}", off.report(&format!("VerifyKey, anomaly detector off, {what}")));
    println!("{}", on.report(&format!("VerifyKey, anomaly detector on, {what}")));
    println!(
        "anomaly detector on / off: {:.1} % of the throughput (goal: at least 95 %)",
        100.0 * on.per_second() / off.per_second()
    );
    Ok(())
}

/// `keyward-bench hsm`: raw HMAC verifications through the adapter, on the configured token.
pub fn hsm(opts: &Options, concurrency: usize, duration: Duration, direct: bool) -> Result<()> {
    let (hsm, config) = open_hsm(opts)?;
    hsm.require_master_key(FIRST_VERSION)?;
    let figures = app::runtime()?.block_on(async {
        if direct {
            raw_hsm::hsm_direct(&hsm, FIRST_VERSION, concurrency, duration).await
        } else {
            raw_hsm::hsm(&hsm, FIRST_VERSION, concurrency, duration).await
        }
    })?;
    hsm.close();
    let how = if direct { "threads, direct" } else { "tasks through the async adapter" };
    let sessions = config.hsm.sessions;
    println!("{}", figures.report(&format!("HSM C_Verify, {concurrency} {how}, {sessions} sessions")));
    Ok(())
}

/// `keyward-bench cluster`: markdown (or `--json`) on stdout, the markdown to `markdown` too.
pub fn cluster(options: &cluster::ClusterOptions, json: bool, markdown: Option<&Path>) -> Result<()> {
    let report = cluster::run(options)?;
    let text = report.markdown();
    if let Some(path) = markdown {
        fs::write(path, &text).map_err(BenchError::io(format!("writing {}", path.display())))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Where the suite runs.
#[derive(Debug)]
pub enum SuiteTarget {
    /// A development instance of its own, in a temporary directory.
    SelfHost,
    /// A running server, the admin key in `key_file`; with `instance`, its data directory for
    /// the raw HSM figures.
    Remote { target: String, key_file: PathBuf, instance: Option<Box<Options>> },
}

/// What the suite prints besides the table.
pub struct SuiteOutput {
    pub json: bool,
    pub chart: Option<PathBuf>,
}

/// `keyward-bench`: the load suite with its ratios; a MISS is reported, not an error.
pub fn suite(where_: SuiteTarget, options: SuiteOptions, output: SuiteOutput) -> Result<()> {
    // Before any thread: the self-hosted instance is made by child processes, then SoftHSM2 is
    // pointed at its token.
    let host = match &where_ {
        SuiteTarget::SelfHost => Some(SelfHost::start()?),
        SuiteTarget::Remote { .. } => None,
    };
    let (addr, key_file, instance) = match (&where_, &host) {
        (_, Some(h)) => (h.addr.clone(), h.root_key_file.clone(), Some(Box::new(h.opts.clone()))),
        (SuiteTarget::Remote { target, key_file, instance }, None) => {
            (target.clone(), key_file.clone(), instance.clone())
        }
        (SuiteTarget::SelfHost, None) => unreachable!("a self-hosted run has its host"),
    };
    let key = read_key_file(&key_file)?;
    let hsm = match &instance {
        Some(opts) => {
            let (hsm, _) = open_hsm(opts)?;
            hsm.require_master_key(FIRST_VERSION)?;
            Some(hsm)
        }
        None => None,
    };
    let progress = if output.json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")?;
        indicatif::ProgressBar::new(0).with_style(style)
    };
    let result = app::runtime()
        .map_err(BenchError::from)
        .and_then(|rt| rt.block_on(suite::run(&addr, &key, hsm.as_ref(), &options, &progress)));
    if let Some(hsm) = hsm {
        hsm.close();
    }
    drop(host);
    let (baselines, rows) = result?;

    let (seconds, count) = match options.limit {
        Limit::For(d) => (Some(d.as_secs()), None),
        Limit::Calls(n) => (None, Some(n)),
    };
    let settings = Settings {
        target: if matches!(where_, SuiteTarget::SelfHost) { "self-host".into() } else { addr },
        scenarios: options.scenarios.iter().map(|s| s.name().to_owned()).collect(),
        concurrency: options.concurrency.clone(),
        connections: options.connections,
        keys: options.keys,
        seconds,
        count,
    };
    let report = Report::new(Machine::this(), settings, baselines, rows);
    if let Some(path) = &output.chart {
        chart::draw(&report, path)?;
    }
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
