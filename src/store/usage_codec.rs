//! The usage log's stored values: blocks of records (with dictionaries of the key ids, callers
//! and addresses they use) and per-key summaries, with the little varint reader and writer
//! they share. Layout and retention live in `usage_log.rs`.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::domain::{
    key::KeyId,
    policy::VerifyCode,
    ports::StoreError,
    usage_log::{KeyUsage, UsageRecord},
};

pub(super) const BLOCK_V1: u8 = 1;

/// The fewest bytes a record takes in a block: time delta, code, three places, latency.
const MIN_RECORD_BYTES: usize = 6;

/// Codes by their stored byte: append only.
const CODES: [VerifyCode; 13] = VerifyCode::ALL;

pub(super) fn corrupt() -> StoreError {
    StoreError::Corrupt("usage log".into())
}

pub(super) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64)
}

pub(super) fn time_of(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

pub(super) fn code_byte(code: VerifyCode) -> u8 {
    CODES.iter().position(|c| *c == code).expect("every code is listed") as u8
}

fn code_of(byte: u8) -> Result<VerifyCode, StoreError> {
    CODES.get(usize::from(byte)).copied().ok_or_else(corrupt)
}

/// Little encoders and a reader over a byte slice.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        None => out.push(0),
        Some(IpAddr::V4(v4)) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.push(16);
            out.extend_from_slice(&v6.octets());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or_else(corrupt)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.bytes(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt())
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        usize::try_from(self.varint()?).map_err(|_| corrupt())
    }

    fn key_id(&mut self) -> Result<KeyId, StoreError> {
        Ok(KeyId::from_bytes(self.bytes(16)?.try_into().expect("16 bytes")))
    }

    fn ip(&mut self) -> Result<Option<IpAddr>, StoreError> {
        Ok(match self.u8()? {
            0 => None,
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(self.bytes(4)?).expect("4 bytes"))),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(self.bytes(16)?).expect("16 bytes"))),
            _ => return Err(corrupt()),
        })
    }

    /// An index into a dictionary of `len` entries, stored plus one (0: none).
    fn entry(&mut self, len: usize) -> Result<Option<usize>, StoreError> {
        match self.len()? {
            0 => Ok(None),
            i if i <= len => Ok(Some(i - 1)),
            _ => Err(corrupt()),
        }
    }
}

/// Values in first-seen order, each with its place.
struct Dictionary<T> {
    order: Vec<T>,
    place: HashMap<T, usize>,
}

impl<T: Copy + Eq + std::hash::Hash> Dictionary<T> {
    fn new() -> Self {
        Self { order: Vec::new(), place: HashMap::new() }
    }

    /// The value's place plus one, or 0 for none.
    fn code(&mut self, value: Option<T>) -> u64 {
        let Some(v) = value else { return 0 };
        let next = self.order.len();
        let at = *self.place.entry(v).or_insert(next);
        if at == next {
            self.order.push(v);
        }
        at as u64 + 1
    }
}

/// A block: header (version, record count u32, last time µs), dictionaries, then per record:
/// time delta (varint, from the previous record or the start), code, key, caller and address
/// (dictionary places plus one), latency µs (varint).
pub(super) fn encode_block(start: u64, records: &[(u64, &UsageRecord)]) -> Vec<u8> {
    let (mut keys, mut callers, mut ips) = (Dictionary::new(), Dictionary::new(), Dictionary::new());
    let mut body = Vec::with_capacity(records.len() * 8);
    let mut prev = start;
    for (at, r) in records {
        put_varint(&mut body, at - prev);
        prev = *at;
        body.push(code_byte(r.code));
        put_varint(&mut body, keys.code(r.key_id));
        put_varint(&mut body, callers.code(r.caller));
        put_varint(&mut body, ips.code(r.client_ip));
        put_varint(&mut body, u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX));
    }
    let mut out =
        Vec::with_capacity(13 + 16 * (keys.order.len() + callers.order.len()) + 17 * ips.order.len() + body.len());
    out.push(BLOCK_V1);
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    out.extend_from_slice(&prev.to_be_bytes());
    for dict in [&keys.order, &callers.order] {
        put_varint(&mut out, dict.len() as u64);
        dict.iter().for_each(|id| out.extend_from_slice(id.as_bytes()));
    }
    put_varint(&mut out, ips.order.len() as u64);
    ips.order.iter().for_each(|ip| put_ip(&mut out, Some(*ip)));
    out.extend_from_slice(&body);
    out
}

