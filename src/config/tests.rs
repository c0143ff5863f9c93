//! Tests of the configuration: parsing, the environment overlay, sections, and the documented examples.

use std::{path::PathBuf, time::Duration};

use super::*;

#[test]
fn unknown_keys_are_refused() {
    let err = toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
}

#[test]
fn file_values_and_environment_overlay() {
    let mut c: Config =
        toml::from_str("listen = \"127.0.0.1:7\"\n[hsm]\ntoken_label = \"prod\"\nsessions = 4\n").unwrap();
    assert_eq!(c.listen, Some("127.0.0.1:7".parse().unwrap()));
    assert_eq!(c.hsm.sessions, 4);
    c.apply_env(|name| (name == "KEYWARD_HSM_TOKEN_LABEL").then(|| PathBuf::from("other")));
    assert_eq!(c.hsm.token_label, "other");
    assert_eq!(c.server.max_message_bytes, 64 * 1024);
}

#[test]
fn listen_addresses_are_tcp_or_unix_sockets_and_forward_auth_is_off_by_default() {
    assert_eq!(Config::default().http_listen, None);
    let c: Config = toml::from_str("listen = \"unix:/run/keyward/grpc.sock\"\nhttp_listen = \"[::1]:8081\"\n").unwrap();
    assert_eq!(c.listen, Some(ListenAddr::Unix("/run/keyward/grpc.sock".into())));
    assert_eq!(c.http_listen, Some(ListenAddr::Tcp("[::1]:8081".parse().unwrap())));
    let err = toml::from_str::<Config>("http_listen = \"unix:relative.sock\"\n").unwrap_err();
    assert!(err.to_string().contains("absolute path"), "{err}");
    let err = toml::from_str::<Config>("listen = \"localhost:80\"\n").unwrap_err();
    assert!(err.to_string().contains("unix:/abs/path"), "{err}");
}

/// The TOML blocks of docs/configuration.md, then docs/operations.md, after `from`, in order.
fn docs_toml_blocks(from: &str) -> Vec<&'static str> {
    let docs = concat!(include_str!("../../docs/configuration.md"), include_str!("../../docs/operations.md"));
    let mut rest = &docs[docs.find(from).expect("the heading")..];
    let mut blocks = Vec::new();
    while let Some(start) = rest.find("```toml\n") {
        rest = &rest[start + "```toml\n".len()..];
        let end = rest.find("```").expect("a closed block");
        blocks.push(&rest[..end]);
        rest = &rest[end..];
    }
    blocks
}

#[test]
fn every_documented_configuration_example_is_valid() {
    let blocks = docs_toml_blocks("# Configuration");
    assert!(blocks.len() >= 2, "the TLS example and the configuration reference");
    for block in blocks {
        let c: Config = toml::from_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        c.tls.settings(&TlsFlags::default()).unwrap_or_else(|e| panic!("{e}\n{block}"));
        crate::tls::Identities::from_config(&c.tls.identities).unwrap();
    }
}

#[test]
fn the_configuration_reference_is_valid_and_says_the_defaults() {
    let block = docs_toml_blocks("# Configuration")[0];
    let c: Config = toml::from_str(block).unwrap();
    let d = Config::default();
    assert_eq!(toml::to_string(&c.rotation).unwrap(), toml::to_string(&d.rotation).unwrap());
    assert_eq!(toml::to_string(&c.master).unwrap(), toml::to_string(&d.master).unwrap());
    assert_eq!(toml::to_string(&c.policy).unwrap(), toml::to_string(&d.policy).unwrap());
    assert_eq!(toml::to_string(&c.server).unwrap(), toml::to_string(&d.server).unwrap());
    assert_eq!(toml::to_string(&c.tls).unwrap(), toml::to_string(&d.tls).unwrap());
    assert_eq!(toml::to_string(&c.brute_force).unwrap(), toml::to_string(&d.brute_force).unwrap());
    assert_eq!(toml::to_string(&c.store).unwrap(), toml::to_string(&d.store).unwrap());
    assert_eq!(toml::to_string(&c.cluster).unwrap(), toml::to_string(&d.cluster).unwrap());
    assert_eq!(toml::to_string(&c.anomaly).unwrap(), toml::to_string(&d.anomaly).unwrap());
    assert_eq!(toml::to_string(&c.signing).unwrap(), toml::to_string(&d.signing).unwrap());
    assert_eq!(toml::to_string(&c.console).unwrap(), toml::to_string(&d.console).unwrap());
}

#[test]
fn brute_force_reads_durations_and_refuses_settings_that_cannot_work() {
    let c: Config =
        toml::from_str("[brute_force]\nmax_failures = 5\nwindow = \"10s\"\nmax_backoff = \"1h\"\n").unwrap();
    let d = c.brute_force.domain().unwrap();
    assert_eq!((d.max_failures, d.window, d.max_backoff), (5, Duration::from_secs(10), Duration::from_secs(3600)));
    assert_eq!(d.base_backoff, Duration::from_secs(1), "unset keys keep their default");
    for bad in ["max_failures = 0", "window = \"0s\"", "backoff = \"2h\""] {
        let c: Config = toml::from_str(&format!("[brute_force]\n{bad}\n")).unwrap();
        let err = c.brute_force.domain().unwrap_err().to_string();
        assert!(err.contains("brute_force."), "{bad}: {err}");
    }
}

