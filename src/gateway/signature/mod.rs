//! RFC 9421 signatures at the gateway: from a request's `Signature-Input` and `Signature`
//! headers and its covered components (`components`), the signature base and the signature
//! VerifySignature checks. A request with a body must cover `content-digest`; when the gateway
//! sends keyward the body (Envoy's `with_request_body`), the covered digest must match it
//! (`digest`, RFC 9530); when it does not (forward-auth), that is the upstream's to check.

mod components;
mod digest;

use sfv::{BareItem, Dictionary, FieldType, List, ListEntry, Parser};

use self::Unverifiable::Malformed;
use super::{Body, Denial, GatewayRequest};

/// What VerifySignature needs of a signed request.
#[derive(Debug, PartialEq, Eq)]
pub struct SignedParts {
    pub base: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a signed request is refused before its signature is checked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverifiable {
    /// The signature cannot be checked (the client is told its signature is not valid).
    #[error("{0}")]
    Malformed(&'static str),
    /// The covered `Content-Digest` does not match the body the gateway sent.
    #[error("the content digest does not match the body")]
    DigestMismatch,
    /// The covered `Content-Digest` cannot be checked: the gateway sent only part of the body.
    #[error("the gateway did not send the whole body, which the covered content digest needs")]
    BodyIncomplete,
}

impl Unverifiable {
    /// What the client is told.
    pub fn denial(&self) -> Denial {
        match self {
            Unverifiable::Malformed(_) => Denial::InvalidKey,
            Unverifiable::DigestMismatch => Denial::ContentDigestMismatch,
            Unverifiable::BodyIncomplete => Denial::BodyIncomplete,
        }
    }
}

/// The signature base and signature of `request`'s first signature; `None` without
/// `Signature-Input`.
pub fn signed_parts(request: &GatewayRequest<'_>) -> Option<Result<SignedParts, Unverifiable>> {
    let input = (request.header)("signature-input")?;
    Some(parts(request, input))
}

fn parts(request: &GatewayRequest<'_>, input: &str) -> Result<SignedParts, Unverifiable> {
    let inputs: Dictionary =
        Parser::new(input).parse().map_err(|_| Malformed("Signature-Input is not a structured dictionary"))?;
    let Some((label, ListEntry::InnerList(covered))) = inputs.first() else {
        return Err(Malformed("Signature-Input has no inner list"));
    };
    let signatures: Dictionary = Parser::new((request.header)("signature").unwrap_or_default())
        .parse()
        .map_err(|_| Malformed("Signature is not a structured dictionary"))?;
    let Some(ListEntry::Item(item)) = signatures.get(label) else {
        return Err(Malformed("Signature has no entry for the Signature-Input label"));
    };
    let BareItem::ByteSequence(signature) = &item.bare_item else {
        return Err(Malformed("the signature is not a byte sequence"));
    };
    let mut base = String::new();
    let mut digest_covered = false;
    for component in &covered.items {
        let value = components::value(request, component)?;
        digest_covered |= component.bare_item.as_string().is_some_and(|name| name.as_str() == "content-digest");
        base.push_str(&format!("{}: {value}\n", component.serialize()));
    }
    if request.has_body && !digest_covered {
        return Err(Malformed("a request with a body must cover content-digest"));
    }
    if digest_covered {
        match request.body {
            Body::NotForwarded => {}
            Body::Whole(body) => {
                let field = (request.header)("content-digest").ok_or(Malformed("a covered header field is missing"))?;
                digest::check(field, body)?;
            }
            Body::Incomplete => return Err(Unverifiable::BodyIncomplete),
        }
    }
    let params = List::from(vec![ListEntry::InnerList(covered.clone())])
        .serialize()
        .ok_or(Malformed("the signature parameters do not serialize"))?;
    base.push_str(&format!("\"@signature-params\": {params}"));
    Ok(SignedParts { base: base.into_bytes(), signature: signature.clone() })
}

#[cfg(test)]
mod tests;
