//! `keyward master` and `keyward audit`: admin commands, as a gRPC client of a running server
//! (the server holds the database, so changes go through it and its audit trail), over plaintext
//! or TLS, authenticated with a key or, over mTLS, a client certificate mapped to one.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::{
    domain::audit_log::hex,
    proto::{self, master_key_service_client::MasterKeyServiceClient},
};

/// What `keyward master` was asked to do.
#[derive(Clone, Copy, Debug)]
pub enum MasterCommand {
    Status,
    /// Rotate; with `wait`, until the background re-digest has finished.
    Rotate {
        wait: bool,
    },
    Retire {
        version: u32,
    },
}

/// How an admin command reaches the server: plaintext, or TLS trusting `ca`, presenting the
/// client certificate `cert` (with its private key `key`) for mTLS.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether a client certificate stands in for a key file.
    pub fn has_identity(&self) -> bool {
        self.cert.is_some()
    }
}

/// Reads a key file's first line (the admin key of `--key-file`).
pub fn read_key_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// One connection to `target` (`host:port`; over TLS the host must be a name or address in the
/// server's certificate).
async fn connect(target: &str, tls: &ClientTls) -> Result<Channel, String> {
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
fn authorized<T>(message: T, key: Option<&str>) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().map_err(|_| "the key is not ASCII".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
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
        out.push_str(&format!("  v{}: {state}, needed by {} keys\n", v.version, v.keys_using));
    }
    match &status.migration {
        Some(m) => out.push_str(&format!(
            "re-digest under v{}: running, {} keys done, {} to go\n",
            m.to_version, m.keys_done, status.keys_pending
        )),
        None => out.push_str("re-digest: none running\n"),
    }
    out.push_str(&format!(
        "keys not yet on a plain v{} digest (move on their next verification): {}",
        status.current_version, status.keys_not_plain
    ));
    out
}

/// Runs `command` against the server at `target` with `key`; returns what to print.
pub async fn master(
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

/// What `keyward audit` was asked to do.
#[derive(Clone, Debug)]
pub enum AuditCommand {
    /// Check the chain over a range (0: open).
    Verify { from: u64, to: u64 },
    /// One key's events (or all), newest first, at most `limit`, optionally of one action or code.
    Query { key_id: String, action: String, code: String, limit: usize },
    /// One key's verifications, counted.
    Usage { key_id: String, since: Option<String>, until: Option<String> },
    /// Usage-log records, newest first.
    UsageLog { key_id: String, code: String, since: Option<String>, limit: usize },
    /// Every event in a range, oldest first.
    Export { from: u64, to: u64 },
    /// The chain's head.
    Checkpoint,
}

/// A time from the command line: RFC 3339, or a duration meaning that long ago.
fn when(text: &str) -> Result<prost_types::Timestamp, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .or_else(|_| humantime::parse_duration(text).map(|ago| std::time::SystemTime::now() - ago))
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as `1h`"))?;
    Ok(t.into())
}

fn json_line(e: &proto::AuditEvent) -> String {
    let at = e.at.map(|t| t.to_string()).unwrap_or_default();
    let changes: Vec<_> =
        e.changes.iter().map(|c| serde_json::json!({"field": c.field, "before": c.before, "after": c.after})).collect();
    serde_json::json!({
        "seq": e.seq, "at": at, "actor": e.actor, "action": e.action, "key_id": e.key_id,
        "client_addr": e.client_addr, "reason": e.reason, "changes": changes, "code": e.code, "mac": hex(&e.mac),
    })
    .to_string()
}

