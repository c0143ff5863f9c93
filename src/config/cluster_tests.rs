//! `[cluster]` and its flags: single-node mode without endpoints, flags over the file, the
//! defaults, and a refusal naming the flag or key for every setting that cannot work.

use std::time::Duration;

use super::*;
use crate::config::Config;

fn section(toml: &str) -> ClusterSection {
    toml::from_str::<Config>(toml).unwrap_or_else(|e| panic!("{e}\n{toml}")).cluster
}

fn etcd(urls: &str) -> ClusterFlags {
    ClusterFlags { etcd: Some(urls.into()), ..ClusterFlags::default() }
}

fn host() -> Option<String> {
    Some("build-host".into())
}

fn resolve(section: &ClusterSection, flags: &ClusterFlags) -> Result<Option<ClusterSettings>, String> {
    section.resolve(flags, host).map_err(|e| e.to_string())
}

/// The refusal of `flags` over `toml`'s section; it must name `names`.
fn refusal(toml: &str, flags: &ClusterFlags, names: &str) -> String {
    let err = resolve(&section(toml), flags).expect_err("refused");
    assert!(err.contains(names), "the refusal names {names}: {err}");
    err
}

#[test]
fn without_endpoints_it_is_single_node_mode() {
    assert_eq!(resolve(&ClusterSection::default(), &ClusterFlags::default()), Ok(None));
    let commented = section("[cluster]\nprefix = \"/other/\"\nnode_id = \"n1\"\nheartbeat_ms = 100\n");
    assert_eq!(resolve(&commented, &ClusterFlags::default()), Ok(None), "the file's other keys alone do not");
}

#[test]
fn endpoints_in_the_file_turn_cluster_mode_on_with_the_defaults() {
    let s = resolve(&section("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n"), &ClusterFlags::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        s,
        ClusterSettings {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/keyward/".into(),
            node_id: "build-host".into(),
            heartbeat: Duration::from_millis(250),
            max_staleness: Duration::from_millis(1000),
            request_timeout: Duration::from_millis(2000),
            audit_keep_events: 1_000_000,
            tls: None,
            auth: None,
        }
    );
}

#[test]
fn flags_win_over_the_file() {
    let file = section(
        "[cluster]\netcd = [\"http://10.0.0.1:2379\"]\nprefix = \"/file/\"\nnode_id = \"from-file\"\n\
         heartbeat_ms = 100\nmax_staleness_ms = 500\nrequest_timeout_ms = 300\n",
    );
    let s = resolve(&file, &ClusterFlags::default()).unwrap().unwrap();
    assert_eq!(
        (s.endpoints, s.prefix, s.node_id),
        (vec!["http://10.0.0.1:2379".to_string()], "/file/".into(), "from-file".into())
    );
    assert_eq!(
        (s.heartbeat, s.max_staleness, s.request_timeout),
        (Duration::from_millis(100), Duration::from_millis(500), Duration::from_millis(300))
    );

    let flags = ClusterFlags {
        etcd: Some("http://127.0.0.1:2379, http://[::1]:22379".into()),
        prefix: Some("/flag/".into()),
        node_id: Some("n-2.a_b".into()),
        ..ClusterFlags::default()
    };
    let s = resolve(&file, &flags).unwrap().unwrap();
    assert_eq!(s.endpoints, ["http://127.0.0.1:2379", "http://[::1]:22379"], "split on commas, trimmed");
    assert_eq!((s.prefix.as_str(), s.node_id.as_str()), ("/flag/", "n-2.a_b"));
    let s = resolve(&ClusterSection::default(), &etcd("http://h:1")).unwrap().unwrap();
    assert_eq!(s.endpoints, ["http://h:1"], "--etcd alone turns cluster mode on");
}

#[test]
fn the_node_id_defaults_to_the_sanitized_host_name_and_needs_one() {
    let s = ClusterSection::default().resolve(&etcd("http://h:1"), || Some("web 01.example.com".into())).unwrap();
    assert_eq!(s.unwrap().node_id, "web-01.example.com");
    let long = "h".repeat(100);
    let s = ClusterSection::default().resolve(&etcd("http://h:1"), || Some(long)).unwrap();
    assert_eq!(s.unwrap().node_id, "h".repeat(64), "cut to the longest id");
    for none in [None, Some(String::new()), Some("  ".into())] {
        let err = ClusterSection::default().resolve(&etcd("http://h:1"), || none.clone()).unwrap_err().to_string();
        assert!(err.contains("--node-id") && err.contains("cluster.node_id"), "{none:?}: {err}");
    }
    let err = ClusterSection::default().resolve(&etcd("http://h:1"), || Some("..".into())).unwrap_err().to_string();
    assert!(err.contains("host name"), "{err}");
    assert_eq!(sanitize_node_id("a/b:c\u{e9}"), "a-b-c-");
}

#[test]
fn node_and_prefix_flags_without_cluster_mode_are_refused() {
    let node = ClusterFlags { node_id: Some("n1".into()), ..ClusterFlags::default() };
    let err = refusal("", &node, "--node-id");
    assert!(err.contains("needs cluster mode") && err.contains("--etcd"), "{err}");
    let prefix = ClusterFlags { prefix: Some("/p/".into()), ..ClusterFlags::default() };
    let err = refusal("", &prefix, "--etcd-prefix");
    assert!(err.contains("--etcd"), "{err}");
}

