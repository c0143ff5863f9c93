//! The command line: clap's definition of every command, and the dispatch to the module that
//! runs it (`init`, `app::serve`, `admin`). The benches are the `keyward-bench` crate.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{admin, app, init, server::Serving, telemetry};

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
    /// Serve the gRPC API.
    Serve(ServeArgs),
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
}

impl InstanceArgs {
    pub fn options(self) -> app::Options {
        app::Options::new(self.data_dir, self.config, self.dev)
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
    /// Address to listen on [default: 127.0.0.1:50051, or `listen` in the configuration].
    #[arg(long, env = "KEYWARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Write the bound address to this file once serving (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
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
}

impl ServeArgs {
    fn serving(&self) -> Serving {
        Serving {
            listen: self.listen,
            addr_file: self.addr_file.clone(),
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
            app::serve(&a.common.options(), &serving, cli.log_format)
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
}
