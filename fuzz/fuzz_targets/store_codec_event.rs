//! Any bytes as a stored audit record (sealed or not) and as a bare event: an error or an
//! event, never a panic; what decodes re-encodes to bytes that decode to the same event.
#![no_main]

use keyward::store::fuzzing::{decode_audit, decode_event, encode_event, encode_sealed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode_event(data) {
        let again = decode_event(&encode_event(&event)).expect("a re-encoded event decodes");
        assert!(again == event, "a re-encoded event decodes to itself");
    }
    if let Ok(record) = decode_audit(data) {
        let again = decode_event(&encode_event(&record.event)).expect("a re-encoded event decodes");
        assert!(again == record.event, "a re-encoded event decodes to itself");
        if let Some(mac) = record.mac {
            let resealed = decode_audit(&encode_sealed(record.event_bytes.clone(), &mac)).expect("a resealed record decodes");
            assert!(resealed.event == record.event && resealed.mac == Some(mac), "a resealed record decodes to itself");
        }
    }
});
