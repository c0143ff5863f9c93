//! The audit reader: the audit trail (QueryEvents, ExportEvents and TailEvents pages, the
//! chain's head, VerifyChain) and the usage log (KeyUsage, QueryUsage), for callers holding
//! `keyward:audit:read` (one key's usage also for readers of that key). Reads only: the store
//! writes both.

use std::{sync::Arc, time::SystemTime};

use super::{
    access::{Access, Caller, Permission},
    audit::{AuditQuery, ChainReport, RecordedEvent},
    audit_log,
    error::{Error, Result},
    key::KeyId,
    ownership::{self, Reach},
    ports::Store,
    scope,
    usage_log::{KeyUsage, MAX_QUERY_SCAN, MAX_USAGE_SCAN, UsageQuery, UsageRecord},
    validate,
};

/// Length of a usage page cursor: a block and a place in it.
const CURSOR_LEN: usize = 17;

pub struct AuditReader<S> {
    store: Arc<S>,
    access: Arc<Access>,
}

impl<S: Store> AuditReader<S> {
    /// Checks permissions with `access`.
    pub fn new(store: Arc<S>, access: Arc<Access>) -> Self {
        Self { store, access }
    }

    /// One page of audit events matching `query`, and the token for the next page if there may
    /// be more. A page reads at most `audit_log::MAX_SCAN` index entries, so it may come back short.
    pub fn query_events(
        &self,
        caller: &Caller,
        query: &AuditQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<RecordedEvent>, Option<String>)> {
        self.access.authorize(caller, Permission::AuditRead)?;
        if let (Some(since), Some(until)) = (query.since, query.until)
            && since >= until
        {
            return Err(Error::invalid("until", "must be after since"));
        }
        let size = validate::page_size(page_size)?;
        let cursor = audit_log::resume(query, page_token, |n| n == 8 || n == 16 || n == 24)?;
        let (events, next) = self.store.query_audit(query, cursor.as_deref(), size, audit_log::MAX_SCAN)?;
        Ok((events, next.map(|c| audit_log::token(query, &c))))
    }

    /// Up to `limit` events with a sequence number above `after` and at most `to` (0: no
    /// bound), oldest first: one page of an export.
    pub fn export_page(&self, caller: &Caller, after: u64, to: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.access.authorize(caller, Permission::AuditRead)?;
        let mut page = self.store.audit_after(after, limit)?;
        if to != 0 {
            page.retain(|e| e.seq <= to);
        }
        Ok(page)
    }

    /// Watches the newest durable event's sequence number (TailEvents).
    pub fn audit_durable(&self, caller: &Caller) -> Result<tokio::sync::watch::Receiver<u64>> {
        self.access.authorize(caller, Permission::AuditRead)?;
        Ok(self.store.audit_durable())
    }

    /// The chain's head: the newest event (with its MAC), if any.
    pub fn checkpoint(&self, caller: &Caller) -> Result<Option<RecordedEvent>> {
        self.access.authorize(caller, Permission::AuditRead)?;
        let newest = AuditQuery { newest_first: true, ..Default::default() };
        Ok(self.store.query_audit(&newest, None, 1, 1)?.0.pop())
    }

    /// Checks the chain over `from..=to` (0: from the first event, to the last).
    pub async fn verify_chain(&self, caller: &Caller, from: u64, to: u64) -> Result<ChainReport> {
        self.access.authorize(caller, Permission::AuditRead)?;
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

    /// One key's verifications over `[since, until)`, counted by code and by client address.
    /// Needs `keyward:audit:read`, or `keyward:keys:read` reaching the key (a team's admin
    /// reads its own keys' usage, as GetKey already shows their counts and last address); a
    /// key outside that reach is `NOT_FOUND`, as with GetKey.
    pub fn key_usage(
        &self,
        caller: &Caller,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
    ) -> Result<KeyUsage> {
        self.authorize_key_usage(caller, key)?;
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(Error::invalid("until", "must be after since"));
        }
        Ok(self.store.key_usage(key, since, until, MAX_USAGE_SCAN)?)
    }

    fn authorize_key_usage(&self, caller: &Caller, key: KeyId) -> Result<()> {
        if scope::any_grants(&caller.scopes, Permission::AuditRead.scope()) {
            return Ok(());
        }
        let reach = Reach::of(&caller.scopes, Permission::KeysRead);
        if reach.is_none() {
            // Neither permission: refused (and counted) as an audit read.
            return self.access.authorize(caller, Permission::AuditRead);
        }
        match self.store.get_key(key)? {
            Some(record) if reach.covers(record.owner.as_deref()) => Ok(()),
            _ => Err(ownership::not_found(key)),
        }
    }

    /// One page of usage records matching `query`, and the token for the next page if there
    /// may be more.
    pub fn query_usage(
        &self,
        caller: &Caller,
        query: &UsageQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<UsageRecord>, Option<String>)> {
        self.access.authorize(caller, Permission::AuditRead)?;
        if let (Some(since), Some(until)) = (query.since, query.until)
            && since >= until
        {
            return Err(Error::invalid("until", "must be after since"));
        }
        let size = validate::page_size(page_size)?;
        let cursor = audit_log::resume(query, page_token, |n| n == CURSOR_LEN)?;
        let (records, next) = self.store.query_usage(query, cursor.as_deref(), size, MAX_QUERY_SCAN)?;
        Ok((records, next.map(|c| audit_log::token(query, &c))))
    }
}

#[cfg(test)]
mod tests;