/// A block's record count, last time and key dictionary, read without its records.
pub(super) struct BlockHead<'a> {
    pub count: u64,
    pub last: u64,
    pub keys: Vec<KeyId>,
    rest: Reader<'a>,
}

pub(super) fn block_head(bytes: &[u8]) -> Result<BlockHead<'_>, StoreError> {
    let mut r = Reader(bytes);
    if r.u8()? != BLOCK_V1 {
        return Err(corrupt());
    }
    let count = u64::from(u32::from_be_bytes(r.bytes(4)?.try_into().expect("4 bytes")));
    let last = r.u64()?;
    let n = r.len()?;
    let keys = (0..n).map(|_| r.key_id()).collect::<Result<_, _>>()?;
    Ok(BlockHead { count, last, keys, rest: r })
}

pub(super) fn decode_block(start: u64, bytes: &[u8]) -> Result<Vec<UsageRecord>, StoreError> {
    let BlockHead { count, keys, rest: mut r, .. } = block_head(bytes)?;
    let n = r.len()?;
    let callers: Vec<KeyId> = (0..n).map(|_| r.key_id()).collect::<Result<_, _>>()?;
    let n = r.len()?;
    let ips: Vec<Option<IpAddr>> = (0..n).map(|_| r.ip()).collect::<Result<_, _>>()?;
    let mut at = start;
    // The count is what the bytes claim: reserve no more than they can hold (a record takes at
    // least `MIN_RECORD_BYTES`), so a damaged count is an error at the end of the bytes, not a huge allocation.
    let mut records = Vec::with_capacity((count as usize).min(r.0.len() / MIN_RECORD_BYTES));
    for _ in 0..count {
        at = at.checked_add(r.varint()?).ok_or_else(corrupt)?;
        let code = code_of(r.u8()?)?;
        let key_id = r.entry(keys.len())?.map(|i| keys[i]);
        let caller = r.entry(callers.len())?.map(|i| callers[i]);
        let client_ip = r.entry(ips.len())?.and_then(|i| ips[i]);
        let latency = Duration::from_micros(r.varint()?);
        records.push(UsageRecord { at: time_of(at), key_id, code, client_ip, caller, latency });
    }
    Ok(records)
}

/// One key's part of a block, as its index entry keeps it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    pub first: u64,
    pub last: u64,
    pub by_code: BTreeMap<VerifyCode, u64>,
    pub by_ip: BTreeMap<Option<IpAddr>, (u64, u64)>,
}

impl Summary {
    pub(super) fn add(&mut self, at: u64, r: &UsageRecord) {
        if self.by_code.is_empty() {
            self.first = at;
        }
        self.last = at;
        *self.by_code.entry(r.code).or_default() += 1;
        let ip = self.by_ip.entry(r.client_ip).or_default();
        ip.0 += 1;
        ip.1 += u64::from(r.code == VerifyCode::Valid);
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 3 * self.by_code.len() + 8 * self.by_ip.len());
        out.extend_from_slice(&self.first.to_be_bytes());
        out.extend_from_slice(&self.last.to_be_bytes());
        put_varint(&mut out, self.by_code.len() as u64);
        for (code, n) in &self.by_code {
            out.push(code_byte(*code));
            put_varint(&mut out, *n);
        }
        put_varint(&mut out, self.by_ip.len() as u64);
        for (ip, (n, valid)) in &self.by_ip {
            put_ip(&mut out, *ip);
            put_varint(&mut out, *n);
            put_varint(&mut out, *valid);
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader(bytes);
        let (first, last) = (r.u64()?, r.u64()?);
        let n = r.len()?;
        let by_code = (0..n).map(|_| Ok((code_of(r.u8()?)?, r.varint()?))).collect::<Result<_, StoreError>>()?;
        let n = r.len()?;
        let by_ip = (0..n).map(|_| Ok((r.ip()?, (r.varint()?, r.varint()?)))).collect::<Result<_, StoreError>>()?;
        Ok(Self { first, last, by_code, by_ip })
    }

