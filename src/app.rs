//! The composition root: the data directory's layout, the process environment (umask,
//! SoftHSM2's configuration), the async runtime, and `keyward serve`: the configuration read
//! once, the server built and spawned, drained on SIGINT or SIGTERM. `keyward init` is in
//! `crate::init`, the admin commands in `crate::admin`, the server in `crate::server`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    config::{self, ClusterFlags, ClusterSettings, Config, ConfigError},
    domain::{error::Error as DomainError, ports::StoreError},
    hsm::{Pkcs11Config, StartError},
    init,
    server::{Server, Serving},
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
    /// `--etcd`, `--etcd-prefix`, `--node-id`: cluster mode's flags, over `[cluster]`.
    pub cluster: ClusterFlags,
}

impl Options {
    pub fn new(data_dir: PathBuf, config: Option<PathBuf>, dev: bool) -> Self {
        let config = config.unwrap_or_else(|| config::default_path(&data_dir));
        Self { data_dir, config, dev, cluster: ClusterFlags::default() }
    }

    /// These options with cluster mode's flags.
    pub fn with_cluster(mut self, cluster: ClusterFlags) -> Self {
        self.cluster = cluster;
        self
    }

    /// Cluster mode's settings, the flags over `config`'s `[cluster]` (the node id defaults to
    /// the host name), or `None` for single-node sled mode.
    pub fn cluster_settings(&self, config: &Config) -> Result<Option<ClusterSettings>, AppError> {
        Ok(config.cluster.resolve(&self.cluster, config::host_name)?)
    }

    /// Cluster mode: the node's own state (its copy of the audit chain, its usage log, caches).
    pub fn node_dir(&self, node_id: &str) -> PathBuf {
        self.data_dir.join("nodes").join(node_id)
    }

    /// Cluster mode: the node's sled database, in its `node_dir`.
    pub fn node_db_path(&self, node_id: &str) -> PathBuf {
        self.node_dir(node_id).join("db")
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
    if let (Some(path), Some(addr)) = (&serving.http_addr_file, server.http_addr()) {
        write_addr_file(path, addr)?;
    }
    if let (Some(path), Some(addr)) = (&serving.console_addr_file, server.console_addr()) {
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
fn write_addr_file(path: &Path, addr: impl std::fmt::Display) -> Result<(), AppError> {
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
