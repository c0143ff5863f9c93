//! The usage log on sled: one tree, `usage`, so that a batch of records, their index entries,
//! what retention prunes and the record count change in one atomic `apply_batch`:
//!
//! - `t` ‖ time ‖ n → the record (time: microseconds since the epoch, big-endian, made
//!   monotonic by the single writer; n: a tie-breaker within one microsecond);
//! - `k` ‖ key id ‖ time ‖ n → the code and client address (KeyUsage reads only these);
//! - `c` → how many records there are (for retention by count).
//!
//! Durability is the store's group commit, awaited by the caller.

use std::{
    net::IpAddr,
    ops::Bound,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::domain::{
    key::KeyId,
    policy::VerifyCode,
    ports::StoreError,
    usage_log::{KeyUsage, Retention, UsageQuery, UsageRecord},
};

const COUNT: &[u8] = b"c";
const BY_TIME: u8 = b't';
const BY_KEY: u8 = b'k';
/// `t` ‖ time ‖ n.
const TIME_KEY_LEN: usize = 1 + 8 + 4;
/// `k` ‖ key id ‖ time ‖ n.
const KEY_KEY_LEN: usize = 1 + 16 + 8 + 4;
const RECORD_V1: u8 = 1;

const HAS_KEY: u8 = 1;
const HAS_CALLER: u8 = 2;
const IPV4: u8 = 4;
const IPV6: u8 = 8;

fn corrupt() -> StoreError {
    StoreError::Corrupt("usage record".into())
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64)
}

fn time_of(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

/// Codes by their stored byte: append only.
const CODES: [VerifyCode; 10] = VerifyCode::ALL;

fn code_byte(code: VerifyCode) -> u8 {
    CODES.iter().position(|c| *c == code).expect("every code is listed") as u8
}

fn code_of(byte: u8) -> Result<VerifyCode, StoreError> {
    CODES.get(usize::from(byte)).copied().ok_or_else(corrupt)
}

fn push_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        Some(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
        Some(IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
        None => {}
    }
}

fn ip_flag(ip: Option<IpAddr>) -> u8 {
    match ip {
        Some(IpAddr::V4(_)) => IPV4,
        Some(IpAddr::V6(_)) => IPV6,
        None => 0,
    }
}

/// Reads an address of the kind `flags` says from the front of `bytes`.
fn take_ip(bytes: &mut &[u8], flags: u8) -> Result<Option<IpAddr>, StoreError> {
    let len = match flags & (IPV4 | IPV6) {
        0 => return Ok(None),
        IPV4 => 4,
        IPV6 => 16,
        _ => return Err(corrupt()),
    };
    let (ip, rest) = bytes.split_at_checked(len).ok_or_else(corrupt)?;
    *bytes = rest;
    Ok(Some(match len {
        4 => IpAddr::from(<[u8; 4]>::try_from(ip).expect("4 bytes")),
        _ => IpAddr::from(<[u8; 16]>::try_from(ip).expect("16 bytes")),
    }))
}

fn take_id(bytes: &mut &[u8]) -> Result<KeyId, StoreError> {
    let (id, rest) = bytes.split_at_checked(16).ok_or_else(corrupt)?;
    *bytes = rest;
    Ok(KeyId::from_bytes(id.try_into().expect("16 bytes")))
}

/// version, code, flags, [key id], [caller], [address], latency µs (u32 BE).
fn encode_record(r: &UsageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + 16 + 16 + 16 + 4);
    let flags = ip_flag(r.client_ip)
        | if r.key_id.is_some() { HAS_KEY } else { 0 }
        | if r.caller.is_some() { HAS_CALLER } else { 0 };
    out.extend_from_slice(&[RECORD_V1, code_byte(r.code), flags]);
    for id in [r.key_id, r.caller].into_iter().flatten() {
        out.extend_from_slice(id.as_bytes());
    }
    push_ip(&mut out, r.client_ip);
    let latency = u32::try_from(r.latency.as_micros()).unwrap_or(u32::MAX);
    out.extend_from_slice(&latency.to_be_bytes());
    out
}

