//! `keyward init`: with `--dev`, a SoftHSM2 token inside the data directory and the
//! configuration that names it; then master key v1 in the token, the database and the root key.
//!
//! An interrupted `init` never blocks the next one. The database is made in `db.partial/` and
//! renamed into place last; a master key found on the token next to a `db.partial/` is one the
//! interrupted run made, and is adopted (once checked to be one keyward would have made). With
//! `--dev` the whole instance is made under the marker file `.init-incomplete`: while it
//! exists, whatever `init` made here is left from an interrupted run and is made again.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    app::{AppError, Options, absolute, io, pkcs11_config, runtime, set_environment},
    cluster::ClusterStore,
    config::{ClusterSettings, Config, DEV_TOKEN_LABEL},
    domain::{
        bootstrap::bootstrap,
        clock::SystemClock,
        key::MasterKeyVersion,
        secret::{KeyString, Pin},
    },
    hsm::{self, Pkcs11Hsm},
    server::node_settings,
    store::SledStore,
};

/// The first master key version.
pub const FIRST_VERSION: MasterKeyVersion = MasterKeyVersion(1);

/// `--dev`: present while `init` makes the instance; removed when it is complete.
const DEV_INIT_MARKER: &str = ".init-incomplete";
/// The database while `init` makes it (the sled directory `db` inside).
const PARTIAL_DB: &str = "db.partial";
/// Cluster mode: present from before the master key is made until the cluster's state is in
/// etcd (a master key found next to it was made by the interrupted run).
const PARTIAL_CLUSTER: &str = "cluster-init.partial";

/// `keyward init`: prints the root key once on stdout.
pub fn init(opts: &Options) -> Result<(), AppError> {
    let config = if opts.dev { None } else { Some(Config::load(&opts.config, false)?) };
    set_environment(opts, config.as_ref())?;
    let root_key = runtime()?.block_on(async {
        if let Some(cluster) = opts.cluster_settings(config.as_ref().unwrap_or(&Config::default()))? {
            refuse_existing_cluster(&cluster).await?;
        }
        match &config {
            None => init_dev(opts).await,
            Some(config) => provision(opts, config).await,
        }
    })?;
    println!("{}", root_key.expose());
    Ok(())
}

/// Whether `serve --dev` has to make the instance first: never made, or interrupted.
pub(crate) fn dev_needs_init(opts: &Options) -> bool {
    !opts.config.exists() || opts.data_dir.join(DEV_INIT_MARKER).exists()
}

/// `--dev`: the SoftHSM2 configuration of the data directory's token, rewritten when it does not
/// name the token directory where it now is (the data directory was moved). SoftHSM2 reads
/// `directories.tokendir` relative to the working directory, so the file holds an absolute path:
/// it is derived from the data directory, never the other way round.
pub(crate) fn dev_softhsm_conf(opts: &Options) -> Result<PathBuf, AppError> {
    let softhsm = absolute(&opts.softhsm_dir())?;
    let conf = softhsm.join("softhsm2.conf");
    let tokens = softhsm.join("tokens");
    if tokens.is_dir() {
        let text =
            include_str!("../softhsm/softhsm2.conf.template").replace("@TOKENDIR@", &tokens.display().to_string());
        if fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
            replace_private_file(&conf, text.as_bytes())?;
        }
    }
    Ok(conf)
}

