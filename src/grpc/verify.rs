//! `keyward.v1.VerifyService`: the data plane.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        error::Error,
        ports::{Hsm, Store},
        service::Keys,
        verify::VerifyRequest,
    },
    metrics,
    proto::{self, verify_service_server::VerifyService},
    tls::Identities,
};

/// The verify code's name without its `VERIFY_CODE_` prefix: `VALID`, `INVALID`, ….
fn verify_code_name(code: proto::VerifyCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("VERIFY_CODE_").unwrap_or(name)
}

pub struct VerifyApi<H, S> {
    keys: Arc<Keys<H, S>>,
    identities: Arc<Identities>,
}

impl<H, S> VerifyApi<H, S> {
    pub fn new(keys: Arc<Keys<H, S>>, identities: Arc<Identities>) -> Self {
        Self { keys, identities }
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> VerifyService for VerifyApi<H, S> {
    async fn verify_key(
        &self,
        request: Request<proto::VerifyKeyRequest>,
    ) -> Result<Response<proto::VerifyKeyResponse>, Status> {
        let (caller, _) = auth::caller(&self.keys, &self.identities, &request).await?;
        let req = request.into_inner();
        let verification = self
            .keys
            .verify(
                &caller,
                VerifyRequest {
                    key: &req.key,
                    client_ip: &req.client_ip,
                    required_scopes: &req.required_scopes,
                    cost: req.cost,
                },
            )
            .await
            .inspect_err(|e| {
                if matches!(e, Error::Throttled(_)) {
                    metrics::get().brute_force_refused("verify");
                }
            })?;
        tracing::debug!(code = ?verification.code, key_id = ?verification.record.as_ref().map(|r| r.id), "key verified");
        let response = convert::verification(verification);
        metrics::get().verify_outcome(verify_code_name(response.code()));
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_codes_are_named_without_their_prefix() {
        assert_eq!(verify_code_name(proto::VerifyCode::Valid), "VALID");
        assert_eq!(verify_code_name(proto::VerifyCode::Invalid), "INVALID");
        assert_eq!(verify_code_name(proto::VerifyCode::RateLimited), "RATE_LIMITED");
    }
}
