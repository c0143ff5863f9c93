//! Keeps etcd's share of the audit trail bounded: the newest `cluster.audit_keep_events` events
//! stay in etcd; older ones are deleted behind `audit/checkpoint` (the last deleted event's
//! sequence number and MAC), in one transaction. Every node keeps the whole chain in its own
//! database; a node that starts with an empty copy after a trim starts it at the checkpoint.
//! Any node may trim: the transaction compares the checkpoint, so two never trim the same range.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use tokio_util::sync::CancellationToken;

use super::{etcd_error, layout::Layout, view::Head};
use crate::{domain::ports::StoreError, store::codec};

/// How often a node looks whether there is something to trim.
const EVERY: Duration = Duration::from_secs(1);
/// Events deleted per transaction, at most (a trim catches up over several rounds).
const MAX_PER_ROUND: u64 = 10_000;

pub struct Trimmer {
    pub client: Client,
    pub layout: Layout,
    pub keep: u64,
    pub request_timeout: Duration,
}

/// The oldest audit event still in etcd, if any.
pub async fn oldest_event(client: &Client, layout: &Layout, revision: Option<i64>) -> Result<Option<u64>, StoreError> {
    let mut options = GetOptions::new().with_range(layout.audit_events_end()).with_limit(1).with_keys_only();
    if let Some(rev) = revision {
        options = options.with_revision(rev);
    }
    let found = client.kv_client().get(layout.audit_event(0), Some(options)).await.map_err(etcd_error)?;
    Ok(found.kvs().first().and_then(|kv| match layout.entry(kv.key()) {
        Some(super::layout::Entry::AuditEvent(seq)) => Some(seq),
        _ => None,
    }))
}

/// The checkpoint, if any: the last trimmed event's sequence number and MAC, and its revision.
pub async fn checkpoint(client: &Client, layout: &Layout, revision: Option<i64>) -> Result<Option<Head>, StoreError> {
    let options = revision.map(|rev| GetOptions::new().with_revision(rev));
    let found = client.kv_client().get(layout.audit_checkpoint(), options).await.map_err(etcd_error)?;
    found.kvs().first().map(|kv| Head::decode(kv.value(), kv.mod_revision())).transpose()
}

impl Trimmer {
    /// Trims now and then until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if cancel.run_until_cancelled(tokio::time::sleep(EVERY)).await.is_none() {
                return;
            }
            match tokio::time::timeout(self.request_timeout * 4, self.trim()).await {
                Ok(Ok(Some(upto))) => {
                    tracing::debug!(upto, "trimmed the audit trail in etcd (every node keeps its copy)")
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "trimming the audit trail in etcd failed; trying again later")
                }
                Err(_) => tracing::debug!("trimming the audit trail in etcd timed out; trying again later"),
            }
        }
    }

    /// Deletes the events beyond the newest `keep`; returns the new checkpoint's sequence number.
    pub async fn trim(&self) -> Result<Option<u64>, StoreError> {
        let mut kv = self.client.kv_client();
        let head = kv.get(self.layout.audit_head(), None).await.map_err(etcd_error)?;
        let Some(head) = head.kvs().first().map(|kv| Head::decode(kv.value(), kv.mod_revision())).transpose()? else {
            return Ok(None);
        };
        let Some(oldest) = oldest_event(&self.client, &self.layout, None).await? else { return Ok(None) };
        if head.seq < oldest || head.seq - oldest < self.keep {
            return Ok(None);
        }
        let upto = (head.seq - self.keep).min(oldest + MAX_PER_ROUND - 1);
        let last = kv.get(self.layout.audit_event(upto), None).await.map_err(etcd_error)?;
        let Some(last) = last.kvs().first() else { return Ok(None) };
        let mac = codec::decode_audit(last.value())?.mac.unwrap_or_default();
        let previous = checkpoint(&self.client, &self.layout, None).await?;
        let compare = match previous {
            Some(p) if p.seq >= upto => return Ok(None),
            Some(p) => Compare::mod_revision(self.layout.audit_checkpoint(), CompareOp::Equal, p.rev),
            None => Compare::create_revision(self.layout.audit_checkpoint(), CompareOp::Equal, 0),
        };
        let new = Head { seq: upto, mac, rev: 0 };
        let txn = Txn::new().when([compare]).and_then([
            TxnOp::put(self.layout.audit_checkpoint(), new.encode(), None),
            TxnOp::delete(
                self.layout.audit_event(0),
                Some(DeleteOptions::new().with_range(self.layout.audit_event(upto + 1))),
            ),
        ]);
        let done = kv.txn(txn).await.map_err(etcd_error)?;
        Ok(done.succeeded().then_some(upto))
    }
}