fn decode_record(at: SystemTime, bytes: &[u8]) -> Result<UsageRecord, StoreError> {
    let [RECORD_V1, code, flags, rest @ ..] = bytes else { return Err(corrupt()) };
    let mut rest = rest;
    let key_id = if flags & HAS_KEY != 0 { Some(take_id(&mut rest)?) } else { None };
    let caller = if flags & HAS_CALLER != 0 { Some(take_id(&mut rest)?) } else { None };
    let client_ip = take_ip(&mut rest, *flags)?;
    let latency = u32::from_be_bytes(rest.try_into().map_err(|_| corrupt())?);
    Ok(UsageRecord {
        at,
        key_id,
        code: code_of(*code)?,
        client_ip,
        caller,
        latency: Duration::from_micros(latency.into()),
    })
}

/// An index entry's value: code, flags, [address].
fn encode_index(r: &UsageRecord) -> Vec<u8> {
    let mut out = vec![code_byte(r.code), ip_flag(r.client_ip)];
    push_ip(&mut out, r.client_ip);
    out
}

fn decode_index(bytes: &[u8]) -> Result<(VerifyCode, Option<IpAddr>), StoreError> {
    let [code, flags, rest @ ..] = bytes else { return Err(corrupt()) };
    let mut rest = rest;
    let ip = take_ip(&mut rest, *flags)?;
    Ok((code_of(*code)?, ip))
}

