//! The command line: `keyward init` and `keyward serve`.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{app, telemetry};

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
    Master(MasterArgs),
    /// The audit trail of a running server: verify the chain, query, export, checkpoint, usage.
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
struct AuditArgs {
    #[command(subcommand)]
    command: AuditSub,
    /// Server address.
    #[arg(long, global = true, default_value = "127.0.0.1:50051", env = "KEYWARD_TARGET")]
    target: String,
    /// File whose first line is a key holding `keyward:audit:read`, e.g. DATA_DIR/root.key.
    #[arg(long, global = true, env = "KEYWARD_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// TLS for the admin commands.
#[derive(Args, Debug)]
struct ClientTlsArgs {
    /// Connect with TLS, trusting this PEM CA for the server's certificate (the --target host
    /// must be a name or address in it).
    #[arg(long, global = true, env = "KEYWARD_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// mTLS: present this PEM client certificate; mapped to a key in [tls.identities], it
    /// stands in for --key-file.
    #[arg(long, global = true, env = "KEYWARD_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, global = true, env = "KEYWARD_CLIENT_KEY")]
    client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn into_tls(self) -> crate::admin::ClientTls {
        crate::admin::ClientTls { ca: self.ca_cert, cert: self.client_cert, key: self.client_key }
    }
}

#[derive(Subcommand, Debug)]
enum AuditSub {
    /// Check every event's MAC in the HSM; exits 1 and names the first broken event if any.
    Verify {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Events as JSON lines, newest first.
    Query {
        /// Only this key's events.
        #[arg(long, default_value = "")]
        key_id: String,
        /// Only this action, e.g. `key.revoked`, `auth.failed`.
        #[arg(long, default_value = "")]
        action: String,
        /// Only events with this status code, e.g. `UNAUTHENTICATED`.
        #[arg(long, default_value = "")]
        code: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One key's verifications counted by code and by client address, as JSON.
    Usage {
        #[arg(long)]
        key_id: String,
        /// RFC 3339 time, or a duration meaning that long ago (`1h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Exclusive; RFC 3339 time, or a duration meaning that long ago.
        #[arg(long)]
        until: Option<String>,
    },
    /// Usage-log records (one per verification) as JSON lines, newest first.
    UsageLog {
        #[arg(long, default_value = "")]
        key_id: String,
        /// Only this verify code, e.g. `INVALID`, `RATE_LIMITED`.
        #[arg(long, default_value = "")]
        code: String,
        /// RFC 3339 time, or a duration meaning that long ago (`1h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Every event in a range as JSON lines, oldest first, with its chain MAC.
    Export {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// The chain's head (sequence number and MAC), as JSON: keep it outside keyward.
    Checkpoint,
}

#[derive(Args, Debug)]
struct MasterArgs {
    #[command(subcommand)]
    command: MasterSub,
    /// Server address.
    #[arg(long, global = true, default_value = "127.0.0.1:50051", env = "KEYWARD_TARGET")]
    target: String,
    /// File whose first line is a key holding `keyward:master:rotate` (or `:read` for status),
    /// e.g. DATA_DIR/root.key.
    #[arg(long, global = true, env = "KEYWARD_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

#[derive(Subcommand, Debug)]
enum MasterSub {
    /// Versions, the keys that need each, and the re-digest under way.
    Status,
    /// Create version N+1 in the HSM and make it current; keys move to it in the background.
    Rotate {
        /// Wait until every key verifies under the new version.
        #[arg(long)]
        wait: bool,
    },
    /// Destroy a version in the HSM once no live key needs it.
    Retire {
        /// The version number (as `status` shows it, without the `v`).
        version: u32,
    },
}

#[derive(Args, Debug)]
struct Common {
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

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
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
        Command::Init(a) => app::init(&app::Options::new(a.common.data_dir, a.common.config, a.common.dev)),
        Command::Serve(a) => {
            let opts = app::Options::new(a.common.data_dir, a.common.config, a.common.dev);
            let serving = app::Serving {
                listen: a.listen,
                addr_file: a.addr_file,
                metrics_listen: a.metrics_listen,
                metrics_addr_file: a.metrics_addr_file,
                tls: crate::config::TlsFlags { cert: a.tls_cert, key: a.tls_key, client_ca: a.client_ca },
                allow_plaintext: a.allow_plaintext,
            };
            app::serve(&opts, &serving, cli.log_format)
        }
        Command::Master(a) => {
            let command = match a.command {
                MasterSub::Status => crate::admin::MasterCommand::Status,
                MasterSub::Rotate { wait } => crate::admin::MasterCommand::Rotate { wait },
                MasterSub::Retire { version } => crate::admin::MasterCommand::Retire { version },
            };
            app::master(&a.target, &a.tls.into_tls(), a.key_file.as_deref(), command)
        }
        Command::Audit(a) => {
            use crate::admin::AuditCommand;
            let command = match a.command {
                AuditSub::Verify { from, to } => AuditCommand::Verify { from, to },
                AuditSub::Query { key_id, action, code, limit } => AuditCommand::Query { key_id, action, code, limit },
                AuditSub::Usage { key_id, since, until } => AuditCommand::Usage { key_id, since, until },
                AuditSub::UsageLog { key_id, code, since, limit } => {
                    AuditCommand::UsageLog { key_id, code, since, limit }
                }
                AuditSub::Export { from, to } => AuditCommand::Export { from, to },
                AuditSub::Checkpoint => AuditCommand::Checkpoint,
            };
            app::audit(&a.target, &a.tls.into_tls(), a.key_file.as_deref(), command)
        }
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
