//! A node's presence in the cluster: `nodes/<id>` on an etcd lease that the node keeps alive,
//! so that every node (and `GetClusterStatus`) sees which nodes are up. A node that stops
//! keeping it alive drops out when the lease expires. On the same lease a node claims `leader`
//! when no node holds it: the leader runs the cluster's periodic work (the sweeper), once for
//! the cluster instead of once per node; when it goes, its lease expires and another claims it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio_util::sync::CancellationToken;

pub struct Presence {
    pub client: Client,
    pub name: Vec<u8>,
    /// The leader key, and this node's id (its value while this node leads).
    pub leader: Vec<u8>,
    pub node_id: String,
    pub about: String,
    pub ttl: Duration,
    /// Whether this node leads now.
    pub leads: Arc<AtomicBool>,
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
            self.leads.store(false, Ordering::Release);
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
            self.claim_leadership(granted.id()).await;
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

    /// Takes the leader key on `lease` if no node holds it, and notes whether this node leads.
    async fn claim_leadership(&self, lease: i64) {
        let claim = Txn::new()
            .when([Compare::create_revision(self.leader.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                self.leader.clone(),
                self.node_id.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.leader.clone(), None)]);
        let leads = match tokio::time::timeout(self.ttl / 3, self.client.kv_client().txn(claim)).await {
            Ok(Ok(answer)) if answer.succeeded() => true,
            Ok(Ok(answer)) => answer.op_responses().iter().any(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().is_some_and(|kv| kv.value() == self.node_id.as_bytes()),
                _ => false,
            }),
            _ => false,
        };
        if self.leads.swap(leads, Ordering::AcqRel) != leads {
            tracing::info!(leads, "this node's cluster leadership changed (it runs the sweeper while it leads)");
        }
    }
}
