//! Key ownership: a key's optional `owner` (a team name) and team-scoped permissions.
//!
//! `keyward:keys:update@team-a` grants `keyward:keys:update` only on keys whose `owner` is
//! `team-a`; the unsuffixed permission grants it on every key, owned or not. A caller that holds
//! a key permission only for other teams is told a key is not found, as if it did not exist, so
//! that ids of other teams' keys are not confirmed; a caller without any form of the permission
//! gets `PERMISSION_DENIED` as before. Only the `keyward:keys:` RPCs that act on keys by id, and
//! CreateKey and ListKeys, look at owners; every other permission is checked unsuffixed.

use std::collections::BTreeSet;

use super::{
    access::Permission,
    error::{Error, Result},
    key::{KeyId, KeyRecord},
    scope,
};

/// The keys a caller holds a permission for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every key: the caller holds the permission unsuffixed.
    All,
    /// Only keys owned by these teams (none: the caller lacks the permission).
    Teams(BTreeSet<String>),
}

impl Reach {
    pub fn of<S: AsRef<str>>(scopes: &[S], permission: Permission) -> Reach {
        if scope::any_grants(scopes, permission.scope()) {
            Reach::All
        } else {
            Reach::Teams(scope::teams_granting(scopes, permission.scope()).map(str::to_owned).collect())
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Reach::Teams(teams) if teams.is_empty())
    }

    /// Whether it reaches a key with this owner.
    pub fn covers(&self, owner: Option<&str>) -> bool {
        match self {
            Reach::All => true,
            Reach::Teams(teams) => owner.is_some_and(|o| teams.contains(o)),
        }
    }

    /// `PERMISSION_DENIED` (naming the `owner` field) unless a key may be given this owner.
    pub fn check_owner(&self, owner: Option<&str>) -> Result<()> {
        match self {
            _ if self.covers(owner) => Ok(()),
            Reach::All => Ok(()),
            Reach::Teams(teams) => {
                let teams: Vec<&str> = teams.iter().map(String::as_str).collect();
                Err(Error::PermissionDenied(format!(
                    "owner: the caller's key permissions are limited to teams [{}]: set `owner` to one of them",
                    teams.join(", ")
                )))
            }
        }
    }

    /// `NOT_FOUND`, the answer for a key that does not exist, unless it reaches `record`.
    pub fn check_key(&self, record: &KeyRecord) -> Result<()> {
        if self.covers(record.owner.as_deref()) { Ok(()) } else { Err(not_found(record.id)) }
    }
}

/// What a missing key answers (the store says the same).
pub fn not_found(id: KeyId) -> Error {
    Error::NotFound(format!("key {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_follows_the_strongest_form_held() {
        let all = Reach::of(&["keyward:keys:*", "keyward:keys:read@a"], Permission::KeysRead);
        assert_eq!(all, Reach::All);
        assert!(all.covers(None) && all.covers(Some("z")));
        let teams =
            Reach::of(&["keyward:keys:*@a", "keyward:keys:read@b", "keyward:keys:revoke@c"], Permission::KeysRead);
        assert!(teams.covers(Some("a")) && teams.covers(Some("b")));
        assert!(!teams.covers(Some("c")) && !teams.covers(None));
        assert!(Reach::of(&["keyward:keys:revoke@c", "*"], Permission::KeysRead).is_none());
    }

    #[test]
    fn a_team_admin_must_name_one_of_its_teams_as_owner() {
        let teams = Reach::of(&["keyward:keys:create@a"], Permission::KeysCreate);
        assert_eq!(teams.check_owner(Some("a")), Ok(()));
        for owner in [None, Some("b")] {
            let err = teams.check_owner(owner).unwrap_err();
            assert!(matches!(&err, Error::PermissionDenied(m) if m.starts_with("owner:")), "{err:?}");
        }
        assert_eq!(Reach::All.check_owner(None), Ok(()));
    }
}
