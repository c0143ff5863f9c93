//! UpdateKey: which fields a field mask names, their validation, and the change it makes to a
//! record, with each changed field's value before and after for the audit trail.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    time::SystemTime,
};

use ipnet::IpNet;

use super::{
    anomaly::AnomalyAction,
    audit::FieldChange,
    error::{Error, Result},
    key::{KeyRecord, Quota, RateLimit, Refill},
    validate,
};

/// The fields UpdateKey can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Name,
    Scopes,
    AllowedCidrs,
    ExpiresAt,
    NotBefore,
    RateLimit,
    Remaining,
    Refill,
    Metadata,
    MaxAge,
    Owner,
    AnomalyAction,
}

impl Field {
    const ALL: [Field; 12] = [
        Field::Name,
        Field::Scopes,
        Field::AllowedCidrs,
        Field::ExpiresAt,
        Field::NotBefore,
        Field::RateLimit,
        Field::Remaining,
        Field::Refill,
        Field::Metadata,
        Field::MaxAge,
        Field::Owner,
        Field::AnomalyAction,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Scopes => "scopes",
            Field::AllowedCidrs => "allowed_cidrs",
            Field::ExpiresAt => "expires_at",
            Field::NotBefore => "not_before",
            Field::RateLimit => "rate_limit",
            Field::Remaining => "remaining",
            Field::Refill => "refill",
            Field::Metadata => "metadata",
            Field::MaxAge => "max_age",
            Field::Owner => "owner",
            Field::AnomalyAction => "anomaly_action",
        }
    }
}

/// An UpdateKey request before validation: the mask's paths and the values it may name.
#[derive(Debug, Default)]
pub struct KeyPatch {
    pub mask: Vec<String>,
    pub name: String,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub not_before: Option<SystemTime>,
    pub rate_limit: Option<RateLimit>,
    pub remaining: Option<u64>,
    pub refill: Option<Refill>,
    pub metadata: BTreeMap<String, String>,
    /// Unset or zero: no limit.
    pub max_age: Option<std::time::Duration>,
    /// A team name; empty: none.
    pub owner: String,
    pub anomaly_action: AnomalyAction,
}

/// A validated patch: only the fields the mask names are set.
#[derive(Clone, Debug, Default)]
pub struct ValidPatch {
    pub fields: BTreeSet<Field>,
    name: Option<String>,
    scopes: Option<Vec<String>>,
    allowed_cidrs: Option<Vec<IpNet>>,
    expires_at: Option<SystemTime>,
    not_before: Option<SystemTime>,
    rate_limit: Option<RateLimit>,
    remaining: Option<u64>,
    refill: Option<Refill>,
    metadata: Option<BTreeMap<String, String>>,
    max_age: Option<std::time::Duration>,
    owner: Option<String>,
    anomaly_action: AnomalyAction,
}

impl ValidPatch {
    /// Whether the patch changes the quota, so that leases must be folded back first.
    pub fn touches_quota(&self) -> bool {
        self.fields.contains(&Field::Remaining) || self.fields.contains(&Field::Refill)
    }

    /// New scopes, if the patch sets them (for the escalation check).
    pub fn scopes(&self) -> Option<&[String]> {
        self.scopes.as_deref()
    }

    /// The new owner (`Some(None)`: none), if the patch sets it (for the ownership check).
    pub fn owner(&self) -> Option<Option<&str>> {
        self.fields.contains(&Field::Owner).then_some(self.owner.as_deref())
    }
}

fn parse_mask(paths: &[String]) -> Result<BTreeSet<Field>> {
    if paths.is_empty() {
        return Err(Error::invalid("update_mask", "is required: name the fields to change"));
    }
    paths
        .iter()
        .map(|p| {
            Field::ALL
                .into_iter()
                .find(|f| f.path() == p.trim())
                .ok_or_else(|| Error::invalid("update_mask", format!("unknown field `{p}`; known: {}", known_paths())))
        })
        .collect()
}

fn known_paths() -> String {
    Field::ALL.map(Field::path).join(", ")
}

/// Validates the fields the mask names, as CreateKey would.
pub fn validate(patch: KeyPatch, now: SystemTime) -> Result<ValidPatch> {
    let fields = parse_mask(&patch.mask)?;
    let mut out = ValidPatch { fields: fields.clone(), ..Default::default() };
    for field in fields {
        match field {
            Field::Name => out.name = Some(validate::name(&patch.name)?),
            Field::Scopes => out.scopes = Some(validate::scopes("scopes", &patch.scopes, validate::MAX_SCOPES)?),
            Field::AllowedCidrs => out.allowed_cidrs = Some(validate::allowed_cidrs(&patch.allowed_cidrs)?),
            Field::ExpiresAt => out.expires_at = validate::expires_at(patch.expires_at, now)?,
            Field::NotBefore => out.not_before = patch.not_before,
            Field::RateLimit => out.rate_limit = validate::rate_limit(patch.rate_limit)?,
            Field::Remaining => out.remaining = validate::remaining(patch.remaining)?,
            Field::Refill => out.refill = validate::refill(patch.refill)?,
            Field::Metadata => out.metadata = Some(validate::metadata(patch.metadata.clone())?),
            Field::MaxAge => out.max_age = validate::max_age(patch.max_age)?,
            Field::Owner => out.owner = validate::owner("owner", &patch.owner)?,
            Field::AnomalyAction => out.anomaly_action = patch.anomaly_action,
        }
    }
    Ok(out)
}

