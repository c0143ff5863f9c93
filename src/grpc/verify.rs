//! `keyward.v1.VerifyService`: the data plane.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        auth::Authenticator,
        error::Error,
        ports::{Hsm, Store},
        verification::{SignedRequest, Verifier, VerifyRequest},
    },
    metrics,
    proto::{self, verify_service_server::VerifyService},
    tls::Identities,
};

pub struct VerifyApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    verifier: Arc<Verifier<H, S>>,
    identities: Arc<Identities>,
}

impl<H, S> VerifyApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, verifier: Arc<Verifier<H, S>>, identities: Arc<Identities>) -> Self {
        Self { auth, verifier, identities }
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> VerifyService for VerifyApi<H, S> {
    async fn verify_key(
        &self,
        request: Request<proto::VerifyKeyRequest>,
    ) -> Result<Response<proto::VerifyKeyResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        let verification = self
            .verifier
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
                if matches!(e, Error::Blocked(_)) {
                    metrics::get().brute_force_refused("verify");
                }
            })?;
        tracing::debug!(code = ?verification.code, key_id = ?verification.record.as_ref().map(|r| r.id), "key verified");
        let response = convert::verification(verification);
        metrics::get().verify_outcome(response.code().short_name());
        Ok(Response::new(response))
    }

    async fn verify_signature(
        &self,
        request: Request<proto::VerifySignatureRequest>,
    ) -> Result<Response<proto::VerifyKeyResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        let verification = self
            .verifier
            .verify_signature(
                &caller,
                SignedRequest {
                    signature_base: &req.signature_base,
                    signature: &req.signature,
                    client_ip: &req.client_ip,
                    required_scopes: &req.required_scopes,
                    cost: req.cost,
                },
            )
            .await
            .inspect_err(|e| {
                if matches!(e, Error::Blocked(_)) {
                    metrics::get().brute_force_refused("verify_signature");
                }
            })?;
        tracing::debug!(code = ?verification.code, key_id = ?verification.record.as_ref().map(|r| r.id), "signature verified");
        let response = convert::verification(verification);
        metrics::get().verify_outcome(response.code().short_name());
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_codes_are_named_without_their_prefix() {
        assert_eq!(proto::VerifyCode::Valid.short_name(), "VALID");
        assert_eq!(proto::VerifyCode::Invalid.short_name(), "INVALID");
        assert_eq!(proto::VerifyCode::RateLimited.short_name(), "RATE_LIMITED");
    }

    #[test]
    fn the_domain_names_its_codes_as_the_wire_does() {
        for code in crate::domain::policy::VerifyCode::ALL {
            assert_eq!(code.name(), convert::verify_code(code).short_name());
        }
    }
}
