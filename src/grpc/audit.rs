//! `keyward.v1.AuditService`: reading and checking the audit trail.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        ports::{Hsm, Store},
        service::Keys,
    },
    proto::{self, audit_service_server::AuditService},
};

pub struct AuditApi<H, S> {
    keys: Arc<Keys<H, S>>,
}

impl<H, S> AuditApi<H, S> {
    pub fn new(keys: Arc<Keys<H, S>>) -> Self {
        Self { keys }
    }
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> AuditService for AuditApi<H, S> {
    async fn query_events(
        &self,
        request: Request<proto::QueryEventsRequest>,
    ) -> Result<Response<proto::QueryEventsResponse>, Status> {
        let (caller, _) = auth::caller(&self.keys, &request).await?;
        let req = request.into_inner();
        let query = convert::audit_query(&req)?;
        let (events, next) = self.keys.query_events(&caller, &query, req.page_size, &req.page_token)?;
        Ok(Response::new(proto::QueryEventsResponse {
            events: events.iter().map(convert::audit_event).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn verify_chain(
        &self,
        request: Request<proto::VerifyChainRequest>,
    ) -> Result<Response<proto::VerifyChainResponse>, Status> {
        let (caller, _) = auth::caller(&self.keys, &request).await?;
        let req = request.get_ref();
        let report = self.keys.verify_chain(&caller, req.from_seq, req.to_seq).await?;
        if let Some((seq, why)) = &report.broken {
            tracing::warn!(seq, problem = %why, "audit chain check found a broken event");
        }
        Ok(Response::new(proto::VerifyChainResponse {
            ok: report.broken.is_none(),
            first_seq: report.first,
            last_seq: report.last,
            checked: report.checked,
            unsealed: report.unsealed,
            broken_seq: report.broken.as_ref().map_or(0, |(s, _)| *s),
            problem: report.broken.map(|(_, why)| why).unwrap_or_default(),
        }))
    }
}
