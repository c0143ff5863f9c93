//! Any bytes as a stored key record: an error or a record, never a panic; a record decoded
//! re-encodes to bytes that decode to the same record.
#![no_main]

use keyward::store::fuzzing::{decode_key, encode_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_key(data) {
        let again = decode_key(&encode_key(&record)).expect("a re-encoded record decodes");
        assert!(again == record, "a re-encoded record decodes to itself");
    }
});
