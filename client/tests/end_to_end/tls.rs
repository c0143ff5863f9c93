//! The client over TLS and mTLS to a real keyward: certificates made at test time by rcgen; a
//! client certificate that keyward maps to a key stands in for the caller key.

use keyward_client::{Client, Error, VerifyOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};

use crate::keyward::Keyward;

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    fn issue(&self, cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

#[tokio::test]
async fn verifies_over_tls_with_a_caller_key_or_with_a_mapped_client_certificate() {
    let server_ca = Ca::new("keyward test CA");
    let clients_ca = Ca::new("clients CA");
    let mut kw = Keyward::started().await;
    let (_, service_id) = kw.create_key("payments", &["keyward:verify"]).await;
    let service_key = kw.service_key().await;
    let (checked, _) = kw.create_key("checked", &["orders:read"]).await;
    kw.stop().await;

    let server = server_ca.issue(
        "keyward",
        vec![SanType::DnsName("localhost".try_into().unwrap())],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = clients_ca.issue(
        "payments",
        vec![SanType::URI("spiffe://test/payments".try_into().unwrap())],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    kw.serve_args = vec![
        "--tls-cert".into(),
        kw.write_file("server.crt", &server.cert),
        "--tls-key".into(),
        kw.write_file("server.key", &server.key),
    ];
    kw.configure("tls", "client_ca", &format!("{:?}", kw.write_file("clients.crt", &clients_ca.pem)));
    kw.configure("tls", "identities", &format!("{{ \"spiffe://test/payments\" = \"{service_id}\" }}"));
    kw.configure("tls", "client_auth", "\"optional\"");
    kw.start().await;
    let endpoint = format!("https://127.0.0.1:{}", kw.port());
    let options = || VerifyOptions { scopes: vec!["orders:read".into()], ..Default::default() };

    // TLS, the caller authenticated by its key.
    let ca_file = kw.write_file("ca.crt", &server_ca.pem);
    let with_key = Client::builder(&endpoint)
        .ca_file(&ca_file)
        .tls_domain("localhost")
        .caller_key(service_key)
        .connect()
        .await
        .unwrap();
    assert!(with_key.verify(&checked, options()).await.unwrap().is_valid());

    // mTLS, the caller authenticated by its certificate alone.
    let with_certificate = Client::builder(&endpoint)
        .ca_pem(server_ca.pem.as_bytes())
        .tls_domain("localhost")
        .client_identity_pem(client.cert.as_bytes(), client.key.as_bytes())
        .connect()
        .await
        .unwrap();
    assert!(with_certificate.verify(&checked, options()).await.unwrap().is_valid());

    // A server certificate from a CA the client does not trust: no connection.
    let stranger = Ca::new("another CA");
    let refused = Client::builder(&endpoint).ca_pem(stranger.pem.as_bytes()).tls_domain("localhost").connect().await;
    assert!(matches!(refused, Err(Error::Connect(_))), "{refused:?}");
}
