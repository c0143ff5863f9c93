//! Scopes: `segment(:segment)*` strings that keys carry and requests require.
//!
//! A granted scope whose last segment is `*` grants every scope that extends its other segments
//! (`orders:*` grants `orders:read` and `orders:items:write`). `*` alone grants every scope
//! outside the reserved `keyward:` namespace; `keyward:` scopes are granted only by `keyward:`
//! scopes (`keyward:*` grants them all).
//!
//! A `keyward:` scope that grants a `keyward:keys:` permission may end in a team suffix,
//! `@<team>` (`keyward:keys:read@team-a`): it grants only the same permission for that team,
//! that is on keys whose `owner` is `team-a` (see `ownership`). An unsuffixed scope grants the
//! suffixed forms for every team.

/// keyward's own namespace: scopes that are permissions on keyward itself.
pub const RESERVED_NAMESPACE: &str = "keyward";
pub const MAX_SCOPE_LEN: usize = 128;

/// The `keyward:keys:` permissions a team suffix can scope (and a suffixed scope must grant one).
pub const TEAM_SCOPED: [&str; 5] =
    ["keyward:keys:create", "keyward:keys:read", "keyward:keys:update", "keyward:keys:revoke", "keyward:keys:rotate"];

/// The longest team name.
pub const MAX_TEAM_LEN: usize = 63;

/// A team name (a key's `owner`, a scope's suffix): `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn is_team(team: &str) -> bool {
    let b = team.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TEAM_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// A scope without its team suffix, and the team (`keyward:keys:read@team-a` → `keyward:keys:read`,
/// `team-a`).
pub fn split_team(scope: &str) -> (&str, Option<&str>) {
    match scope.split_once('@') {
        Some((base, team)) => (base, Some(team)),
        None => (scope, None),
    }
}

/// Why a scope string is malformed (for `INVALID_ARGUMENT`).
pub fn check_syntax(scope: &str) -> Result<(), &'static str> {
    if scope.is_empty() {
        return Err("a scope may not be empty");
    }
    if scope.len() > MAX_SCOPE_LEN {
        return Err("a scope may be at most 128 characters");
    }
    let scope = match split_team(scope) {
        // Elsewhere `@` is just a character segments may not hold.
        (base, Some(team)) if is_reserved(base) => {
            check_team_suffix(base, team)?;
            base
        }
        _ => scope,
    };
    let segments: Vec<&str> = scope.split(':').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "*" {
            if i != last {
                return Err("`*` may only be the last segment of a scope");
            }
            continue;
        }
        if segment.is_empty() {
            return Err("a scope segment may not be empty");
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
            return Err("scope segments use only letters, digits, `_`, `-`, `.` (or a final `*`)");
        }
    }
    Ok(())
}

fn check_team_suffix(base: &str, team: &str) -> Result<(), &'static str> {
    if !is_team(team) {
        return Err("a team suffix `@<team>` must match [a-z0-9][a-z0-9_.-]{0,62}");
    }
    if !TEAM_SCOPED.iter().any(|p| base_grants(base, p)) {
        return Err("a team suffix `@<team>` applies only to `keyward:keys:` permissions");
    }
    Ok(())
}

fn is_reserved(scope: &str) -> bool {
    scope.split(':').next() == Some(RESERVED_NAMESPACE)
}

/// Does the granted scope grant the required one? A suffixed scope grants only scopes with the
/// same suffix; an unsuffixed one grants suffixed scopes as it grants their base.
pub fn grants(granted: &str, required: &str) -> bool {
    let (granted, granted_team) = split_team(granted);
    let (required, required_team) = split_team(required);
    if granted_team.is_some() && granted_team != required_team {
        return false;
    }
    base_grants(granted, required)
}

/// `grants` for scopes without team suffixes.
fn base_grants(granted: &str, required: &str) -> bool {
    if granted == required {
        return true;
    }
    if granted == "*" {
        return !is_reserved(required);
    }
    match granted.strip_suffix(":*") {
        // `orders:*` grants `orders:x...` but not `orders` itself.
        Some(base) => {
            required.len() > base.len() + 1 && required.starts_with(base) && required.as_bytes()[base.len()] == b':'
        }
        None => false,
    }
}

