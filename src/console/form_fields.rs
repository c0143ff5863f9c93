//! The key forms' text fields read into domain values (lists, metadata, durations, UTC times,
//! counts, rate limits, refills, kinds, anomaly actions) and written back for pre-filled forms.
//! Only the reading happens here: the values go through the same domain validation as gRPC.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use crate::domain::{
    anomaly::AnomalyAction,
    error::Error,
    key::{RateLimit, Refill, duration_text},
    signing::KeyKind,
};

/// Words separated by spaces or commas.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

/// One `key=value` a line; blank lines are skipped.
pub fn metadata(text: &str) -> Result<BTreeMap<String, String>, Error> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| Error::invalid("metadata", "write one key=value a line"))
        })
        .collect()
}

/// Metadata as the form shows it: one `key=value` a line.
pub fn metadata_text(metadata: &BTreeMap<String, String>) -> String {
    metadata.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n")
}

/// A duration like `90d` or `1h 30m`; empty: none.
pub fn duration(field: &'static str, text: &str) -> Result<Option<Duration>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(text).map(Some).map_err(|e| Error::invalid(field, format!("{text:?}: {e}")))
}

/// A duration as the form shows it (empty: none).
pub fn duration_value(d: Option<Duration>) -> String {
    d.map(duration_text).unwrap_or_default()
}

/// A UTC date and time as a `datetime-local` input sends it (`2026-12-31T23:59`, seconds
/// optional) or in RFC 3339 (`…Z`); empty: none.
pub fn utc_time(field: &'static str, text: &str) -> Result<Option<SystemTime>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bare = text.strip_suffix('Z').unwrap_or(text);
    let full = if bare.len() == 16 { format!("{bare}:00") } else { bare.to_owned() };
    humantime::parse_rfc3339_weak(&full)
        .map(Some)
        .map_err(|_| Error::invalid(field, format!("{text:?} is not a date and time (UTC) like 2026-12-31T23:59")))
}

/// A time as a `datetime-local` input's value (UTC, to the second; empty: none).
pub fn time_value(t: Option<SystemTime>) -> String {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string().trim_end_matches('Z').to_owned()).unwrap_or_default()
}

/// A whole number; empty: none.
pub fn count<T: std::str::FromStr>(field: &'static str, text: &str) -> Result<Option<T>, Error> {
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| Error::invalid(field, format!("{t:?} is not a whole number"))),
    }
}

/// A rate limit from its two fields: both empty is none; one without the other is refused.
pub fn rate_limit(limit: &str, window: &str) -> Result<Option<RateLimit>, Error> {
    match (count::<u32>("rate_limit.limit", limit)?, duration("rate_limit.window", window)?) {
        (None, None) => Ok(None),
        (Some(limit), Some(window)) => Ok(Some(RateLimit { limit, window })),
        (None, Some(_)) => Err(Error::invalid("rate_limit.limit", "give the number of verifications per window")),
        (Some(_), None) => Err(Error::invalid("rate_limit.window", "give the window, e.g. 1m")),
    }
}

/// A quota refill from its two fields: both empty is none; one without the other is refused.
pub fn refill(amount: &str, interval: &str) -> Result<Option<Refill>, Error> {
    match (count::<u64>("refill.amount", amount)?, duration("refill.interval", interval)?) {
        (None, None) => Ok(None),
        (Some(amount), Some(interval)) => Ok(Some(Refill { amount, interval })),
        (None, Some(_)) => Err(Error::invalid("refill.amount", "give the uses each refill restores")),
        (Some(_), None) => Err(Error::invalid("refill.interval", "give how often, e.g. 1d")),
    }
}

pub fn kind(text: &str) -> Result<KeyKind, Error> {
    match text.trim() {
        "" | "bearer" => Ok(KeyKind::Bearer),
        "signing" => Ok(KeyKind::Signing),
        _ => Err(Error::invalid("kind", "must be bearer or signing")),
    }
}

pub fn anomaly_action(text: &str) -> Result<AnomalyAction, Error> {
    match text.trim() {
        "" | "alert" => Ok(AnomalyAction::Alert),
        "disable" => Ok(AnomalyAction::Disable),
        _ => Err(Error::invalid("anomaly_action", "must be alert or disable")),
    }
}

