//! `keyward.v1.AuditService`: reading and checking the audit trail.

use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{auth, convert};
use crate::{
    domain::{
        audit::RecordedEvent,
        audit_reader::AuditReader,
        auth::Authenticator,
        ports::{Hsm, Store},
    },
    proto::{self, audit_service_server::AuditService},
    tls::Identities,
};

pub struct AuditApi<H, S> {
    auth: Arc<Authenticator<H, S>>,
    reader: Arc<AuditReader<S>>,
    identities: Arc<Identities>,
}

impl<H, S> AuditApi<H, S> {
    pub fn new(auth: Arc<Authenticator<H, S>>, reader: Arc<AuditReader<S>>, identities: Arc<Identities>) -> Self {
        Self { auth, reader, identities }
    }
}

/// Events an export or a tail reads per page.
const EXPORT_PAGE: usize = 1000;

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::AuditEvent, Status>> + Send>>;
type EventSender = tokio::sync::mpsc::Sender<Result<proto::AuditEvent, Status>>;

/// Sends a page of events; false once the client has gone away.
async fn send_page(tx: &EventSender, page: &[RecordedEvent]) -> bool {
    for event in page {
        if tx.send(Ok(convert::audit_event(event))).await.is_err() {
            return false;
        }
    }
    true
}

#[tonic::async_trait]
impl<H: Hsm, S: Store> AuditService for AuditApi<H, S> {
    type ExportEventsStream = EventStream;

    async fn export_events(
        &self,
        request: Request<proto::ExportEventsRequest>,
    ) -> Result<Response<Self::ExportEventsStream>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        if req.to_seq != 0 && req.to_seq < req.from_seq {
            return Err(crate::domain::error::Error::invalid("to_seq", "must not be below from_seq").into());
        }
        // The first page here, so that a refusal is the call's status rather than a stream error.
        let after = req.from_seq.saturating_sub(1);
        let first = self.reader.export_page(&caller, after, req.to_seq, EXPORT_PAGE)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reader = self.reader.clone();
        tokio::spawn(async move {
            let mut page = first;
            loop {
                let (full, last) = (page.len() == EXPORT_PAGE, page.last().map(|e| e.seq));
                if !send_page(&tx, &page).await {
                    return; // The client went away.
                }
                let (true, Some(last)) = (full, last) else { return };
                page = match reader.export_page(&caller, last, req.to_seq, EXPORT_PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type TailEventsStream = EventStream;

    async fn tail_events(
        &self,
        request: Request<proto::TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let mut durable = self.reader.audit_durable(&caller)?;
        let from = request.get_ref().from_seq;
        let mut after = if from == 0 { *durable.borrow_and_update() } else { from - 1 };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reader = self.reader.clone();
        tokio::spawn(async move {
            loop {
                let head = *durable.borrow_and_update();
                while after < head {
                    let page = match reader.export_page(&caller, after, head, EXPORT_PAGE) {
                        Ok(page) if !page.is_empty() => page,
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    if !send_page(&tx, &page).await {
                        return; // The client went away.
                    }
                    after = page.last().map_or(after, |e| e.seq);
                }
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let head = self.reader.checkpoint(&caller)?;
        Ok(Response::new(head.map_or_else(Default::default, |e| proto::Checkpoint {
            seq: e.seq,
            at: Some(convert::timestamp(e.event.at)),
            mac: e.mac.map(|m| m.to_vec()).unwrap_or_default(),
        })))
    }

    async fn query_events(
        &self,
        request: Request<proto::QueryEventsRequest>,
    ) -> Result<Response<proto::QueryEventsResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        let query = convert::audit_query(&req)?;
        let (events, next) = self.reader.query_events(&caller, &query, req.page_size, &req.page_token)?;
        Ok(Response::new(proto::QueryEventsResponse {
            events: events.iter().map(convert::audit_event).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn key_usage(
        &self,
        request: Request<proto::KeyUsageRequest>,
    ) -> Result<Response<proto::KeyUsageResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        let key = crate::domain::validate::key_id("key_id", &req.key_id)?;
        let (since, until) = convert::usage_window(&req)?;
        let reader = self.reader.clone();
        // A busy key's range can take a while to count: off the async workers.
        let usage = tokio::task::spawn_blocking(move || reader.key_usage(&caller, key, since, until))
            .await
            .map_err(|e| Status::unavailable(format!("counting usage: {e}")))??;
        Ok(Response::new(convert::key_usage(key, usage, req.max_client_ips)?))
    }

    async fn query_usage(
        &self,
        request: Request<proto::QueryUsageRequest>,
    ) -> Result<Response<proto::QueryUsageResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.into_inner();
        let query = convert::usage_query(&req)?;
        let (records, next) = self.reader.query_usage(&caller, &query, req.page_size, &req.page_token)?;
        Ok(Response::new(proto::QueryUsageResponse {
            records: records.iter().map(convert::usage_record).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn verify_chain(
        &self,
        request: Request<proto::VerifyChainRequest>,
    ) -> Result<Response<proto::VerifyChainResponse>, Status> {
        let (caller, _) = auth::caller(&self.auth, &self.identities, &request).await?;
        let req = request.get_ref();
        let report = self.reader.verify_chain(&caller, req.from_seq, req.to_seq).await?;
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
