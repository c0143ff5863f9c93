use std::time::{Duration, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::*;

const KEY_ID: &str = "01a2095b-a07a-7423-8736-f821a5735572";

fn signer() -> RequestSigner {
    RequestSigner::new(KEY_ID, SigningSecret::new(b"0123456789abcdef0123456789abcdef".to_vec()))
}

fn header<B>(request: &Request<B>, name: &str) -> String {
    request.headers()[name].to_str().unwrap().to_owned()
}

#[test]
fn a_post_is_signed_over_its_components_and_its_body_digest() {
    let mut request = Request::post("https://API.example.com/orders?page=2").body(b"{\"order\": 42}".to_vec()).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
    let signed = signer().sign_at(&mut request, at).unwrap();

    let digest = format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(b"{\"order\": 42}")));
    assert_eq!(header(&request, "content-digest"), digest);
    let input = header(&request, "signature-input");
    let params = input.strip_prefix("sig1=").unwrap();
    assert!(params.starts_with(&format!(
        "(\"@method\" \"@authority\" \"@target-uri\" \"content-digest\");created=1765000000;keyid=\"{KEY_ID}\";alg=\"hmac-sha256\";nonce=\""
    )));
    let base = String::from_utf8(signed.signature_base.clone()).unwrap();
    assert_eq!(
        base,
        format!(
            "\"@method\": POST\n\"@authority\": api.example.com\n\"@target-uri\": https://api.example.com/orders?page=2\n\"content-digest\": {digest}\n\"@signature-params\": {params}"
        )
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(base.as_bytes());
    assert_eq!(signed.signature, mac.finalize().into_bytes().to_vec());
    assert_eq!(header(&request, "signature"), format!("sig1=:{}:", STANDARD.encode(&signed.signature)));
}

#[test]
fn every_request_gets_its_own_nonce_and_a_bodiless_one_no_digest() {
    let sign = || {
        let mut request = Request::get("https://api.example.com/").body(Vec::<u8>::new()).unwrap();
        signer().sign(&mut request).unwrap();
        assert!(!request.headers().contains_key("content-digest"));
        header(&request, "signature-input")
    };
    let (one, two) = (sign(), sign());
    let nonce = |input: &str| input.rsplit_once("nonce=").unwrap().1.to_owned();
    assert_ne!(nonce(&one), nonce(&two));
    assert_eq!(nonce(&one).len(), 2 + 22, "128 bits, base64url, quoted");
}

#[test]
fn path_query_and_header_fields_come_from_the_request() {
    let mut request = Request::get("/search?q=a%20b")
        .header("host", "Shop.Example:8443")
        .header("x-tenant", "  blue ")
        .header("x-tenant", "green")
        .body(Vec::<u8>::new())
        .unwrap();
    let signed =
        signer().covering(["@method", "@authority", "@path", "@query", "X-Tenant"]).sign(&mut request).unwrap();
    let base = String::from_utf8(signed.signature_base).unwrap();
    assert!(base.starts_with(
        "\"@method\": GET\n\"@authority\": shop.example:8443\n\"@path\": /search\n\"@query\": ?q=a%20b\n\"x-tenant\": blue, green\n"
    ));
}

#[test]
fn what_cannot_be_signed_is_an_error() {
    let mut relative = Request::get("/x").body(Vec::<u8>::new()).unwrap();
    assert_eq!(signer().sign(&mut relative), Err(SignError::NoAuthority));
    let mut no_scheme = Request::get("/x").header("host", "a.example").body(Vec::<u8>::new()).unwrap();
    assert_eq!(signer().sign(&mut no_scheme), Err(SignError::NoScheme));
    let mut request = Request::get("https://a.example/").body(Vec::<u8>::new()).unwrap();
    assert_eq!(signer().covering(["date"]).sign(&mut request), Err(SignError::MissingHeader("date".into())));
    assert!(matches!(signer().covering(["@status"]).sign(&mut request), Err(SignError::UnsupportedComponent(_))));
    assert!(matches!(signer().covering(["a\"b"]).sign(&mut request), Err(SignError::UnsupportedComponent(_))));
    let bad_id = RequestSigner::new("a\"b", SigningSecret::new(vec![1; 32]));
    assert_eq!(bad_id.sign(&mut request), Err(SignError::BadKeyId));
    assert!(!request.headers().contains_key("signature"), "nothing added on an error");
}

#[test]
fn the_secret_and_signature_are_never_printed() {
    let mut request = Request::get("https://a.example/").body(Vec::<u8>::new()).unwrap();
    let signer = RequestSigner::new(KEY_ID, SigningSecret::from_hex("0a0b0c0d0e0f1011").unwrap());
    let signed = signer.sign(&mut request).unwrap();
    let printed = format!("{signer:?} {signed:?}");
    assert!(printed.contains("SigningSecret(<redacted>)") && printed.contains("<redacted>"), "{printed}");
    assert!(!printed.contains(&STANDARD.encode(&signed.signature)), "{printed}");
    assert!(!printed.contains("0a0b0c") && !printed.contains("[10, 11"), "{printed}");
}

#[test]
fn a_secret_in_hex_is_read_and_bad_hex_refused() {
    assert_eq!(SigningSecret::from_hex(" 00ff10\n").unwrap(), SigningSecret::new(vec![0, 255, 16]));
    assert_eq!(SigningSecret::from_hex("abc"), Err(SignError::BadSecret));
    assert_eq!(SigningSecret::from_hex("zz"), Err(SignError::BadSecret));
}

#[test]
fn a_request_that_cannot_be_signed_is_left_as_it_was() {
    let mut request = Request::post("https://a.example/").body(b"body".to_vec()).unwrap();
    assert_eq!(signer().covering(["date"]).sign(&mut request), Err(SignError::MissingHeader("date".into())));
    assert!(request.headers().is_empty(), "{:?}", request.headers());
}