/// Does any of the granted scopes grant the required one?
pub fn any_grants<S: AsRef<str>>(granted: &[S], required: &str) -> bool {
    granted.iter().any(|g| grants(g.as_ref(), required))
}

/// The teams whose suffixed scopes among `granted` grant `required` (itself unsuffixed).
pub fn teams_granting<'a, S: AsRef<str>>(granted: &'a [S], required: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    granted.iter().filter_map(move |g| match split_team(g.as_ref()) {
        (base, Some(team)) if base_grants(base, required) => Some(team),
        _ => None,
    })
}

/// Is this scope in the reserved `keyward:` namespace (a permission on keyward itself)?
pub fn is_permission(scope: &str) -> bool {
    is_reserved(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_grant_what_they_extend() {
        assert!(grants("orders:*", "orders:read"));
        assert!(grants("orders:*", "orders:items:write"));
        assert!(grants("orders:*", "orders:*"));
        assert!(!grants("orders:*", "orders"));
        assert!(!grants("orders:*", "ordersx:read"));
        assert!(!grants("orders:read", "orders:write"));
        assert!(grants("orders:read", "orders:read"));
    }

    #[test]
    fn the_bare_wildcard_never_grants_keyward_permissions() {
        assert!(grants("*", "orders:read"));
        assert!(grants("*", "keywardish"));
        assert!(!grants("*", "keyward:verify"));
        assert!(!grants("*", "keyward:*"));
        assert!(grants("keyward:*", "keyward:verify"));
        assert!(grants("keyward:*", "keyward:keys:create"));
        assert!(!grants("keyward:*", "orders:read"));
        assert!(grants("keyward:keys:*", "keyward:keys:create"));
        assert!(!grants("keyward:keys:*", "keyward:verify"));
    }

    #[test]
    fn team_suffixes_grant_only_their_team() {
        assert!(grants("keyward:keys:*@team-a", "keyward:keys:read@team-a"));
        assert!(grants("keyward:keys:read@team-a", "keyward:keys:read@team-a"));
        assert!(!grants("keyward:keys:*@team-a", "keyward:keys:read@team-b"));
        assert!(!grants("keyward:keys:*@team-a", "keyward:keys:read"), "a team scope never grants all teams");
        assert!(!grants("keyward:keys:*@team-a", "keyward:keys:*"));
        assert!(!grants("keyward:*@team-a", "keyward:verify"));
        assert!(grants("keyward:keys:read", "keyward:keys:read@team-b"), "unsuffixed grants every team");
        assert!(grants("keyward:*", "keyward:keys:*@team-b"));
        assert!(!grants("*", "keyward:keys:read@team-a"));
        let granted = ["keyward:keys:read@a", "keyward:keys:*@b", "keyward:keys:revoke@c", "orders:*"];
        assert_eq!(teams_granting(&granted, "keyward:keys:read").collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn team_suffixes_are_checked() {
        for ok in ["keyward:keys:read@team-a", "keyward:keys:*@a.b_c", "keyward:*@team-a", "keyward:keys:rotate@0"] {
            assert_eq!(check_syntax(ok), Ok(()), "{ok}");
        }
        for bad in [
            "keyward:verify@team-a",
            "keyward:master:*@team-a",
            "keyward:self:rotate@team-a",
            "orders:read@team-a",
            "keyward@team-a",
            "keyward:keys:read@",
            "keyward:keys:read@Team",
            "keyward:keys:read@-a",
            "keyward:keys:read@a@b",
            "keyward:keys:read@a:b",
        ] {
            assert!(check_syntax(bad).is_err(), "{bad}");
        }
        assert!(is_team(&"a".repeat(63)));
        assert!(!is_team(&"a".repeat(64)));
    }

    #[test]
    fn syntax_is_checked() {
        for ok in ["a", "orders:read", "orders:*", "*", "keyward:*", "a.b-c_d:E9"] {
            assert_eq!(check_syntax(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", ":", "a:", ":a", "a::b", "*:a", "a:*:b", "a b", "a/b", "ä", long.as_str()] {
            assert!(check_syntax(bad).is_err(), "{bad}");
        }
    }
}
