//! RFC 9530 `Content-Digest` against the body the gateway sent: its `sha-256` and `sha-512`
//! members are checked (other algorithms are ignored); at least one of them must be there, and
//! every one there must match.

use sfv::{BareItem, Dictionary, ListEntry, Parser};
use sha2::{Digest, Sha256, Sha512};

use super::Unverifiable::{self, DigestMismatch, Malformed};

pub(super) fn check(field: &str, body: &[u8]) -> Result<(), Unverifiable> {
    let members: Dictionary =
        Parser::new(field).parse().map_err(|_| Malformed("Content-Digest is not a structured dictionary"))?;
    let mut checked = false;
    for (algorithm, member) in &members {
        let computed = match algorithm.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let ListEntry::Item(item) = member else { return Err(Malformed("a Content-Digest member is not an item")) };
        let BareItem::ByteSequence(digest) = &item.bare_item else {
            return Err(Malformed("a Content-Digest member is not a byte sequence"));
        };
        if *digest != computed {
            return Err(DigestMismatch);
        }
        checked = true;
    }
    if checked { Ok(()) } else { Err(Malformed("Content-Digest has no sha-256 or sha-512 member")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9530 §2's example body, and its digests (also those of RFC 9421 Appendix B.2).
    const BODY: &[u8] = b"{\"hello\": \"world\"}";
    const SHA_256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const SHA_512: &str =
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    #[test]
    fn the_rfc_examples_match_their_body() {
        assert_eq!(check(SHA_256, BODY), Ok(()));
        assert_eq!(check(SHA_512, BODY), Ok(()));
        assert_eq!(check(&format!("{SHA_256}, {SHA_512}"), BODY), Ok(()));
        assert_eq!(check(&format!("unixsum=:AAAA:, {SHA_512}"), BODY), Ok(()), "unknown algorithms are ignored");
        assert_eq!(check("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:", b""), Ok(()), "an empty body");
    }

    #[test]
    fn a_body_changed_by_one_byte_does_not_match() {
        let changed = b"{\"hello\": \"worle\"}";
        assert_eq!(check(SHA_256, changed), Err(DigestMismatch));
        assert_eq!(check(SHA_512, changed), Err(DigestMismatch));
        assert_eq!(check(&format!("{SHA_256}, {SHA_512}"), &BODY[..BODY.len() - 1]), Err(DigestMismatch));
        let one_right_one_wrong = format!("{SHA_256}, sha-512=:{}:", "A".repeat(88));
        assert_eq!(check(&one_right_one_wrong, BODY), Err(DigestMismatch), "every known member must match");
    }

    #[test]
    fn a_digest_keyward_cannot_check_is_refused() {
        for field in ["", "sha-256", "sha-256=\"X48E\"", "md5=:AAAA:", "((", "sha-256=(:AAAA:)"] {
            assert!(matches!(check(field, BODY), Err(Malformed(_))), "{field:?}");
        }
    }
}