/// Makes a development token inside the data directory, its configuration, and then the
/// master key, database and root key (also written to `DATA_DIR/root.key`, mode 0600).
pub(crate) async fn init_dev(opts: &Options) -> Result<KeyString, AppError> {
    let marker = opts.data_dir.join(DEV_INIT_MARKER);
    if marker.exists() {
        tracing::warn!(data_dir = %opts.data_dir.display(), "an earlier `keyward init` was interrupted here; making the instance again");
        remove_dev_leftovers(opts)?;
    } else if opts.config.exists() || opts.db_path().exists() {
        return Err(AppError::Refused(format!(
            "{} is already initialized; init refuses to overwrite it",
            opts.data_dir.display()
        )));
    }
    private_dir(&opts.data_dir)?;
    replace_private_file(
        &marker,
        b"keyward init has not finished here; the next init or serve --dev starts it again\n",
    )?;
    let softhsm = absolute(&opts.softhsm_dir())?;
    private_dir(&softhsm.join("tokens"))?;
    let conf_path = dev_softhsm_conf(opts)?;
    let (user_pin, so_pin) = (random_pin(), random_pin());
    let pin_file = softhsm.join("user.pin");
    private_file(&pin_file, format!("{}\n", user_pin.expose()).as_bytes())?;
    private_file(&softhsm.join("so.pin"), format!("{}\n", so_pin.expose()).as_bytes())?;

    let mut config = Config::default();
    if let Some(cluster) = opts.cluster_settings(&config)? {
        // Nodes started on this data directory join this cluster without repeating it.
        config.cluster.etcd = cluster.endpoints;
        config.cluster.prefix = cluster.prefix;
        if let Some((ca, identity)) = cluster.tls {
            config.cluster.ca_file = Some(absolute(&ca)?);
            if let Some((cert, key)) = identity {
                config.cluster.cert_file = Some(absolute(&cert)?);
                config.cluster.key_file = Some(absolute(&key)?);
            }
        }
    }
    config.hsm.module = Some(config.module_path()?);
    config.hsm.token_label = DEV_TOKEN_LABEL.into();
    // Relative to the configuration's directory when inside it, so the data directory can move.
    let config_dir = absolute(opts.config.parent().unwrap_or(Path::new("")))?;
    let near =
        |path: &Path| path.strip_prefix(&config_dir).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf());
    config.hsm.pin_file = Some(near(&pin_file));
    config.hsm.softhsm2_conf = Some(near(&conf_path));
    let text = toml::to_string_pretty(&config).map_err(|e| AppError::Refused(format!("encoding keyward.toml: {e}")))?;
    private_file(
        &opts.config,
        format!("# keyward development instance, written by `keyward init --dev`\n{text}").as_bytes(),
    )?;
    config.hsm.pin_file = Some(pin_file);

    let mut pkcs11 = pkcs11_config(&config)?;
    pkcs11.pin = user_pin;
    hsm::init_dev_token(&pkcs11, &so_pin)?;
    let root = provision(opts, &config).await?;
    private_file(&opts.root_key_path(), format!("{}\n", root.expose()).as_bytes())?;
    fs::remove_file(&marker).map_err(io(format!("removing {}", marker.display())))?;
    sync_dir(&opts.data_dir)?;
    tracing::info!(data_dir = %opts.data_dir.display(), "development instance initialized; root key in root.key");
    Ok(root)
}

/// What an interrupted `init --dev` may have made: the token, the database (whole or partial),
/// the root key and the configuration.
fn remove_dev_leftovers(opts: &Options) -> Result<(), AppError> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    for dir in [opts.softhsm_dir(), opts.db_path(), opts.data_dir.join(PARTIAL_DB)] {
        gone(fs::remove_dir_all(&dir)).map_err(io(format!("removing {}", dir.display())))?;
    }
    for file in [opts.root_key_path(), opts.config.clone()] {
        gone(fs::remove_file(&file)).map_err(io(format!("removing {}", file.display())))?;
    }
    Ok(())
}

/// Cluster mode: refuses a prefix that already holds a cluster, before anything is made.
async fn refuse_existing_cluster(cluster: &ClusterSettings) -> Result<(), AppError> {
    if ClusterStore::holds_cluster(&node_settings(cluster)).await? {
        return Err(already_a_cluster(cluster));
    }
    Ok(())
}

fn already_a_cluster(cluster: &ClusterSettings) -> AppError {
    AppError::Refused(format!(
        "etcd prefix {:?} already holds a keyward cluster; init refuses to overwrite it (start nodes with \
         `keyward serve --etcd …`, or choose another --etcd-prefix)",
        cluster.prefix
    ))
}

