//! The server as one unit: `Server::build` opens the HSM and the database, checks them, builds
//! the domain and binds the listeners; `Server::spawn` starts the gRPC server, the HTTP
//! forward-auth listener and the web console when asked for, and every background task in one `JoinSet` under one `CancellationToken`; `ServerHandle::drain` ends
//! them, writes what is still in memory and closes the adapters.

mod dev_clock;
mod tasks;
mod transport;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, signal::unix::Signal, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{AppError, Options, io, pkcs11_config},
    cluster::{ClusterStore, NodeSettings},
    config::ClusterSettings,
    config::{self, Config, DEV_TOKEN_LABEL, ListenAddr, ServerLimits},
    console::{Console, ConsoleSettings},
    domain::{Services, ServicesConfig, key::MasterKeyVersion, ports::Store, proof::self_test_input},
    grpc,
    hsm::{self, Pkcs11Hsm},
    http::{ForwardAuth, HttpLimits},
    listener::Listener,
    store::{Engine, SledStore, StoreLimits},
    tls::{Identities, TlsReloader},
};

/// The domain services the gRPC APIs and the background tasks share.
pub type Domain = Services<Pkcs11Hsm, Engine>;

/// How often the free space on the database's file system is measured.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Where `serve` listens and reports its addresses; `None` falls back to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Serving {
    pub listen: Option<ListenAddr>,
    pub addr_file: Option<PathBuf>,
    /// `--http-listen`: the HTTP forward-auth listener (over `http_listen`); off when neither.
    pub http_listen: Option<ListenAddr>,
    pub http_addr_file: Option<PathBuf>,
    /// `--console-listen`: the web console (over `console.listen`); off when neither.
    pub console_listen: Option<ListenAddr>,
    pub console_addr_file: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_addr_file: Option<PathBuf>,
    /// `--tls-cert`, `--tls-key`, `--client-ca`, over `[tls]`.
    pub tls: config::TlsFlags,
    /// `--allow-plaintext`: plaintext on a non-loopback address (or `server.allow_plaintext`).
    pub allow_plaintext: bool,
}

/// A server ready to serve: adapters open and checked, domain built, listeners bound.
pub struct Server {
    hsm: Pkcs11Hsm,
    store: Engine,
    services: Domain,
    listener: Listener,
    local_addr: ListenAddr,
    metrics: Option<(TcpListener, SocketAddr)>,
    transport: grpc::Transport,
    /// The HTTP forward-auth listener, its bound address and its TLS.
    http: Option<(Listener, ListenAddr, Option<Arc<TlsReloader>>)>,
    /// The web console's listener, its bound address, its TLS and its settings.
    console: Option<(Listener, ListenAddr, Option<Arc<TlsReloader>>, ConsoleSettings)>,
    /// The TLS configuration SIGHUP reloads, if TLS is configured.
    tls: Option<Arc<TlsReloader>>,
    identities: Arc<Identities>,
    authz: Arc<crate::gateway::Rules>,
    hangup: Signal,
    limits: ServerLimits,
    usage_flush: Duration,
    sweep_every: Option<Duration>,
}

