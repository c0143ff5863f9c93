//! The command line: clap's definition of every command, and the dispatch to the module that
//! runs it (`init`, `app::serve`, `admin`). The benches are the `keyward-bench` crate.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{admin, app, config::ListenAddr, init, server::Serving, telemetry};

#[derive(Parser, Debug)]
#[command(name = "keyward", version, about = "Self-hosted API-key service with its master key in a PKCS#11 HSM")]
struct Cli {
    /// Log output format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, value_enum, default_value = "text", env = "KEYWARD_LOG_FORMAT", global = true)]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the master key in the HSM and the database with a root key (printed once).
    Init(InitArgs),
    /// Serve the gRPC API (and, with --http-listen, HTTP forward-auth; with --console-listen,
    /// the web console).
    Serve(Box<ServeArgs>),
    /// The HSM master key of a running server: status, rotate, retire.
    Master(admin::MasterArgs),
    /// The audit trail of a running server: verify the chain, query, export, checkpoint, usage.
    Audit(admin::AuditArgs),
}

/// The instance a command works on: its data directory, configuration file and mode. Also
/// flattened into keyward-bench's offline benches.
#[derive(Args, Debug)]
pub struct InstanceArgs {
    /// Data directory: database, configuration (keyward.toml) and, with --dev, the SoftHSM2 token.
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    data_dir: PathBuf,
    /// Configuration file (default: DATA_DIR/keyward.toml).
    #[arg(long, env = "KEYWARD_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: a SoftHSM2 token inside DATA_DIR, made on first use.
    #[arg(long)]
    dev: bool,
    /// Cluster mode: comma-separated etcd client URLs (http://HOST:PORT,...) [default:
    /// `cluster.etcd`; neither: single-node mode].
    #[arg(long, env = "KEYWARD_ETCD", value_name = "URLS")]
    etcd: Option<String>,
    /// Cluster mode: the prefix of the cluster's keys in etcd [default: `cluster.prefix`, /keyward/].
    #[arg(long, env = "KEYWARD_ETCD_PREFIX", value_name = "P")]
    etcd_prefix: Option<String>,
    /// Cluster mode over TLS: etcd's CA certificate (PEM) [default: `cluster.ca_file`].
    #[arg(long, env = "KEYWARD_ETCD_CA_FILE", value_name = "FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// This node's client certificate for etcd (PEM; with --etcd-key-file) [default: `cluster.cert_file`].
    #[arg(long, env = "KEYWARD_ETCD_CERT_FILE", value_name = "FILE")]
    etcd_cert_file: Option<PathBuf>,
    /// Its private key (PEM) [default: `cluster.key_file`].
    #[arg(long, env = "KEYWARD_ETCD_KEY_FILE", value_name = "FILE")]
    etcd_key_file: Option<PathBuf>,
}

