//! The composition root: the data directory's layout, the process environment (umask,
//! SoftHSM2's configuration), the async runtime, and `keyward serve`: the configuration read
//! once, the server built and spawned, drained on SIGINT or SIGTERM. `keyward init` is in
//! `crate::init`, the admin commands in `crate::admin`, the server in `crate::server`.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    config::{self, Config, ConfigError},
    domain::{error::Error as DomainError, ports::StoreError},
    hsm::{Pkcs11Config, Pkcs11Hsm, StartError},
    init::{self, FIRST_VERSION},
    server::{Server, Serving},
    store::SledStore,
    telemetry,
};

/// How long the background tasks have, beyond the gRPC drain (`server.shutdown_grace_ms`), to
/// end before they are aborted.
const TASK_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("HSM: {0}")]
    Hsm(#[from] StartError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Refused(String),
}

/// An I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let context = context.into();
    move |source| AppError::Io { context, source }
}

/// A data directory's layout, and how `init` and `serve` treat it.
#[derive(Clone, Debug)]
pub struct Options {
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub dev: bool,
}

impl Options {
    pub fn new(data_dir: PathBuf, config: Option<PathBuf>, dev: bool) -> Self {
        let config = config.unwrap_or_else(|| config::default_path(&data_dir));
        Self { data_dir, config, dev }
    }

    /// The sled database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// `--dev`: the SoftHSM2 token, its configuration and PINs.
    pub fn softhsm_dir(&self) -> PathBuf {
        self.data_dir.join("softhsm")
    }

    /// The root key `init --dev` writes.
    pub fn root_key_path(&self) -> PathBuf {
        self.data_dir.join("root.key")
    }
}

/// Makes every file the process creates owner-only (keyward's own, and sled's and SoftHSM2's,
/// which follow the umask), and points SoftHSM2 at its configuration, before any thread exists
/// (the environment is process-wide and SoftHSM2 reads it when the module initializes). Reads
/// the configuration file for `hsm.softhsm2_conf` outside `--dev`.
pub fn prepare_environment(opts: &Options) -> Result<(), AppError> {
    let config = if !opts.dev && opts.config.exists() { Some(Config::load(&opts.config, true)?) } else { None };
    set_environment(opts, config.as_ref())
}

/// `prepare_environment` with the configuration already read (`None` with `--dev`, whose
/// SoftHSM2 configuration is the data directory's own, rewritten here if the directory moved).
pub(crate) fn set_environment(opts: &Options, config: Option<&Config>) -> Result<(), AppError> {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let conf =
        if opts.dev { Some(init::dev_softhsm_conf(opts)?) } else { config.and_then(|c| c.hsm.softhsm2_conf.clone()) };
    if let Some(conf) = conf {
        // SAFETY: called from `init`/`serve` before the runtime or any other thread starts.
        unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
    }
    Ok(())
}

/// The multi-threaded tokio runtime every command runs in.
pub fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io("starting the async runtime"))
}

pub(crate) fn absolute(path: &Path) -> Result<PathBuf, AppError> {
    std::path::absolute(path).map_err(io(format!("resolving {}", path.display())))
}

/// The PKCS#11 adapter's settings from the configuration (the PIN read now).
pub fn pkcs11_config(config: &Config) -> Result<Pkcs11Config, AppError> {
    Ok(Pkcs11Config {
        module: config.module_path()?,
        token_label: config.hsm.token_label.clone(),
        pin: config.pin()?,
        pin_file: if std::env::var_os("KEYWARD_HSM_PIN").is_some() { None } else { config.hsm.pin_file.clone() },
        sessions: config.hsm.sessions,
    })
}

