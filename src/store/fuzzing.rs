//! The store codecs as the fuzz targets in `fuzz/` call them: decoders of untrusted bytes and
//! the encoders to round-trip what they accept. Not an API: hidden from the docs.

use super::usage_codec;
use crate::domain::{ports::StoreError, usage_log::UsageRecord};

pub use super::codec::{AuditRecord, decode_audit, decode_event, decode_key, encode_event, encode_key, encode_sealed};

/// Decodes a usage-log block whose records count from `start` (µs since the epoch).
pub fn decode_usage_block(start: u64, bytes: &[u8]) -> Result<Vec<UsageRecord>, StoreError> {
    usage_codec::decode_block(start, bytes)
}

/// Encodes `records` (in time order, none before `start`) as a usage-log block.
pub fn encode_usage_block(start: u64, records: &[UsageRecord]) -> Vec<u8> {
    let timed: Vec<_> = records.iter().map(|r| (usage_codec::micros(r.at), r)).collect();
    usage_codec::encode_block(start, &timed)
}

/// A usage-log index entry (one key's part of a block), opaque.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageSummary(usage_codec::Summary);

impl UsageSummary {
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        usage_codec::Summary::decode(bytes).map(Self)
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }
}
