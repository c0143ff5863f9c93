//! [`KeyHeader`]: where the layer looks for the end client's key, and how it reads it.

use http::{HeaderMap, HeaderName, header::AUTHORIZATION};

/// A request header that may carry the end client's key.
///
/// The layer looks through its list in order and takes the first header that holds a key;
/// the default list is `authorization: Bearer <key>`, then `x-api-key: <key>` (the same as
/// keyward's gateway integrations).
///
/// ```no_run
/// # fn run(client: keyward_client::Client) {
/// use http::HeaderName;
/// use keyward_client::{KeyHeader, VerifyKeyLayer};
///
/// // Only `x-service-key: <key>`.
/// let layer = VerifyKeyLayer::new(client).key_headers([KeyHeader::plain(HeaderName::from_static("x-service-key"))]);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyHeader {
    /// `<name>: Bearer <key>` (the scheme is matched without regard to case).
    Bearer(HeaderName),
    /// `<name>: <key>`: the whole value is the key.
    Plain(HeaderName),
}

impl KeyHeader {
    /// `<name>: Bearer <key>`.
    pub fn bearer(name: HeaderName) -> Self {
        KeyHeader::Bearer(name)
    }

    /// `<name>: <key>`.
    pub fn plain(name: HeaderName) -> Self {
        KeyHeader::Plain(name)
    }

    /// `authorization: Bearer <key>`, then `x-api-key: <key>`.
    pub fn defaults() -> Vec<KeyHeader> {
        vec![KeyHeader::Bearer(AUTHORIZATION), KeyHeader::Plain(HeaderName::from_static("x-api-key"))]
    }

    /// The key this header holds in `headers`, if any: present, visible ASCII, in the
    /// expected form, and not empty.
    pub(crate) fn key_in<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let (name, bearer) = match self {
            KeyHeader::Bearer(name) => (name, true),
            KeyHeader::Plain(name) => (name, false),
        };
        let value = headers.get(name)?.to_str().ok()?.trim();
        let key = if bearer {
            let (scheme, rest) = value.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            rest.trim()
        } else {
            value
        };
        (!key.is_empty()).then_some(key)
    }
}

/// The first key found through `key_headers`, in order.
pub(crate) fn presented_key<'a>(key_headers: &[KeyHeader], headers: &'a HeaderMap) -> Option<&'a str> {
    key_headers.iter().find_map(|header| header.key_in(headers))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    fn key(h: &HeaderMap) -> Option<&str> {
        presented_key(&KeyHeader::defaults(), h)
    }

    #[test]
    fn bearer_is_read_whatever_the_scheme_case() {
        for value in ["Bearer kw_a", "bearer kw_a", "BEARER   kw_a  "] {
            assert_eq!(key(&headers(&[("authorization", value)])), Some("kw_a"), "{value}");
        }
    }

    #[test]
    fn authorization_wins_over_x_api_key() {
        let both = headers(&[("authorization", "Bearer kw_first"), ("x-api-key", "kw_second")]);
        assert_eq!(key(&both), Some("kw_first"));
    }

    #[test]
    fn another_scheme_or_an_empty_bearer_falls_through_to_the_next_header() {
        let basic = headers(&[("authorization", "Basic dXNlcjpwdw=="), ("x-api-key", "kw_b")]);
        assert_eq!(key(&basic), Some("kw_b"));
        let empty = headers(&[("authorization", "Bearer   "), ("x-api-key", "kw_b")]);
        assert_eq!(key(&empty), Some("kw_b"));
        assert_eq!(key(&headers(&[("authorization", "Bearer")])), None);
    }

    #[test]
    fn no_key_header_is_none() {
        assert_eq!(key(&headers(&[("x-api-key", "  ")])), None);
        assert_eq!(key(&HeaderMap::new()), None);
    }

    #[test]
    fn a_value_that_is_not_visible_ascii_is_not_a_key() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_bytes(b"kw_\xff").unwrap());
        assert_eq!(key(&h), None);
    }

    #[test]
    fn a_custom_list_is_used_in_its_order() {
        let list = [KeyHeader::plain(HeaderName::from_static("x-service-key")), KeyHeader::defaults()[0].clone()];
        let h = headers(&[("authorization", "Bearer kw_a"), ("x-service-key", "kw_s")]);
        assert_eq!(presented_key(&list, &h), Some("kw_s"));
        assert_eq!(presented_key(&list[..1], &headers(&[("x-api-key", "kw_x")])), None);
    }
}
