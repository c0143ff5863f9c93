//! The signature base rebuilt at the gateway, checked against what an independent RFC 9421
//! implementation (PyPI's http-message-signatures 3.0, tests/signing/sign_request.py) signed, and
//! against RFC 9421's own examples (§2.2 and the Appendix B.2.5 hmac-sha256 test vector).

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

const INPUT: &str = r#"pyhms=("@method" "@authority" "@target-uri" "content-digest");created=1700000000;keyid="0190f0f0-0000-7000-8000-000000000000";alg="hmac-sha256";nonce="abc""#;
const SIGNATURE: &str = "pyhms=:pQgJ5v0LuEYDjqLaGFRaUuwnHuciy0HxLLxUFiQNmR0=:";
const DIGEST: &str = "sha-256=:dSLa8/hzhkZEuTQWuJpClPG3Pcvf+x1eOMnv8xG+buk=:";
const BODY: &[u8] = b"{\"order\": 42}";

/// A request's headers, by name.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// One request as a gateway describes it.
struct Described<'a> {
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    scheme: &'a str,
    headers: Headers<'a>,
    has_body: bool,
    body: Body<'a>,
}

impl<'a> Described<'a> {
    /// `POST https://api.example.com/orders?page=1` with these headers, through forward-auth.
    fn post(headers: Headers<'a>) -> Self {
        Self {
            method: "POST",
            path: "/orders?page=1",
            authority: "api.example.com",
            scheme: "https",
            headers,
            has_body: true,
            body: Body::NotForwarded,
        }
    }

    fn parts(&self) -> Option<Result<SignedParts, Unverifiable>> {
        let header = |name: &str| self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        signed_parts(&GatewayRequest {
            method: self.method,
            path: self.path,
            authority: self.authority,
            scheme: self.scheme,
            header: &header,
            direct_client: None,
            route_scopes: vec![],
            has_body: self.has_body,
            body: self.body,
        })
    }
}

fn hmac_sha256(key: &[u8], base: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(base);
    mac.finalize().into_bytes().to_vec()
}

#[test]
fn the_base_is_the_one_the_independent_library_signed() {
    let headers = [("signature-input", INPUT), ("signature", SIGNATURE), ("content-digest", DIGEST)];
    let parts = Described::post(&headers).parts().unwrap().unwrap();
    let expected = format!(
        "\"@method\": POST\n\"@authority\": api.example.com\n\"@target-uri\": https://api.example.com/orders?page=1\n\"content-digest\": {DIGEST}\n\"@signature-params\": {}",
        INPUT.strip_prefix("pyhms=").unwrap()
    );
    assert_eq!(String::from_utf8(parts.base.clone()).unwrap(), expected);
    assert_eq!(hmac_sha256(&[0x11; 32], &parts.base), parts.signature, "the library's signature over our base");
}