#[test]
fn every_endpoint_must_be_an_http_or_https_url_with_host_and_port() {
    let bad = [
        ("127.0.0.1:2379", "scheme"),
        ("ftp://h:1", "scheme"),
        ("http://h", "no port"),
        ("http://:2379", ""),
        ("http://h:1/v3", "path"),
        ("http://h:1?x=1", "path"),
        ("http://u:p@h:1", "credentials"),
        ("http://h:1,", "empty"),
        ("not a url", ""),
    ];
    for (url, why) in bad {
        let err = refusal("", &etcd(url), "--etcd");
        assert!(err.contains(why), "{url}: {err}");
        let file = format!("[cluster]\netcd = [{:?}]\n", url.trim_end_matches(','));
        if !url.ends_with(',') {
            refusal(&file, &ClusterFlags::default(), "cluster.etcd");
        }
    }
    for good in ["http://127.0.0.1:2379", "http://etcd-1.internal:2379/", "http://[::1]:2379"] {
        assert!(resolve(&ClusterSection::default(), &etcd(good)).unwrap().is_some(), "{good}");
    }
}

#[test]
fn the_prefix_must_be_a_slash_delimited_path_of_2_to_128_characters() {
    let with = |p: &str| ClusterFlags { prefix: Some(p.into()), ..etcd("http://h:1") };
    for bad in ["/", "keyward/", "/keyward", "/key ward/", "/key\tward/", &format!("/{}/", "a".repeat(127))] {
        refusal("", &with(bad), "--etcd-prefix");
        let file = format!("[cluster]\netcd = [\"http://h:1\"]\nprefix = {bad:?}\n");
        refusal(&file, &ClusterFlags::default(), "cluster.prefix");
    }
    for good in ["//", "/a/", &format!("/{}/", "a".repeat(126))] {
        assert_eq!(resolve(&ClusterSection::default(), &with(good)).unwrap().unwrap().prefix, good);
    }
}

#[test]
fn node_ids_are_1_to_64_safe_characters_and_never_a_relative_directory() {
    let with = |id: &str| ClusterFlags { node_id: Some(id.into()), ..etcd("http://h:1") };
    for bad in ["", ".", "..", "a/b", "../x", "n 1", "n\u{e9}", &"n".repeat(65)] {
        refusal("", &with(bad), "--node-id");
        let file = format!("[cluster]\netcd = [\"http://h:1\"]\nnode_id = {bad:?}\n");
        refusal(&file, &ClusterFlags::default(), "cluster.node_id");
    }
    for good in ["n1", "a.b_c-D", "...", &"n".repeat(64)] {
        assert_eq!(resolve(&ClusterSection::default(), &with(good)).unwrap().unwrap().node_id, good);
    }
}

#[test]
fn timings_out_of_range_are_refused_naming_their_key() {
    let on = "[cluster]\netcd = [\"http://h:1\"]\n";
    let none = ClusterFlags::default();
    for bad in ["heartbeat_ms = 9", "heartbeat_ms = 60001\nmax_staleness_ms = 200000"] {
        refusal(&format!("{on}{bad}\n"), &none, "cluster.heartbeat_ms");
    }
    let err = refusal(&format!("{on}heartbeat_ms = 600\n"), &none, "cluster.max_staleness_ms");
    assert!(err.contains("twice"), "{err}");
    for bad in ["request_timeout_ms = 99", "request_timeout_ms = 60001"] {
        refusal(&format!("{on}{bad}\n"), &none, "cluster.request_timeout_ms");
    }
    let edges = "heartbeat_ms = 10\nmax_staleness_ms = 20\nrequest_timeout_ms = 100";
    assert!(resolve(&section(&format!("{on}{edges}\n")), &none).unwrap().is_some());
    let edges = "heartbeat_ms = 60000\nmax_staleness_ms = 120000\nrequest_timeout_ms = 60000";
    assert!(resolve(&section(&format!("{on}{edges}\n")), &none).unwrap().is_some());
}

#[test]
fn unknown_cluster_keys_are_refused() {
    let err = toml::from_str::<Config>("[cluster]\nnodeid = \"n1\"\n").unwrap_err();
    assert!(err.to_string().contains("nodeid"), "{err}");
}

#[test]
fn tls_and_authentication_settings_go_together_and_match_the_endpoints() {
    let none = ClusterFlags::default();
    let https = "[cluster]\netcd = [\"https://127.0.0.1:2379\"]\n";
    refusal(https, &none, "need cluster.ca_file");
    refusal(&format!("{https}ca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\n"), &none, "go together");
    refusal("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nca_file = \"/ca.pem\"\n", &none, "must be https://");
    refusal(
        &format!("{https}ca_file = \"/ca.pem\"\nuser = \"keyward\"\n"),
        &none,
        "cluster.user and cluster.password_file",
    );
    let full = format!(
        "{https}ca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nuser = \"kw\"\npassword_file = \"/pw\"\n"
    );
    let settings = resolve(&section(&full), &none).expect("valid").expect("cluster mode");
    assert_eq!(settings.tls, Some(("/ca.pem".into(), Some(("/c.pem".into(), "/k.pem".into())))));
    assert_eq!(settings.auth, Some(("kw".into(), "/pw".into())));
}
