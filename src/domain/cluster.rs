//! The cluster status operators read (`GetClusterStatus`): what the store's node knows about
//! itself and its cluster (cluster mode), for callers holding `keyward:cluster:read`. On a
//! single node there is none. It answers while the node cannot prove its view is current:
//! that is when operators need it.

use std::{sync::Arc, time::Duration};

use super::{
    access::{Access, Caller, Permission},
    error::Result,
    ports::Store,
};

/// A member of the consensus store the cluster runs on (etcd), as it names itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// One node's view of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: String,
    /// The store revision up to which the node's view has applied every change.
    pub revision: i64,
    /// Time since the view was last proven current (`None`: never).
    pub staleness: Option<Duration>,
    /// Whether `staleness` is within `max_staleness` (else the node fails closed).
    pub current: bool,
    pub max_staleness: Duration,
    /// The keyward nodes that announce themselves, by id, sorted.
    pub nodes: Vec<String>,
    /// The audit chain's last sequence number, as the node applied it.
    pub audit_head: u64,
    /// Key records in the node's view.
    pub keys: u64,
    /// The store's members, or why they could not be listed.
    pub members: std::result::Result<Vec<ClusterMember>, String>,
    /// Whether this node leads the cluster's periodic work (the sweeper).
    pub leader: bool,
}

pub struct ClusterReader<S> {
    store: Arc<S>,
    access: Arc<Access>,
}

impl<S: Store> ClusterReader<S> {
    /// Checks permissions with `access`.
    pub fn new(store: Arc<S>, access: Arc<Access>) -> Self {
        Self { store, access }
    }

    /// The node's cluster status; `None` on a single node.
    pub async fn status(&self, caller: &Caller) -> Result<Option<ClusterStatus>> {
        self.access.authorize(caller, Permission::ClusterRead)?;
        Ok(self.store.cluster_status().await)
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{
        access::Caller,
        error::Error,
        testing::{fixture, strings},
    };

    #[tokio::test]
    async fn a_single_node_has_no_cluster_status_and_reading_it_needs_the_permission() {
        let f = fixture().await;
        let with = |scopes: &[&str]| Caller { scopes: strings(scopes), ..f.root.clone() };
        assert_eq!(f.cluster.status(&f.root).await.unwrap(), None, "keyward:* grants it");
        assert_eq!(f.cluster.status(&with(&["keyward:cluster:read"])).await.unwrap(), None);
        assert_eq!(f.cluster.status(&with(&["keyward:cluster:*"])).await.unwrap(), None);
        let err = f.cluster.status(&with(&["keyward:master:*", "keyward:audit:read", "*"])).await.unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(ref why) if why.contains("keyward:cluster:read")), "{err:?}");
    }
}
