//! `keyward master`: the HSM master key of a running server (status, rotate, retire).

use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{ClientTls, authorized, connect};
use crate::proto::{self, master_key_service_client::MasterKeyServiceClient};

/// What `keyward master` was asked to do.
#[derive(Clone, Copy, Debug, Subcommand)]
pub enum MasterCommand {
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

fn describe(status: &proto::MasterKeyStatus) -> String {
    let mut out = format!("current master key: v{}\n", status.current_version);
    for v in &status.versions {
        let state = if v.current {
            "current"
        } else if v.retired_at.is_some() {
            "retired"
        } else {
            "live"
        };
        out.push_str(&format!("  v{}: {state}, needed by {} keys", v.version, v.keys_using));
        if v.wrap_key_live {
            out.push_str(&format!("; wrapping key: {} signing keys", v.signing_keys_using));
        }
        out.push('\n');
    }
    match &status.migration {
        Some(m) => out.push_str(&format!(
            "re-digest under v{}: running, {} keys done, {} signing secrets re-wrapped, {} to go\n",
            m.to_version, m.keys_done, m.signing_secrets_done, status.keys_pending
        )),
        None => out.push_str("re-digest: none running\n"),
    }
    out.push_str(&format!(
        "keys not yet on a plain v{} digest (move on their next verification): {}",
        status.current_version, status.keys_not_plain
    ));
    out.push_str(&format!(
        "\nsigning keys not yet wrapped under wrapping key v{}: {}",
        status.current_wrap_version, status.signing_keys_pending
    ));
    out
}

/// Runs `command` against the server at `target` with `key`; returns what to print.
pub(super) async fn master(
    target: &str,
    tls: &ClientTls,
    key: Option<&str>,
    command: MasterCommand,
) -> Result<String, String> {
    let channel = connect(target, tls).await?;
    let mut client = MasterKeyServiceClient::new(channel);
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match command {
        MasterCommand::Status => {
            let request = authorized(proto::GetMasterKeyStatusRequest { skip_counts: false }, key)?;
            let s = client.get_master_key_status(request).await;
            Ok(describe(&s.map_err(status)?.into_inner()))
        }
        MasterCommand::Retire { version } => {
            let request = authorized(proto::RetireMasterKeyRequest { version }, key)?;
            let s = client.retire_master_key(request).await.map_err(status)?.into_inner();
            Ok(format!("master key v{version} retired\n{}", describe(&s)))
        }
        MasterCommand::Rotate { wait } => {
            let started = Instant::now();
            let request = authorized(proto::RotateMasterKeyRequest {}, key)?;
            let mut s = client.rotate_master_key(request).await.map_err(status)?.into_inner();
            let mut out = format!("rotated to master key v{}\n", s.current_version);
            if wait {
                // Polled without counts (they read every key); counted once at the end.
                let poll = |skip_counts| authorized(proto::GetMasterKeyStatusRequest { skip_counts }, key);
                while s.migration.is_some() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    s = client.get_master_key_status(poll(true)?).await.map_err(status)?.into_inner();
                }
                out.push_str(&format!(
                    "every key verifies under v{} after {:.1} s\n",
                    s.current_version,
                    started.elapsed().as_secs_f64()
                ));
                s = client.get_master_key_status(poll(false)?).await.map_err(status)?.into_inner();
            }
            out.push_str(&describe(&s));
            Ok(out)
        }
    }
}
