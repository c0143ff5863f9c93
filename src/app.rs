//! The composition root: builds the HSM, the store and the domain from the configuration, and
//! runs `init` and `serve`.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    admin::ClientTls,
    config::{self, Config, ConfigError, DEV_TOKEN_LABEL},
    domain::{
        clock::{Clock, SystemClock},
        error::Error as DomainError,
        key::MasterKeyVersion,
        ports::{Store, StoreError},
        secret::Pin,
        service::{self, Keys, KeysConfig},
    },
    grpc,
    hsm::{self, Pkcs11Config, Pkcs11Hsm, StartError},
    metrics,
    store::SledStore,
    telemetry,
};

/// How often the free space on the database's file system is measured.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The first master key version.
const FIRST_VERSION: MasterKeyVersion = MasterKeyVersion(1);

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

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let context = context.into();
    move |source| AppError::Io { context, source }
}

/// What `init` and `serve` share.
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

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    fn softhsm_dir(&self) -> PathBuf {
        self.data_dir.join("softhsm")
    }
}

/// Makes every file the process creates owner-only (keyward's own, and sled's and SoftHSM2's,
/// which follow the umask), and points SoftHSM2 at its configuration, before any thread exists
/// (the environment is process-wide and SoftHSM2 reads it when the module initializes).
pub fn prepare_environment(opts: &Options) -> Result<(), AppError> {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let conf = if opts.dev {
        Some(absolute(&opts.softhsm_dir())?.join("softhsm2.conf"))
    } else if opts.config.exists() {
        Config::load(&opts.config, true)?.hsm.softhsm2_conf
    } else {
        None
    };
    if let Some(conf) = conf {
        // SAFETY: called from `init`/`serve` before the runtime or any other thread starts.
        unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
    }
    Ok(())
}

pub fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(io("starting the async runtime"))
}

fn absolute(path: &Path) -> Result<PathBuf, AppError> {
    std::path::absolute(path).map_err(io(format!("resolving {}", path.display())))
}

fn private_dir(path: &Path) -> Result<(), AppError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(format!("creating {}", path.display())))
}

/// Writes a file readable by its owner only; refuses to overwrite.
fn private_file(path: &Path, contents: &[u8]) -> Result<(), AppError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(contents).and_then(|()| f.sync_all()).map_err(io(format!("writing {}", path.display())))
}

