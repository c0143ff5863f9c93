//! `[cluster]`: cluster mode on etcd (the etcd endpoints, the key prefix, this node's id and the
//! currency timings), the `--etcd`, `--etcd-prefix` and `--node-id` flags over it, and their
//! validation. No endpoint anywhere means single-node sled mode.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The prefix every key of the cluster's state lives under, by default.
pub const DEFAULT_ETCD_PREFIX: &str = "/keyward/";
/// The longest node id.
pub const MAX_NODE_ID_LEN: usize = 64;
const PREFIX_LEN: std::ops::RangeInclusive<usize> = 2..=128;
const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 10..=60_000;
const REQUEST_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;
/// The fewest audit events etcd keeps (a window too small would trim what nodes are copying).
const MIN_AUDIT_KEEP: u64 = 10;

/// Cluster mode: several nodes share their key state in etcd (see docs/configuration.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// etcd client URLs; non-empty turns cluster mode on (`--etcd` wins).
    pub etcd: Vec<String>,
    /// The prefix of every key of the cluster's state (`--etcd-prefix` wins).
    pub prefix: String,
    /// This node's id (`--node-id` wins); default: the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// How often the node proves it is current with a linearizable read.
    pub heartbeat_ms: u64,
    /// A node not proven current for this long fails closed (`UNAVAILABLE`, `NOT_SERVING`).
    pub max_staleness_ms: u64,
    /// The longest one etcd call may take.
    pub request_timeout_ms: u64,
    /// The newest audit events etcd keeps; older ones are trimmed from etcd (every node keeps the
    /// whole chain in its own database) behind a checkpoint.
    pub audit_keep_events: u64,
    /// The CA that signs etcd's server certificates (with `https://` endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate and key for etcd (`--client-cert-auth`), PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// etcd authentication: the user, and a file whose first line is its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            etcd: Vec::new(),
            prefix: DEFAULT_ETCD_PREFIX.into(),
            node_id: None,
            heartbeat_ms: 250,
            max_staleness_ms: 1000,
            request_timeout_ms: 2000,
            audit_keep_events: 1_000_000,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
        }
    }
}

/// The cluster flags of `init` and `serve` (or their `KEYWARD_*` variables), over `[cluster]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFlags {
    /// `--etcd`: comma-separated etcd client URLs.
    pub etcd: Option<String>,
    /// `--etcd-prefix`.
    pub prefix: Option<String>,
    /// `--node-id` (`serve` only).
    pub node_id: Option<String>,
    /// `--etcd-ca-file`, `--etcd-cert-file`, `--etcd-key-file`: TLS to etcd.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Cluster mode's settings; `None` from `resolve` means single-node sled mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node_id: String,
    pub heartbeat: Duration,
    pub max_staleness: Duration,
    pub request_timeout: Duration,
    pub audit_keep_events: u64,
    /// TLS to etcd: the CA file, and the client certificate and key files if any.
    pub tls: Option<(PathBuf, Option<(PathBuf, PathBuf)>)>,
    /// etcd authentication: user and password file.
    pub auth: Option<(String, PathBuf)>,
}

fn invalid<T>(reason: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(format!("cluster: {reason}")))
}

