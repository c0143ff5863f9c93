//! The key string: `<prefix>_<body>`, where body is 70 base62 characters encoding
//! `key id (16 bytes) ‖ secret (32 bytes) ‖ CRC32 (4 bytes, big-endian)`.
//!
//! The CRC32 covers `prefix ‖ "_" ‖ key id ‖ secret`, so a typo anywhere in the key, prefix
//! included, is caught here without touching the HSM or the database. Secret scanners can find
//! keys with [`KEY_REGEX`].

use zeroize::Zeroizing;

use super::{
    key::KeyId,
    secret::{KeyString, SECRET_LEN, Secret},
};

/// The prefix a key gets when its creator names none.
pub const DEFAULT_PREFIX: &str = "kw";
/// Longest prefix allowed.
pub const MAX_PREFIX_LEN: usize = 16;
/// Number of base62 characters after the underscore.
pub const BODY_LEN: usize = 70;
/// A regular expression that matches every keyward key (for secret scanners).
pub const KEY_REGEX: &str = r"\b[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{70}\b";

const ID_LEN: usize = 16;
const CRC_LEN: usize = 4;
const RAW_LEN: usize = ID_LEN + SECRET_LEN + CRC_LEN;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key string that has the right shape and checksum. Whether it is genuine is for the HSM.
#[derive(Debug)]
pub struct ParsedKey {
    pub key_id: KeyId,
    pub secret: Secret,
}

/// Checks a prefix against `[a-z][a-z0-9]{0,15}`.
pub fn is_valid_prefix(prefix: &str) -> bool {
    let bytes = prefix.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_PREFIX_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Renders a key string. `prefix` must already be valid.
pub fn render(prefix: &str, key_id: KeyId, secret: &Secret) -> KeyString {
    debug_assert!(is_valid_prefix(prefix));
    let mut raw = Zeroizing::new([0u8; RAW_LEN]);
    raw[..ID_LEN].copy_from_slice(key_id.as_bytes());
    raw[ID_LEN..ID_LEN + SECRET_LEN].copy_from_slice(secret.expose());
    let crc = checksum(prefix, &raw[..ID_LEN + SECRET_LEN]);
    raw[ID_LEN + SECRET_LEN..].copy_from_slice(&crc.to_be_bytes());

    let mut out = String::with_capacity(prefix.len() + 1 + BODY_LEN);
    out.push_str(prefix);
    out.push('_');
    out.push_str(&encode_base62(&raw));
    KeyString::new(out)
}

/// Parses a key string. `None` for anything malformed: wrong length, alphabet, prefix or
/// checksum. Pure: no I/O.
pub fn parse(key: &str) -> Option<ParsedKey> {
    let (prefix, body) = key.rsplit_once('_')?;
    if !is_valid_prefix(prefix) || body.len() != BODY_LEN {
        return None;
    }
    let raw = decode_base62(body.as_bytes())?;
    let (payload, crc) = raw.split_at(ID_LEN + SECRET_LEN);
    if checksum(prefix, payload).to_be_bytes() != crc {
        return None;
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&raw[..ID_LEN]);
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    secret.copy_from_slice(&raw[ID_LEN..ID_LEN + SECRET_LEN]);
    Some(ParsedKey { key_id: KeyId::from_bytes(id), secret: Secret::from_bytes(*secret) })
}

fn checksum(prefix: &str, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix.as_bytes());
    hasher.update(b"_");
    hasher.update(payload);
    hasher.finalize()
}

