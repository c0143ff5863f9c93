//! `keyward.v1.KeyService`: the admin plane.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, convert, page_token};
use crate::{
    domain::{
        auth::Authenticator,
        keys::KeyAdmin,
        ports::{Hsm, Store},
    },
    proto::{self, key_service_server::KeyService},
    tls::Identities,
};

pub struct KeyApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    keys: Arc<KeyAdmin<H, S>>,
    identities: Arc<Identities>,
}

impl<H, S> KeyApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, keys: Arc<KeyAdmin<H, S>>, identities: Arc<Identities>) -> Self {
        Self { auth, keys, identities }
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> KeyService for KeyApi<H, S> {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let new = convert::new_key(request.into_inner())?;
        let created = self.keys.create(&caller, new, &ctx).await?;
        tracing::info!(key_id = %created.record.id, actor = %caller.key_id, "key created");
        Ok(Response::new(proto::CreateKeyResponse {
            // A signing key is never presented as a bearer key: its key string is not handed out.
            key: if created.signing_secret.is_some() { String::new() } else { created.key.expose().to_owned() },
            info: Some(convert::key_info(&created.record)),
            signing_secret: created.signing_secret.map(|s| s.expose().to_vec()).unwrap_or_default(),
        }))
    }

    async fn get_key(&self, request: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let record = self.keys.get(&caller, &request.get_ref().key_id)?;
        Ok(Response::new(convert::key_info(&record)))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.get_ref();
        let filter = convert::list_filter(req)?;
        let page_token = page_token::unwrap(&req.page_token)?;
        let (keys, next) = self.keys.list(&caller, &filter, req.page_size, &page_token)?;
        Ok(Response::new(proto::ListKeysResponse {
            keys: keys.iter().map(convert::key_info).collect(),
            next_page_token: next.as_deref().map(page_token::wrap).unwrap_or_default(),
        }))
    }

    async fn update_key(&self, request: Request<proto::UpdateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        let key_id = req.key_id.clone();
        let patch = convert::key_patch(req)?;
        let record = self.keys.update(&caller, &key_id, patch, &ctx).await?;
        tracing::info!(key_id = %record.id, actor = %caller.key_id, "key updated");
        Ok(Response::new(convert::key_info(&record)))
    }

    async fn disable_key(
        &self,
        request: Request<proto::DisableKeyRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.get_ref();
        let record = self.keys.disable(&caller, &req.key_id, &req.reason, &ctx).await?;
        tracing::info!(key_id = %record.id, actor = %caller.key_id, "key disabled");
        Ok(Response::new(convert::key_info(&record)))
    }

    async fn enable_key(&self, request: Request<proto::EnableKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let record = self.keys.enable(&caller, &request.get_ref().key_id, &ctx).await?;
        tracing::info!(key_id = %record.id, actor = %caller.key_id, "key enabled");
        Ok(Response::new(convert::key_info(&record)))
    }

    async fn revoke_key(&self, request: Request<proto::RevokeKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.get_ref();
        let record = self.keys.revoke(&caller, &req.key_id, &req.reason, &ctx).await?;
        tracing::info!(key_id = %record.id, actor = %caller.key_id, "key revoked");
        Ok(Response::new(convert::key_info(&record)))
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::RotateKeyResponse>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.get_ref();
        let grace = convert::optional_duration("grace_period", req.grace_period)?;
        let rotated = self.keys.rotate(&caller, &req.key_id, grace, &ctx).await?;
        tracing::info!(key_id = %rotated.previous.id, new_key_id = %rotated.record.id, actor = %caller.key_id, "key rotated");
        Ok(Response::new(proto::RotateKeyResponse {
            // A signing key is never presented as a bearer key: its key string is not handed out.
            key: if rotated.signing_secret.is_some() { String::new() } else { rotated.key.expose().to_owned() },
            info: Some(convert::key_info(&rotated.record)),
            previous: Some(convert::key_info(&rotated.previous)),
            signing_secret: rotated.signing_secret.map(|s| s.expose().to_vec()).unwrap_or_default(),
        }))
    }

    async fn sweep_keys(
        &self,
        request: Request<proto::SweepKeysRequest>,
    ) -> Result<Response<proto::SweepKeysResponse>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let dry_run = request.get_ref().dry_run;
        let report = self.keys.sweep_as(&caller, dry_run, &ctx).await?;
        tracing::info!(
            expired = report.expired.len(),
            disabled = report.disabled.len(),
            dry_run,
            actor = %caller.key_id,
            "sweep requested"
        );
        Ok(Response::new(proto::SweepKeysResponse {
            expired: report.expired.iter().map(convert::key_info).collect(),
            disabled: report.disabled.iter().map(convert::key_info).collect(),
            dry_run,
        }))
    }

    async fn report_leak(
        &self,
        request: Request<proto::ReportLeakRequest>,
    ) -> Result<Response<proto::ReportLeakResponse>, Status> {
        let (caller, ctx) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.get_ref();
        let report = self.keys.report_leak(&caller, &req.key, &req.source_url, &ctx).await?;
        Ok(Response::new(proto::ReportLeakResponse {
            key_id: report.key_id.to_string(),
            already_revoked: report.already_revoked,
            revoked_at: report.revoked_at.map(convert::timestamp),
        }))
    }
}