impl ClusterSection {
    /// The cluster settings with the flags over the file, or `None` for single-node mode.
    /// `host_name` gives the default node id (sanitized) when neither `--node-id` nor
    /// `cluster.node_id` names one. Every refusal names the flag or key at fault.
    pub fn resolve(
        &self,
        flags: &ClusterFlags,
        host_name: impl FnOnce() -> Option<String>,
    ) -> Result<Option<ClusterSettings>, ConfigError> {
        let (endpoints, endpoints_from) = match &flags.etcd {
            Some(urls) => (urls.split(',').map(|u| u.trim().to_owned()).collect(), "--etcd (KEYWARD_ETCD)"),
            None => (self.etcd.clone(), "cluster.etcd"),
        };
        if flags.etcd.is_none() && endpoints.is_empty() {
            if flags.node_id.is_some() {
                return invalid("--node-id (KEYWARD_NODE_ID) needs cluster mode: set --etcd (or cluster.etcd)".into());
            }
            if flags.prefix.is_some() {
                return invalid(
                    "--etcd-prefix (KEYWARD_ETCD_PREFIX) needs cluster mode: set --etcd (or cluster.etcd)".into(),
                );
            }
            return Ok(None);
        }
        for url in &endpoints {
            check_endpoint(url, endpoints_from)?;
        }
        let prefix = match &flags.prefix {
            Some(p) => check_prefix(p, "--etcd-prefix (KEYWARD_ETCD_PREFIX)")?,
            None => check_prefix(&self.prefix, "cluster.prefix")?,
        };
        let node_id = match (&flags.node_id, &self.node_id) {
            (Some(id), _) => check_node_id(id, "--node-id (KEYWARD_NODE_ID)")?,
            (None, Some(id)) => check_node_id(id, "cluster.node_id")?,
            (None, None) => {
                let host = host_name().map(|h| sanitize_node_id(&h)).filter(|h| !h.is_empty());
                let Some(host) = host else {
                    return invalid("no host name to name this node after: set --node-id or cluster.node_id".into());
                };
                check_node_id(&host, "the host name (the default node id; set --node-id or cluster.node_id)")?
            }
        };
        if !HEARTBEAT_MS.contains(&self.heartbeat_ms) {
            return invalid(format!(
                "cluster.heartbeat_ms must be within {}..={} (it is {})",
                HEARTBEAT_MS.start(),
                HEARTBEAT_MS.end(),
                self.heartbeat_ms
            ));
        }
        if self.max_staleness_ms < self.heartbeat_ms.saturating_mul(2) {
            return invalid(format!(
                "cluster.max_staleness_ms must be at least twice cluster.heartbeat_ms ({} ms; it is {})",
                self.heartbeat_ms * 2,
                self.max_staleness_ms
            ));
        }
        if !REQUEST_TIMEOUT_MS.contains(&self.request_timeout_ms) {
            return invalid(format!(
                "cluster.request_timeout_ms must be within {}..={} (it is {})",
                REQUEST_TIMEOUT_MS.start(),
                REQUEST_TIMEOUT_MS.end(),
                self.request_timeout_ms
            ));
        }
        if self.audit_keep_events < MIN_AUDIT_KEEP {
            return invalid(format!(
                "cluster.audit_keep_events must be at least {MIN_AUDIT_KEEP} (it is {})",
                self.audit_keep_events
            ));
        }
        let https = endpoints.iter().filter(|u: &&String| u.starts_with("https://")).count();
        let (ca_file, cert_file, key_file) = (
            flags.ca_file.as_ref().or(self.ca_file.as_ref()),
            flags.cert_file.as_ref().or(self.cert_file.as_ref()),
            flags.key_file.as_ref().or(self.key_file.as_ref()),
        );
        let tls = match (ca_file, cert_file, key_file) {
            (_, Some(_), None) | (_, None, Some(_)) => {
                return invalid("cluster.cert_file and cluster.key_file go together".into());
            }
            (None, Some(_), Some(_)) => return invalid("cluster.cert_file needs cluster.ca_file".into()),
            (None, None, None) => None,
            (Some(ca), cert, key) => Some((ca.clone(), cert.cloned().zip(key.cloned()))),
        };
        match (tls.is_some(), https) {
            (true, n) if n != endpoints.len() => {
                return invalid(format!("cluster.ca_file is set: every endpoint of {endpoints_from} must be https://"));
            }
            (false, n) if n > 0 => {
                return invalid(format!("https:// endpoints in {endpoints_from} need cluster.ca_file (etcd's CA)"));
            }
            _ => {}
        }
        let auth = match (&self.user, &self.password_file) {
            (Some(user), Some(file)) if !user.is_empty() => Some((user.clone(), file.clone())),
            (None, None) => None,
            _ => return invalid("cluster.user and cluster.password_file go together".into()),
        };
        Ok(Some(ClusterSettings {
            endpoints,
            prefix,
            node_id,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            max_staleness: Duration::from_millis(self.max_staleness_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            audit_keep_events: self.audit_keep_events,
            tls,
            auth,
        }))
    }
}

/// An etcd client URL: `http://` or `https://`, a host and a port, nothing after them.
fn check_endpoint(url: &str, from: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| {
        invalid(format!(
            "{from}: {url:?} is not an etcd client URL ({why}); expected http://HOST:PORT or https://HOST:PORT"
        ))
    };
    if url.is_empty() {
        return invalid(format!("{from}: an empty etcd URL (a stray comma?)"));
    }
    let Ok(uri) = url.parse::<http::Uri>() else { return refuse("unreadable") };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return refuse("the scheme must be http or https");
    }
    if uri.host().is_none_or(str::is_empty) {
        return refuse("no host");
    }
    if uri.port_u16().is_none() {
        return refuse("no port");
    }
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    if !(path.is_empty() || path == "/") {
        return refuse("a path or query");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return refuse("credentials in the URL");
    }
    Ok(())
}

fn check_prefix(prefix: &str, from: &str) -> Result<String, ConfigError> {
    let len = prefix.chars().count();
    if !PREFIX_LEN.contains(&len) {
        return invalid(format!(
            "{from}: the etcd prefix must be {}..={} characters long (it has {len})",
            PREFIX_LEN.start(),
            PREFIX_LEN.end()
        ));
    }
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return invalid(format!("{from}: the etcd prefix {prefix:?} must start and end with '/' (like \"/keyward/\")"));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid(format!("{from}: the etcd prefix {prefix:?} must not hold whitespace or control characters"));
    }
    Ok(prefix.to_owned())
}

/// A node id: 1..=64 of `[A-Za-z0-9._-]`, and not `.` or `..` (it names a directory).
fn check_node_id(id: &str, from: &str) -> Result<String, ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN || !id.chars().all(allowed) || id == "." || id == ".." {
        return invalid(format!(
            "{from}: the node id {id:?} must be 1..={MAX_NODE_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-' \
             (and not \".\" or \"..\")"
        ));
    }
    Ok(id.to_owned())
}

/// A host name as a node id: characters a node id may not hold become `-`, cut to the longest id.
pub fn sanitize_node_id(host: &str) -> String {
    host.trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(MAX_NODE_ID_LEN)
        .collect()
}

/// This machine's host name, if it has one.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
