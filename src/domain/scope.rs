//! Scopes: `segment(:segment)*` strings that keys carry and requests require.
//!
//! A granted scope whose last segment is `*` grants every scope that extends its other segments
//! (`orders:*` grants `orders:read` and `orders:items:write`). `*` alone grants every scope
//! outside the reserved `keyward:` namespace; `keyward:` scopes are granted only by `keyward:`
//! scopes (`keyward:*` grants them all).

/// keyward's own namespace: scopes that are permissions on keyward itself.
pub const RESERVED_NAMESPACE: &str = "keyward";
pub const MAX_SCOPE_LEN: usize = 128;

/// Why a scope string is malformed (for `INVALID_ARGUMENT`).
pub fn check_syntax(scope: &str) -> Result<(), &'static str> {
    if scope.is_empty() {
        return Err("a scope may not be empty");
    }
    if scope.len() > MAX_SCOPE_LEN {
        return Err("a scope may be at most 128 characters");
    }
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

fn is_reserved(scope: &str) -> bool {
    scope.split(':').next() == Some(RESERVED_NAMESPACE)
}

/// Does the granted scope grant the required one?
pub fn grants(granted: &str, required: &str) -> bool {
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