/// `keyward serve`: reads the configuration once (with `--dev`, after making the instance if
/// it has not been made), sets up logging (and trace export), serves until SIGINT or SIGTERM,
/// then drains, flushes the traces and exits.
pub fn serve(opts: &Options, serving: &Serving, log_format: telemetry::LogFormat) -> Result<(), AppError> {
    let config = if opts.dev && init::dev_needs_init(opts) { None } else { Some(Config::load(&opts.config, false)?) };
    set_environment(opts, config.as_ref())?;
    let runtime = runtime()?;
    let traces = {
        let _in_runtime = runtime.enter();
        telemetry::init_serving(log_format).map_err(AppError::Refused)?
    };
    let result = runtime.block_on(async {
        let config = match config {
            Some(config) => config,
            None => {
                let _root = init::init_dev(opts).await?;
                println!("root key written to {}", opts.root_key_path().display());
                Config::load(&opts.config, false)?
            }
        };
        run_server(opts, config, serving).await
    });
    // Outside the runtime's threads, while the exporter's connection still runs on them.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    // A blocking task stuck in sled (a hung flush after ENOSPC: see `store.write_timeout`) must
    // not keep the process from exiting.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run_server(opts: &Options, config: Config, serving: &Serving) -> Result<(), AppError> {
    // Registered before the address is announced: a signal sent as soon as the address file
    // appears must start a drain, not kill the process.
    let shutdown = shutdown_signal();
    let drain_deadline = config.server.limits().shutdown_grace + TASK_STOP_GRACE;
    let server = Server::build(opts, config, serving).await?;
    if let (Some(path), Some(addr)) = (&serving.metrics_addr_file, server.metrics_addr()) {
        write_addr_file(path, addr)?;
    }
    if let Some(path) = &serving.addr_file {
        write_addr_file(path, server.local_addr())?;
    }
    let handle = server.spawn();
    tokio::select! {
        () = shutdown => {}
        () = handle.stopped() => {}
    }
    handle.drain(drain_deadline).await?;
    tracing::info!("keyward stopped");
    Ok(())
}

/// Writes `addr` to `path` atomically (a temporary file renamed over it).
fn write_addr_file(path: &Path, addr: SocketAddr) -> Result<(), AppError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(io(format!("writing {}", path.display())))
}