impl Server {
    /// Opens the HSM and the database of `opts`, checks the master keys (or, with the HSM
    /// unreachable, leaves that to the first connection), builds the domain, runs the
    /// self-test, and binds the gRPC and metrics listeners.
    pub async fn build(opts: &Options, config: Config, serving: &Serving) -> Result<Self, AppError> {
        if config.hsm.token_label == DEV_TOKEN_LABEL && !opts.dev {
            return Err(AppError::Refused(format!(
                "{} uses the development token {DEV_TOKEN_LABEL:?}; serve it with --dev",
                opts.data_dir.display()
            )));
        }
        let listen = serving
            .listen
            .clone()
            .or_else(|| config.listen.clone())
            .unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("the default address is valid"));
        let (tls, identities) = transport::choose(serving, &config)?;
        let transport = match transport::for_listener(&tls, &listen, serving, &config, "gRPC")? {
            Some(tls) => grpc::Transport::Tls(tls),
            None => grpc::Transport::Plain,
        };
        let http_listen = serving.http_listen.clone().or_else(|| config.http_listen.clone());
        let http_tls = match &http_listen {
            Some(addr) => transport::for_listener(&tls, addr, serving, &config, "HTTP forward-auth")?,
            None => None,
        };
        let console_listen = serving.console_listen.clone().or_else(|| config.console.listen.clone());
        let console_tls = match &console_listen {
            Some(addr) => {
                config.console.check()?;
                transport::for_listener(&tls, addr, serving, &config, "web console")?
            }
            None => None,
        };
        let authz = Arc::new(crate::gateway::Rules::new(&config.authz)?);
        let cluster = opts.cluster_settings(&config)?;
        let db = match &cluster {
            None => opts.db_path(),
            Some(c) => opts.node_db_path(&c.node_id),
        };
        if cluster.is_none() && !db.exists() {
            return Err(AppError::Refused(format!("no database at {}: run `keyward init` first", db.display())));
        }
        let (hsm, unreachable) = Pkcs11Hsm::open_serving(pkcs11_config(&config)?)?;
        if unreachable.is_none() {
            hsm.ensure_token_keys()?;
        }
        let limits =
            StoreLimits { min_free_bytes: config.store.min_free_bytes, write_timeout: config.store.write_timeout };
        let store = open_store(&db, &hsm, limits, cluster.as_ref()).await?;
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
                self_test_input: self_test_input(),
            });
        } else {
            for version in master.live() {
                hsm.require_master_key(version.version)?;
            }
            for retired in retired.into_iter().filter(|v| hsm.require_master_key(*v).is_ok()) {
                tracing::warn!(version = %retired, "a retired master key is still on the token; run `keyward master retire` for it again to destroy it");
            }
            for version in master.live_wrap_keys() {
                hsm.require_wrap_key(version)?;
            }
            for retired in master.wrap_keys.iter().filter(|w| w.retired_at.is_some()) {
                if hsm.require_wrap_key(retired.version).is_ok() {
                    tracing::warn!(version = %retired.version, "a retired signing secret wrapping key is still on the token; run `keyward master retire` for its master key version again to destroy it");
                }
            }
        }
        let services_config = ServicesConfig {
            auth_cache_capacity: config.server.auth_cache_capacity,
            auth_cache_ttl: Duration::from_millis(config.server.auth_cache_ttl_ms),
            rate_limiter_capacity: config.policy.rate_limiter_capacity,
            quota_max_lease: config.policy.quota_max_lease,
            rotation: config.rotation.domain(),
            migration: config.master.domain(),
            usage_log: config.usage_log.domain(),
            brute_force: config.brute_force.domain()?,
            anomaly: config.anomaly.domain()?,
            signing: config.signing.domain()?,
        };
        let clock = dev_clock::clock(opts.dev)?;
        let services = Services::new(Arc::new(hsm.clone()), Arc::new(store.clone()), clock, master, services_config);
        if unreachable.is_none() {
            services.master.self_test().await?;
        }
        if let Some(anomaly) = &services.anomaly {
            let started = std::time::Instant::now();
            match anomaly.rebuild() {
                Ok(records) => {
                    tracing::info!(records, elapsed = ?started.elapsed(), "anomaly baselines rebuilt from the usage log")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rebuilding the anomaly baselines from the usage log failed; they start empty")
                }
            }
        }
        // Registered before the address is announced: SIGHUP's default action would end the
        // process. It reloads the TLS files; without TLS it does nothing.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(io("listening for SIGHUP"))?;
        let metrics = match serving.metrics_listen.or(config.metrics_listen) {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(io(format!("listening for metrics on {addr}")))?;
                let local = listener.local_addr().map_err(io("reading the bound metrics address"))?;
                Some((listener, local))
            }
        };
        let http = match http_listen {
            None => None,
            Some(addr) => {
                let listener =
                    Listener::bind(&addr).await.map_err(io(format!("listening for HTTP forward-auth on {addr}")))?;
                let local = listener.local_addr().map_err(io("reading the bound forward-auth address"))?;
                Some((listener, local, http_tls))
            }
        };
        let console = match console_listen {
            None => None,
            Some(addr) => {
                let listener =
                    Listener::bind(&addr).await.map_err(io(format!("listening for the web console on {addr}")))?;
                let local = listener.local_addr().map_err(io("reading the bound console address"))?;
                let settings = ConsoleSettings {
                    idle_timeout: config.console.idle_timeout,
                    max_sessions: config.console.max_sessions,
                    page_size: config.console.page_size,
                    request_timeout: config.server.limits().request_timeout,
                    rotation: config.rotation.domain().rules,
                };
                Some((listener, local, console_tls, settings))
            }
        };
        let listener = Listener::bind(&listen).await.map_err(io(format!("listening on {listen}")))?;
        let local_addr = listener.local_addr().map_err(io("reading the bound address"))?;
        Ok(Self {
            hsm,
            store,
            services,
            listener,
            local_addr,
            metrics,
            transport,
            http,
            console,
            tls,
            identities,
            authz,
            hangup,
            limits: config.server.limits(),
            usage_flush: Duration::from_millis(config.policy.usage_flush_ms),
            sweep_every: config.rotation.sweep_interval,
        })
    }

    /// The address the gRPC listener is bound to.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The address the HTTP forward-auth listener is bound to, if it is on.
    pub fn http_addr(&self) -> Option<&ListenAddr> {
        self.http.as_ref().map(|(_, addr, _)| addr)
    }

    /// The address the web console is bound to, if it is on.
    pub fn console_addr(&self) -> Option<&ListenAddr> {
        self.console.as_ref().map(|(_, addr, _, _)| addr)
    }

    /// The address the metrics endpoint is bound to, if it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    /// Starts serving gRPC (and metrics) and the background tasks.
    pub fn spawn(self) -> ServerHandle {
        let Self {
            hsm,
            store,
            services,
            listener,
            local_addr,
            metrics,
            transport,
            http,
            console,
            tls,
            identities,
            authz,
            hangup,
            limits,
            usage_flush,
            sweep_every,
        } = self;
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut background = |task: tasks::Task| {
            let cancel = cancel.clone();
            tasks.spawn(async move {
                cancel.run_until_cancelled(task).await;
                Ok(())
            });
        };
        background(Box::pin(tasks::flush_usage_every(services.clone(), usage_flush)));
        background(Box::pin(tasks::write_usage_log(services.verify.clone())));
        if let Some(anomaly) = &services.anomaly {
            background(Box::pin(tasks::detect_anomalies_every(anomaly.clone())));
        }
        if let Some(local) = store.local() {
            background(Box::pin(local.clone().watch_disk(DISK_CHECK_INTERVAL)));
        }
        if let Some(cluster) = store.cluster() {
            background(Box::pin(cluster.clone().follow(local_addr.to_string(), cancel.child_token())));
            let updates = cluster.master_updates();
            background(Box::pin(tasks::follow_master(services.clone(), hsm.clone(), updates)));
        }
        background(Box::pin(tasks::run_migrations(services.master.clone())));
        if let Some(every) = sweep_every {
            background(Box::pin(tasks::sweep_every_interval(services.keys.clone(), every, store.clone())));
        }
        background(Box::pin(crate::tls::watch(tls.clone(), hangup)));
        if let Some((listener, addr)) = metrics {
            tracing::info!(address = %addr, "serving metrics on /metrics");
            background(Box::pin(crate::metrics::serve(listener)));
            background(Box::pin(crate::metrics::count_keys_every(store.clone(), crate::metrics::KEY_COUNT_INTERVAL)));
        }
        if let Some((listener, addr, http_tls)) = http {
            tracing::info!(address = %addr, transport = transport::describe(http_tls.as_deref()), "serving HTTP forward-auth on /v1/authorize");
            let api = ForwardAuth::new(
                services.auth.clone(),
                crate::gateway::Gatekeeper::new(services.verify.clone(), authz.clone()),
                identities.clone(),
            );
            let http_limits = HttpLimits {
                request_timeout: limits.request_timeout,
                max_header_bytes: limits.max_header_list_bytes as usize,
                shutdown_grace: limits.shutdown_grace,
                max_in_flight: limits.max_in_flight,
            };
            let stop = cancel.clone();
            tasks.spawn(async move {
                crate::http::serve(listener, http_tls, api, http_limits, stop.cancelled_owned()).await;
                Ok(())
            });
        }
        if let Some((listener, addr, console_tls, settings)) = console {
            tracing::info!(address = %addr, transport = transport::describe(console_tls.as_deref()), "serving the web console");
            let console = Console::new(services.clone(), settings, console_tls.is_some());
            let stop = cancel.clone();
            tasks.spawn(async move {
                crate::console::serve(listener, console_tls, console, stop.cancelled_owned()).await;
                Ok(())
            });
        }
        let grpc_tls = match &transport {
            grpc::Transport::Tls(tls) => Some(tls.as_ref()),
            grpc::Transport::Plain => None,
        };
        tracing::info!(address = %local_addr, transport = transport::describe(grpc_tls), "keyward serving");
        let grpc_services = services.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            // However the gRPC server ends, everything else ends with it.
            let _stop_all = stop.clone().drop_guard();
            grpc::serve(grpc_services, listener, transport, identities, authz, limits, stop.cancelled_owned())
                .await
                .map_err(|e| AppError::Refused(format!("server error: {e}")))
        });
        ServerHandle { cancel, tasks, services, store, hsm }
    }
}

