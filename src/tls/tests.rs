//! Loading, reloading and identity mapping, with certificates made by rcgen.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use super::*;
use crate::{config::TlsSettings, domain::key::KeyId};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "test CA");
        Self { issuer: Issuer::new(params, KeyPair::generate().unwrap()) }
    }

    /// A leaf certificate (PEM) and its key (PEM) with these DNS names and URIs.
    fn leaf(&self, cn: &str, dns: &[&str], uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

fn table(entries: &[(&str, KeyId)]) -> BTreeMap<String, String> {
    entries.iter().map(|(name, id)| (name.to_string(), id.to_string())).collect()
}

#[test]
fn identities_match_uri_and_dns_names_and_refuse_ambiguity() {
    let ca = Ca::new();
    let (payments, orders) = (KeyId::new_v7(), KeyId::new_v7());
    let ids = Identities::from_config(&table(&[("spiffe://team-a/payments", payments), ("Orders.Internal", orders)]))
        .unwrap();
    assert_eq!(ids.len(), 2);
    let (spiffe, _) = ca.leaf("p", &[], &["spiffe://team-a/payments"]);
    assert_eq!(ids.resolve(&der(&spiffe)), Resolution::Key(payments));
    let (dns, _) = ca.leaf("o", &["orders.internal"], &[]);
    assert_eq!(ids.resolve(&der(&dns)), Resolution::Key(orders), "DNS names match without regard to case");
    let (uri_case, _) = ca.leaf("p", &[], &["spiffe://team-a/PAYMENTS"]);
    assert_eq!(ids.resolve(&der(&uri_case)), Resolution::Unmapped, "URIs match exactly");
    let (other, _) = ca.leaf("x", &["x.internal"], &["spiffe://team-b/x"]);
    assert_eq!(ids.resolve(&der(&other)), Resolution::Unmapped);
    let (both, _) = ca.leaf("b", &["orders.internal"], &["spiffe://team-a/payments"]);
    assert_eq!(ids.resolve(&der(&both)), Resolution::Ambiguous);
    let (same, _) = ca.leaf("s", &["unmapped.internal"], &["spiffe://team-a/payments"]);
    assert_eq!(ids.resolve(&der(&same)), Resolution::Key(payments));
    assert_eq!(ids.resolve(b"not a certificate"), Resolution::Unmapped);
}

#[test]
fn identities_refuse_what_is_not_a_key_id_and_names_listed_twice() {
    let bad = BTreeMap::from([("spiffe://a/b".to_string(), "payments".to_string())]);
    let err = Identities::from_config(&bad).unwrap_err().to_string();
    assert!(err.contains("spiffe://a/b") && err.contains("key id"), "{err}");
    let id = KeyId::new_v7();
    let twice = table(&[("svc.internal", id), ("SVC.internal", KeyId::new_v7())]);
    assert!(Identities::from_config(&twice).unwrap_err().to_string().contains("twice"));
    assert!(Identities::from_config(&table(&[(" ", id)])).unwrap_err().to_string().contains("empty"));
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn settings(dir: &Path, cert: &str, key: &str) -> TlsSettings {
    TlsSettings {
        cert: write(dir, "server.crt", cert),
        key: write(dir, "server.key", key),
        client_ca: None,
        reload_interval: None,
    }
}

#[test]
fn bad_files_are_refused_saying_what_is_wrong_and_never_quoting_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert, _) = ca.leaf("server", &["localhost"], &[]);
    let (_, other_key) = ca.leaf("other", &["localhost"], &[]);
    let marker = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    let garbage = format!("-----BEGIN PRIVATE KEY-----\n{marker}!!\n-----END PRIVATE KEY-----\n");
    for (key, expected) in [
        (garbage.as_str(), "not a valid PEM private key"),
        ("just text", "no unencrypted private key"),
        (other_key.as_str(), "with the key"),
    ] {
        let err = TlsReloader::load(settings(dir.path(), &cert, key)).err().expect("refused").to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains(marker) && !err.contains("BEGIN PRIVATE"), "the key leaked into: {err}");
    }
    let (_, key) = ca.leaf("server", &["localhost"], &[]);
    let err = TlsReloader::load(settings(dir.path(), "no certificate", &key)).err().unwrap().to_string();
    assert!(err.contains("no certificate in it"), "{err}");
    let mut missing = settings(dir.path(), &cert, &key);
    missing.key = dir.path().join("absent.key");
    assert!(TlsReloader::load(missing).err().unwrap().to_string().contains("cannot read the private key"));
}

#[test]
fn reload_swaps_on_change_and_keeps_the_previous_config_when_the_new_files_are_bad() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert, key) = ca.leaf("first", &["localhost"], &[]);
    let tls = TlsReloader::load(settings(dir.path(), &cert, &key)).unwrap();
    let first = tls.current();
    assert_eq!(tls.reload(false).unwrap(), Reloaded::Unchanged);
    assert!(matches!(tls.reload(true).unwrap(), Reloaded::New(s) if s.subject.contains("first")));

    let (cert2, key2) = ca.leaf("second", &["localhost"], &[]);
    // The certificate alone: it does not match the key in force, so nothing changes.
    write(dir.path(), "server.crt", &cert2);
    assert!(tls.reload(false).unwrap_err().to_string().contains("with the key"));
    assert_eq!(tls.reload(false).unwrap(), Reloaded::Unchanged, "a bad state is reported once");
    let kept = tls.current();
    write(dir.path(), "server.key", &key2);
    let Reloaded::New(summary) = tls.reload(false).unwrap() else { panic!("reloaded") };
    assert!(summary.subject.contains("second"), "{summary:?}");
    assert!(!Arc::ptr_eq(&kept, &tls.current()));
    assert!(!Arc::ptr_eq(&first, &tls.current()));
    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    let still = tls.current();
    assert!(tls.reload(false).is_err());
    assert!(Arc::ptr_eq(&still, &tls.current()), "a missing file keeps the configuration in force");
}

#[test]
fn mtls_needs_a_usable_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert, key) = ca.leaf("server", &["localhost"], &[]);
    let mut s = settings(dir.path(), &cert, &key);
    s.client_ca = Some((write(dir.path(), "ca.crt", "nothing"), crate::config::ClientAuth::Required));
    assert!(TlsReloader::load(s.clone()).err().unwrap().to_string().contains("no CA certificate"));
    let ca_pem =
        CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&KeyPair::generate().unwrap()).unwrap().pem();
    write(dir.path(), "ca.crt", &ca_pem);
    let tls = TlsReloader::load(s).unwrap();
    assert_eq!(tls.current().alpn_protocols, vec![b"h2".to_vec()]);
}