/// Creates master key v1 in the token (or adopts the one an interrupted `init` left) and a new
/// database with the root key; in cluster mode the cluster's state goes into etcd instead.
async fn provision(opts: &Options, config: &Config) -> Result<KeyString, AppError> {
    if let Some(cluster) = opts.cluster_settings(config)? {
        return provision_cluster(opts, config, &cluster).await;
    }
    let db = opts.db_path();
    if db.exists() {
        return Err(AppError::Refused(format!(
            "a database already exists at {}; init refuses to overwrite it",
            db.display()
        )));
    }
    let pkcs11 = pkcs11_config(config)?;
    let partial = opts.data_dir.join(PARTIAL_DB);
    let resuming = partial.exists();
    let partial_db = partial.join("db");
    if resuming {
        tracing::warn!(path = %partial.display(), "an earlier `keyward init` was interrupted; making its database again");
        match fs::remove_dir_all(&partial_db) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", partial_db.display()))(e));
            }
            _ => {}
        }
    } else {
        // Made before the master key: it tells the next `init` that a master key it finds was
        // made by this one.
        private_dir(&partial)?;
        sync_dir(&opts.data_dir)?;
    }
    if let Err(e) = hsm::create_master_key(&pkcs11, FIRST_VERSION, resuming) {
        if !resuming {
            // Nothing was made: the next `init` must not take a key it finds for its own.
            let _ = fs::remove_dir(&partial);
        }
        return Err(e.into());
    }
    let hsm = Pkcs11Hsm::open(pkcs11)?;
    hsm.require_master_key(FIRST_VERSION)?;
    private_dir(&partial_db)?;
    let store = SledStore::open(&partial_db, Arc::new(hsm.clone()))?;
    let created = bootstrap(&hsm, &store, &SystemClock, FIRST_VERSION).await;
    store.close();
    hsm.close();
    let created = created?;
    fs::rename(&partial_db, &db).map_err(io(format!("moving the new database to {}", db.display())))?;
    sync_dir(&opts.data_dir)?;
    fs::remove_dir(&partial).map_err(io(format!("removing {}", partial.display())))?;
    tracing::info!(root_key_id = %created.record.id, "master key {FIRST_VERSION} and root key created");
    Ok(created.key)
}

/// Cluster mode: master key v1 in the token (adopted when an interrupted `init` left it), then
/// the master state, the root key and the audit chain's first event in etcd, in one transaction.
async fn provision_cluster(opts: &Options, config: &Config, cluster: &ClusterSettings) -> Result<KeyString, AppError> {
    let pkcs11 = pkcs11_config(config)?;
    let partial = opts.data_dir.join(PARTIAL_CLUSTER);
    let resuming = partial.exists();
    if !resuming {
        private_dir(&partial)?;
        sync_dir(&opts.data_dir)?;
    }
    if let Err(e) = hsm::create_master_key(&pkcs11, FIRST_VERSION, resuming) {
        if !resuming {
            let _ = fs::remove_dir(&partial);
        }
        return Err(e.into());
    }
    let hsm = Pkcs11Hsm::open(pkcs11)?;
    hsm.require_master_key(FIRST_VERSION)?;
    hsm.ensure_token_keys()?;
    let store = ClusterStore::connect_for_init(node_settings(cluster), Arc::new(hsm.clone())).await?;
    let created = bootstrap(&hsm, &store, &SystemClock, FIRST_VERSION).await;
    hsm.close();
    let created = created.map_err(|e| match e {
        crate::domain::error::Error::AlreadyExists(_) => already_a_cluster(cluster),
        other => other.into(),
    })?;
    fs::remove_dir(&partial).map_err(io(format!("removing {}", partial.display())))?;
    tracing::info!(root_key_id = %created.record.id, prefix = %cluster.prefix, "master key {FIRST_VERSION}, root key and cluster state created in etcd");
    Ok(created.key)
}

fn random_pin() -> Pin {
    let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
    getrandom::fill(bytes.as_mut()).expect("the OS random number generator works");
    Pin::new(bytes.iter().map(|b| format!("{b:02x}")).collect())
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

/// Writes a file readable by its owner only, atomically replacing any older one.
fn replace_private_file(path: &Path, contents: &[u8]) -> Result<(), AppError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    private_file(&tmp, contents)?;
    fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

/// Makes the directory's entries (a rename, a new or removed file) durable.
fn sync_dir(path: &Path) -> Result<(), AppError> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", path.display())))
}
