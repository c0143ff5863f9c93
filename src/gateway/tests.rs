use std::{net::IpAddr, time::Duration};

use super::*;
use crate::config::{AuthzSection, RouteRule};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rules(routes: Vec<RouteRule>) -> Rules {
    Rules::new(&AuthzSection { routes, ..AuthzSection::default() }).unwrap()
}

fn route(methods: &[&str], path: &str, scopes: &[&str]) -> RouteRule {
    RouteRule {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_key_comes_from_the_first_configured_header_that_holds_one() {
    let rules = rules(vec![]);
    let [bearer, plain] = rules.key_headers() else { panic!("two default headers") };
    assert_eq!(bearer.key_in("Bearer kw_abc"), Some("kw_abc"));
    assert_eq!(bearer.key_in("bearer   kw_abc "), Some("kw_abc"));
    assert_eq!(bearer.key_in("Basic dXNlcjpwYXNz"), None, "another scheme is not a key");
    assert_eq!(bearer.key_in("Bearer "), None);
    assert_eq!(bearer.key_in("kw_abc"), None, "no scheme");
    assert_eq!(plain.key_in(" kw_abc "), Some("kw_abc"));
    assert_eq!(plain.key_in(""), None);
    assert_eq!((bearer.name(), plain.name()), ("authorization", "x-api-key"));

    let custom = Rules::new(&AuthzSection { key_headers: vec!["X-Key".into()], ..AuthzSection::default() }).unwrap();
    assert_eq!(custom.key_headers(), &[KeyHeader::Plain("x-key".into())], "names are matched lower-case");
}

#[test]
fn route_rules_match_method_and_path_glob_first_match_wins() {
    let rules = rules(vec![
        route(&["POST", "delete"], "/orders/**", &["orders:write"]),
        route(&[], "/orders/**", &["orders:read"]),
        route(&["GET"], "/admin/*", &["admin"]),
    ]);
    assert_eq!(rules.scopes_for("POST", "/orders/42"), ["orders:write"]);
    assert_eq!(rules.scopes_for("DELETE", "/orders/42/items/1"), ["orders:write"], "methods ignore case");
    assert_eq!(rules.scopes_for("GET", "/orders/42?expand=items"), ["orders:read"], "the query is not the path");
    assert_eq!(rules.scopes_for("GET", "/admin/users"), ["admin"]);
    assert!(rules.scopes_for("GET", "/admin/users/7").is_empty(), "* stays in one segment");
    assert!(rules.scopes_for("POST", "/admin/users").is_empty(), "another method");
    assert!(rules.scopes_for("GET", "/health").is_empty());
}

#[test]
fn bad_authz_sections_are_refused_naming_the_field() {
    let refused = |section: AuthzSection| match Rules::new(&section) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted {section:?}"),
    };
    let with_routes = |routes| AuthzSection { routes, ..AuthzSection::default() };
    assert!(refused(AuthzSection { key_headers: vec![], ..AuthzSection::default() }).contains("authz.key_headers"));
    assert!(
        refused(AuthzSection { key_headers: vec!["bad header".into()], ..AuthzSection::default() })
            .contains("authz.key_headers")
    );
    assert!(refused(with_routes(vec![route(&[], "orders", &["a"])])).contains("authz.routes[0].path"));
    assert!(refused(with_routes(vec![route(&[], "/orders", &[])])).contains("authz.routes[0].scopes"));
    assert!(refused(with_routes(vec![route(&["GET /"], "/orders", &["a"])])).contains("authz.routes[0].methods"));
    assert!(
        refused(with_routes(vec![route(&[], "/a", &["a"]), route(&[], "/[", &["b"])])).contains("authz.routes[1].path")
    );
}

#[test]
fn the_client_is_the_direct_address_unless_proxies_are_trusted() {
    // No trusted proxy: what the gateway saw, whatever the client wrote in X-Forwarded-For.
    assert_eq!(client_ip(Some(ip("203.0.113.9")), Some("198.51.100.1"), 0), Some(ip("203.0.113.9")));
    // Forward-auth: the gateway passes the address it saw as the last entry.
    assert_eq!(client_ip(None, Some("198.51.100.1, 203.0.113.9"), 0), Some(ip("203.0.113.9")));
    assert_eq!(client_ip(None, None, 0), None);

    // One trusted proxy (a load balancer) in front of the gateway: the entry it added.
    let forged_then_real = Some("6.6.6.6, 198.51.100.7");
    assert_eq!(client_ip(Some(ip("10.0.0.2")), forged_then_real, 1), Some(ip("198.51.100.7")));
    assert_eq!(client_ip(None, Some("6.6.6.6, 198.51.100.7, 10.0.0.2"), 1), Some(ip("198.51.100.7")));
    // The gateway appended the direct address itself: not counted twice.
    assert_eq!(client_ip(Some(ip("10.0.0.2")), Some("6.6.6.6, 198.51.100.7, 10.0.0.2"), 1), Some(ip("198.51.100.7")));
    // A chain shorter than the trusted hops: its leftmost address.
    assert_eq!(client_ip(Some(ip("10.0.0.2")), None, 2), Some(ip("10.0.0.2")));
    // Ports and IPv6.
    assert_eq!(client_ip(None, Some("[2001:db8::1]:4711, 10.0.0.2:80"), 1), Some(ip("2001:db8::1")));
    // A trusted entry that is not an address: the client is unknown, not guessed.
    assert_eq!(client_ip(Some(ip("10.0.0.2")), Some("unknown"), 1), None);
}

#[test]
fn denials_map_to_status_code_body_and_retry_after() {
    use crate::domain::policy::VerifyCode;
    let wait = Some(Duration::from_millis(1_200));
    for code in
        [VerifyCode::Invalid, VerifyCode::Revoked, VerifyCode::Disabled, VerifyCode::NotYetValid, VerifyCode::Expired]
    {
        let denial = Denial::of(code, None).unwrap();
        assert_eq!((denial, denial.http_status(), denial.challenges()), (Denial::InvalidKey, 401, true), "{code:?}");
    }
    assert_eq!(Denial::of(VerifyCode::Valid, None), None);
    assert_eq!(Denial::of(VerifyCode::InsufficientScope, None).unwrap().http_status(), 403);
    assert_eq!(Denial::of(VerifyCode::IpNotAllowed, None).unwrap().body(), r#"{"error":"ip_not_allowed"}"#);
    let limited = Denial::of(VerifyCode::RateLimited, wait).unwrap();
    assert_eq!((limited.http_status(), limited.retry_after_secs(), limited.challenges()), (429, Some(2), false));
    let spent = Denial::of(VerifyCode::QuotaExceeded, None).unwrap();
    assert_eq!((spent.error_code(), spent.retry_after_secs()), ("quota_exceeded", None));
    assert_eq!(Denial::TooManyFailures(Duration::from_secs(3)).retry_after_secs(), Some(3));
    assert_eq!(Denial::MissingKey.body(), r#"{"error":"missing_key"}"#);
}

#[test]
fn the_upstream_gets_the_identity_and_loses_an_owner_header_the_key_has_not() {
    let allowed = Allowed {
        key_id: "01h".into(),
        key_name: "orders".into(),
        scopes: vec!["a".into(), "b".into()],
        owner: None,
        remaining: None,
        strip_header: Some("x-api-key".into()),
    };
    let headers = allowed.identity_headers();
    assert_eq!(headers[2], ("x-keyward-scopes", Some("a b".to_owned())));
    assert_eq!(headers[3], ("x-keyward-owner", None));
}