fn random_pin() -> Pin {
    let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
    getrandom::fill(bytes.as_mut()).expect("the OS random number generator works");
    Pin::new(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn pkcs11_config(config: &Config) -> Result<Pkcs11Config, AppError> {
    Ok(Pkcs11Config {
        module: config.module_path()?,
        token_label: config.hsm.token_label.clone(),
        pin: config.pin()?,
        pin_file: if std::env::var_os("KEYWARD_HSM_PIN").is_some() { None } else { config.hsm.pin_file.clone() },
        sessions: config.hsm.sessions,
    })
}

/// `keyward init`: prints the root key once on stdout.
pub fn init(opts: &Options) -> Result<(), AppError> {
    prepare_environment(opts)?;
    let root_key = runtime()?.block_on(async {
        if opts.dev { init_dev(opts).await } else { provision(opts, &Config::load(&opts.config, false)?).await }
    })?;
    println!("{}", root_key.expose());
    Ok(())
}

/// Makes a development token inside the data directory, its configuration, and then the
/// master key, database and root key (also written to `DATA_DIR/root.key`, mode 0600).
async fn init_dev(opts: &Options) -> Result<crate::domain::secret::KeyString, AppError> {
    if opts.config.exists() || opts.db_path().exists() {
        return Err(AppError::Refused(format!(
            "{} is already initialized; init refuses to overwrite it",
            opts.data_dir.display()
        )));
    }
    private_dir(&opts.data_dir)?;
    let softhsm = absolute(&opts.softhsm_dir())?;
    let tokens = softhsm.join("tokens");
    private_dir(&tokens)?;
    let template = include_str!("../softhsm/softhsm2.conf.template");
    let conf_path = softhsm.join("softhsm2.conf");
    private_file(&conf_path, template.replace("@TOKENDIR@", &tokens.display().to_string()).as_bytes())?;
    let (user_pin, so_pin) = (random_pin(), random_pin());
    let pin_file = softhsm.join("user.pin");
    private_file(&pin_file, format!("{}\n", user_pin.expose()).as_bytes())?;
    private_file(&softhsm.join("so.pin"), format!("{}\n", so_pin.expose()).as_bytes())?;

    let mut config = Config::default();
    config.hsm.module = Some(config.module_path()?);
    config.hsm.token_label = DEV_TOKEN_LABEL.into();
    config.hsm.pin_file = Some(pin_file);
    config.hsm.softhsm2_conf = Some(conf_path);
    let text = toml::to_string_pretty(&config).map_err(|e| AppError::Refused(format!("encoding keyward.toml: {e}")))?;
    private_file(
        &opts.config,
        format!("# keyward development instance, written by `keyward init --dev`\n{text}").as_bytes(),
    )?;

    let mut pkcs11 = pkcs11_config(&config)?;
    pkcs11.pin = user_pin;
    hsm::init_dev_token(&pkcs11, &so_pin)?;
    let root = provision(opts, &config).await?;
    private_file(&opts.data_dir.join("root.key"), format!("{}\n", root.expose()).as_bytes())?;
    tracing::info!(data_dir = %opts.data_dir.display(), "development instance initialized; root key in root.key");
    Ok(root)
}

/// Creates master key v1 in the token and a new database with the root key.
async fn provision(opts: &Options, config: &Config) -> Result<crate::domain::secret::KeyString, AppError> {
    let db = opts.db_path();
    if db.exists() {
        return Err(AppError::Refused(format!(
            "a database already exists at {}; init refuses to overwrite it",
            db.display()
        )));
    }
    let pkcs11 = pkcs11_config(config)?;
    hsm::create_master_key(&pkcs11, FIRST_VERSION)?;
    let hsm = Pkcs11Hsm::open(pkcs11)?;
    hsm.require_master_key(FIRST_VERSION)?;
    private_dir(&db)?;
    let store = SledStore::open(&db, Arc::new(hsm.clone()))?;
    let created = service::bootstrap(&hsm, &store, &SystemClock, FIRST_VERSION).await;
    store.close();
    hsm.close();
    let created = created?;
    tracing::info!(root_key_id = %created.record.id, "master key {FIRST_VERSION} and root key created");
    Ok(created.key)
}

/// Where `serve` listens and reports its addresses; `None` falls back to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Serving {
    pub listen: Option<SocketAddr>,
    pub addr_file: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_addr_file: Option<PathBuf>,
    /// `--tls-cert`, `--tls-key`, `--client-ca`, over `[tls]`.
    pub tls: config::TlsFlags,
    /// `--allow-plaintext`: plaintext on a non-loopback address (or `server.allow_plaintext`).
    pub allow_plaintext: bool,
}

/// `keyward serve`: sets up logging (and trace export), runs until SIGINT or SIGTERM, then
/// drains, flushes the traces and exits.
pub fn serve(opts: &Options, serving: &Serving, log_format: telemetry::LogFormat) -> Result<(), AppError> {
    prepare_environment(opts)?;
    let runtime = runtime()?;
    let traces = {
        let _in_runtime = runtime.enter();
        telemetry::init_serving(log_format).map_err(AppError::Refused)?
    };
    let result = runtime.block_on(async {
        if opts.dev && !opts.config.exists() {
            let _root = init_dev(opts).await?;
            println!("root key written to {}", opts.data_dir.join("root.key").display());
        }
        run_server(opts, serving).await
    });
    // Outside the runtime's threads, while the exporter's connection still runs on them.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    result
}

/// Writes `addr` to `path` atomically (a temporary file renamed over it).
fn write_addr_file(path: &Path, addr: SocketAddr) -> Result<(), AppError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(io(format!("writing {}", path.display())))
}

