//! ListKeys: filters and page tokens. A token carries the last key id a page looked at and a
//! fingerprint of the filters, so a token used with other filters is refused rather than
//! silently skipping keys. Ids never change and new keys sort last, so paging is stable.

use super::{
    error::{Error, Result},
    key::{KeyId, KeyRecord, KeyState, MasterKeyVersion},
    key_format,
    key_index::KeySummary,
    scope,
};

/// The filters of a ListKeys request, all optional and combined with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<KeyState>,
    pub prefix: Option<String>,
    /// Lowercase.
    pub name_contains: Option<String>,
    pub scope: Option<String>,
    /// Only keys whose digest needs this master key version.
    pub master_version: Option<MasterKeyVersion>,
    /// Only keys owned by this team.
    pub owner: Option<String>,
}

impl ListFilter {
    /// Validates filters as given in a request; empty strings mean no filter.
    pub fn new(state: Option<KeyState>, prefix: &str, name_contains: &str, scope: &str) -> Result<Self> {
        let prefix = (!prefix.is_empty()).then(|| prefix.to_owned());
        if prefix.as_deref().is_some_and(|p| !key_format::is_valid_prefix(p)) {
            return Err(Error::invalid("prefix", "must match [a-z][a-z0-9]{0,15}"));
        }
        if name_contains.chars().count() > super::validate::MAX_NAME_LEN {
            return Err(Error::invalid("name_contains", "must be at most 128 characters"));
        }
        let name_contains = (!name_contains.is_empty()).then(|| name_contains.to_lowercase());
        let scope = (!scope.is_empty()).then(|| scope.to_owned());
        if let Some(s) = &scope {
            scope::check_syntax(s).map_err(|why| Error::invalid("scope", why))?;
        }
        Ok(Self { state, prefix, name_contains, scope, master_version: None, owner: None })
    }

    /// Adds the master key version filter (0: none).
    pub fn with_master_version(mut self, version: u32) -> Self {
        self.master_version = (version != 0).then_some(MasterKeyVersion(version));
        self
    }

    /// Adds the owner filter (empty: none).
    pub fn with_owner(mut self, owner: &str) -> Result<Self> {
        self.owner = super::validate::owner("owner", owner)?;
        Ok(self)
    }

    pub fn matches(&self, r: &KeyRecord) -> bool {
        self.state.is_none_or(|s| r.state == s)
            && self.prefix.as_ref().is_none_or(|p| &r.prefix == p)
            && self.name_contains.as_ref().is_none_or(|n| r.name.to_lowercase().contains(n.as_str()))
            && self.scope.as_ref().is_none_or(|s| scope::any_grants(&r.scopes, s))
            && self.master_version.is_none_or(|v| r.digest.uses(v))
            && self.owner.as_ref().is_none_or(|o| r.owner.as_ref() == Some(o))
    }

    /// `matches` on a key's summary in the key index (the same answer as on its record).
    pub fn matches_summary(&self, k: &KeySummary) -> bool {
        self.state.is_none_or(|s| k.state() == s)
            && self.prefix.as_ref().is_none_or(|p| *k.prefix == **p)
            && self.name_contains.as_ref().is_none_or(|n| k.name_lower.contains(n.as_str()))
            && self.scope.as_ref().is_none_or(|s| scope::any_grants(&k.scopes, s))
            && self.master_version.is_none_or(|v| k.custody.digest_versions().any(|u| u == v))
            && self.owner.as_ref().is_none_or(|o| k.owner.as_deref() == Some(o.as_str()))
    }

    fn fingerprint(&self) -> String {
        let text = format!(
            "{:?}",
            (self.state, &self.prefix, &self.name_contains, &self.scope, self.master_version, &self.owner)
        );
        blake3::hash(text.as_bytes()).to_hex()[..16].to_owned()
    }

    /// The token that resumes after `last`.
    pub fn token(&self, last: KeyId) -> String {
        format!("{last}.{}", self.fingerprint())
    }

