//! `keyward audit`: the audit trail and usage of a running server, as JSON lines.

use clap::Subcommand;

use super::{ClientTls, authorized, connect};
use crate::{domain::audit_log::hex, proto};

/// What `keyward audit` was asked to do (ranges: 0 is open).
#[derive(Clone, Debug, Subcommand)]
pub enum AuditCommand {
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
pub(super) async fn audit(
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
