//! Any bytes as a usage-log block (the first 8 bytes are its start time) and as an index
//! summary: an error or a value, never a panic or a huge allocation; what decodes re-encodes
//! to bytes that decode to the same value.
#![no_main]

use keyward::store::fuzzing::{UsageSummary, decode_usage_block, encode_usage_block};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = UsageSummary::decode(data) {
        let again = UsageSummary::decode(&summary.encode()).expect("a re-encoded summary decodes");
        assert!(again == summary, "a re-encoded summary decodes to itself");
    }
    let Some((start, block)) = data.split_first_chunk::<8>() else { return };
    let start = u64::from_be_bytes(*start);
    if let Ok(records) = decode_usage_block(start, block) {
        let again = decode_usage_block(start, &encode_usage_block(start, &records)).expect("a re-encoded block decodes");
        assert!(again == records, "a re-encoded block decodes to itself");
    }
});