/// Opens the store `cluster` says: the sled database at `db`, or (cluster mode) the node's local
/// database at `db` and its connection to etcd, with the cluster's state loaded.
async fn open_store(
    db: &std::path::Path,
    hsm: &Pkcs11Hsm,
    limits: StoreLimits,
    cluster: Option<&ClusterSettings>,
) -> Result<Engine, AppError> {
    let sealer = Arc::new(hsm.clone());
    let Some(cluster) = cluster else {
        return Ok(Engine::Single(SledStore::open_with_limits(db, sealer, limits)?));
    };
    if let Some(parent) = db.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating the node directory {}", parent.display())))?;
    }
    let local = SledStore::open_with_limits(db, sealer.clone(), limits)?;
    let store = ClusterStore::connect(node_settings(cluster), local, sealer).await?;
    tracing::info!(node = %cluster.node_id, etcd = %cluster.endpoints.join(","), prefix = %cluster.prefix, "cluster mode: state loaded from etcd");
    Ok(Engine::Cluster(store))
}

/// The adapter's settings from the configuration's.
pub fn node_settings(c: &ClusterSettings) -> NodeSettings {
    NodeSettings {
        endpoints: c.endpoints.clone(),
        prefix: c.prefix.clone(),
        node_id: c.node_id.clone(),
        heartbeat: c.heartbeat,
        max_staleness: c.max_staleness,
        request_timeout: c.request_timeout,
        audit_keep_events: c.audit_keep_events,
        tls: c.tls.clone(),
        auth: c.auth.clone(),
    }
}

