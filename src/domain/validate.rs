//! Input rules for requests, each failure naming the request field.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use super::{
    error::{Error, Result},
    key::{KeyId, RateLimit, Refill},
    key_format, scope,
};

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_SCOPES: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_LEN: usize = 128;
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
pub const MAX_REASON_LEN: usize = 512;
/// Longest `source_url` of a leak report, in characters.
pub const MAX_SOURCE_URL_LEN: usize = 2048;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_CIDRS: usize = 64;
pub const MAX_RATE_LIMIT: u32 = 1_000_000;
pub const MIN_RATE_WINDOW: Duration = Duration::from_millis(1);
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The most uses a quota or refill may hold: 10^15.
pub const MAX_USES: u64 = 1_000_000_000_000_000;
pub const MIN_REFILL_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_REFILL_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);
pub const MAX_COST: u32 = 1_000_000;

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

/// A key's owner, a team name; empty means none.
pub fn owner(field: &'static str, owner: &str) -> Result<Option<String>> {
    match owner.trim() {
        "" => Ok(None),
        team if scope::is_team(team) => Ok(Some(team.to_owned())),
        _ => Err(Error::invalid(field, "must be a team name matching [a-z0-9][a-z0-9_.-]{0,62}")),
    }
}

pub fn expires_at(at: Option<SystemTime>, now: SystemTime) -> Result<Option<SystemTime>> {
    match at {
        Some(at) if at <= now => Err(Error::invalid("expires_at", "must be in the future")),
        other => Ok(other),
    }
}

/// `not_before` must come before `expires_at` when both are set.
pub fn validity_window(not_before: Option<SystemTime>, expires_at: Option<SystemTime>) -> Result<()> {
    match (not_before, expires_at) {
        (Some(nb), Some(exp)) if nb >= exp => Err(Error::invalid("not_before", "must be before expires_at")),
        _ => Ok(()),
    }
}

/// Networks in CIDR form (`10.0.0.0/8`, `2001:db8::/32`) or bare addresses (one host); sorted,
/// without duplicates. A network with host bits set (`10.0.0.1/8`) is refused as a likely typo.
pub fn allowed_cidrs(cidrs: &[String]) -> Result<Vec<IpNet>> {
    const FIELD: &str = "allowed_cidrs";
    if cidrs.len() > MAX_CIDRS {
        return Err(Error::invalid(FIELD, format!("at most {MAX_CIDRS} networks")));
    }
    let mut out = Vec::with_capacity(cidrs.len());
    for (i, text) in cidrs.iter().enumerate() {
        let text = text.trim();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(Error::invalid(FIELD, format!("#{i} is not an IPv4/IPv6 network or address")));
                }
            },
        };
        if net.trunc() != net {
            return Err(Error::invalid(FIELD, format!("#{i} has host bits set; did you mean {}?", net.trunc())));
        }
        out.push(net);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn rate_limit(limit: Option<RateLimit>) -> Result<Option<RateLimit>> {
    let Some(l) = limit else { return Ok(None) };
    if !(1..=MAX_RATE_LIMIT).contains(&l.limit) {
        return Err(Error::invalid("rate_limit.limit", format!("must be 1-{MAX_RATE_LIMIT}")));
    }
    if !(MIN_RATE_WINDOW..=MAX_RATE_WINDOW).contains(&l.window) {
        return Err(Error::invalid("rate_limit.window", "must be 1ms-24h"));
    }
    Ok(Some(l))
}

pub fn refill(refill: Option<Refill>) -> Result<Option<Refill>> {
    let Some(r) = refill else { return Ok(None) };
    if !(1..=MAX_USES).contains(&r.amount) {
        return Err(Error::invalid("refill.amount", "must be 1-10^15"));
    }
    if !(MIN_REFILL_INTERVAL..=MAX_REFILL_INTERVAL).contains(&r.interval) {
        return Err(Error::invalid("refill.interval", "must be 1s-366 days"));
    }
    Ok(Some(r))
}

/// The longest `max_age` and RotateKey grace period.
pub const MAX_AGE_LIMIT: Duration = Duration::from_secs(10 * 366 * 86_400);
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(366 * 86_400);

/// A key's `max_age`: zero means none; otherwise 1 s to 10 years.
pub fn max_age(age: Option<Duration>) -> Result<Option<Duration>> {
    match age {
        None => Ok(None),
        Some(a) if a.is_zero() => Ok(None),
        Some(a) if a < Duration::from_secs(1) || a > MAX_AGE_LIMIT => {
            Err(Error::invalid("max_age", "must be 0 (no limit) or 1s-10 years"))
        }
        Some(a) => Ok(Some(a)),
    }
}

/// How long a rotated key keeps verifying: 0 (at once) to 366 days.
pub fn grace_period(grace: Duration) -> Result<Duration> {
    if grace > MAX_GRACE_PERIOD {
        return Err(Error::invalid("grace_period", "must be at most 366 days"));
    }
    Ok(grace)
}