/// Runs `command` against the AuditService at `target` with `key`; writes lines to `out`.
pub async fn audit(
    target: &str,
    tls: &ClientTls,
    key: Option<&str>,
    command: AuditCommand,
    out: &mut impl FnMut(String),
) -> Result<(), String> {
    use crate::proto::audit_service_client::AuditServiceClient;
    let channel = connect(target, tls).await?;
    let mut client = AuditServiceClient::new(channel);
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match command {
        AuditCommand::Verify { from, to } => {
            let request = authorized(proto::VerifyChainRequest { from_seq: from, to_seq: to }, key)?;
            let r = client.verify_chain(request).await.map_err(status)?.into_inner();
            if r.ok {
                out(format!(
                    "chain ok: events {}..={}, {} MACs checked in the HSM, {} unsealed",
                    r.first_seq, r.last_seq, r.checked, r.unsealed
                ));
                Ok(())
            } else {
                Err(format!("chain broken at event {}: {}", r.broken_seq, r.problem))
            }
        }
        AuditCommand::Query { key_id, action, code, limit } => {
            let (mut token, mut left) = (String::new(), limit);
            while left > 0 {
                let request = proto::QueryEventsRequest {
                    key_id: key_id.clone(),
                    action: action.clone(),
                    code: code.clone(),
                    newest_first: true,
                    page_size: left.min(1000) as i32,
                    page_token: token,
                    ..Default::default()
                };
                let page = client.query_events(authorized(request, key)?).await.map_err(status)?.into_inner();
                left -= page.events.len().min(left);
                page.events.iter().for_each(|e| out(json_line(e)));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(())
        }
        AuditCommand::Export { from, to } => {
            let request = authorized(proto::ExportEventsRequest { from_seq: from, to_seq: to }, key)?;
            let mut stream = client.export_events(request).await.map_err(status)?.into_inner();
            while let Some(event) = stream.message().await.map_err(status)? {
                out(json_line(&event));
            }
            Ok(())
        }
        AuditCommand::Usage { key_id, since, until } => {
            let request = proto::KeyUsageRequest {
                key_id,
                since: since.as_deref().map(when).transpose()?,
                until: until.as_deref().map(when).transpose()?,
                max_client_ips: 0,
            };
            let u = client.key_usage(authorized(request, key)?).await.map_err(status)?.into_inner();
            let codes: serde_json::Map<_, _> =
                u.by_code.iter().map(|c| (c.code().short_name().to_owned(), c.count.into())).collect();
            let ips: Vec<_> = u
                .by_client_ip
                .iter()
                .map(|c| serde_json::json!({"client_ip": c.client_ip, "count": c.count, "valid": c.valid}))
                .collect();
            let text = |t: Option<prost_types::Timestamp>| t.map(|t| t.to_string());
            out(serde_json::json!({
                "key_id": u.key_id, "total": u.total, "by_code": codes, "by_client_ip": ips,
                "other_client_ips": u.other_client_ips, "other_client_ip_count": u.other_client_ip_count,
                "first_at": text(u.first_at), "last_at": text(u.last_at), "resume_at": text(u.resume_at),
            })
            .to_string());
            Ok(())
        }
        AuditCommand::UsageLog { key_id, code, since, limit } => {
            let code = match code.as_str() {
                "" => proto::VerifyCode::Unspecified,
                name => proto::VerifyCode::from_str_name(&format!("VERIFY_CODE_{name}"))
                    .ok_or_else(|| format!("--code {name:?} is not a verify code (VALID, INVALID, REVOKED, …)"))?,
            };
            let since = since.as_deref().map(when).transpose()?;
            let (mut token, mut left) = (String::new(), limit);
            while left > 0 {
                let request = proto::QueryUsageRequest {
                    key_id: key_id.clone(),
                    code: code.into(),
                    since,
                    newest_first: true,
                    page_size: left.min(1000) as i32,
                    page_token: token,
                    ..Default::default()
                };
                let page = client.query_usage(authorized(request, key)?).await.map_err(status)?.into_inner();
                left -= page.records.len().min(left);
                for r in &page.records {
                    let latency = r.latency.map_or(0.0, |d| d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6);
                    out(serde_json::json!({
                        "at": r.at.map(|t| t.to_string()), "key_id": r.key_id, "code": r.code().short_name(),
                        "client_ip": r.client_ip, "caller": r.caller, "latency_ms": latency,
                    })
                    .to_string());
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(())
        }
        AuditCommand::Checkpoint => {
            let c = client.get_checkpoint(authorized(proto::GetCheckpointRequest {}, key)?).await.map_err(status)?;
            let c = c.into_inner();
            let at = c.at.map(|t| t.to_string()).unwrap_or_default();
            out(serde_json::json!({"seq": c.seq, "at": at, "mac": hex(&c.mac)}).to_string());
            Ok(())
        }
    }
}