/// Resolves at the first SIGTERM or SIGINT; the handlers are registered at the call, not at
/// the first poll.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    async move {
        let (mut term, mut int) = match handlers {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// `keyward bench verify [--policies]`.
pub fn bench_verify(
    target: &str,
    key_file: &Path,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    policies: bool,
) -> Result<(), AppError> {
    let key = crate::bench::read_key_file(key_file).map_err(AppError::Refused)?;
    let runtime = runtime()?;
    let what = format!("x{concurrency} over {connections} connections");
    if policies {
        let (plain, all) = runtime
            .block_on(crate::bench::verify_policies(target, &key, concurrency, connections, duration, 3))
            .map_err(AppError::Refused)?;
        println!("{}", plain.report(&format!("VerifyKey, no policies, {what}")));
        println!("{}", all.report(&format!("VerifyKey, all policies, {what}")));
        println!("all policies / none: {:.1} % of the throughput", 100.0 * all.per_second() / plain.per_second());
    } else {
        let figures = runtime
            .block_on(crate::bench::verify(target, &key, concurrency, connections, duration))
            .map_err(AppError::Refused)?;
        println!("{}", figures.report(&format!("VerifyKey {what}")));
    }
    Ok(())
}

/// `keyward bench rotation`: prints each figure as soon as it is known.
pub fn bench_rotation(
    target: &str,
    key_file: &Path,
    options: &crate::bench_rotation::RotationOptions,
) -> Result<(), AppError> {
    let key = crate::bench::read_key_file(key_file).map_err(AppError::Refused)?;
    let mut print = |line: String| println!("{line}");
    runtime()?.block_on(crate::bench_rotation::rotation(target, &key, options, &mut print)).map_err(AppError::Refused)
}

/// `keyward bench overload`: prints each phase as soon as it ends.
pub fn bench_overload(
    target: &str,
    key_file: &Path,
    options: &crate::bench_overload::OverloadOptions,
) -> Result<(), AppError> {
    let key = crate::bench::read_key_file(key_file).map_err(AppError::Refused)?;
    let mut print = |line: String| println!("{line}");
    runtime()?
        .block_on(crate::bench_overload::overload(target, &key, options, &mut print))
        .map_err(AppError::Refused)?;
    Ok(())
}

/// `keyward bench audit`: offline, on a stopped instance's data directory.
pub fn bench_audit(opts: &Options, bench: crate::bench_audit::AuditBench) -> Result<(), AppError> {
    prepare_environment(opts)?;
    let config = Config::load(&opts.config, false)?;
    let hsm = Pkcs11Hsm::open(pkcs11_config(&config)?)?;
    hsm.ensure_audit_key()?;
    let store = SledStore::open(&opts.db_path(), Arc::new(hsm.clone()))?;
    let result = runtime()?.block_on(crate::bench_audit::run(&store, &bench, &mut |line| println!("{line}")));
    store.close();
    hsm.close();
    result.map_err(AppError::Refused)
}

/// `keyward bench usage`: the usage log's disk figures, then VerifyKey with it off and on.
pub fn bench_usage(opts: &Options, bench: crate::bench_usage::UsageBench) -> Result<(), AppError> {
    let key = crate::bench::read_key_file(&opts.data_dir.join("root.key")).map_err(AppError::Refused)?;
    let scratch = opts.data_dir.join("bench-usage-disk");
    let _ = fs::remove_dir_all(&scratch);
    let disk = runtime()?.block_on(crate::bench_usage::disk_figures(&scratch, bench.records, &mut |l| println!("{l}")));
    let _ = fs::remove_dir_all(&scratch);
    disk.map_err(AppError::Refused)?;
    let (off, on) = crate::bench_usage::on_off(opts, &bench, &key).map_err(AppError::Refused)?;
    let what = format!("x{} over {} connections", bench.concurrency, bench.connections);
    println!("{}", off.report(&format!("VerifyKey, usage log off, {what}")));
    println!("{}", on.report(&format!("VerifyKey, usage log on, {what}")));
    println!("usage log on / off: {:.1} % of the throughput", 100.0 * on.per_second() / off.per_second());
    Ok(())
}

/// `keyward bench hsm`: raw HMAC verifications through the adapter, on the configured token.
pub fn bench_hsm(opts: &Options, concurrency: usize, duration: Duration, direct: bool) -> Result<(), AppError> {
    prepare_environment(opts)?;
    let config = Config::load(&opts.config, false)?;
    let sessions = config.hsm.sessions;
    let hsm = Pkcs11Hsm::open(pkcs11_config(&config)?)?;
    hsm.require_master_key(FIRST_VERSION)?;
    let figures = runtime()?
        .block_on(async {
            if direct {
                crate::bench::hsm_direct(&hsm, FIRST_VERSION, concurrency, duration).await
            } else {
                crate::bench::hsm(&hsm, FIRST_VERSION, concurrency, duration).await
            }
        })
        .map_err(AppError::Refused)?;
    hsm.close();
    let how = if direct { "threads, direct" } else { "tasks through the async adapter" };
    println!("{}", figures.report(&format!("HSM C_Verify, {concurrency} {how}, {sessions} sessions")));
    Ok(())
}

/// Where `keyward bench` (the suite) runs.
#[derive(Debug)]
pub enum SuiteTarget {
    /// A development instance of its own, in a temporary directory.
    SelfHost,
    /// A running server, the admin key in `key_file`; with `instance`, its data directory for
    /// the raw HSM figures.
    Remote { target: String, key_file: PathBuf, instance: Option<Options> },
}

/// What `keyward bench` prints besides the table.
pub struct SuiteOutput {
    pub json: bool,
    pub chart: Option<PathBuf>,
}

/// `keyward bench`: the load suite with its ratios; a MISS is reported, not an error.
pub fn bench_suite(
    where_: SuiteTarget,
    options: crate::bench_suite::SuiteOptions,
    output: SuiteOutput,
) -> Result<(), AppError> {
    use crate::bench_report::{Machine, Report, Settings};
    use std::io::IsTerminal;

    // Before any thread: the self-hosted instance is made by child processes, then SoftHSM2 is
    // pointed at its token.
    let host = match &where_ {
        SuiteTarget::SelfHost => Some(crate::bench_host::SelfHost::start().map_err(AppError::Refused)?),
        SuiteTarget::Remote { .. } => None,
    };
    let (addr, key_file, instance) = match (&where_, &host) {
        (_, Some(h)) => (h.addr.clone(), h.root_key_file.clone(), Some(h.opts.clone())),
        (SuiteTarget::Remote { target, key_file, instance }, None) => {
            (target.clone(), key_file.clone(), instance.clone())
        }
        (SuiteTarget::SelfHost, None) => unreachable!("a self-hosted run has its host"),
    };
    let key = crate::bench::read_key_file(&key_file).map_err(AppError::Refused)?;
    let hsm = match &instance {
        Some(opts) => {
            prepare_environment(opts)?;
            let hsm = Pkcs11Hsm::open(pkcs11_config(&Config::load(&opts.config, false)?)?)?;
            hsm.require_master_key(FIRST_VERSION)?;
            Some(hsm)
        }
        None => None,
    };
    let progress = if output.json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| AppError::Refused(e.to_string()))?;
        indicatif::ProgressBar::new(0).with_style(style)
    };
    let result = runtime()?.block_on(crate::bench_suite::run(&addr, &key, hsm.as_ref(), &options, &progress));
    if let Some(hsm) = hsm {
        hsm.close();
    }
    drop(host);
    let (baselines, rows) = result.map_err(AppError::Refused)?;

    let (seconds, count) = match options.limit {
        crate::bench_drive::Limit::For(d) => (Some(d.as_secs()), None),
        crate::bench_drive::Limit::Calls(n) => (None, Some(n)),
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
        crate::bench_chart::draw(&report, path).map_err(AppError::Refused)?;
    }
    if output.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| AppError::Refused(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