/// Binds the metrics endpoint, if configured, and starts serving it and counting keys.
async fn start_metrics(
    serving: &Serving,
    config: &Config,
    store: &SledStore,
) -> Result<Vec<tokio::task::JoinHandle<()>>, AppError> {
    let Some(addr) = serving.metrics_listen.or(config.metrics_listen) else { return Ok(Vec::new()) };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io(format!("listening for metrics on {addr}")))?;
    let local = listener.local_addr().map_err(io("reading the bound metrics address"))?;
    if let Some(path) = &serving.metrics_addr_file {
        write_addr_file(path, local)?;
    }
    tracing::info!(address = %local, "serving metrics on /metrics");
    Ok(vec![
        tokio::spawn(metrics::serve(listener)),
        tokio::spawn(metrics::count_keys_every(store.clone(), metrics::KEY_COUNT_INTERVAL)),
    ])
}

async fn run_server(opts: &Options, serving: &Serving) -> Result<(), AppError> {
    let config = Config::load(&opts.config, false)?;
    if config.hsm.token_label == DEV_TOKEN_LABEL && !opts.dev {
        return Err(AppError::Refused(format!(
            "{} uses the development token {DEV_TOKEN_LABEL:?}; serve it with --dev",
            opts.data_dir.display()
        )));
    }
    let listen =
        serving.listen.or(config.listen).unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("a valid default"));
    let (transport, identities) = transport(serving, &config, listen)?;
    let db = opts.db_path();
    if !db.exists() {
        return Err(AppError::Refused(format!("no database at {}: run `keyward init` first", db.display())));
    }
    let (hsm, unreachable) = Pkcs11Hsm::open_serving(pkcs11_config(&config)?)?;
    if unreachable.is_none() {
        hsm.ensure_audit_key()?;
    }
    let store = SledStore::open_with_reserve(&db, Arc::new(hsm.clone()), config.store.min_free_bytes)?;
    let master = store.master()?.ok_or_else(|| {
        AppError::Refused("the database has no master key record: was `keyward init` interrupted?".into())
    })?;
    let retired: Vec<MasterKeyVersion> =
        master.versions.iter().filter(|v| v.retired_at.is_some()).map(|v| v.version).collect();
    if let Some(why) = &unreachable {
        // Serve anyway (health NOT_SERVING, calls UNAVAILABLE) and keep trying: the start-up
        // checks run on the first connection, before any call goes through.
        tracing::error!(error = %why, "the HSM is unreachable at start; serving NOT_SERVING and retrying in the background");
        hsm.connect_in_background(hsm::FirstConnect {
            required: master.live().map(|v| v.version).collect(),
            retired,
            self_tests: master.live().map(|v| v.self_test.clone()).collect(),
            self_test_input: service::self_test_input(),
        });
    } else {
        for version in master.live() {
            hsm.require_master_key(version.version)?;
        }
        for retired in retired.into_iter().filter(|v| hsm.require_master_key(*v).is_ok()) {
            tracing::warn!(version = %retired, "a retired master key is still on the token; run `keyward master retire` for it again to destroy it");
        }
    }
    let sweep_every = config.rotation.sweep_interval;
    let keys_config = KeysConfig {
        auth_cache_capacity: config.server.auth_cache_capacity,
        auth_cache_ttl: Duration::from_millis(config.server.auth_cache_ttl_ms),
        rate_limiter_capacity: config.policy.rate_limiter_capacity,
        quota_max_lease: config.policy.quota_max_lease,
        rotation: config.rotation.domain(),
        migration: config.master.domain(),
        usage_log: config.usage_log.domain(),
        brute_force: config.brute_force.domain()?,
    };
    let clock = clock(opts)?;
    let keys = Arc::new(Keys::new(Arc::new(hsm.clone()), Arc::new(store.clone()), clock, master, keys_config));
    if unreachable.is_none() {
        keys.self_test().await?;
    }
    let usage_flush =
        tokio::spawn(flush_usage_every(keys.clone(), Duration::from_millis(config.policy.usage_flush_ms)));
    let usage_log = tokio::spawn(write_usage_log(keys.clone()));
    let disk = tokio::spawn(store.clone().watch_disk(DISK_CHECK_INTERVAL));
    let migrations = tokio::spawn({
        let keys = keys.clone();
        async move { keys.run_migrations().await }
    });
    let sweeper = sweep_every.map(|every| tokio::spawn(sweep_every_interval(keys.clone(), every)));

    let shutdown = shutdown_signal();
    // Registered before the address is announced, like the shutdown signals: SIGHUP's default
    // action would end the process. It reloads the TLS files; without TLS it does nothing.
    let hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(io("listening for SIGHUP"))?;
    let tls = match &transport {
        grpc::Transport::Tls(tls) => Some(tls.clone()),
        grpc::Transport::Plain => None,
    };
    let reloads = tokio::spawn(crate::tls::watch(tls, hangup));
    let metrics_tasks = start_metrics(serving, &config, &store).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(io(format!("listening on {listen}")))?;
    let local = listener.local_addr().map_err(io("reading the bound address"))?;
    if let Some(path) = &serving.addr_file {
        write_addr_file(path, local)?;
    }
    let mode = match &transport {
        grpc::Transport::Plain => "plaintext",
        grpc::Transport::Tls(tls) => match tls.settings().client_ca {
            None => "TLS",
            Some((_, config::ClientAuth::Required)) => "mTLS, client certificate required",
            Some((_, config::ClientAuth::Optional)) => "mTLS, client certificate optional",
        },
    };
    tracing::info!(address = %local, transport = mode, "keyward serving");
    let served = grpc::serve(keys.clone(), listener, transport, identities, config.server.limits(), shutdown).await;
    reloads.abort();
    let _ = reloads.await;
    usage_flush.abort();
    let _ = usage_flush.await;
    usage_log.abort();
    let _ = usage_log.await;
    disk.abort();
    let _ = disk.await;
    migrations.abort();
    let _ = migrations.await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
        let _ = sweeper.await;
    }
    for task in metrics_tasks {
        task.abort();
        let _ = task.await;
    }
    if let Err(e) = keys.shutdown().await {
        tracing::error!(error = %e, "returning quota leases and writing usage at shutdown failed");
    }
    if let Err(e) = keys.flush_auth_failures().await {
        tracing::error!(error = %e, "auditing refused calls at shutdown failed");
    }
    match keys.flush_usage_log().await {
        Ok(w) => report_usage_write(&w),
        Err(e) => tracing::error!(error = %e, "writing the usage log at shutdown failed"),
    }
    store.close();
    hsm.close();
    served.map_err(|e| AppError::Refused(format!("server error: {e}")))?;
    tracing::info!("keyward stopped");
    Ok(())
}

