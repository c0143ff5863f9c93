//! Browsing keys, for the console: every key matching the filters, sorted as a whole by the
//! key index and shown one page at a time by position, with the total. Only the page's records
//! are read from the store. ListKeys (id order, resumable tokens) stays the API for automation.

use super::KeyAdmin;
use crate::domain::{
    access::{Caller, Permission},
    error::{Error, Result},
    key::KeyRecord,
    key_index::{KeySummary, SortBy},
    listing::ListFilter,
    ports::{Hsm, Store},
};

/// The most keys one page shows.
pub const MAX_BROWSE_PAGE: usize = 500;

/// One page of a sorted, filtered list of keys.
#[derive(Debug)]
pub struct KeyPage {
    /// The keys at `offset..offset + keys.len()` of the sorted list, as they stand now.
    pub keys: Vec<KeyRecord>,
    /// How many keys match the filters (that the caller may see).
    pub total: usize,
    pub offset: usize,
}

/// What to show of the sorted list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub sort: SortBy,
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
}

impl<H: Hsm, S: Store> KeyAdmin<H, S> {
    /// The keys matching `filter` that the caller may read (a team-scoped reader: its teams'
    /// keys), sorted and cut to `window`. Reads the key index, then the page's records.
    pub fn browse(&self, caller: &Caller, filter: &ListFilter, window: Window) -> Result<KeyPage> {
        let reach = self.access.reach(caller, Permission::KeysRead)?;
        if window.limit == 0 || window.limit > MAX_BROWSE_PAGE {
            return Err(Error::invalid("page_size", format!("must be between 1 and {MAX_BROWSE_PAGE}")));
        }
        let index = self.deps.store.key_index()?;
        let keep = |k: &KeySummary| filter.matches_summary(k) && reach.covers(k.owner.as_deref());
        let (ids, total) = match window.sort {
            SortBy::Created => index.window_by_creation(keep, window.descending, window.offset, window.limit),
            sort => {
                let selected = index.select(keep, sort, window.descending);
                let ids = selected.iter().skip(window.offset).take(window.limit).map(|s| s.id).collect();
                (ids, selected.len())
            }
        };
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            // The record may have changed since the index was read: its owner is checked again.
            if let Some(record) = self.deps.store.get_key(id)?
                && reach.covers(record.owner.as_deref())
            {
                keys.push(self.view(record));
            }
        }
        Ok(KeyPage { keys, total, offset: window.offset })
    }
}