/// A running server: wait for it to stop by itself with `stopped`, end it with `drain`.
pub struct ServerHandle {
    cancel: CancellationToken,
    tasks: JoinSet<Result<(), AppError>>,
    services: Domain,
    store: Engine,
    hsm: Pkcs11Hsm,
}

impl ServerHandle {
    /// Resolves once the server is stopping: `drain` was asked for, or the gRPC server ended
    /// by itself (an error).
    pub async fn stopped(&self) {
        self.cancel.cancelled().await
    }

    /// Stops accepting connections, lets in-flight calls finish (for up to the configured
    /// `server.shutdown_grace_ms`), ends the background tasks, aborts whatever still runs after
    /// `deadline`, then returns quota leases and writes the usage and refused calls still in
    /// memory, and closes the database and the HSM. Returns the gRPC server's error, if any.
    pub async fn drain(mut self, deadline: Duration) -> Result<(), AppError> {
        self.cancel.cancel();
        let until = tokio::time::Instant::now() + deadline;
        let mut result = Ok(());
        loop {
            match tokio::time::timeout_at(until, self.tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok(Ok(())))) => {}
                Ok(Some(Ok(Err(e)))) => result = Err(e),
                Ok(Some(Err(e))) if e.is_panic() => tracing::error!(error = %e, "a server task panicked"),
                Ok(Some(Err(_))) => {}
                Err(_) => {
                    tracing::warn!(
                        left = self.tasks.len(),
                        ?deadline,
                        "drain deadline passed; aborting what still runs"
                    );
                    self.tasks.shutdown().await;
                    break;
                }
            }
        }
        if let Err(e) = self.services.verify.shutdown().await {
            tracing::error!(error = %e, "returning quota leases and writing usage at shutdown failed");
        }
        if let Err(e) = self.services.auth.flush_auth_failures().await {
            tracing::error!(error = %e, "auditing refused calls at shutdown failed");
        }
        match self.services.verify.flush_usage_log().await {
            Ok(w) => tasks::report_usage_write(&w),
            Err(e) => tracing::error!(error = %e, "writing the usage log at shutdown failed"),
        }
        self.store.close();
        self.hsm.close();
        result
    }
}
