//! Input rules for requests, each failure naming the request field.

use std::{borrow::Cow, collections::BTreeMap, time::SystemTime};

use super::{
    error::{Error, Result},
    key::KeyId,
    key_format, scope,
};

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_SCOPES: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_LEN: usize = 128;
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
pub const MAX_REASON_LEN: usize = 512;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

pub fn name(name: &str) -> Result<String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("name", "is required"));
    }
    if trimmed.chars().count() > MAX_NAME_LEN || has_control(trimmed) {
        return Err(Error::invalid("name", "must be 1-128 characters without control characters"));
    }
    Ok(trimmed.to_owned())
}

pub fn prefix(prefix: &str) -> Result<String> {
    if prefix.is_empty() {
        return Ok(key_format::DEFAULT_PREFIX.to_owned());
    }
    if !key_format::is_valid_prefix(prefix) {
        return Err(Error::invalid("prefix", "must match [a-z][a-z0-9]{0,15}"));
    }
    Ok(prefix.to_owned())
}

/// Checks each scope's syntax; returns them sorted and without duplicates.
pub fn scopes(field: &'static str, scopes: &[String], max: usize) -> Result<Vec<String>> {
    if scopes.len() > max {
        return Err(Error::invalid(field, format!("at most {max} scopes")));
    }
    for (i, s) in scopes.iter().enumerate() {
        scope::check_syntax(s).map_err(|why| Error::invalid(field, format!("scope #{i}: {why}")))?;
    }
    let mut out = scopes.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn expires_at(at: Option<SystemTime>, now: SystemTime) -> Result<Option<SystemTime>> {
    match at {
        Some(at) if at <= now => Err(Error::invalid("expires_at", "must be in the future")),
        other => Ok(other),
    }
}

pub fn metadata(metadata: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid("metadata", format!("at most {MAX_METADATA_ENTRIES} entries")));
    }
    for (k, v) in &metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY_LEN || has_control(k) {
            return Err(Error::invalid("metadata", "keys must be 1-128 bytes without control characters"));
        }
        if v.len() > MAX_METADATA_VALUE_LEN {
            return Err(Error::invalid("metadata", "values must be at most 1024 bytes"));
        }
    }
    Ok(metadata)
}

pub fn reason(reason: &str) -> Result<Option<String>> {
    let reason = reason.trim();
    if reason.chars().count() > MAX_REASON_LEN || has_control(reason) {
        return Err(Error::invalid("reason", "must be at most 512 characters without control characters"));
    }
    Ok((!reason.is_empty()).then(|| reason.to_owned()))
}

pub fn key_id(field: &'static str, id: &str) -> Result<KeyId> {
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    id.parse().map_err(|_| Error::invalid(field, "must be a key id (a UUID)"))
}

pub fn page_size(size: i32) -> Result<usize> {
    match size {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        1.. if size as u32 <= MAX_PAGE_SIZE => Ok(size as usize),
        _ => Err(Error::invalid("page_size", Cow::Owned(format!("must be 0-{MAX_PAGE_SIZE}")))),
    }
}

/// The end client's address, if given: an IPv4 or IPv6 address.
pub fn client_ip(ip: &str) -> Result<Option<std::net::IpAddr>> {
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse().map(Some).map_err(|_| Error::invalid("client_ip", "must be an IPv4 or IPv6 address"))
}

pub fn page_token(token: &str) -> Result<Option<KeyId>> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse().map(Some).map_err(|_| Error::invalid("page_token", "is not a token this server issued"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn field_of(e: Error) -> &'static str {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("not InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn every_failure_names_its_field() {
        let now = SystemTime::now();
        assert_eq!(field_of(name("  ").unwrap_err()), "name");
        assert_eq!(field_of(name(&"x".repeat(129)).unwrap_err()), "name");
        assert_eq!(field_of(prefix("Bad").unwrap_err()), "prefix");
        assert_eq!(field_of(scopes("scopes", &["a::b".into()], 64).unwrap_err()), "scopes");
        assert_eq!(field_of(scopes("scopes", &vec!["a".into(); 65], 64).unwrap_err()), "scopes");
        assert_eq!(field_of(expires_at(Some(now - Duration::from_secs(1)), now).unwrap_err()), "expires_at");
        let big: BTreeMap<_, _> = (0..65).map(|i| (i.to_string(), String::new())).collect();
        assert_eq!(field_of(metadata(big).unwrap_err()), "metadata");
        assert_eq!(field_of(reason(&"r".repeat(513)).unwrap_err()), "reason");
        assert_eq!(field_of(key_id("key_id", "nope").unwrap_err()), "key_id");
        assert_eq!(field_of(page_size(-1).unwrap_err()), "page_size");
        assert_eq!(field_of(page_size(1001).unwrap_err()), "page_size");
        assert_eq!(field_of(page_token("zzz").unwrap_err()), "page_token");
        assert_eq!(field_of(client_ip("10.0.0.300").unwrap_err()), "client_ip");
        assert!(client_ip("2001:db8::1").unwrap().is_some());
    }

    #[test]
    fn defaults_and_normal_forms() {
        assert_eq!(prefix("").unwrap(), "kw");
        assert_eq!(name("  svc  ").unwrap(), "svc");
        assert_eq!(scopes("scopes", &["b".into(), "a".into(), "b".into()], 64).unwrap(), vec!["a", "b"]);
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(reason("").unwrap(), None);
    }
}
