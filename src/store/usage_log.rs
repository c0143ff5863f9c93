//! The usage log on sled, in blocks: each write of the writer is one block of records, so a
//! record costs a few bytes of a value rather than a tree entry of its own. One tree, `usage`,
//! so that a block, its index entries, what retention prunes and the record count change in
//! one atomic `apply_batch`:
//!
//! - `b` ‖ start ‖ n → a block: its records, with dictionaries of the key ids, callers and
//!   addresses they use (start: the first record's time in µs since the epoch, big-endian; n: a
//!   tie-breaker). Record times are made monotonic by the single writer, and a block spans at
//!   most `MAX_SPAN`, so blocks are in time order and a range starts one span early;
//! - `k` ‖ key id ‖ start ‖ n → what that key did in that block: first and last time, counts
//!   by code and by address. KeyUsage adds these up and opens a block only at a range's edges;
//! - `c` → how many records there are (for retention by count).
//!
//! Durability is the store's group commit, awaited by the caller.

use std::{collections::HashMap, ops::Bound, sync::Mutex, time::SystemTime};

use super::usage_codec::{Summary, block_head, corrupt, decode_block, encode_block, micros, time_of};
use crate::domain::{
    key::KeyId,
    ports::StoreError,
    usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
};

const COUNT: &[u8] = b"c";
const BLOCK: u8 = b'b';
const BY_KEY: u8 = b'k';
/// The longest time one block covers, in µs.
const MAX_SPAN: u64 = 60_000_000;
/// Most blocks one write prunes (the next write carries on).
const MAX_PRUNE: usize = 64;
/// A query cursor: a block key and a record's place in it.
const CURSOR_LEN: usize = 13 + 4;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn block_key(start: u64, n: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = BLOCK;
    k[1..9].copy_from_slice(&start.to_be_bytes());
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

fn index_key(id: KeyId, start: u64, n: u32) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[0] = BY_KEY;
    k[1..17].copy_from_slice(id.as_bytes());
    k[17..25].copy_from_slice(&start.to_be_bytes());
    k[25..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The start and tie-breaker at the end of a block or index key.
fn stamp_of(key: &[u8]) -> Result<(u64, u32), StoreError> {
    let tail = key.get(key.len().checked_sub(12).ok_or_else(corrupt)?..).ok_or_else(corrupt)?;
    Ok((
        u64::from_be_bytes(tail[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(tail[8..].try_into().expect("4 bytes")),
    ))
}

/// Stamped records (in time order) cut into blocks that each span less than `MAX_SPAN` from
/// their first record and hold at most `u32::MAX` records.
fn spans<'a, T>(stamped: &'a [(u64, T)]) -> impl Iterator<Item = &'a [(u64, T)]> + 'a {
    let mut rest = stamped;
    std::iter::from_fn(move || {
        let first = rest.first()?.0;
        let len = rest.iter().take(u32::MAX as usize).take_while(|(at, _)| at - first < MAX_SPAN).count();
        let (block, tail) = rest.split_at(len);
        rest = tail;
        Some(block)
    })
}

/// Where the writer stands: the count, the newest block's key and the newest record's time.
#[derive(Clone, Copy, Default)]
struct Tail {
    count: u64,
    block: (u64, u32),
    last: u64,
}

pub struct UsageTree {
    tree: sled::Tree,
    /// Held while a write is built and applied: writes are serialized.
    tail: Mutex<Tail>,
}

impl UsageTree {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("usage").map_err(unavailable)?;
        let count = match tree.get(COUNT).map_err(unavailable)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt())?),
            None => 0,
        };
        let mut tail = Tail { count, ..Tail::default() };
        if let Some(entry) = tree.scan_prefix([BLOCK]).next_back() {
            let (k, v) = entry.map_err(unavailable)?;
            tail.block = stamp_of(&k)?;
            tail.last = block_head(&v)?.last;
        }
        Ok(Self { tree, tail: Mutex::new(tail) })
    }

    /// How many records are kept.
    pub fn count(&self) -> u64 {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// Writes `records` as blocks and prunes per `retention` (whole blocks, oldest first, at
    /// most `MAX_PRUNE` per call: the next call carries on), in one atomic batch. Not yet
    /// durable: the caller awaits the flush. Returns how many records were pruned.
    pub fn append(&self, records: &[UsageRecord], retention: Retention) -> Result<u64, StoreError> {
        let mut guard = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut tail = *guard;
        let mut batch = sled::Batch::default();
        let incoming = records.len() as u64;
        // A write larger than the limit by itself keeps its newest records.
        let skipped = retention.max_records.map_or(0, |m| incoming.saturating_sub(m));
        let records = &records[skipped as usize..];
        let over = retention.max_records.map_or(0, |m| (tail.count + records.len() as u64).saturating_sub(m));
        let pruned = self.prune(&mut batch, over, retention.older_than.map_or(0, micros))?;
        // Monotonic times, so that the time order is the write order; a block per span.
        let mut stamped = Vec::with_capacity(records.len());
        for r in records {
            tail.last = tail.last.max(micros(r.at));
            stamped.push((tail.last, r));
        }
        for block in spans(&stamped) {
            let start = block[0].0;
            tail.block = if start == tail.block.0 {
                (start, tail.block.1.checked_add(1).ok_or_else(|| unavailable("too many usage blocks in one µs"))?)
            } else {
                (start, 0)
            };
            batch.insert(&block_key(tail.block.0, tail.block.1)[..], encode_block(start, block));
            let mut summaries: HashMap<KeyId, Summary> = HashMap::new();
            for (at, r) in block {
                if let Some(id) = r.key_id {
                    summaries.entry(id).or_default().add(*at, r);
                }
            }
            for (id, summary) in summaries {
                batch.insert(&index_key(id, tail.block.0, tail.block.1)[..], summary.encode());
            }
        }
        tail.count = (tail.count + records.len() as u64).saturating_sub(pruned);
        batch.insert(COUNT, &tail.count.to_be_bytes());
        self.tree.apply_batch(batch).map_err(unavailable)?;
        *guard = tail;
        Ok(pruned + skipped)
    }

    /// Adds to `batch` the removal of the oldest blocks, with their index entries, while fewer
    /// than `over` records are removed or the block is older than `cutoff` (µs). Returns how
    /// many records.
    fn prune(&self, batch: &mut sled::Batch, over: u64, cutoff: u64) -> Result<u64, StoreError> {
        let mut pruned = 0;
        for entry in self.tree.scan_prefix([BLOCK]).take(MAX_PRUNE) {
            let (key, value) = entry.map_err(unavailable)?;
            let head = block_head(&value)?;
            if pruned >= over && head.last >= cutoff {
                break;
            }
            let (start, n) = stamp_of(&key)?;
            for id in head.keys {
                batch.remove(&index_key(id, start, n)[..]);
            }
            batch.remove(key);
            pruned += head.count;
        }
        Ok(pruned)
    }

    /// Key `key`'s records in `[since, until)`, counted, reading about `max_scan` of them at most.
    pub fn key_usage(
        &self,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        max_scan: usize,
    ) -> Result<KeyUsage, StoreError> {
        let (since, until) = (since.map_or(0, micros), until.map_or(u64::MAX, micros));
        let start = index_key(key, since.saturating_sub(MAX_SPAN), 0);
        let end = index_key(key, until, 0);
        let mut usage = KeyUsage::default();
        let mut scanned = 0u64;
        for entry in self.tree.range(start..end) {
            let (k, v) = entry.map_err(unavailable)?;
            let summary = Summary::decode(&v)?;
            if summary.last < since || summary.first >= until {
                continue;
            }
            if scanned >= max_scan as u64 {
                usage.resume_at = Some(time_of(summary.first.max(since)));
                break;
            }
            if since <= summary.first && summary.last < until {
                summary.add_to(&mut usage);
                scanned += summary.by_code.values().sum::<u64>();
                continue;
            }
            // A block across the range's edge: its records, one by one.
            let (block_start, n) = stamp_of(&k)?;
            let Some(bytes) = self.tree.get(block_key(block_start, n)).map_err(unavailable)? else { continue };
            for r in decode_block(block_start, &bytes)? {
                let at = micros(r.at);
                if r.key_id == Some(key) && since <= at && at < until {
                    usage.add(r.at, r.code, r.client_ip);
                    scanned += 1;
                }
            }
        }
        Ok(usage)
    }

    /// Up to `limit` records matching `query`, resuming after `cursor`, examining about
    /// `max_scan` records at most; and the cursor to resume from if there may be more. With a
    /// key, only the blocks that hold it are read.
    pub fn query(
        &self,
        query: &UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Vec<u8>>), StoreError> {
        let since = query.since.map_or(0, micros);
        let until = query.until.map_or(u64::MAX, micros);
        let cursor = match cursor {
            None => None,
            Some(c) if c.len() == CURSOR_LEN && c[0] == BLOCK => {
                let (start, n) = stamp_of(&c[..13])?;
                Some(((start, n), u32::from_be_bytes(c[13..].try_into().expect("4 bytes")) as usize))
            }
            Some(_) => return Err(corrupt()),
        };
        let key_of = |start: u64, n: u32| match query.key {
            Some(id) => index_key(id, start, n).to_vec(),
            None => block_key(start, n).to_vec(),
        };
        let first = key_of(since.saturating_sub(MAX_SPAN), 0);
        let end = key_of(until, 0);
        let (lower, upper) = match (cursor, query.newest_first) {
            (Some(((s, n), _)), false) => (Bound::Included(key_of(s, n)), Bound::Excluded(end)),
            (Some(((s, n), _)), true) => (Bound::Included(first), Bound::Included(key_of(s, n))),
            (None, _) => (Bound::Included(first), Bound::Excluded(end)),
        };
        let range = self.tree.range::<Vec<u8>, _>((lower, upper));
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if query.newest_first { Box::new(range.rev()) } else { Box::new(range) };
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut examined: Option<((u64, u32), usize)> = None;
        for entry in entries {
            let (k, v) = entry.map_err(unavailable)?;
            let stamp = stamp_of(&k)?;
            let records = if query.key.is_some() {
                let Some(bytes) = self.tree.get(block_key(stamp.0, stamp.1)).map_err(unavailable)? else { continue };
                decode_block(stamp.0, &bytes)?
            } else {
                decode_block(stamp.0, &v)?
            };
            let mut order: Box<dyn Iterator<Item = usize>> =
                if query.newest_first { Box::new((0..records.len()).rev()) } else { Box::new(0..records.len()) };
            if let Some((at, place)) = cursor
                && at == stamp
            {
                order = Box::new(order.filter(move |i| if query.newest_first { *i < place } else { *i > place }));
            }
            for i in order {
                if query.key.is_some_and(|k| records[i].key_id != Some(k)) {
                    continue; // Another key's record in a block this key is in: not counted.
                }
                if let Some(((start, n), place)) = examined
                    && (found.len() == limit || scanned >= max_scan)
                {
                    // Resume after (or, newest first, before) the last record examined.
                    let mut next = block_key(start, n).to_vec();
                    next.extend_from_slice(&(place as u32).to_be_bytes());
                    return Ok((found, Some(next)));
                }
                scanned += 1;
                examined = Some((stamp, i));
                if query.matches(&records[i]) {
                    found.push(records[i].clone());
                }
            }
        }
        Ok((found, None))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{domain::policy::VerifyCode, store::usage_codec::tests::record};

    fn open() -> (tempfile::TempDir, sled::Db, UsageTree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = UsageTree::open(&db).unwrap();
        (dir, db, tree)
    }

    fn at(s: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(s))
    }

    #[test]
    fn key_usage_adds_whole_blocks_and_opens_only_the_edges() {
        let (_dir, db, tree) = open();
        let (a, b) = (KeyId::new_v7(), KeyId::new_v7());
        for block in [100..105, 105..110] {
            let mut records = Vec::new();
            for s in block {
                records.push(record(s, Some(a), VerifyCode::Valid, Some("10.0.0.1")));
                records.push(record(s, Some(b), VerifyCode::Invalid, Some("10.0.0.2")));
            }
            tree.append(&records, Retention::default()).unwrap();
        }
        tree.append(
            &[record(110, Some(a), VerifyCode::RateLimited, None), record(110, None, VerifyCode::Invalid, None)],
            Retention::default(),
        )
        .unwrap();
        assert_eq!(tree.count(), 22);

        let all = tree.key_usage(a, None, None, 1000).unwrap();
        assert_eq!((all.total, all.first_at, all.last_at), (11, at(100), at(110)));
        assert_eq!(all.by_code[&VerifyCode::RateLimited], 1);
        assert_eq!(all.by_client_ip[&Some("10.0.0.1".parse().unwrap())], (10, 10));
        assert_eq!(all.by_client_ip[&None], (1, 0));
        let edges = tree.key_usage(a, at(103), at(107), 1000).unwrap();
        assert_eq!((edges.total, edges.first_at, edges.last_at), (4, at(103), at(106)), "across two blocks' edges");
        assert_eq!(tree.key_usage(b, at(105), at(110), 1000).unwrap().total, 5, "one whole block");
        let short = tree.key_usage(a, None, None, 5).unwrap();
        assert_eq!((short.total, short.resume_at), (5, at(105)));
        let rest = tree.key_usage(a, short.resume_at, None, 1000).unwrap();
        assert_eq!(rest.total, 6, "resuming counts the rest exactly once");

        drop(tree);
        assert_eq!(UsageTree::open(&db).unwrap().count(), 22);
    }

    #[test]
    fn retention_prunes_whole_blocks_oldest_first_with_their_index_entries() {
        let (_dir, db, tree) = open();
        let key = KeyId::new_v7();
        for block in 0..3u64 {
            let records: Vec<_> =
                (0..4).map(|i| record(100 + block * 10 + i, Some(key), VerifyCode::Valid, None)).collect();
            tree.append(&records, Retention::default()).unwrap();
        }
        let keep_8 = Retention { older_than: None, max_records: Some(8) };
        assert_eq!(tree.append(&[], keep_8).unwrap(), 4);
        assert_eq!(tree.count(), 8);
        assert_eq!(tree.key_usage(key, None, None, 100).unwrap().first_at, at(110));
        let younger = Retention { older_than: at(120), max_records: None };
        assert_eq!(tree.append(&[], younger).unwrap(), 4, "the block ending at 113 s");
        assert_eq!(tree.count(), 4);
        assert_eq!(tree.tree.scan_prefix([BY_KEY]).count(), 1, "no index entry outlives its block");
        assert_eq!(tree.append(&[], younger).unwrap(), 0, "the block ending at 123 s stays");

        let big: Vec<_> = (0..5).map(|i| record(200 + i, Some(key), VerifyCode::Valid, None)).collect();
        let keep_2 = Retention { older_than: None, max_records: Some(2) };
        assert_eq!(tree.append(&big, keep_2).unwrap(), 4 + 3, "the old block, and the write's 3 oldest");
        let kept = tree.key_usage(key, None, None, 100).unwrap();
        assert_eq!((kept.total, kept.first_at), (2, at(203)));
        drop(tree);
        assert_eq!(UsageTree::open(&db).unwrap().count(), 2);
    }

    #[test]
    fn times_are_monotonic_and_a_block_spans_a_minute_at_most() {
        let (_dir, db, tree) = open();
        let key = KeyId::new_v7();
        let records: Vec<_> = [50, 50, 49, 200].map(|s| record(s, Some(key), VerifyCode::Valid, None)).to_vec();
        tree.append(&records, Retention::default()).unwrap();
        assert_eq!(tree.tree.scan_prefix([BLOCK]).count(), 2, "200 s is more than a span after 50 s");
        // Records 30 s apart, 5 minutes of them (a writer that lagged): a block per minute, never
        // one stretched by small steps.
        let trickle: Vec<(u64, ())> = (0..10).map(|i| (i * 30_000_000, ())).collect();
        let blocks: Vec<usize> = spans(&trickle).map(<[_]>::len).collect();
        assert_eq!(blocks, vec![2, 2, 2, 2, 2]);
        let q = UsageQuery { key: Some(key), ..Default::default() };
        let (found, next) = tree.query(&q, None, 10, 100).unwrap();
        assert_eq!(next, None);
        let times: Vec<_> = found.iter().map(|r| r.at).collect();
        assert_eq!(times, vec![at(50).unwrap(), at(50).unwrap(), at(50).unwrap(), at(200).unwrap()]);
        // After a restart, a late record still sorts after the newest.
        drop(tree);
        let tree = UsageTree::open(&db).unwrap();
        tree.append(&[record(10, Some(key), VerifyCode::Valid, None)], Retention::default()).unwrap();
        let (found, _) = tree.query(&UsageQuery { newest_first: true, ..q }, None, 1, 100).unwrap();
        assert_eq!(found[0].at, at(200).unwrap());
    }

    #[test]
    fn queries_page_through_blocks_either_way_with_and_without_a_key() {
        let (_dir, _db, tree) = open();
        let (key, other) = (KeyId::new_v7(), KeyId::new_v7());
        let mut all = Vec::new();
        for block in 0..3u64 {
            let records: Vec<_> = (0..4)
                .map(|i| {
                    let s = 300 + block * 10 + i;
                    let code = if s % 2 == 0 { VerifyCode::Valid } else { VerifyCode::Revoked };
                    record(s, Some(if i == 3 { other } else { key }), code, Some("10.9.9.9"))
                })
                .collect();
            tree.append(&records, Retention::default()).unwrap();
            all.extend(records);
        }
        for key_filter in [Some(key), None] {
            for newest_first in [false, true] {
                for code in [None, Some(VerifyCode::Revoked)] {
                    let q = UsageQuery { key: key_filter, code, newest_first, since: at(301), ..Default::default() };
                    let mut want: Vec<_> = all.iter().filter(|r| q.matches(r)).cloned().collect();
                    if newest_first {
                        want.reverse();
                    }
                    let (mut got, mut cursor) = (Vec::new(), None);
                    for _ in 0..20 {
                        let (page, next) = tree.query(&q, cursor.as_deref(), 2, 3).unwrap();
                        assert!(page.len() <= 2);
                        got.extend(page);
                        cursor = next;
                        if cursor.is_none() {
                            break;
                        }
                    }
                    assert_eq!(cursor, None);
                    assert_eq!(got, want, "{q:?}");
                }
            }
        }
        assert!(tree.query(&UsageQuery::default(), Some(&[1, 2, 3]), 2, 3).is_err(), "a malformed cursor");
    }
}