/// Plaintext or TLS, from the flags over `[tls]`, and the mTLS identities; refuses plaintext on
/// a non-loopback address unless allowed. The TLS files are read here, so a bad one stops
/// startup with what is wrong with it.
fn transport(
    serving: &Serving,
    config: &Config,
    listen: SocketAddr,
) -> Result<(grpc::Transport, Arc<crate::tls::Identities>), AppError> {
    let settings = config.tls.settings(&serving.tls)?;
    let identities = Arc::new(crate::tls::Identities::from_config(&config.tls.identities)?);
    let Some(settings) = settings else {
        let allowed = serving.allow_plaintext || config.server.allow_plaintext;
        if !config::plaintext_allowed(listen, allowed) {
            return Err(AppError::Refused(format!(
                "refusing to serve plaintext gRPC on {listen}, a non-loopback address: bearer keys would cross the \
                 network in clear. Configure TLS (--tls-cert and --tls-key, or [tls]), listen on loopback, or, \
                 behind a TLS-terminating proxy, pass --allow-plaintext (or set server.allow_plaintext)"
            )));
        }
        if !listen.ip().to_canonical().is_loopback() {
            tracing::warn!(address = %listen, "serving plaintext gRPC on a non-loopback address (allowed explicitly)");
        }
        return Ok((grpc::Transport::Plain, identities));
    };
    let tls = crate::tls::TlsReloader::load(settings)?;
    if !identities.is_empty() {
        tracing::info!(identities = identities.len(), "client certificate identities mapped to keys");
    }
    Ok((grpc::Transport::Tls(Arc::new(tls)), identities))
}

/// The clock: the system's, or in `--dev` only, the system's moved by the whole seconds held in
/// the file `KEYWARD_DEV_CLOCK_OFFSET_FILE` names (read on each use), so tests can move time on
/// a running server.
fn clock(opts: &Options) -> Result<Arc<dyn Clock>, AppError> {
    match std::env::var_os(DEV_CLOCK_ENV) {
        None => Ok(Arc::new(SystemClock)),
        Some(_) if !opts.dev => Err(AppError::Refused(format!("{DEV_CLOCK_ENV} is honoured only with --dev"))),
        Some(path) => {
            tracing::warn!("development clock: time is moved by the offset in {}", Path::new(&path).display());
            Ok(Arc::new(OffsetFileClock(PathBuf::from(path))))
        }
    }
}

