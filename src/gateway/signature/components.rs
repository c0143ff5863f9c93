//! The value of one covered component (RFC 9421 §2), from the request as the gateway describes
//! it: the derived components `@method`, `@authority`, `@scheme`, `@target-uri`,
//! `@request-target`, `@path`, `@query` and `@query-param` (with its `name` parameter), and
//! header fields by name (without parameters). Anything else cannot be rebuilt: refused.

use sfv::{BareItem, Item};

use super::{GatewayRequest, Unverifiable::Malformed};
use crate::gateway::form;

pub(super) fn value(request: &GatewayRequest<'_>, component: &Item) -> Result<String, super::Unverifiable> {
    let Some(name) = component.bare_item.as_string().map(|s| s.as_str()) else {
        return Err(Malformed("a covered component is not a string"));
    };
    let mut params = component.params.iter();
    let name_param = match (name, params.next(), params.next()) {
        (_, None, _) => None,
        ("@query-param", Some((key, BareItem::String(value))), None) if key.as_str() == "name" => Some(value.as_str()),
        _ => return Err(Malformed("a covered component has parameters keyward does not support")),
    };
    let (path, query) = request.path.split_once('?').map_or((request.path, None), |(p, q)| (p, Some(q)));
    let scheme = || {
        let scheme = request.scheme.to_ascii_lowercase();
        if scheme.is_empty() { Err(Malformed("the request's scheme is unknown")) } else { Ok(scheme) }
    };
    let authority = || authority(request.authority, &request.scheme.to_ascii_lowercase());
    Ok(match name {
        "@method" => request.method.to_owned(),
        "@authority" => authority()?,
        "@scheme" => scheme()?,
        "@path" => if path.is_empty() { "/" } else { path }.to_owned(),
        "@query" => format!("?{}", query.unwrap_or_default()),
        "@query-param" => query_param(query, name_param.ok_or(Malformed("@query-param needs its name parameter"))?)?,
        "@request-target" if request.path.is_empty() => return Err(Malformed("the request's target is unknown")),
        "@request-target" => request.path.to_owned(),
        "@target-uri" => format!("{}://{}{}", scheme()?, authority()?, request.path),
        derived if derived.starts_with('@') => {
            return Err(Malformed("a covered derived component is not supported"));
        }
        field => {
            let value = (request.header)(field).ok_or(Malformed("a covered header field is missing"))?;
            value.trim().to_owned()
        }
    })
}

/// The authority lower-cased, without the scheme's default port (RFC 9110 §4.2.3).
fn authority(authority: &str, scheme: &str) -> Result<String, super::Unverifiable> {
    let authority = authority.to_ascii_lowercase();
    if authority.is_empty() {
        return Err(Malformed("the request's authority is unknown"));
    }
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return Ok(authority),
    };
    Ok(authority.strip_suffix(default_port).map(str::to_owned).unwrap_or(authority))
}

/// RFC 9421 §2.2.8: the one query parameter whose decoded name is `name` decoded, its value
/// decoded and re-encoded. A parameter that is missing or repeated cannot be covered.
fn query_param(query: Option<&str>, name: &str) -> Result<String, super::Unverifiable> {
    let wanted = form::decode(name);
    let mut found = None;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form::decode(key) == wanted {
            if found.is_some() {
                return Err(Malformed("a covered query parameter is repeated"));
            }
            found = Some(form::encode(&form::decode(value)));
        }
    }
    found.ok_or(Malformed("a covered query parameter is missing"))
}
