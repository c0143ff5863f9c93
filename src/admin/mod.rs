//! `keyward master` and `keyward audit`: admin commands, as a gRPC client of a running server
//! (the server holds the database, so changes go through it and its audit trail), over plaintext
//! or TLS, authenticated with a key or, over mTLS, a client certificate mapped to one.

mod audit;
mod master;

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

pub use self::{audit::AuditCommand, master::MasterCommand};
use crate::app::{AppError, runtime};

/// `keyward master`: its subcommand, the server and the credential.
#[derive(Args, Debug)]
pub struct MasterArgs {
    #[command(subcommand)]
    pub command: MasterCommand,
    /// Server address: HOST:PORT, or unix:/path for a Unix socket.
    #[arg(long, global = true, default_value = "127.0.0.1:50051", env = "KEYWARD_TARGET")]
    pub target: String,
    /// File whose first line is a key holding `keyward:master:rotate` (or `:read` for status),
    /// e.g. DATA_DIR/root.key.
    #[arg(long, global = true, env = "KEYWARD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// `keyward audit`: its subcommand, the server and the credential.
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
    /// Server address: HOST:PORT, or unix:/path for a Unix socket.
    #[arg(long, global = true, default_value = "127.0.0.1:50051", env = "KEYWARD_TARGET")]
    pub target: String,
    /// File whose first line is a key holding `keyward:audit:read`, e.g. DATA_DIR/root.key.
    #[arg(long, global = true, env = "KEYWARD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// `keyward master ...` against a running server; prints the outcome.
pub fn run_master(args: MasterArgs) -> Result<(), AppError> {
    let key = admin_key(args.key_file.as_deref(), &args.tls, "keyward:master:rotate")?;
    let out = runtime()?
        .block_on(master::master(&args.target, &args.tls, key.as_deref(), args.command))
        .map_err(AppError::Refused)?;
    println!("{out}");
    Ok(())
}

/// `keyward audit ...` against a running server; lines go to stdout as they come.
pub fn run_audit(args: AuditArgs) -> Result<(), AppError> {
    let key = admin_key(args.key_file.as_deref(), &args.tls, "keyward:audit:read")?;
    runtime()?
        .block_on(audit::audit(&args.target, &args.tls, key.as_deref(), args.command, &mut |line| println!("{line}")))
        .map_err(AppError::Refused)
}

/// The first line of `path`, trimmed: a key file such as DATA_DIR/root.key.
pub fn read_key_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// The admin credential: the key in `key_file`, or none when a client certificate stands for
/// one (mTLS).
fn admin_key(key_file: Option<&Path>, tls: &ClientTls, scope: &str) -> Result<Option<String>, AppError> {
    match key_file {
        Some(path) => read_key_file(path).map(Some).map_err(AppError::Refused),
        None if tls.has_identity() => Ok(None),
        None => Err(AppError::Refused(format!(
            "--key-file is required (a key holding {scope}), or over mTLS a client certificate mapped to one \
             (--client-cert and --client-key)"
        ))),
    }
}

/// How an admin command reaches the server: plaintext, or TLS trusting `ca`, presenting the
/// client certificate `cert` (with its private key `key`) for mTLS.
#[derive(Args, Clone, Debug, Default)]
pub struct ClientTls {
    /// Connect with TLS, trusting this PEM CA for the server's certificate (the --target host
    /// must be a name or address in it).
    #[arg(long = "ca-cert", value_name = "CA_CERT", global = true, env = "KEYWARD_CA_CERT")]
    pub ca: Option<PathBuf>,
    /// mTLS: present this PEM client certificate; mapped to a key in [tls.identities], it
    /// stands in for --key-file.
    #[arg(long = "client-cert", value_name = "CLIENT_CERT", global = true, env = "KEYWARD_CLIENT_CERT")]
    pub cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long = "client-key", value_name = "CLIENT_KEY", global = true, env = "KEYWARD_CLIENT_KEY")]
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether a client certificate stands in for a key file.
    pub fn has_identity(&self) -> bool {
        self.cert.is_some()
    }
}

/// One connection to `target` (`host:port`; over TLS the host must be a name or address in the
/// server's certificate; or `unix:/path`, a Unix socket, always plaintext).
pub(super) async fn connect(target: &str, tls: &ClientTls) -> Result<Channel, String> {
    if let Some(path) = target.strip_prefix(crate::config::UNIX_PREFIX) {
        if tls.ca.is_some() || tls.has_identity() {
            return Err(format!("{target} is a Unix socket, which keyward serves without TLS: drop the TLS flags"));
        }
        let path = std::path::PathBuf::from(path);
        // The URI is not used to connect; the connector dials the socket.
        return tonic::transport::Endpoint::from_static("http://keyward.local")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await
            .map_err(|e| format!("connecting to {target}: {e}"));
    }
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()));
    let endpoint = match (&tls.ca, &tls.cert, &tls.key) {
        (None, None, None) => Channel::from_shared(format!("http://{target}")).map_err(|e| e.to_string())?,
        (None, _, _) => return Err("a client certificate needs --ca-cert, the CA of the server's certificate".into()),
        (Some(_), Some(_), None) | (Some(_), None, Some(_)) => {
            return Err("--client-cert and --client-key go together".into());
        }
        (Some(ca), cert, key) => {
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (cert, key) {
                let key = zeroize::Zeroizing::new(read(key)?);
                config = config.identity(Identity::from_pem(read(cert)?, &*key));
            }
            Channel::from_shared(format!("https://{target}"))
                .map_err(|e| e.to_string())?
                .tls_config(config)
                .map_err(|e| format!("TLS: {e}"))?
        }
    };
    endpoint.connect().await.map_err(|e| format!("connecting to {target}: {e}"))
}

/// `message` with `authorization: Bearer <key>`; without a key (a client certificate stands for
/// one), as it is.
pub(super) fn authorized<T>(message: T, key: Option<&str>) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().map_err(|_| "the key is not ASCII".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}
