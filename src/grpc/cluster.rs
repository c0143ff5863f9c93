//! `keyward.v1.ClusterService`: a node's cluster status, for operators. Its caller is
//! authenticated on the node's last known view, so that it answers while the node fails closed.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        auth::{Authenticator, CallerRecord},
        cluster::ClusterReader,
        ports::{Hsm, Store},
    },
    proto::{self, cluster_service_server::ClusterService},
    tls::Identities,
};

pub struct ClusterApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    cluster: Arc<ClusterReader<S>>,
    identities: Arc<Identities>,
}

impl<H, S> ClusterApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, cluster: Arc<ClusterReader<S>>, identities: Arc<Identities>) -> Self {
        Self { auth, cluster, identities }
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> ClusterService for ClusterApi<H, S> {
    async fn get_cluster_status(
        &self,
        request: Request<proto::GetClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatus>, Status> {
        let (caller, _) = auth::caller_reading(&self.auth, &self.identities, &request, CallerRecord::LastKnown).await?;
        let status = self.cluster.status(&caller).await?;
        Ok(Response::new(convert::cluster_status(status.as_ref())))
    }
}