    /// Adds the whole summary to `usage`.
    pub(super) fn add_to(&self, usage: &mut KeyUsage) {
        usage.total += self.by_code.values().sum::<u64>();
        for (code, n) in &self.by_code {
            *usage.by_code.entry(*code).or_default() += n;
        }
        for (ip, (n, valid)) in &self.by_ip {
            let e = usage.by_client_ip.entry(*ip).or_default();
            e.0 += n;
            e.1 += valid;
        }
        let (first, last) = (time_of(self.first), time_of(self.last));
        usage.first_at = Some(usage.first_at.map_or(first, |t| t.min(first)));
        usage.last_at = Some(usage.last_at.map_or(last, |t| t.max(last)));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A usage record for tests (also those of `usage_log.rs`).
    pub(in crate::store) fn record(secs: u64, key: Option<KeyId>, code: VerifyCode, ip: Option<&str>) -> UsageRecord {
        UsageRecord {
            at: UNIX_EPOCH + Duration::from_secs(secs),
            key_id: key,
            code,
            client_ip: ip.map(|s| s.parse().unwrap()),
            caller: Some(KeyId::from_bytes([9; 16])),
            latency: Duration::from_micros(321 + secs),
        }
    }

    #[test]
    fn blocks_and_summaries_round_trip_and_damage_is_refused() {
        let key = KeyId::new_v7();
        let records = [
            record(5, Some(key), VerifyCode::QuotaExceeded, Some("10.1.2.3")),
            record(6, None, VerifyCode::Invalid, Some("2001:db8::7")),
            UsageRecord { caller: None, ..record(7, Some(key), VerifyCode::Valid, None) },
            record(7, Some(key), VerifyCode::Valid, Some("10.1.2.3")),
        ];
        let stamped: Vec<_> = records.iter().map(|r| (micros(r.at), r)).collect();
        let bytes = encode_block(stamped[0].0, &stamped);
        assert_eq!(decode_block(stamped[0].0, &bytes).unwrap(), records.to_vec());
        assert!(bytes.len() < 13 + 3 * 16 + 22 + 4 * 12, "{} bytes: dictionaries keep records small", bytes.len());
        let head = block_head(&bytes).unwrap();
        assert_eq!((head.count, head.last, head.keys), (4, micros(records[3].at), vec![key]));

        let mut summary = Summary::default();
        for (t, r) in stamped.iter().filter(|(_, r)| r.key_id == Some(key)) {
            summary.add(*t, r);
        }
        assert_eq!(Summary::decode(&summary.encode()).unwrap(), summary);
        assert_eq!(summary.by_ip[&Some("10.1.2.3".parse().unwrap())], (2, 1));

        assert!(decode_block(0, &bytes[..bytes.len() - 1]).is_err(), "a cut block");
        let bare = UsageRecord { key_id: None, caller: None, client_ip: None, ..records[0].clone() };
        let mut bad_code = encode_block(0, &[(0, &bare)]);
        assert_eq!(bad_code[17], code_byte(VerifyCode::QuotaExceeded), "header 13, three empty dictionaries, delta 0");
        bad_code[17] = 99;
        assert!(decode_block(0, &bad_code).is_err(), "an unknown code");
        assert!(Summary::decode(&[0; 10]).is_err());
    }

    /// Found by review while writing the fuzz targets: the capacity came from the claimed count.
    #[test]
    fn a_block_claiming_more_records_than_it_holds_is_refused_without_reserving_for_them() {
        let mut bytes = vec![BLOCK_V1];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0]);
        // One real record (delta, code, no key, caller or address, latency), then nothing.
        bytes.extend_from_slice(&[0, code_byte(VerifyCode::Valid), 0, 0, 0, 1]);
        assert!(decode_block(0, &bytes).is_err());
        bytes[1..5].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(decode_block(0, &bytes).unwrap().len(), 1, "the same bytes claiming one record");
    }
}