#[test]
fn unsigned_requests_and_unverifiable_signatures_are_told_apart() {
    assert!(Described::post(&[]).parts().is_none(), "no Signature-Input: not a signed request");
    let no_digest = INPUT.replace(r#" "content-digest""#, "");
    let with_params = INPUT.replace(r#""@method""#, r#""@method";req"#);
    let unsupported = INPUT.replace(r#""@method""#, r#""@status""#);
    let cases: [(Headers, &str, &str); 7] = [
        (
            &[("signature-input", "(("), ("signature", SIGNATURE)],
            "api.example.com",
            "Signature-Input is not a structured dictionary",
        ),
        (&[("signature-input", INPUT)], "api.example.com", "Signature has no entry for the Signature-Input label"),
        (
            &[("signature-input", INPUT), ("signature", SIGNATURE)],
            "api.example.com",
            "a covered header field is missing",
        ),
        (
            &[("signature-input", INPUT), ("signature", SIGNATURE), ("content-digest", DIGEST)],
            "",
            "the request's authority is unknown",
        ),
        (
            &[("signature-input", &no_digest), ("signature", SIGNATURE)],
            "api.example.com",
            "a request with a body must cover content-digest",
        ),
        (
            &[("signature-input", &with_params), ("signature", SIGNATURE), ("content-digest", DIGEST)],
            "api.example.com",
            "a covered component has parameters keyward does not support",
        ),
        (
            &[("signature-input", &unsupported), ("signature", SIGNATURE), ("content-digest", DIGEST)],
            "api.example.com",
            "a covered derived component is not supported",
        ),
    ];
    for (headers, authority, why) in cases {
        let request = Described { authority, ..Described::post(headers) };
        assert_eq!(request.parts().unwrap().unwrap_err(), Unverifiable::Malformed(why));
    }
}

#[test]
fn a_body_the_gateway_sends_must_match_the_covered_digest() {
    let headers = [("signature-input", INPUT), ("signature", SIGNATURE), ("content-digest", DIGEST)];
    let whole = |body| Described { body, ..Described::post(&headers) }.parts().unwrap();
    assert!(whole(Body::Whole(BODY)).is_ok());
    assert_eq!(whole(Body::Whole(b"{\"order\": 43}")).unwrap_err(), Unverifiable::DigestMismatch);
    assert_eq!(whole(Body::Whole(b"")).unwrap_err(), Unverifiable::DigestMismatch);
    assert_eq!(whole(Body::Incomplete).unwrap_err(), Unverifiable::BodyIncomplete);
    assert_eq!(Unverifiable::DigestMismatch.denial().error_code(), "content_digest_mismatch");
    assert_eq!(Unverifiable::BodyIncomplete.denial().http_status(), 401);
    // Forward-auth: the digest is signed; that it matches the body is the upstream's to check.
    assert!(whole(Body::NotForwarded).is_ok());
}

/// `GET http://api.example.com:80/path/a%20b?…` signed by the library (sign_request.py with
/// `--method GET --no-body` and every derived component keyward supports).
#[test]
fn derived_components_are_the_ones_the_independent_library_signed() {
    let input = r#"pyhms=("@method" "@scheme" "@authority" "@request-target" "@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20" "@query-param";name="tilde" "@query" "@path");created=1700000000;keyid="0190f0f0-0000-7000-8000-000000000000";alg="hmac-sha256";nonce="abc""#;
    let signature = "pyhms=:ygxqtQzzddn/PORxEqx9jZD3MjU6Dk+CQvTXPVCyjBk=:";
    let query = "var=this%20is%20a%20big%0Avalue&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something&tilde=a~b*c";
    let path = format!("/path/a%20b?{query}");
    let headers = [("signature-input", input), ("signature", signature)];
    let request = Described {
        method: "GET",
        path: &path,
        authority: "API.example.com:80",
        scheme: "http",
        has_body: false,
        ..Described::post(&headers)
    };
    let parts = request.parts().unwrap().unwrap();
    let base = String::from_utf8(parts.base.clone()).unwrap();
    let lines: Vec<&str> = base.lines().collect();
    assert_eq!(
        lines[..10],
        [
            "\"@method\": GET",
            "\"@scheme\": http",
            "\"@authority\": api.example.com",
            &format!("\"@request-target\": {path}"),
            "\"@query-param\";name=\"var\": this%20is%20a%20big%0Avalue",
            "\"@query-param\";name=\"bar\": with%20plus%20whitespace",
            "\"@query-param\";name=\"fa%C3%A7ade%22%3A%20\": something",
            "\"@query-param\";name=\"tilde\": a%7Eb*c",
            &format!("\"@query\": ?{query}"),
            "\"@path\": /path/a%20b",
        ]
    );
    assert_eq!(hmac_sha256(&[0x11; 32], &parts.base), parts.signature, "the library's signature over our base");
}

/// RFC 9421 §2.2.5, §2.2.7 and §2.2.8's examples, one component at a time.
#[test]
fn derived_components_match_the_rfc_examples() {
    let line_of = |method, path: &str, component: &str| {
        let input = format!("sig=({component});created=1");
        let headers = [("signature-input", input.as_str()), ("signature", "sig=:AAAA:")];
        let request = Described {
            method,
            path,
            authority: "www.example.com",
            scheme: "https",
            has_body: false,
            ..Described::post(&headers)
        };
        request.parts().unwrap().map(|parts| String::from_utf8(parts.base).unwrap().lines().next().unwrap().to_owned())
    };
    let line = |method, path, component| line_of(method, path, component).unwrap();
    assert_eq!(line("POST", "/path?param=value", r#""@request-target""#), r#""@request-target": /path?param=value"#);
    assert_eq!(
        line("POST", "/path?param=value&foo=bar&baz=batman", r#""@query""#),
        r#""@query": ?param=value&foo=bar&baz=batman"#
    );
    assert_eq!(line("GET", "/path", r#""@query""#), r#""@query": ?"#);
    assert_eq!(line("POST", "/path?param=value", r#""@scheme""#), r#""@scheme": https"#);
    let query = "/path?param=value&foo=bar&baz=batman&qux=";
    assert_eq!(line("GET", query, r#""@query-param";name="baz""#), r#""@query-param";name="baz": batman"#);
    assert_eq!(line("GET", query, r#""@query-param";name="qux""#), r#""@query-param";name="qux": "#);
    assert_eq!(line("GET", query, r#""@query-param";name="param""#), r#""@query-param";name="param": value"#);
    for (path, component, why) in [
        (query, r#""@query-param";name="missing""#, "a covered query parameter is missing"),
        ("/path?a=1&a=2", r#""@query-param";name="a""#, "a covered query parameter is repeated"),
        (query, r#""@query-param""#, "@query-param needs its name parameter"),
        (query, r#""@query-param";name="baz";bs"#, "a covered component has parameters keyward does not support"),
        ("", r#""@request-target""#, "the request's target is unknown"),
    ] {
        assert_eq!(line_of("GET", path, component).unwrap_err(), Unverifiable::Malformed(why), "{component}");
    }
}

/// RFC 9421 Appendix B.2.5: the test request signed with hmac-sha256 and the shared secret
/// `test-shared-secret`, covering `date`, `@authority` and `content-type`.
#[test]
fn the_rfc_hmac_sha256_test_vector_verifies_and_its_uncovered_body_is_refused() {
    let secret = STANDARD
        .decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
        .unwrap();
    let headers = [
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        (
            "content-digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("content-length", "18"),
        (
            "signature-input",
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        ),
        ("signature", "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"),
    ];
    let request = |has_body| Described {
        path: "/foo?param=Value&Pet=dog",
        authority: "example.com",
        scheme: "https",
        has_body,
        body: Body::Whole(b"{\"hello\": \"world\"}"),
        ..Described::post(&headers)
    };
    let parts = request(false).parts().unwrap().unwrap();
    assert_eq!(
        String::from_utf8(parts.base.clone()).unwrap(),
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\
         \"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
    );
    assert_eq!(hmac_sha256(&secret, &parts.base), parts.signature);
    // As the RFC sends it, with its body: the signature leaves the body open to change.
    let refused = request(true).parts().unwrap().unwrap_err();
    assert_eq!(refused, Unverifiable::Malformed("a request with a body must cover content-digest"));
}