#[test]
fn tls_flags_win_over_the_file_and_inconsistent_settings_are_refused() {
    let c: Config = toml::from_str(
        "[tls]\ncert = \"/etc/k/s.crt\"\nkey = \"/etc/k/s.key\"\nclient_ca = \"/etc/k/ca.crt\"\n\
         client_auth = \"optional\"\nreload_interval = \"2s\"\n[tls.identities]\n\"spiffe://a/b\" = \"x\"\n",
    )
    .unwrap();
    let s = c.tls.settings(&TlsFlags::default()).unwrap().unwrap();
    assert_eq!(s.cert, PathBuf::from("/etc/k/s.crt"));
    assert_eq!(s.client_ca, Some((PathBuf::from("/etc/k/ca.crt"), ClientAuth::Optional)));
    assert_eq!(s.reload_interval, Some(Duration::from_secs(2)));
    let flags = TlsFlags { cert: Some("/x.crt".into()), key: None, client_ca: Some("/ca2".into()) };
    let s = c.tls.settings(&flags).unwrap().unwrap();
    assert_eq!((s.cert, s.key), (PathBuf::from("/x.crt"), PathBuf::from("/etc/k/s.key")));
    assert_eq!(s.client_ca.unwrap().0, PathBuf::from("/ca2"));

    assert_eq!(TlsSection::default().settings(&TlsFlags::default()).unwrap(), None, "no TLS by default");
    let only_cert = TlsFlags { cert: Some("/x.crt".into()), ..Default::default() };
    let err = TlsSection::default().settings(&only_cert).unwrap_err().to_string();
    assert!(err.contains("without its private key"), "{err}");
    let only_ca = TlsFlags { client_ca: Some("/ca".into()), ..Default::default() };
    let err = TlsSection::default().settings(&only_ca).unwrap_err().to_string();
    assert!(err.contains("needs the server's own certificate"), "{err}");
    let mut section = TlsSection { client_auth: Some(ClientAuth::Required), ..Default::default() };
    assert!(section.settings(&TlsFlags::default()).unwrap_err().to_string().contains("client_auth needs"));
    section.client_auth = None;
    section.identities.insert("spiffe://a/b".into(), "x".into());
    assert!(section.settings(&TlsFlags::default()).unwrap_err().to_string().contains("identities needs"));
    let err = toml::from_str::<Config>("[tls]\nclient_auth = \"sometimes\"\n").unwrap_err();
    assert!(err.to_string().contains("sometimes"), "{err}");
}

#[test]
fn plaintext_only_on_loopback_unless_allowed() {
    for (addr, allowed) in [("127.0.0.1:1", true), ("[::1]:1", true), ("[::ffff:127.0.0.1]:1", true)] {
        assert_eq!(plaintext_allowed(&addr.parse().unwrap(), false), allowed, "{addr}");
    }
    assert!(plaintext_allowed(&"unix:/run/keyward.sock".parse().unwrap(), false), "a Unix socket is local");
    for addr in ["0.0.0.0:1", "[::]:1", "10.0.0.5:1"] {
        assert!(!plaintext_allowed(&addr.parse().unwrap(), false), "{addr}");
        assert!(plaintext_allowed(&addr.parse().unwrap(), true), "{addr}");
    }
}

#[test]
fn rotation_durations_read_as_text_with_off() {
    let c: Config = toml::from_str(
        "[rotation]\nmax_age = \"off\"\ngrace_period = \"2h\"\ninactive_after = \"30d\"\nsweep_interval = \"off\"\n",
    )
    .unwrap();
    assert_eq!(c.rotation.max_age, None);
    assert_eq!(c.rotation.grace_period, Duration::from_secs(7200));
    assert_eq!(c.rotation.inactive_after, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(c.rotation.sweep_interval, None);
    assert_eq!(c.rotation.warning, Duration::from_secs(14 * 86_400), "unset keys keep their default");
    let err = toml::from_str::<Config>("[rotation]\nmax_age = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("soon"), "{err}");
    let round: Config = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
    assert_eq!(round.rotation.max_age, Config::default().rotation.max_age);
}

#[test]
fn relative_paths_in_the_file_are_relative_to_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(
        &path,
        "[hsm]\npin_file = \"softhsm/user.pin\"\nsofthsm2_conf = \"/etc/softhsm2.conf\"\n[tls]\ncert = \"s.crt\"\n",
    )
    .unwrap();
    let c = Config::load(&path, true).unwrap();
    assert_eq!(c.hsm.pin_file, Some(dir.path().join("softhsm/user.pin")));
    assert_eq!(c.hsm.softhsm2_conf, Some(PathBuf::from("/etc/softhsm2.conf")), "absolute paths stay");
    assert_eq!(c.tls.cert, Some(dir.path().join("s.crt")));
}