    /// Where a token resumes; it must come from a request with these same filters.
    pub fn resume_after(&self, token: &str) -> Result<Option<KeyId>> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid("page_token", "is not a token this server issued");
        let (id, fingerprint) = token.split_once('.').ok_or_else(bad)?;
        let id: KeyId = id.parse().map_err(|_| bad())?;
        if fingerprint != self.fingerprint() {
            return Err(Error::invalid(
                "page_token",
                "was issued for other filters: send the same filters on every page",
            ));
        }
        Ok(Some(id))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::key::{Digest, MasterKeyVersion};

    fn record(name: &str, prefix: &str, scopes: &[&str]) -> KeyRecord {
        let digest = Digest::plain(MasterKeyVersion(1), [0; 32]);
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        KeyRecord::new(KeyId::new_v7(), name.into(), prefix.into(), scopes, SystemTime::UNIX_EPOCH, digest)
    }

    #[test]
    fn filters_combine_with_and() {
        let r = record("Billing Worker", "bill", &["orders:*"]);
        assert!(ListFilter::default().matches(&r));
        assert!(ListFilter::new(Some(KeyState::Active), "bill", "worker", "orders:read").unwrap().matches(&r));
        assert!(!ListFilter::new(Some(KeyState::Revoked), "", "", "").unwrap().matches(&r));
        assert!(!ListFilter::new(None, "kw", "", "").unwrap().matches(&r));
        assert!(!ListFilter::new(None, "", "reader", "").unwrap().matches(&r));
        assert!(!ListFilter::new(None, "", "", "billing:read").unwrap().matches(&r));
        let team_a = ListFilter::default().with_owner("team-a").unwrap();
        assert!(!team_a.matches(&r), "an unowned key has no owner to match");
        let owned = KeyRecord { owner: Some("team-a".into()), ..r.clone() };
        assert!(team_a.matches(&owned));
        assert!(!ListFilter::default().with_owner("team-b").unwrap().matches(&owned));
    }

    #[test]
    fn a_summary_matches_as_its_record_does() {
        let mut owned = record("Billing Worker", "bill", &["orders:*"]);
        owned.owner = Some("team-a".into());
        let records = [record("Billing Worker", "bill", &["orders:*"]), owned];
        let filters = [
            ListFilter::default(),
            ListFilter::new(Some(KeyState::Active), "bill", "WORKER", "orders:read").unwrap(),
            ListFilter::new(Some(KeyState::Revoked), "", "", "").unwrap(),
            ListFilter::new(None, "kw", "", "").unwrap(),
            ListFilter::new(None, "", "ling w", "").unwrap(),
            ListFilter::new(None, "", "", "billing:read").unwrap(),
            ListFilter::default().with_owner("team-a").unwrap(),
            ListFilter::default().with_master_version(1),
            ListFilter::default().with_master_version(2),
        ];
        for r in &records {
            for f in &filters {
                assert_eq!(f.matches_summary(&KeySummary::of(r)), f.matches(r), "{f:?} on {:?}", r.owner);
            }
        }
    }

    #[test]
    fn bad_filters_name_their_field() {
        let field = |r: Result<ListFilter>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(ListFilter::new(None, "Bad", "", "")), "prefix");
        assert_eq!(field(ListFilter::new(None, "", &"x".repeat(129), "")), "name_contains");
        assert_eq!(field(ListFilter::new(None, "", "", "a::b")), "scope");
        assert_eq!(field(ListFilter::default().with_owner("Team A")), "owner");
    }

    #[test]
    fn tokens_resume_only_under_the_same_filters() {
        let id = KeyId::new_v7();
        let f = ListFilter::new(None, "kw", "", "").unwrap();
        assert_eq!(f.resume_after(&f.token(id)).unwrap(), Some(id));
        assert_eq!(f.resume_after("").unwrap(), None);
        assert!(ListFilter::default().resume_after(&f.token(id)).is_err());
        assert!(f.resume_after("garbage").is_err());
        assert!(f.resume_after(&id.to_string()).is_err());
    }
}