/// Fixed-width base62 of a 416-bit big-endian number (62^70 > 2^416 > 62^69).
fn encode_base62(raw: &[u8; RAW_LEN]) -> Zeroizing<String> {
    let mut num = Zeroizing::new(*raw);
    let mut digits = Zeroizing::new([0u8; BODY_LEN]);
    for slot in digits.iter_mut().rev() {
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    let text: String = digits.iter().map(|&d| d as char).collect();
    Zeroizing::new(text)
}

fn decode_base62(body: &[u8]) -> Option<Zeroizing<[u8; RAW_LEN]>> {
    // The number in little-endian 64-bit limbs (448 bits; it must fit in 416), fed ten digits
    // at a time (62^10 < 2^64): 7 multiply-adds of 7 limbs instead of 70 of 52 bytes, which
    // made parsing the largest cost of a verification after the transport and the HSM.
    const LIMBS: usize = 7;
    const CHUNK: usize = 10;
    let mut limbs = Zeroizing::new([0u64; LIMBS]);
    for chunk in body.chunks(CHUNK) {
        let (mut value, mut scale) = (Zeroizing::new(0u64), 1u64);
        for &ch in chunk {
            let digit = match ch {
                b'0'..=b'9' => ch - b'0',
                b'A'..=b'Z' => ch - b'A' + 10,
                b'a'..=b'z' => ch - b'a' + 36,
                _ => return None,
            };
            *value = *value * 62 + u64::from(digit);
            scale *= 62;
        }
        let mut carry = u128::from(*value);
        for limb in limbs.iter_mut() {
            let acc = Zeroizing::new(u128::from(*limb) * u128::from(scale) + carry);
            *limb = *acc as u64;
            carry = *acc >> 64;
        }
        if carry != 0 {
            return None; // more than 448 bits
        }
    }
    if limbs[LIMBS - 1] >> 32 != 0 {
        return None; // more than 416 bits
    }
    let mut little = Zeroizing::new([0u8; LIMBS * 8]);
    for (bytes, limb) in little.chunks_exact_mut(8).zip(limbs.iter()) {
        bytes.copy_from_slice(&limb.to_le_bytes());
    }
    let mut num = Zeroizing::new([0u8; RAW_LEN]);
    for (out, byte) in num.iter_mut().zip(little[..RAW_LEN].iter().rev()) {
        *out = *byte;
    }
    Some(num)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(prefix: &str) -> (KeyId, Secret, String) {
        let id = KeyId::new_v7();
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).unwrap();
        let secret = Secret::from_bytes(bytes);
        let key = render(prefix, id, &secret).expose().to_owned();
        (id, secret, key)
    }

    #[test]
    fn rendered_keys_parse_back_to_their_parts() {
        for prefix in ["kw", "a", "sk9live", "abcdefghijklmnop"] {
            let (id, secret, key) = sample(prefix);
            assert_eq!(key.len(), prefix.len() + 1 + BODY_LEN);
            let parsed = parse(&key).expect("parses");
            assert_eq!(parsed.key_id, id);
            assert_eq!(parsed.secret, secret);
        }
    }

    /// The byte-at-a-time decoder the limb decoder replaced: the reference it must agree with.
    fn decode_bytewise(body: &[u8]) -> Option<[u8; RAW_LEN]> {
        let mut num = [0u8; RAW_LEN];
        for &ch in body {
            let digit = ALPHABET.iter().position(|&a| a == ch)? as u32;
            let mut carry = digit;
            for byte in num.iter_mut().rev() {
                let acc = u32::from(*byte) * 62 + carry;
                *byte = acc as u8;
                carry = acc >> 8;
            }
            if carry != 0 {
                return None;
            }
        }
        Some(num)
    }

    #[test]
    fn the_limb_decoder_agrees_with_the_bytewise_one_up_to_the_416_bit_edge() {
        let mut bodies: Vec<Vec<u8>> = vec![vec![b'0'; BODY_LEN], vec![b'z'; BODY_LEN]];
        // The largest 416-bit value and the values just past it.
        let max = encode_base62(&[0xFF; RAW_LEN]);
        bodies.push(max.as_bytes().to_vec());
        for i in (0..BODY_LEN).rev() {
            let mut next = max.as_bytes().to_vec();
            if next[i] != b'z' {
                next[i] = ALPHABET[ALPHABET.iter().position(|&a| a == next[i]).unwrap() + 1];
                bodies.push(next);
            }
        }
        for _ in 0..2000 {
            let mut random = [0u8; BODY_LEN];
            getrandom::fill(&mut random).unwrap();
            bodies.push(random.iter().map(|b| ALPHABET[usize::from(*b) % 62]).collect());
        }
        let mut refused = 0;
        for body in &bodies {
            let limbs = decode_base62(body).map(|n| *n);
            assert_eq!(limbs, decode_bytewise(body), "{}", String::from_utf8_lossy(body));
            refused += usize::from(limbs.is_none());
        }
        assert!(refused > 0 && refused < bodies.len(), "both sides of the edge were tried");
        assert_eq!(decode_base62(max.as_bytes()).map(|n| *n), Some([0xFF; RAW_LEN]));
    }

    #[test]
    fn extreme_values_keep_the_fixed_width() {
        for fill in [0u8, 0xff] {
            let id = KeyId::from_bytes([fill; 16]);
            let secret = Secret::from_bytes([fill; SECRET_LEN]);
            let key = render("kw", id, &secret);
            assert_eq!(key.expose().len(), 3 + BODY_LEN);
            assert_eq!(parse(key.expose()).unwrap().key_id, id);
        }
    }

    #[test]
    fn any_single_character_change_is_rejected() {
        let (_, _, key) = sample("kw");
        let bytes = key.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'0', b'Z', b'z', b'q'] {
                if bytes[i] == replacement || bytes[i] == b'_' {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert!(parse(&changed).is_none(), "accepted a change at {i}");
            }
        }
    }

    #[test]
    fn malformed_strings_are_rejected() {
        let (_, _, key) = sample("kw");
        let body = &key[3..];
        let cases = [
            String::new(),
            "kw_".into(),
            body.to_string(),
            format!("kw_{}", &body[1..]),
            format!("kw_{body}0"),
            format!("KW_{body}"),
            format!("9w_{body}"),
            format!("kw-{body}"),
            format!("kw_{}!", &body[1..]),
            format!("sk_{body}"),                   // checksum binds the prefix
            format!("kw_{}", "z".repeat(BODY_LEN)), // overflows 416 bits
            format!("abcdefghijklmnopq_{body}"),
        ];
        for case in cases {
            assert!(parse(&case).is_none(), "accepted {case:?}");
        }
    }

    #[test]
    fn prefixes_follow_the_documented_rule() {
        for ok in ["kw", "a", "a1", "abcdefghijklmnop"] {
            assert!(is_valid_prefix(ok), "{ok}");
        }
        for bad in ["", "1a", "Kw", "k_w", "k-w", "abcdefghijklmnopq", "kw "] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
    }
}