const DEV_CLOCK_ENV: &str = "KEYWARD_DEV_CLOCK_OFFSET_FILE";

struct OffsetFileClock(PathBuf);

impl Clock for OffsetFileClock {
    fn now(&self) -> std::time::SystemTime {
        let offset: i64 = fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let now = std::time::SystemTime::now();
        let shift = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 { now + shift } else { now - shift }
    }
}

/// Every `every`: writes usage facts, and audits the calls refused since the last time.
async fn flush_usage_every(keys: Arc<Keys<Pkcs11Hsm, SledStore>>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = keys.flush_usage().await {
            tracing::warn!(error = %e, "writing usage facts failed; this batch is dropped");
        }
        if let Err(e) = keys.flush_auth_failures().await {
            tracing::warn!(error = %e, "auditing refused calls failed; they are counted again next time");
        }
    }
}

/// The usage log's writer: one batch after another, as records arrive.
async fn write_usage_log(keys: Arc<Keys<Pkcs11Hsm, SledStore>>) {
    loop {
        match keys.write_usage_log().await {
            Ok(w) => report_usage_write(&w),
            Err(e) => {
                tracing::warn!(error = %e, "writing the usage log failed; the batch is counted as dropped");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn report_usage_write(w: &crate::domain::usage_log::UsageWrite) {
    let m = metrics::get().usage_queue();
    m.depth.set(w.depth as i64);
    if w.dropped > 0 {
        m.dropped.inc_by(w.dropped);
    }
}

/// Runs the sweeper every `every`, the first time one interval after startup.
async fn sweep_every_interval(keys: Arc<Keys<Pkcs11Hsm, SledStore>>, every: Duration) {
    let every = every.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let actor = crate::domain::audit::Actor::System("sweeper".into());
        match keys.sweep(actor, false, &Default::default()).await {
            Ok(r) if r.expired.is_empty() && r.disabled.is_empty() => {}
            Ok(r) => tracing::info!(expired = r.expired.len(), disabled = r.disabled.len(), "sweep done"),
            Err(e) => tracing::warn!(error = %e, "sweep failed; retrying at the next interval"),
        }
    }
}

/// The admin credential: the key in `key_file`, or none when a client certificate stands for
/// one (mTLS).
fn admin_key(key_file: Option<&Path>, tls: &ClientTls, scope: &str) -> Result<Option<String>, AppError> {
    match key_file {
        Some(path) => crate::admin::read_key_file(path).map(Some).map_err(AppError::Refused),
        None if tls.has_identity() => Ok(None),
        None => Err(AppError::Refused(format!(
            "--key-file is required (a key holding {scope}), or over mTLS a client certificate mapped to one \
             (--client-cert and --client-key)"
        ))),
    }
}

/// `keyward master ...` against a running server.
pub fn master(
    target: &str,
    tls: &ClientTls,
    key_file: Option<&Path>,
    command: crate::admin::MasterCommand,
) -> Result<(), AppError> {
    let key = admin_key(key_file, tls, "keyward:master:rotate")?;
    let out =
        runtime()?.block_on(crate::admin::master(target, tls, key.as_deref(), command)).map_err(AppError::Refused)?;
    println!("{out}");
    Ok(())
}

/// `keyward audit ...` against a running server; lines go to stdout as they come.
pub fn audit(
    target: &str,
    tls: &ClientTls,
    key_file: Option<&Path>,
    command: crate::admin::AuditCommand,
) -> Result<(), AppError> {
    let key = admin_key(key_file, tls, "keyward:audit:read")?;
    runtime()?
        .block_on(crate::admin::audit(target, tls, key.as_deref(), command, &mut |line| println!("{line}")))
        .map_err(AppError::Refused)
}

fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered now, not at the first poll: a signal sent as soon as the address file appears
    // must start a drain, not kill the process.
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