fn time_key(micros: u64, n: u32) -> [u8; TIME_KEY_LEN] {
    let mut k = [0u8; TIME_KEY_LEN];
    k[0] = BY_TIME;
    k[1..9].copy_from_slice(&micros.to_be_bytes());
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

fn key_key(id: KeyId, micros: u64, n: u32) -> [u8; KEY_KEY_LEN] {
    let mut k = [0u8; KEY_KEY_LEN];
    k[0] = BY_KEY;
    k[1..17].copy_from_slice(id.as_bytes());
    k[17..25].copy_from_slice(&micros.to_be_bytes());
    k[25..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The time and tie-breaker of a `t` key, or of the tail of a `k` key.
fn stamp_of(key: &[u8]) -> Result<(u64, u32), StoreError> {
    let tail = key.get(key.len().checked_sub(12).ok_or_else(corrupt)?..).ok_or_else(corrupt)?;
    Ok((
        u64::from_be_bytes(tail[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(tail[8..].try_into().expect("4 bytes")),
    ))
}

/// Where the writer stands: the count and the newest stamp.
#[derive(Clone, Copy, Default)]
struct Tail {
    count: u64,
    micros: u64,
    n: u32,
}

pub struct UsageTree {
    tree: sled::Tree,
    /// Held while a batch is built and applied: writes are serialized.
    tail: Mutex<Tail>,
}

impl UsageTree {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("usage").map_err(unavailable)?;
        let count = match tree.get(COUNT).map_err(unavailable)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt())?),
            None => 0,
        };
        let (micros, n) = match tree.scan_prefix([BY_TIME]).next_back() {
            Some(entry) => stamp_of(&entry.map_err(unavailable)?.0)?,
            None => (0, 0),
        };
        Ok(Self { tree, tail: Mutex::new(Tail { count, micros, n }) })
    }

    /// How many records are kept.
    pub fn count(&self) -> u64 {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// Writes `records` and prunes per `retention` (at most `2 × records + 10,000` stored
    /// records per call, so one write stays short; the next one carries on), in one atomic
    /// batch. Not yet durable: the caller awaits the flush. Returns how many were pruned.
    pub fn append(&self, records: &[UsageRecord], retention: Retention) -> Result<u64, StoreError> {
        let mut guard = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut tail = *guard;
        let mut batch = sled::Batch::default();
        let incoming = records.len() as u64;
        let over = retention.max_records.map_or(0, |m| (tail.count + incoming).saturating_sub(m));
        let cutoff = retention.older_than.map_or(0, micros);
        let pruned = self.prune(&mut batch, over.min(tail.count), cutoff, 2 * incoming + 10_000)?;
        // A batch larger than the limit by itself: its oldest records are not kept either.
        let skipped = if pruned == tail.count { over.saturating_sub(pruned) } else { 0 };
        for r in &records[skipped as usize..] {
            // Monotonic, so that the time order is the write order.
            let at = micros(r.at);
            if at > tail.micros {
                (tail.micros, tail.n) = (at, 0);
            } else {
                tail.n =
                    tail.n.checked_add(1).ok_or_else(|| unavailable("too many usage records in one microsecond"))?;
            }
            batch.insert(&time_key(tail.micros, tail.n)[..], encode_record(r));
            if let Some(id) = r.key_id {
                batch.insert(&key_key(id, tail.micros, tail.n)[..], encode_index(r));
            }
        }
        tail.count = tail.count + incoming - pruned - skipped;
        batch.insert(COUNT, &tail.count.to_be_bytes());
        self.tree.apply_batch(batch).map_err(unavailable)?;
        *guard = tail;
        Ok(pruned + skipped)
    }

    /// Adds to `batch` the removal of the oldest stored records: the first `over`, and any
    /// older than `cutoff` (µs), `max` at most. Returns how many.
    fn prune(&self, batch: &mut sled::Batch, over: u64, cutoff: u64, max: u64) -> Result<u64, StoreError> {
        let mut pruned = 0;
        for entry in self.tree.scan_prefix([BY_TIME]) {
            let (key, value) = entry.map_err(unavailable)?;
            let (at, n) = stamp_of(&key)?;
            if pruned == max || (pruned >= over && at >= cutoff) {
                break;
            }
            batch.remove(key);
            if value.get(2).is_some_and(|flags| flags & HAS_KEY != 0) {
                let id = value.get(3..19).ok_or_else(corrupt)?;
                batch.remove(&key_key(KeyId::from_bytes(id.try_into().expect("16 bytes")), at, n)[..]);
            }
            pruned += 1;
        }
        Ok(pruned)
    }

    /// Key `key`'s records in `[since, until)`, counted; reads at most `max_scan` of them.
    pub fn key_usage(
        &self,
        key: KeyId,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        max_scan: usize,
    ) -> Result<KeyUsage, StoreError> {
        let start = key_key(key, since.map_or(0, micros), 0);
        let end = key_key(key, until.map_or(u64::MAX, micros), 0);
        let mut usage = KeyUsage::default();
        for (scanned, entry) in self.tree.range(start..end).enumerate() {
            let (k, v) = entry.map_err(unavailable)?;
            let at = time_of(stamp_of(&k)?.0);
            if scanned == max_scan {
                usage.resume_at = Some(at);
                break;
            }
            let (code, ip) = decode_index(&v)?;
            usage.add(at, code, ip);
        }
        Ok(usage)
    }

    /// Up to `limit` records matching `query`, resuming after `cursor`, reading at most
    /// `max_scan` entries; and the cursor to resume from if there may be more.
    pub fn query(
        &self,
        query: &UsageQuery,
        cursor: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Vec<u8>>), StoreError> {
        let since = query.since.map_or(0, micros);
        let until = query.until.map_or(u64::MAX, micros);
        let (start, end) = match query.key {
            Some(key) => (key_key(key, since, 0).to_vec(), key_key(key, until, 0).to_vec()),
            None => (time_key(since, 0).to_vec(), time_key(until, 0).to_vec()),
        };
        let (lower, upper) = match (cursor, query.newest_first) {
            (Some(c), false) => (Bound::Excluded(c.to_vec()), Bound::Excluded(end)),
            (Some(c), true) => (Bound::Included(start), Bound::Excluded(c.to_vec())),
            (None, _) => (Bound::Included(start), Bound::Excluded(end)),
        };
        let range = self.tree.range::<Vec<u8>, _>((lower, upper));
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if query.newest_first { Box::new(range.rev()) } else { Box::new(range) };
        let mut found = Vec::new();
        let mut last = None;
        for (scanned, entry) in entries.enumerate() {
            if found.len() == limit || scanned == max_scan {
                return Ok((found, last));
            }
            let (k, v) = entry.map_err(unavailable)?;
            let (at, n) = stamp_of(&k)?;
            last = Some(k.to_vec());
            let record = if query.key.is_some() {
                let (code, ip) = decode_index(&v)?;
                if query.code.is_some_and(|c| c != code) || query.client_ip.is_some_and(|q| ip != Some(q)) {
                    continue;
                }
                // An index entry whose record was pruned in between: skip it.
                let Some(bytes) = self.tree.get(time_key(at, n)).map_err(unavailable)? else { continue };
                decode_record(time_of(at), &bytes)?
            } else {
                decode_record(time_of(at), &v)?
            };
            if query.matches(&record) {
                found.push(record);
            }
        }
        Ok((found, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secs: u64, key: Option<KeyId>, code: VerifyCode, ip: Option<&str>) -> UsageRecord {
        UsageRecord {
            at: UNIX_EPOCH + Duration::from_secs(secs),
            key_id: key,
            code,
            client_ip: ip.map(|s| s.parse().unwrap()),
            caller: Some(KeyId::new_v7()),
            latency: Duration::from_micros(321),
        }
    }

    fn open() -> (tempfile::TempDir, sled::Db, UsageTree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = UsageTree::open(&db).unwrap();
        (dir, db, tree)
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let key = KeyId::new_v7();
        for r in [
            record(5, Some(key), VerifyCode::QuotaExceeded, Some("10.1.2.3")),
            record(6, None, VerifyCode::Invalid, Some("2001:db8::7")),
            UsageRecord { caller: None, ..record(7, Some(key), VerifyCode::Valid, None) },
        ] {
            assert_eq!(decode_record(r.at, &encode_record(&r)).unwrap(), r);
            assert_eq!(decode_index(&encode_index(&r)).unwrap(), (r.code, r.client_ip));
        }
        assert!(decode_record(UNIX_EPOCH, &[RECORD_V1, 0, HAS_KEY, 1, 2]).is_err(), "a truncated record");
        assert!(decode_record(UNIX_EPOCH, &[RECORD_V1, 99, 0, 0, 0, 0, 0]).is_err(), "an unknown code");
    }

    #[test]
    fn key_usage_counts_one_keys_range_and_retention_prunes_the_oldest() {
        let (_dir, db, tree) = open();
        let (a, b) = (KeyId::new_v7(), KeyId::new_v7());
        let mut records = Vec::new();
        for s in 0..10 {
            records.push(record(100 + s, Some(a), VerifyCode::Valid, Some("10.0.0.1")));
            records.push(record(100 + s, Some(b), VerifyCode::Invalid, Some("10.0.0.2")));
            if s == 5 {
                records.push(record(105, Some(a), VerifyCode::RateLimited, None));
                records.push(record(105, None, VerifyCode::Invalid, None));
            }
        }
        assert_eq!(tree.append(&records, Retention::default()).unwrap(), 0);
        assert_eq!(tree.count(), 22);

        let at = |s| Some(UNIX_EPOCH + Duration::from_secs(s));
        let u = tree.key_usage(a, at(102), at(106), 1000).unwrap();
        assert_eq!(u.total, 5, "100+2..=105 valid, and the rate-limited one");
        assert_eq!(u.by_code[&VerifyCode::Valid], 4);
        assert_eq!(u.by_code[&VerifyCode::RateLimited], 1);
        assert_eq!(u.by_client_ip[&Some("10.0.0.1".parse().unwrap())], (4, 4));
        assert_eq!(u.resume_at, None);
        let short = tree.key_usage(a, None, None, 3).unwrap();
        assert_eq!((short.total, short.resume_at), (3, at(103)));

        // A batch alone over the limit keeps its newest.
        let (_dir2, _db2, small) = open();
        assert_eq!(small.append(&records[..5], Retention { older_than: None, max_records: Some(2) }).unwrap(), 3);
        let q = UsageQuery::default();
        let kept: Vec<_> = small.query(&q, None, 10, 100).unwrap().0.into_iter().map(|r| r.code).collect();
        assert_eq!((small.count(), kept), (2, vec![VerifyCode::Invalid, VerifyCode::Valid]), "101 s b, 102 s a");
        assert_eq!(small.key_usage(a, None, None, 100).unwrap().total, 1, "index entries only for records kept");

        // Keep 12: the 10 oldest go, with their index entries.
        let pruned = tree.append(&[], Retention { older_than: None, max_records: Some(12) }).unwrap();
        assert_eq!((pruned, tree.count()), (10, 12));
        assert_eq!(tree.key_usage(a, None, None, 1000).unwrap().total, 6);
        // Older than 108 s: 100..=107 go (the rest of 105, 106, 107).
        let pruned = tree.append(&[], Retention { older_than: at(108), max_records: None }).unwrap();
        assert_eq!((pruned, tree.count()), (8, 4));
        assert_eq!(tree.key_usage(b, None, None, 1000).unwrap().total, 2);
        let index_entries = tree.tree.scan_prefix([BY_KEY]).count();
        assert_eq!(index_entries, 4, "no index entry outlives its record");

        drop(tree);
        let reopened = UsageTree::open(&db).unwrap();
        assert_eq!(reopened.count(), 4);
    }

    #[test]
    fn times_are_monotonic_so_equal_and_late_stamps_stay_distinct() {
        let (_dir, _db, tree) = open();
        let key = KeyId::new_v7();
        let records: Vec<_> = [50, 50, 49].map(|s| record(s, Some(key), VerifyCode::Valid, None)).to_vec();
        tree.append(&records, Retention::default()).unwrap();
        assert_eq!(tree.count(), 3);
        let q = UsageQuery { key: Some(key), ..Default::default() };
        let (found, next) = tree.query(&q, None, 10, 100).unwrap();
        assert_eq!((found.len(), next), (3, None));
        assert!(found.iter().all(|r| r.at == UNIX_EPOCH + Duration::from_secs(50)), "the late one is stamped at 50 s");
    }

    #[test]
    fn queries_filter_page_and_go_either_way() {
        let (_dir, _db, tree) = open();
        let key = KeyId::new_v7();
        let records: Vec<_> = (0..6)
            .map(|s| {
                let code = if s % 2 == 0 { VerifyCode::Valid } else { VerifyCode::Revoked };
                record(200 + s, Some(key), code, Some("10.9.9.9"))
            })
            .collect();
        tree.append(&records, Retention::default()).unwrap();
        for key_filter in [Some(key), None] {
            let q = UsageQuery {
                key: key_filter,
                code: Some(VerifyCode::Revoked),
                newest_first: true,
                ..Default::default()
            };
            let (page, next) = tree.query(&q, None, 2, 100).unwrap();
            assert_eq!(page.iter().map(|r| r.at).collect::<Vec<_>>(), vec![records[5].at, records[3].at]);
            let (rest, end) = tree.query(&q, next.as_deref(), 2, 100).unwrap();
            assert_eq!(rest.iter().map(|r| r.at).collect::<Vec<_>>(), vec![records[1].at]);
            assert_eq!(end, None);
            assert_eq!(rest[0].caller, records[1].caller);
        }
    }
}
