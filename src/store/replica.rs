//! A cluster node's local copy of the cluster's audit chain: events sealed by whichever node
//! wrote them into the shared store arrive here in sequence order and are appended with the same
//! indexes and head as events sealed here, so QueryEvents, the tail and VerifyChain read locally.

use super::{SledStore, unavailable};
use crate::domain::ports::{AUDIT_MAC_LEN, StoreError};
use crate::store::writer::AUDIT_CHECKPOINT;

/// An audit event as some node of the cluster sealed and stored it: its sequence number and the
/// stored value (`codec::encode_sealed`'s output, the same bytes the sled `audit` tree holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEvent {
    pub seq: u64,
    pub value: Vec<u8>,
}

impl SledStore {
    /// Appends events sealed elsewhere, in sequence order, to this database's copy of the chain,
    /// with the same key and time indexes and `audit_head` meta as events sealed here, in one
    /// batch of the write combiner; `audit_head` and `audit_durable` advance when it resolves.
    /// It does not wait for a flush (sled flushes within 500 ms): the events are durable in
    /// etcd already, and a copy that loses its last ones in a crash copies them again at start.
    /// Events already held (below the next sequence number) are skipped when their stored value
    /// is identical. A held event whose value differs, a gap, or a value that does not decode or
    /// is not sealed is `StoreError::Corrupt`, and then none of `events` is written.
    pub async fn append_replicated(&self, events: Vec<SealedEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write_then(
            move |t| {
                for event in &events {
                    t.append_sealed(event.seq, &event.value)?;
                }
                Ok(())
            },
            super::Flush::Later,
        )
        .await
        .map_err(StoreError::from)
    }

    /// Starts this (empty) copy of the chain after the cluster's checkpoint: the events up to
    /// `seq` were trimmed from etcd before this node copied them; the next one chains to `mac`.
    /// `VerifyChain` then checks from `seq + 1`. `Corrupt` if the copy holds events already.
    pub async fn start_after_checkpoint(&self, seq: u64, mac: [u8; AUDIT_MAC_LEN]) -> Result<(), StoreError> {
        self.write(move |t| t.start_after_checkpoint(seq, mac)).await.map_err(StoreError::from)
    }

    /// Where this copy of the chain begins if it was started from a cluster checkpoint.
    pub fn audit_checkpoint(&self) -> Result<Option<(u64, [u8; AUDIT_MAC_LEN])>, StoreError> {
        checkpoint(&self.0.meta)
    }

    /// The chain head of this copy: the last sequence number (0 when empty) and its MAC (zeros
    /// when empty), as of the last committed write.
    pub fn audit_head(&self) -> (u64, [u8; AUDIT_MAC_LEN]) {
        let head = self.0.writer.head();
        (head.next_seq - 1, head.last_mac)
    }
}

/// Where this copy of the chain begins, if it was started from a cluster checkpoint.
pub(super) fn checkpoint(meta: &sled::Tree) -> Result<Option<(u64, [u8; AUDIT_MAC_LEN])>, StoreError> {
    let Some(value) = meta.get(AUDIT_CHECKPOINT).map_err(unavailable)? else { return Ok(None) };
    let corrupt = || StoreError::Corrupt("the audit checkpoint".into());
    if value.len() != 8 + AUDIT_MAC_LEN {
        return Err(corrupt());
    }
    let seq = u64::from_be_bytes(value[..8].try_into().map_err(|_| corrupt())?);
    Ok(Some((seq, value[8..].try_into().map_err(|_| corrupt())?)))
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
