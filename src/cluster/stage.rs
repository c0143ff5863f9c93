//! What one cluster write reads and writes: a `Stage` gives a mutation its reads (from the node's
//! view, or from a fresh etcd read after a lost compare) and records each read's revision as a
//! compare, so that the transaction applies only if nothing it read changed in the meantime.

use std::collections::BTreeMap;

use super::{layout::Layout, view::Head};
use crate::domain::{
    audit::AuditEvent,
    error::Error,
    key::{KeyId, KeyRecord},
    ports::{MasterState, StoreError},
};

/// Why a mutation gave up: a store failure, or the domain's decision (returned as is).
#[derive(Debug)]
pub enum Abort {
    Store(StoreError),
    Domain(Error),
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Store(e)
    }
}

impl From<Abort> for Error {
    fn from(a: Abort) -> Self {
        match a {
            Abort::Store(e) => e.into(),
            Abort::Domain(e) => e,
        }
    }
}

impl From<Abort> for StoreError {
    fn from(a: Abort) -> Self {
        match a {
            Abort::Store(e) => e,
            Abort::Domain(e) => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Where a write's reads come from, with the etcd revision each value was written at (0: absent).
pub trait Source: Sync {
    fn key(&self, id: KeyId) -> Result<Option<(KeyRecord, i64)>, StoreError>;
    fn master(&self) -> Result<Option<(MasterState, i64)>, StoreError>;
    /// The revision of the cluster marker (0: no cluster under the prefix).
    fn cluster(&self) -> i64;
    fn head(&self) -> Head;
}

/// Writes and compares of one or more mutations, to commit in one etcd transaction.
#[derive(Default)]
pub struct Changes {
    pub keys: BTreeMap<KeyId, KeyRecord>,
    pub master: Option<MasterState>,
    /// The cluster marker's value, when this creates the cluster.
    pub marker: Option<Vec<u8>>,
    pub events: Vec<AuditEvent>,
    /// etcd key → the mod revision it must still have (0: must not exist).
    pub compares: BTreeMap<Vec<u8>, i64>,
}

impl Changes {
    /// etcd puts these changes need (the audit head included when there are events).
    pub fn puts(&self) -> usize {
        let head = usize::from(!self.events.is_empty());
        self.keys.len()
            + usize::from(self.master.is_some())
            + usize::from(self.marker.is_some())
            + self.events.len()
            + head
    }

    pub fn absorb(&mut self, other: Changes) {
        self.keys.extend(other.keys);
        if other.master.is_some() {
            self.master = other.master;
        }
        if other.marker.is_some() {
            self.marker = other.marker;
        }
        self.events.extend(other.events);
        for (name, rev) in other.compares {
            self.compares.entry(name).or_insert(rev);
        }
    }

    /// Whether `other` can join these changes without passing etcd's limit of operations per
    /// transaction (`max_ops`, for the puts and for the compares, the head's included).
    pub fn fits_with(&self, other: &Changes, max_ops: usize) -> bool {
        let mut puts = self.puts() + other.puts();
        if !self.events.is_empty() && !other.events.is_empty() {
            puts -= 1; // One head for both.
        }
        let compares = self.compares.len() + other.compares.len() + 1;
        puts <= max_ops && compares <= max_ops
    }
}

/// One mutation's view: reads see the batch's earlier writes, then this mutation's own; its
/// writes join the batch only if it succeeds.
pub struct Stage<'a> {
    source: &'a dyn Source,
    layout: &'a Layout,
    batch: &'a Changes,
    own: Changes,
}

impl<'a> Stage<'a> {
    pub fn new(source: &'a dyn Source, layout: &'a Layout, batch: &'a Changes) -> Self {
        Self { source, layout, batch, own: Changes::default() }
    }

    pub fn into_changes(self) -> Changes {
        self.own
    }

    fn compare(&mut self, name: Vec<u8>, rev: i64) {
        if !self.batch.compares.contains_key(&name) {
            self.own.compares.entry(name).or_insert(rev);
        }
    }

    pub fn key(&mut self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(record) = self.own.keys.get(&id).or_else(|| self.batch.keys.get(&id)) {
            return Ok(Some(record.clone()));
        }
        let found = self.source.key(id)?;
        self.compare(self.layout.key(id), found.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(found.map(|(record, _)| record))
    }

    pub fn put_key(&mut self, record: KeyRecord) {
        self.own.keys.insert(record.id, record);
    }

    pub fn master(&mut self) -> Result<Option<MasterState>, StoreError> {
        if let Some(master) = self.own.master.as_ref().or(self.batch.master.as_ref()) {
            return Ok(Some(master.clone()));
        }
        let found = self.source.master()?;
        self.compare(self.layout.master(), found.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(found.map(|(master, _)| master))
    }

    pub fn put_master(&mut self, master: MasterState) {
        self.own.master = Some(master);
    }

    /// Creates the cluster under the prefix; `AlreadyInitialized` if one is there.
    pub fn create_cluster(&mut self, marker: Vec<u8>) -> Result<(), StoreError> {
        let rev = self.source.cluster();
        self.compare(self.layout.cluster(), rev);
        if rev != 0 || self.master()?.is_some() {
            return Err(StoreError::AlreadyInitialized);
        }
        self.own.marker = Some(marker);
        Ok(())
    }

    pub fn append(&mut self, event: AuditEvent) {
        self.own.events.push(event);
    }
}