impl InstanceArgs {
    pub fn options(self) -> app::Options {
        let cluster = crate::config::ClusterFlags {
            etcd: self.etcd,
            prefix: self.etcd_prefix,
            node_id: None,
            ca_file: self.etcd_ca_file,
            cert_file: self.etcd_cert_file,
            key_file: self.etcd_key_file,
        };
        app::Options::new(self.data_dir, self.config, self.dev).with_cluster(cluster)
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    common: InstanceArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: InstanceArgs,
    /// gRPC address to listen on, HOST:PORT or unix:/abs/path [default: 127.0.0.1:50051, or
    /// `listen` in the configuration].
    #[arg(long, env = "KEYWARD_LISTEN", value_name = "ADDR")]
    listen: Option<ListenAddr>,
    /// Write the bound address to this file once serving (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve HTTP forward-auth (`/v1/authorize`, for nginx, Caddy, Traefik) on this address,
    /// HOST:PORT or unix:/abs/path [default: `http_listen` in the configuration; off when
    /// neither is set].
    #[arg(long, env = "KEYWARD_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<ListenAddr>,
    /// Write the bound forward-auth address to this file (written before `--addr-file`).
    #[arg(long)]
    http_addr_file: Option<PathBuf>,
    /// Serve the web console (docs/console.md) on this address, HOST:PORT or unix:/abs/path
    /// [default: `console.listen` in the configuration; off when neither is set]. Plaintext
    /// only on loopback unless TLS is configured or --allow-plaintext is given.
    #[arg(long, env = "KEYWARD_CONSOLE_LISTEN", value_name = "ADDR")]
    console_listen: Option<ListenAddr>,
    /// Write the bound console address to this file (written before `--addr-file`).
    #[arg(long)]
    console_addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics on `GET /metrics` at this address [default: `metrics_listen` in
    /// the configuration; off when neither is set].
    #[arg(long, env = "KEYWARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Write the bound metrics address to this file (written before `--addr-file`).
    #[arg(long)]
    metrics_addr_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain, the server's first [default: `tls.cert`].
    #[arg(long, env = "KEYWARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert` [default: `tls.key`].
    #[arg(long, env = "KEYWARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// mTLS: PEM CA certificates client certificates must chain to [default: `tls.client_ca`].
    #[arg(long, env = "KEYWARD_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC on a non-loopback address (behind a TLS-terminating proxy) [default:
    /// `server.allow_plaintext`].
    #[arg(long, env = "KEYWARD_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Cluster mode: this node's id, 1-64 of A-Z a-z 0-9 . _ - ; its own state is kept in
    /// DATA_DIR/nodes/ID [default: `cluster.node_id`, else the host name]. Needs --etcd.
    #[arg(long, env = "KEYWARD_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
}

impl ServeArgs {
    /// The instance's options with `--node-id`.
    fn options(self) -> app::Options {
        let mut opts = self.common.options();
        opts.cluster.node_id = self.node_id;
        opts
    }

    fn serving(&self) -> Serving {
        Serving {
            listen: self.listen.clone(),
            addr_file: self.addr_file.clone(),
            http_listen: self.http_listen.clone(),
            http_addr_file: self.http_addr_file.clone(),
            console_listen: self.console_listen.clone(),
            console_addr_file: self.console_addr_file.clone(),
            metrics_listen: self.metrics_listen,
            metrics_addr_file: self.metrics_addr_file.clone(),
            tls: crate::config::TlsFlags {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                client_ca: self.client_ca.clone(),
            },
            allow_plaintext: self.allow_plaintext,
        }
    }
}

pub fn run() -> ExitCode {
    run_from(std::env::args_os())
}

/// Runs the command line `args` (the program name first), as [`run`] does the process's own.
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    // `serve` sets up logging itself, inside its runtime, where the trace exporter lives.
    if !matches!(cli.command, Command::Serve(_)) {
        telemetry::init(cli.log_format);
    }
    let result = match cli.command {
        Command::Init(a) => init::init(&a.common.options()),
        Command::Serve(a) => {
            let serving = a.serving();
            app::serve(&a.options(), &serving, cli.log_format)
        }
        Command::Master(a) => admin::run_master(a),
        Command::Audit(a) => admin::run_audit(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyward stopped");
            eprintln!("keyward: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_commands_parse_their_subcommand_server_and_credential() {
        let cli = Cli::try_parse_from([
            "keyward",
            "master",
            "rotate",
            "--wait",
            "--target",
            "h:1",
            "--ca-cert",
            "ca.pem",
            "--client-cert",
            "c.pem",
            "--client-key",
            "c.key",
        ])
        .unwrap();
        let Command::Master(m) = cli.command else { panic!("master expected") };
        assert!(matches!(m.command, admin::MasterCommand::Rotate { wait: true }));
        assert_eq!((m.target.as_str(), m.key_file), ("h:1", None));
        assert_eq!(
            (m.tls.ca, m.tls.cert, m.tls.key),
            (Some("ca.pem".into()), Some("c.pem".into()), Some("c.key".into()))
        );

        let cli =
            Cli::try_parse_from(["keyward", "audit", "--key-file", "k", "query", "--code", "UNAUTHENTICATED"]).unwrap();
        let Command::Audit(a) = cli.command else { panic!("audit expected") };
        let admin::AuditCommand::Query { code, limit, .. } = a.command else { panic!("query expected") };
        assert_eq!((code.as_str(), limit, a.key_file), ("UNAUTHENTICATED", 100, Some("k".into())));
        assert_eq!(a.target, "127.0.0.1:50051");
        assert!(Cli::try_parse_from(["keyward", "master", "retire"]).is_err(), "retire needs a version");
    }

    #[test]
    fn cluster_flags_reach_the_options_of_serve_and_init() {
        let cli = Cli::try_parse_from([
            "keyward",
            "serve",
            "--data-dir",
            "/d",
            "--etcd",
            "http://127.0.0.1:2379,http://127.0.0.1:22379",
            "--etcd-prefix",
            "/kw/",
            "--node-id",
            "n1",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else { panic!("serve expected") };
        let opts = a.options();
        let flags = crate::config::ClusterFlags {
            etcd: Some("http://127.0.0.1:2379,http://127.0.0.1:22379".into()),
            prefix: Some("/kw/".into()),
            node_id: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(opts.cluster, flags);
        assert_eq!(opts.node_db_path("n1"), PathBuf::from("/d/nodes/n1/db"));

        let cli =
            Cli::try_parse_from(["keyward", "init", "--dev", "--data-dir", "/d", "--etcd", "http://h:1"]).unwrap();
        let Command::Init(a) = cli.command else { panic!("init expected") };
        assert_eq!(a.common.options().cluster.etcd.as_deref(), Some("http://h:1"));
        assert!(
            Cli::try_parse_from(["keyward", "init", "--data-dir", "/d", "--node-id", "n1"]).is_err(),
            "--node-id is serve's alone"
        );
    }

    #[test]
    fn cluster_flags_read_their_environment_variables() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let env_of = |command: &str, flag: &str| {
            let sub = cli.find_subcommand(command).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_long() == Some(flag)).unwrap();
            arg.get_env().map(|e| e.to_string_lossy().into_owned())
        };
        for command in ["init", "serve"] {
            assert_eq!(env_of(command, "etcd").as_deref(), Some("KEYWARD_ETCD"), "{command}");
            assert_eq!(env_of(command, "etcd-prefix").as_deref(), Some("KEYWARD_ETCD_PREFIX"), "{command}");
        }
        assert_eq!(env_of("serve", "node-id").as_deref(), Some("KEYWARD_NODE_ID"));
    }
}