fn text<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

fn time_text(t: Option<SystemTime>) -> String {
    text(t.map(humantime::format_rfc3339_nanos))
}

fn list_text<T: Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn metadata_text(m: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// The quota a patch leaves: `remaining` and `refill` as given or kept; a refill with no
/// remaining count starts full; setting either restarts the refill cadence at `now`.
fn patched_quota(current: Option<Quota>, patch: &ValidPatch, now: SystemTime) -> Result<Option<Quota>> {
    let refill = if patch.fields.contains(&Field::Refill) { patch.refill } else { current.and_then(|q| q.refill) };
    let remaining = if patch.fields.contains(&Field::Remaining) {
        if patch.remaining.is_none() && refill.is_some() {
            return Err(Error::invalid("remaining", "a key with a refill needs a quota: clear refill too"));
        }
        patch.remaining
    } else {
        current.map(|q| q.remaining).or(refill.map(|r| r.amount))
    };
    Ok(remaining.map(|remaining| Quota { remaining, refill, refilled_at: now }))
}

/// Applies `patch` to `current`: the new record and the fields that changed (none: nothing to
/// write). The record's quota must already be settled (leases folded back, refills applied).
pub fn apply(current: &KeyRecord, patch: &ValidPatch, now: SystemTime) -> Result<(KeyRecord, Vec<FieldChange>)> {
    let mut next = current.clone();
    let mut changes = Vec::new();
    let mut note = |field: Field, before: String, after: String| {
        if before != after {
            changes.push(FieldChange { field: field.path().to_owned(), before, after });
        }
    };
    for &field in &patch.fields {
        match field {
            Field::Name => {
                next.name = patch.name.clone().unwrap_or_default();
                note(field, current.name.clone(), next.name.clone());
            }
            Field::Scopes => {
                next.scopes = patch.scopes.clone().unwrap_or_default();
                note(field, list_text(&current.scopes), list_text(&next.scopes));
            }
            Field::AllowedCidrs => {
                next.allowed_cidrs = patch.allowed_cidrs.clone().unwrap_or_default();
                note(field, list_text(&current.allowed_cidrs), list_text(&next.allowed_cidrs));
            }
            Field::ExpiresAt => {
                next.expires_at = patch.expires_at;
                note(field, time_text(current.expires_at), time_text(next.expires_at));
            }
            Field::NotBefore => {
                next.not_before = patch.not_before;
                note(field, time_text(current.not_before), time_text(next.not_before));
            }
            Field::RateLimit => {
                next.rate_limit = patch.rate_limit;
                note(field, text(current.rate_limit), text(next.rate_limit));
            }
            Field::Metadata => {
                next.metadata = patch.metadata.clone().unwrap_or_default();
                note(field, metadata_text(&current.metadata), metadata_text(&next.metadata));
            }
            Field::MaxAge => {
                next.max_age = patch.max_age;
                let age = |a: Option<std::time::Duration>| text(a.map(super::key::duration_text));
                note(field, age(current.max_age), age(next.max_age));
            }
            Field::Owner => {
                next.owner = patch.owner.clone();
                note(field, text(current.owner.as_deref()), text(next.owner.as_deref()));
            }
            Field::AnomalyAction => {
                next.anomaly_action = patch.anomaly_action;
                note(field, current.anomaly_action.to_string(), next.anomaly_action.to_string());
            }
            // Both quota fields are applied together below.
            Field::Remaining | Field::Refill => {}
        }
    }
    if patch.touches_quota() {
        next.quota = patched_quota(current.quota, patch, now)?;
        let remaining = |q: Option<Quota>| q.map_or_else(|| "unlimited".to_owned(), |q| q.remaining.to_string());
        note(Field::Remaining, remaining(current.quota), remaining(next.quota));
        note(Field::Refill, text(current.quota.and_then(|q| q.refill)), text(next.quota.and_then(|q| q.refill)));
    }
    validate::validity_window(next.not_before, next.expires_at)?;
    Ok((next, changes))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::key::{Digest, KeyId, MasterKeyVersion};

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn record() -> KeyRecord {
        let digest = Digest::plain(MasterKeyVersion(1), [0; 32]);
        KeyRecord::new(KeyId::new_v7(), "svc".into(), "kw".into(), vec!["a".into()], T0, digest)
    }

    fn patch(mask: &[&str], f: impl FnOnce(&mut KeyPatch)) -> Result<ValidPatch> {
        let mut p = KeyPatch { mask: mask.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        f(&mut p);
        validate(p, T0)
    }

    #[test]
    fn the_mask_is_required_and_must_name_known_fields() {
        let field = |r: Result<ValidPatch>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(patch(&[], |_| {})), "update_mask");
        assert_eq!(field(patch(&["secret"], |_| {})), "update_mask");
        assert_eq!(field(patch(&["name"], |_| {})), "name", "a named field is validated, even when empty");
        assert_eq!(field(patch(&["allowed_cidrs"], |p| p.allowed_cidrs = vec!["x".into()])), "allowed_cidrs");
    }

    #[test]
    fn only_masked_fields_change_and_each_change_is_listed() {
        let current = record();
        let p = patch(&["name", "scopes", "rate_limit"], |p| {
            p.name = "renamed".into();
            p.scopes = vec!["a".into()];
            p.rate_limit = Some(RateLimit { limit: 10, window: Duration::from_secs(1) });
            p.metadata = [("ignored".to_string(), "x".to_string())].into();
        })
        .unwrap();
        let (next, changes) = apply(&current, &p, T0).unwrap();
        assert_eq!(next.name, "renamed");
        assert!(next.metadata.is_empty(), "metadata was not in the mask");
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["name", "rate_limit"], "unchanged scopes are not listed");
        assert_eq!(changes[1].before, "none");
        assert_eq!(changes[1].after, "10 per 1s");
    }

    #[test]
    fn the_owner_is_validated_set_cleared_and_listed() {
        assert!(matches!(
            patch(&["owner"], |p| p.owner = "Team A".into()),
            Err(Error::InvalidArgument { field: "owner", .. })
        ));
        let p = patch(&["owner"], |p| p.owner = "team-a".into()).unwrap();
        assert_eq!(p.owner(), Some(Some("team-a")));
        let (owned, changes) = apply(&record(), &p, T0).unwrap();
        assert_eq!(owned.owner.as_deref(), Some("team-a"));
        assert_eq!(
            (changes[0].field.as_str(), changes[0].before.as_str(), changes[0].after.as_str()),
            ("owner", "none", "team-a")
        );
        let clear = patch(&["owner"], |_| {}).unwrap();
        assert_eq!(clear.owner(), Some(None));
        assert_eq!(apply(&owned, &clear, T0).unwrap().0.owner, None);
        assert_eq!(patch(&["name"], |p| p.name = "x".into()).unwrap().owner(), None, "not in the mask");
    }

    #[test]
    fn the_anomaly_action_is_set_and_listed() {
        let p = patch(&["anomaly_action"], |p| p.anomaly_action = AnomalyAction::Disable).unwrap();
        let (next, changes) = apply(&record(), &p, T0).unwrap();
        assert_eq!(next.anomaly_action, AnomalyAction::Disable);
        assert_eq!(
            (changes[0].field.as_str(), changes[0].before.as_str(), changes[0].after.as_str()),
            ("anomaly_action", "alert", "disable")
        );
        let untouched = patch(&["name"], |p| {
            p.name = "svc".into();
            p.anomaly_action = AnomalyAction::Disable;
        })
        .unwrap();
        assert_eq!(apply(&next, &untouched, T0).unwrap().0.anomaly_action, AnomalyAction::Disable, "not in the mask");
    }

    #[test]
    fn quota_fields_combine() {
        let refill = Refill { amount: 50, interval: Duration::from_secs(60) };
        let later = T0 + Duration::from_secs(5);
        let p = patch(&["refill"], |p| p.refill = Some(refill)).unwrap();
        let (next, _) = apply(&record(), &p, later).unwrap();
        assert_eq!(next.quota, Some(Quota { remaining: 50, refill: Some(refill), refilled_at: later }));
        let p = patch(&["remaining"], |p| p.remaining = None).unwrap();
        assert!(apply(&next, &p, later).is_err(), "clearing the quota of a refilled key needs refill cleared");
        let p = patch(&["remaining", "refill"], |_| {}).unwrap();
        let (cleared, changes) = apply(&next, &p, later).unwrap();
        assert_eq!(cleared.quota, None);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].after, "unlimited");
    }

    #[test]
    fn the_validity_window_is_checked_on_the_result() {
        let mut current = record();
        current.expires_at = Some(T0 + Duration::from_secs(10));
        let p = patch(&["not_before"], |p| p.not_before = Some(T0 + Duration::from_secs(20))).unwrap();
        assert!(matches!(apply(&current, &p, T0), Err(Error::InvalidArgument { field: "not_before", .. })));
    }
}