/// The ids of the inputs an invalid-argument error's field names (`rate_limit.window` →
/// `rate_window`), for `aria-invalid`.
pub fn inputs_of(field: &str) -> &'static [&'static str] {
    match field {
        "name" => &["name"],
        "prefix" => &["prefix"],
        "scopes" => &["scopes"],
        "owner" => &["owner"],
        "kind" => &["kind-bearer", "kind-signing"],
        "expires_in" => &["expires_in"],
        "expires_at" => &["expires_in", "expires_at"],
        "not_before" => &["not_before"],
        "max_age" => &["max_age"],
        "allowed_cidrs" => &["allowed_cidrs"],
        "rate_limit" => &["rate_limit", "rate_window"],
        "rate_limit.limit" => &["rate_limit"],
        "rate_limit.window" => &["rate_window"],
        "remaining" => &["remaining"],
        "refill" => &["refill_amount", "refill_interval"],
        "refill.amount" => &["refill_amount"],
        "refill.interval" => &["refill_interval"],
        "anomaly_action" => &["anomaly_action"],
        "metadata" => &["metadata"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_text_becomes_lists_maps_and_durations() {
        assert_eq!(words(" a:read, b:write  c "), ["a:read", "b:write", "c"]);
        assert!(words("  ").is_empty());
        let m = metadata("team = billing\n\nenv=prod\n").unwrap();
        assert_eq!(m.get("team").map(String::as_str), Some("billing"));
        assert_eq!(m.len(), 2);
        assert_eq!(metadata(&metadata_text(&m)).unwrap(), m);
        assert!(matches!(metadata("no equals"), Err(Error::InvalidArgument { field: "metadata", .. })));
        assert_eq!(duration("x", "1h").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(duration("x", " ").unwrap(), None);
        assert!(matches!(duration("grace_period", "soon"), Err(Error::InvalidArgument { field: "grace_period", .. })));
    }

    #[test]
    fn utc_times_read_as_datetime_local_sends_them_and_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_540); // 2026-12-31T23:59:00Z
        assert_eq!(utc_time("expires_at", "2026-12-31T23:59").unwrap(), Some(t));
        assert_eq!(utc_time("expires_at", "2026-12-31T23:59:00").unwrap(), Some(t));
        assert_eq!(utc_time("expires_at", "2026-12-31T23:59:00Z").unwrap(), Some(t));
        assert_eq!(utc_time("expires_at", " ").unwrap(), None);
        assert_eq!(time_value(Some(t)), "2026-12-31T23:59:00");
        assert_eq!(utc_time("x", &time_value(Some(t))).unwrap(), Some(t));
        assert!(matches!(utc_time("not_before", "tomorrow"), Err(Error::InvalidArgument { field: "not_before", .. })));
    }

    #[test]
    fn pairs_of_fields_need_both_halves_and_name_the_missing_one() {
        assert_eq!(rate_limit("", " ").unwrap(), None);
        assert_eq!(rate_limit("10", "1m").unwrap(), Some(RateLimit { limit: 10, window: Duration::from_secs(60) }));
        assert!(matches!(rate_limit("10", ""), Err(Error::InvalidArgument { field: "rate_limit.window", .. })));
        assert!(matches!(rate_limit("ten", "1m"), Err(Error::InvalidArgument { field: "rate_limit.limit", .. })));
        assert_eq!(refill("5", "1d").unwrap(), Some(Refill { amount: 5, interval: Duration::from_secs(86_400) }));
        assert!(matches!(refill("", "1d"), Err(Error::InvalidArgument { field: "refill.amount", .. })));
        assert!(matches!(count::<u64>("remaining", "-1"), Err(Error::InvalidArgument { field: "remaining", .. })));
        assert_eq!(count::<u64>("remaining", " 2 ").unwrap(), Some(2));
    }

    #[test]
    fn kinds_and_anomaly_actions_read_their_names_only() {
        assert_eq!(kind("").unwrap(), KeyKind::Bearer);
        assert_eq!(kind("signing").unwrap(), KeyKind::Signing);
        assert!(matches!(kind("hmac"), Err(Error::InvalidArgument { field: "kind", .. })));
        assert_eq!(anomaly_action("disable").unwrap(), AnomalyAction::Disable);
        assert!(matches!(anomaly_action("panic"), Err(Error::InvalidArgument { field: "anomaly_action", .. })));
        assert_eq!(inputs_of("rate_limit.window"), ["rate_window"]);
    }
}