pub fn remaining(remaining: Option<u64>) -> Result<Option<u64>> {
    match remaining {
        Some(n) if n > MAX_USES => Err(Error::invalid("remaining", "must be at most 10^15")),
        other => Ok(other),
    }
}

/// Uses a verification spends: unset means 1.
pub fn cost(cost: Option<u32>) -> Result<u64> {
    match cost {
        None => Ok(1),
        Some(c) if c <= MAX_COST => Ok(u64::from(c)),
        Some(_) => Err(Error::invalid("cost", format!("must be 0-{MAX_COST}"))),
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

/// Where a leaked key was found: required, at most `MAX_SOURCE_URL_LEN` characters, printable
/// (no control characters).
pub fn source_url(url: &str) -> Result<String> {
    let url = url.trim();
    if url.is_empty() {
        return Err(Error::invalid("source_url", "is required: say where the key was found"));
    }
    if url.chars().count() > MAX_SOURCE_URL_LEN || has_control(url) {
        return Err(Error::invalid("source_url", "must be at most 2048 characters without control characters"));
    }
    if looks_like_a_key(url) {
        // It is logged and audited: a key in it would be kept in clear.
        return Err(Error::invalid("source_url", "must not contain a key: say where it was found, without the key"));
    }
    Ok(url.to_owned())
}

/// Whether `text` holds something shaped like a key body: `_` then exactly
/// `key_format::BODY_LEN` base62 characters.
fn looks_like_a_key(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().filter(|(_, b)| **b == b'_').any(|(i, _)| {
        bytes[i + 1..].iter().take_while(|b| b.is_ascii_alphanumeric()).count() == super::key_format::BODY_LEN
    })
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
        let nb = Some(now + Duration::from_secs(10));
        assert_eq!(field_of(validity_window(nb, Some(now)).unwrap_err()), "not_before");
        assert_eq!(field_of(allowed_cidrs(&["10.0.0.0/33".into()]).unwrap_err()), "allowed_cidrs");
        assert_eq!(field_of(allowed_cidrs(&["10.0.0.1/8".into()]).unwrap_err()), "allowed_cidrs");
        assert_eq!(field_of(allowed_cidrs(&["nope".into()]).unwrap_err()), "allowed_cidrs");
        assert_eq!(field_of(allowed_cidrs(&vec!["10.0.0.1".into(); 65]).unwrap_err()), "allowed_cidrs");
        let limit = |limit, ms| Some(RateLimit { limit, window: Duration::from_millis(ms) });
        assert_eq!(field_of(rate_limit(limit(0, 1000)).unwrap_err()), "rate_limit.limit");
        assert_eq!(field_of(rate_limit(limit(1_000_001, 1000)).unwrap_err()), "rate_limit.limit");
        assert_eq!(field_of(rate_limit(limit(5, 0)).unwrap_err()), "rate_limit.window");
        assert_eq!(field_of(rate_limit(limit(5, 86_400_001)).unwrap_err()), "rate_limit.window");
        let refill_of = |amount, secs| Some(Refill { amount, interval: Duration::from_secs(secs) });
        assert_eq!(field_of(refill(refill_of(0, 60)).unwrap_err()), "refill.amount");
        assert_eq!(field_of(refill(refill_of(5, 0)).unwrap_err()), "refill.interval");
        assert_eq!(field_of(remaining(Some(MAX_USES + 1)).unwrap_err()), "remaining");
        assert_eq!(field_of(cost(Some(MAX_COST + 1)).unwrap_err()), "cost");
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
        assert_eq!(cost(None).unwrap(), 1);
        assert_eq!(cost(Some(0)).unwrap(), 0);
        let nets =
            allowed_cidrs(&["2001:db8::/32".into(), "10.1.2.3".into(), "10.0.0.0/8".into(), "10.0.0.0/8".into()])
                .unwrap();
        let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, vec!["10.0.0.0/8", "10.1.2.3/32", "2001:db8::/32"]);
    }
}

#[cfg(test)]
mod source_url_tests {
    use super::*;

    #[test]
    fn source_urls_are_required_bounded_printable_and_keyless() {
        assert_eq!(
            source_url("  https://github.com/o/r/blob/main/.env#L3 ").unwrap(),
            "https://github.com/o/r/blob/main/.env#L3"
        );
        let body = "A".repeat(key_format_body_len());
        for bad in [
            "",
            "   ",
            "https://x/\nsecond line",
            &"x".repeat(MAX_SOURCE_URL_LEN + 1),
            &format!("https://x/?k=kw_{body}"),
        ] {
            assert!(matches!(source_url(bad), Err(Error::InvalidArgument { field: "source_url", .. })), "{bad:?}");
        }
        assert!(source_url(&"x".repeat(MAX_SOURCE_URL_LEN)).is_ok());
        // A shorter or longer run after `_` is not a key body.
        assert!(source_url(&format!("https://x/a_{}", "B".repeat(69))).is_ok());
        assert!(source_url(&format!("https://x/a_{}", "B".repeat(71))).is_ok());
    }

    fn key_format_body_len() -> usize {
        crate::domain::key_format::BODY_LEN
    }
}
