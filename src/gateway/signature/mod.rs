//! RFC 9421 signatures at the gateway: from a request's `Signature-Input` and `Signature`
//! headers and its covered components, the signature base and the signature VerifySignature
//! checks. Covered components: `@method`, `@authority`, `@scheme`, `@target-uri`, `@path`,
//! `@query` and header fields by name (without component parameters). A request with a body
//! (`content-length` above 0, or `transfer-encoding`) must cover `content-digest`; that the
//! digest matches the body is for whoever sees the body (the upstream), not the gateway.

use sfv::{BareItem, Dictionary, FieldType, List, ListEntry, Parser};

use super::GatewayRequest;

/// What VerifySignature needs of a signed request.
#[derive(Debug, PartialEq, Eq)]
pub struct SignedParts {
    pub base: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a signed request cannot be checked (the client is told its signature is not valid).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unverifiable(pub &'static str);

/// The signature base and signature of `request`'s first signature; `None` without
/// `Signature-Input`.
pub fn signed_parts(request: &GatewayRequest<'_>) -> Option<Result<SignedParts, Unverifiable>> {
    let input = (request.header)("signature-input")?;
    Some(parts(request, input))
}

fn parts(request: &GatewayRequest<'_>, input: &str) -> Result<SignedParts, Unverifiable> {
    let inputs: Dictionary =
        Parser::new(input).parse().map_err(|_| Unverifiable("Signature-Input is not a structured dictionary"))?;
    let Some((label, ListEntry::InnerList(covered))) = inputs.first() else {
        return Err(Unverifiable("Signature-Input has no inner list"));
    };
    let signatures: Dictionary = Parser::new((request.header)("signature").unwrap_or_default())
        .parse()
        .map_err(|_| Unverifiable("Signature is not a structured dictionary"))?;
    let Some(ListEntry::Item(item)) = signatures.get(label) else {
        return Err(Unverifiable("Signature has no entry for the Signature-Input label"));
    };
    let BareItem::ByteSequence(signature) = &item.bare_item else {
        return Err(Unverifiable("the signature is not a byte sequence"));
    };
    let mut base = String::new();
    let mut digest_covered = false;
    for component in &covered.items {
        let Some(name) = component.bare_item.as_string().map(|s| s.as_str()) else {
            return Err(Unverifiable("a covered component is not a string"));
        };
        if !component.params.is_empty() {
            return Err(Unverifiable("covered components with parameters are not supported"));
        }
        digest_covered |= name == "content-digest";
        let value = component_value(request, name)?;
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    if has_body(request) && !digest_covered {
        return Err(Unverifiable("a request with a body must cover content-digest"));
    }
    let params = List::from(vec![ListEntry::InnerList(covered.clone())])
        .serialize()
        .ok_or(Unverifiable("the signature parameters do not serialize"))?;
    base.push_str(&format!("\"@signature-params\": {params}"));
    Ok(SignedParts { base: base.into_bytes(), signature: signature.clone() })
}

fn component_value(request: &GatewayRequest<'_>, name: &str) -> Result<String, Unverifiable> {
    let (path, query) = request.path.split_once('?').map_or((request.path, None), |(p, q)| (p, Some(q)));
    let path = if path.is_empty() { "/" } else { path };
    let authority = || {
        let authority = request.authority.to_ascii_lowercase();
        if authority.is_empty() { Err(Unverifiable("the request's authority is unknown")) } else { Ok(authority) }
    };
    let scheme = || {
        let scheme = request.scheme.to_ascii_lowercase();
        if scheme.is_empty() { Err(Unverifiable("the request's scheme is unknown")) } else { Ok(scheme) }
    };
    Ok(match name {
        "@method" => request.method.to_owned(),
        "@authority" => authority()?,
        "@scheme" => scheme()?,
        "@path" => path.to_owned(),
        "@query" => format!("?{}", query.unwrap_or_default()),
        "@target-uri" => format!("{}://{}{}", scheme()?, authority()?, request.path),
        derived if derived.starts_with('@') => {
            return Err(Unverifiable("a covered derived component is not supported"));
        }
        field => {
            let value = (request.header)(field).ok_or(Unverifiable("a covered header field is missing"))?;
            value.trim().to_owned()
        }
    })
}

fn has_body(request: &GatewayRequest<'_>) -> bool {
    let length = (request.header)("content-length").map(str::trim);
    length.is_some_and(|l| l != "0") || (request.header)("transfer-encoding").is_some()
}

#[cfg(test)]
mod tests;
