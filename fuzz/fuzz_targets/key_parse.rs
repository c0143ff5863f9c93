//! Any text through the key parser: no panic; what parses renders back to the same text.
#![no_main]

use keyward::domain::key_format::{parse, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(parsed) = parse(text) {
        let (prefix, _) = text.rsplit_once('_').expect("a parsed key has an underscore");
        let rendered = render(prefix, parsed.key_id, &parsed.secret);
        assert!(rendered.expose() == text, "a parsed key renders back to itself");
    }
});
