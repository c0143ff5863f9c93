//! ListKeys page tokens on the wire: opaque. The domain's token (where the next page resumes
//! and a fingerprint of the filters) goes out as base64url(version ‖ token ‖ checksum), so
//! callers see no structure to depend on and the layout can change behind the version byte.
//! It is not encrypted: decoding it shows the key id the page ended on, which that caller was
//! just shown. One that does not unwrap (edited, truncated, from elsewhere) is
//! `INVALID_ARGUMENT` naming `page_token`. The checksum catches damage, not forgery: the domain
//! still checks what the token says (its filters' fingerprint, the reach of the caller).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::domain::error::{Error, Result};

/// The layout of the bytes inside; a new layout gets a new version.
const VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 4;

fn checksum(versioned: &[u8]) -> [u8; CHECKSUM_LEN] {
    let hash = blake3::hash(versioned);
    let mut out = [0; CHECKSUM_LEN];
    out.copy_from_slice(&hash.as_bytes()[..CHECKSUM_LEN]);
    out
}

/// The wire form of the domain's `token` (empty stays empty: no next page).
pub fn wrap(token: &str) -> String {
    if token.is_empty() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity(1 + token.len() + CHECKSUM_LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(token.as_bytes());
    let sum = checksum(&bytes);
    bytes.extend_from_slice(&sum);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The domain's token inside the wire form `wire` (empty stays empty: the first page).
pub fn unwrap(wire: &str) -> Result<String> {
    if wire.is_empty() {
        return Ok(String::new());
    }
    let bad = || Error::invalid("page_token", "is not a token this server issued (send next_page_token unchanged)");
    let bytes = URL_SAFE_NO_PAD.decode(wire).map_err(|_| bad())?;
    let body_len = bytes.len().checked_sub(CHECKSUM_LEN).filter(|&n| n > 1).ok_or_else(bad)?;
    let (versioned, sum) = bytes.split_at(body_len);
    if versioned[0] != VERSION || checksum(versioned) != sum {
        return Err(bad());
    }
    String::from_utf8(versioned[1..].to_vec()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN_TOKEN: &str = "01939b5e-7c2a-7000-8000-000000000001.0123456789abcdef";

    #[test]
    fn tokens_round_trip_and_show_nothing_of_the_key_id() {
        let wire = wrap(DOMAIN_TOKEN);
        assert!(!wire.contains("01939b5e"), "{wire}");
        assert!(wire.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{wire}");
        assert_eq!(unwrap(&wire).unwrap(), DOMAIN_TOKEN);
        assert_eq!((wrap(""), unwrap("").unwrap()), (String::new(), String::new()));
    }

    #[test]
    fn damaged_or_foreign_tokens_are_invalid_page_tokens() {
        let wire = wrap(DOMAIN_TOKEN);
        let mut edited = wire.clone().into_bytes();
        edited[5] = if edited[5] == b'A' { b'B' } else { b'A' };
        let plain_id = DOMAIN_TOKEN.to_owned();
        let other_version = {
            let mut bytes = URL_SAFE_NO_PAD.decode(&wire).unwrap();
            bytes[0] = 2;
            URL_SAFE_NO_PAD.encode(bytes)
        };
        for bad in [
            String::from_utf8(edited).unwrap(),
            wire[..wire.len() - 2].to_owned(),
            plain_id,
            other_version,
            "!!".into(),
        ] {
            match unwrap(&bad) {
                Err(Error::InvalidArgument { field: "page_token", .. }) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
