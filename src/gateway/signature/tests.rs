//! The signature base rebuilt at the gateway, checked against what an independent RFC 9421
//! implementation (PyPI's http-message-signatures 3.0, tests/signing/sign_request.py) signed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

const INPUT: &str = r#"pyhms=("@method" "@authority" "@target-uri" "content-digest");created=1700000000;keyid="0190f0f0-0000-7000-8000-000000000000";alg="hmac-sha256";nonce="abc""#;
const SIGNATURE: &str = "pyhms=:pQgJ5v0LuEYDjqLaGFRaUuwnHuciy0HxLLxUFiQNmR0=:";
const DIGEST: &str = "sha-256=:dSLa8/hzhkZEuTQWuJpClPG3Pcvf+x1eOMnv8xG+buk=:";

fn parts_of(headers: &[(&str, &str)], authority: &str) -> Option<Result<SignedParts, Unverifiable>> {
    let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    signed_parts(&GatewayRequest {
        method: "POST",
        path: "/orders?page=1",
        authority,
        scheme: "https",
        header: &header,
        direct_client: None,
        route_scopes: vec![],
    })
}

#[test]
fn the_base_is_the_one_the_independent_library_signed() {
    let headers =
        [("signature-input", INPUT), ("signature", SIGNATURE), ("content-digest", DIGEST), ("content-length", "13")];
    let parts = parts_of(&headers, "api.example.com").unwrap().unwrap();
    let expected = format!(
        "\"@method\": POST\n\"@authority\": api.example.com\n\"@target-uri\": https://api.example.com/orders?page=1\n\"content-digest\": {DIGEST}\n\"@signature-params\": {}",
        INPUT.strip_prefix("pyhms=").unwrap()
    );
    assert_eq!(String::from_utf8(parts.base.clone()).unwrap(), expected);
    let mut mac = Hmac::<Sha256>::new_from_slice(&[0x11; 32]).unwrap();
    mac.update(&parts.base);
    assert_eq!(mac.finalize().into_bytes().to_vec(), parts.signature, "the library's signature over our base");
}

/// A request's headers, by name.
type Headers<'a> = &'a [(&'a str, &'a str)];

#[test]
fn unsigned_requests_and_unverifiable_signatures_are_told_apart() {
    assert!(parts_of(&[], "api.example.com").is_none(), "no Signature-Input: not a signed request");
    let no_digest = INPUT.replace(r#" "content-digest""#, "");
    let cases: [(Headers, &str, &str); 5] = [
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
            &[("signature-input", &no_digest), ("signature", SIGNATURE), ("content-length", "13")],
            "api.example.com",
            "a request with a body must cover content-digest",
        ),
    ];
    for (headers, authority, why) in cases {
        assert_eq!(parts_of(headers, authority).unwrap().unwrap_err(), Unverifiable(why));
    }
}
