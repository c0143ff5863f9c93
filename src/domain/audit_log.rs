//! Reading the audit trail: QueryEvents (through the store's key and time indexes) and
//! VerifyChain (every event's MAC checked in the HSM).

use super::{
    audit::{AuditQuery, ChainReport, RecordedEvent},
    error::{Error, Result},
    ports::{Hsm, Store},
    service::{Caller, Keys, Permission},
    validate,
};

/// Index entries one QueryEvents page may read before it answers, even with a short page.
pub const MAX_SCAN: usize = 10_000;

fn fingerprint(query: &impl std::fmt::Debug) -> String {
    blake3::hash(format!("{query:?}").as_bytes()).to_hex()[..16].to_owned()
}

/// Lowercase hex (page tokens, MACs in exports).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A page token: where the next page resumes, bound to the query it came from.
pub(super) fn token(query: &impl std::fmt::Debug, cursor: &[u8]) -> String {
    format!("{}.{}", hex(cursor), fingerprint(query))
}

/// The cursor in `token`, if it came from a page of `query` and has a length `fits`.
pub(super) fn resume(
    query: &impl std::fmt::Debug,
    token: &str,
    fits: impl Fn(usize) -> bool,
) -> Result<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token from a previous response with these same filters");
    let (cursor, print) = token.split_once('.').ok_or_else(bad)?;
    if print != fingerprint(query) {
        return Err(bad());
    }
    unhex(cursor).filter(|c| fits(c.len())).map(Some).ok_or_else(bad)
}

impl<H: Hsm, S: Store> Keys<H, S> {
    /// One page of audit events matching `query`, and the token for the next page if there may
    /// be more. A page reads at most `MAX_SCAN` index entries, so it may come back short.
    pub fn query_events(
        &self,
        caller: &Caller,
        query: &AuditQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<RecordedEvent>, Option<String>)> {
        self.authorize(caller, Permission::AuditRead)?;
        if let (Some(since), Some(until)) = (query.since, query.until)
            && since >= until
        {
            return Err(Error::invalid("until", "must be after since"));
        }
        let size = validate::page_size(page_size)?;
        let cursor = resume(query, page_token, |n| n == 8 || n == 16 || n == 24)?;
        let (events, next) = self.store.query_audit(query, cursor.as_deref(), size, MAX_SCAN)?;
        Ok((events, next.map(|c| token(query, &c))))
    }

    /// Up to `limit` events with a sequence number above `after` and at most `to` (0: no
    /// bound), oldest first: one page of an export.
    pub fn export_page(&self, caller: &Caller, after: u64, to: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.authorize(caller, Permission::AuditRead)?;
        let mut page = self.store.audit_after(after, limit)?;
        if to != 0 {
            page.retain(|e| e.seq <= to);
        }
        Ok(page)
    }

    /// Watches the newest durable event's sequence number (TailEvents).
    pub fn audit_durable(&self, caller: &Caller) -> Result<tokio::sync::watch::Receiver<u64>> {
        self.authorize(caller, Permission::AuditRead)?;
        Ok(self.store.audit_durable())
    }

    /// The chain's head: the newest event (with its MAC), if any.
    pub fn checkpoint(&self, caller: &Caller) -> Result<Option<RecordedEvent>> {
        self.authorize(caller, Permission::AuditRead)?;
        let newest = AuditQuery { newest_first: true, ..Default::default() };
        Ok(self.store.query_audit(&newest, None, 1, 1)?.0.pop())
    }

    /// Checks the chain over `from..=to` (0: from the first event, to the last).
    pub async fn verify_chain(&self, caller: &Caller, from: u64, to: u64) -> Result<ChainReport> {
        self.authorize(caller, Permission::AuditRead)?;
        if to != 0 && to < from {
            return Err(Error::invalid("to_seq", "must not be below from_seq"));
        }
        let store = self.store.clone();
        let to = (to != 0).then_some(to);
        let report = tokio::task::spawn_blocking(move || store.verify_chain(from, to))
            .await
            .map_err(|e| Error::Unavailable(format!("chain check: {e}")))??;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let q = AuditQuery { newest_first: true, ..Default::default() };
        let t = token(&q, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let fits = |n| n == 8;
        assert_eq!(resume(&q, &t, fits).unwrap(), Some(vec![1, 2, 3, 4, 5, 6, 7, 8]));
        let other = AuditQuery::default();
        assert!(matches!(resume(&other, &t, fits), Err(Error::InvalidArgument { field: "page_token", .. })));
        assert!(resume(&q, &t, |n| n == 13).is_err(), "a cursor of the wrong length");
        assert!(resume(&q, "zz.x", fits).is_err());
        assert_eq!(resume(&q, "", fits).unwrap(), None);
    }
}
