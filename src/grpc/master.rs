//! `keyward.v1.MasterKeyService`: the HSM master key's versions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        access::Caller,
        auth::Authenticator,
        error::Error,
        key::MasterKeyVersion,
        master::MasterKeys,
        ports::{Hsm, Store},
    },
    proto::{self, master_key_service_server::MasterKeyService},
    tls::Identities,
};

pub struct MasterApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    master: Arc<MasterKeys<H, S>>,
    identities: Arc<Identities>,
}

impl<H, S> MasterApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, master: Arc<MasterKeys<H, S>>, identities: Arc<Identities>) -> Self {
        Self { auth, master, identities }
    }
}

impl<H: Hsm, S: Store> MasterApi<H, S> {
    /// The status; counting walks the key index (memory, every key), so it runs off the async
    /// workers.
    async fn status(&self, caller: &Caller, count: bool) -> Result<Response<proto::MasterKeyStatus>, Status> {
        let (master, caller) = (self.master.clone(), caller.clone());
        let status = tokio::task::spawn_blocking(move || master.master_status(&caller, count))
            .await
            .map_err(|e| Error::Unavailable(format!("status task: {e}")))??;
        Ok(Response::new(convert::master_status(&status)))
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> MasterKeyService for MasterApi<H, S> {
    async fn get_master_key_status(
        &self,
        request: Request<proto::GetMasterKeyStatusRequest>,
    ) -> Result<Response<proto::MasterKeyStatus>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        self.status(&caller, !request.get_ref().skip_counts).await
    }

    async fn rotate_master_key(
        &self,
        request: Request<proto::RotateMasterKeyRequest>,
    ) -> Result<Response<proto::MasterKeyStatus>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let state = self.master.rotate_master(&caller, &ctx).await?;
        tracing::info!(current = %state.current, actor = %caller.key_id, "master key rotated");
        self.status(&caller, true).await
    }

    async fn retire_master_key(
        &self,
        request: Request<proto::RetireMasterKeyRequest>,
    ) -> Result<Response<proto::MasterKeyStatus>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let version = request.get_ref().version;
        if version == 0 {
            return Err(Error::invalid("version", "is required (1 or more)").into());
        }
        self.master.retire_master(&caller, MasterKeyVersion(version), &ctx).await?;
        tracing::info!(version, actor = %caller.key_id, "master key retired");
        self.status(&caller, true).await
    }
}
