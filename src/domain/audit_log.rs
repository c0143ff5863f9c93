//! Paging through the audit trail and the usage log: page tokens bound to the query they came
//! from, and how much one page may scan. The use cases are in `audit_reader`.

use super::error::{Error, Result};

/// Index entries one QueryEvents page may read before it answers, even with a short page.
pub const MAX_SCAN: usize = 10_000;

fn fingerprint(query: &impl std::fmt::Debug) -> String {
    blake3::hash(format!("{query:?}").as_bytes()).to_hex()[..16].to_owned()
}

/// Lowercase hex (page tokens, MACs in exports).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A page token: where the next page resumes, bound to the query it came from.
pub(crate) fn token(query: &impl std::fmt::Debug, cursor: &[u8]) -> String {
    format!("{}.{}", hex(cursor), fingerprint(query))
}

/// The cursor in `token`, if it came from a page of `query` and has a length `fits`.
pub(crate) fn resume(
    query: &impl std::fmt::Debug,
    token: &str,
    fits: impl Fn(usize) -> bool,
) -> Result<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token from a previous response with these same filters");
    let (cursor, print) = token.split_once('.').ok_or_else(bad)?;
    if print != fingerprint(query) {
        return Err(bad());
    }
    unhex(cursor).filter(|c| fits(c.len())).map(Some).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::AuditQuery;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let q = AuditQuery { newest_first: true, ..Default::default() };
        let t = token(&q, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let fits = |n| n == 8;
        assert_eq!(resume(&q, &t, fits).unwrap(), Some(vec![1, 2, 3, 4, 5, 6, 7, 8]));
        let other = AuditQuery::default();
        assert!(matches!(resume(&other, &t, fits), Err(Error::InvalidArgument { field: "page_token", .. })));
        assert!(resume(&q, &t, |n| n == 13).is_err(), "a cursor of the wrong length");
        assert!(resume(&q, "zz.x", fits).is_err());
        assert_eq!(resume(&q, "", fits).unwrap(), None);
    }
}
