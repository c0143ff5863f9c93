//! A node's presence in the cluster: `nodes/<id>` on an etcd lease that the node keeps alive,
//! so that every node (and `GetClusterStatus`) sees which nodes are up. A node that stops
//! keeping it alive drops out when the lease expires.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio_util::sync::CancellationToken;

pub struct Presence {
    pub client: Client,
    pub name: Vec<u8>,
    pub about: String,
    pub ttl: Duration,
}

/// What a node says about itself: its id and the address it serves on.
pub fn about(node_id: &str, address: &str) -> String {
    serde_json::json!({ "node_id": node_id, "address": address }).to_string()
}

/// The lease's time to live: a few staleness bounds, at least 2 s (etcd's minimum is 1 s).
pub fn ttl(max_staleness: Duration) -> Duration {
    (max_staleness * 3).max(Duration::from_secs(2))
}

impl Presence {
    /// Keeps the presence key alive until cancelled; re-announces after any failure.
    pub async fn run(self, cancel: CancellationToken) {
        while cancel.run_until_cancelled(self.announce()).await.is_some() {
            if cancel.run_until_cancelled(tokio::time::sleep(Duration::from_millis(500))).await.is_none() {
                return;
            }
        }
    }

    /// Grants a lease, puts the key on it and keeps it alive, until something fails.
    async fn announce(&self) {
        let mut lease = self.client.lease_client();
        let mut kv = self.client.kv_client();
        let granted = match lease.grant(self.ttl.as_secs().max(1) as i64, None).await {
            Ok(granted) => granted,
            Err(e) => return tracing::debug!(error = %e, "granting the presence lease failed"),
        };
        let options = PutOptions::new().with_lease(granted.id());
        if let Err(e) = kv.put(self.name.clone(), self.about.clone(), Some(options)).await {
            return tracing::debug!(error = %e, "announcing the node failed");
        }
        let (mut keeper, mut replies) = match lease.keep_alive(granted.id()).await {
            Ok(pair) => pair,
            Err(e) => return tracing::debug!(error = %e, "keeping the presence lease alive failed"),
        };
        let every = self.ttl / 3;
        loop {
            tokio::time::sleep(every).await;
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match tokio::time::timeout(every, replies.message()).await {
                Ok(Ok(Some(reply))) if reply.ttl() > 0 => {}
                _ => return,
            }
        }
    }
}
