//! `application/x-www-form-urlencoded` as query strings use it: decoding (`+` is a space, `%XX`
//! a byte, a malformed escape kept as written) and the re-encoding RFC 9421 §2.2.8 asks of a
//! `@query-param` (the form percent-encode set: only ASCII letters, digits, `*`, `-`, `.` and
//! `_` stay as they are; a space is `%20`).

/// The bytes `value` stands for.
pub fn decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    out
}

/// `bytes` percent-encoded with the form percent-encode set, a space as `%20`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_keeps_a_malformed_escape_as_written() {
        assert_eq!(decode("a%20b+c"), b"a b c");
        assert_eq!(decode("100%"), b"100%");
        assert_eq!(decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn encoding_leaves_only_the_form_safe_characters() {
        assert_eq!(encode(b"this is a big\nvalue"), "this%20is%20a%20big%0Avalue");
        assert_eq!(encode("façade\": ".as_bytes()), "fa%C3%A7ade%22%3A%20");
        assert_eq!(encode(b"a*b-c.d_e~f+g/h"), "a*b-c.d_e%7Ef%2Bg%2Fh");
    }
}
