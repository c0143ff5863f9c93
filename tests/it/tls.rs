//! TLS and mTLS on the real server: certificates made at test time by rcgen, clients that trust
//! (or do not trust) them, client certificates standing for keys, reloads under live calls, and
//! plaintext refused off loopback.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyward::proto::{
    self, VerifyCode, key_service_client::KeyServiceClient, verify_service_client::VerifyServiceClient,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType, SerialNumber,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::common::{Instance, serve_expecting_refusal_with};

/// A certificate authority made for one test.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub(crate) struct Pair {
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { pem, issuer: Issuer::new(params, key) }
    }

    fn issue(&self, cn: &str, serial: u64, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// For `localhost` and 127.0.0.1.
    pub(crate) fn server(&self, cn: &str, serial: u64) -> Pair {
        let sans = vec![SanType::DnsName("localhost".try_into().unwrap()), SanType::IpAddress([127, 0, 0, 1].into())];
        self.issue(cn, serial, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate naming a SPIFFE ID.
    pub(crate) fn client(&self, spiffe_id: &str) -> Pair {
        let sans = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        self.issue(spiffe_id, 1000, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Where an instance's TLS files live, beside its data directory.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(instance: &Instance) -> Self {
        let dir = instance.data_dir.with_file_name("tls");
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Writes the server's pair as server.crt and server.key; returns `--tls-cert`/`--tls-key`.
    fn server(&self, pair: &Pair) -> Vec<String> {
        let cert = self.write("server.crt", &pair.cert);
        let key = self.write("server.key", &pair.key);
        vec!["--tls-cert".into(), cert, "--tls-key".into(), key]
    }
}

/// A TLS channel to `instance` trusting `ca_pem`, presenting `client` if given.
async fn channel(instance: &Instance, ca_pem: &str, client: Option<&Pair>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some(pair) = client {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    let port = instance.addr().port();
    Channel::from_shared(format!("https://127.0.0.1:{port}")).unwrap().tls_config(tls)?.connect().await
}

type Verifier = VerifyServiceClient<tonic::service::interceptor::InterceptedService<Channel, crate::common::Bearer>>;

fn verifier(channel: Channel, bearer: Option<&str>) -> Verifier {
    VerifyServiceClient::with_interceptor(channel, Instance::bearer(bearer))
}

async fn verify(client: &mut Verifier, key: &str) -> Result<proto::VerifyKeyResponse, tonic::Status> {
    client.verify_key(proto::VerifyKeyRequest { key: key.into(), ..Default::default() }).await.map(|r| r.into_inner())
}

/// Connects (if it can) and makes one VerifyKey call: what a client trying its luck sees.
async fn try_call(instance: &Instance, ca_pem: &str, client: Option<&Pair>) -> Result<VerifyCode, String> {
    let channel = channel(instance, ca_pem, client).await.map_err(|e| format!("connect: {e:?}"))?;
    let mut v = verifier(channel, Some(&instance.root_key));
    verify(&mut v, &instance.root_key).await.map(|r| r.code()).map_err(|s| format!("call: {s:?}"))
}

/// The leaf certificate the server presents to a new connection (DER).
async fn presented(instance: &Instance, ca_pem: &str) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", instance.addr().port())).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("a TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server's log holds `text`: the server writes some lines after the event a
/// test can observe (the address file, a handshake the client already finished).
async fn logged(instance: &Instance, text: &str) {
    eventually(&format!("{text:?} in the log"), Duration::from_secs(10), async || instance.logs().contains(text)).await;
}

/// An instance serving TLS with `server` (flags), plus `configure` calls made before the start.
async fn tls_instance(server: &Pair, setup: impl FnOnce(&mut Instance, &Files)) -> (Instance, Files) {
    let mut instance = Instance::init();
    let files = Files::new(&instance);
    instance.serve_args = files.server(server);
    setup(&mut instance, &files);
    instance.start().await;
    (instance, files)
}

fn toml_str(path: &Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_and_no_plaintext() {
    let ca = Ca::new("keyward test CA");
    let (instance, _files) = tls_instance(&ca.server("keyward", 1), |_, _| {}).await;
    assert_eq!(try_call(&instance, &ca.pem, None).await, Ok(VerifyCode::Valid));
    logged(&instance, "keyward serving").await;
    let logs = instance.logs();
    let serving = logs.lines().find(|l| l.contains("keyward serving")).expect("the serving line");
    assert!(serving.contains("\"TLS\""), "{serving}");

    let stranger = Ca::new("another CA");
    let err = try_call(&instance, &stranger.pem, None).await.unwrap_err();
    assert!(err.starts_with("connect"), "a server certificate from another CA is refused by the client: {err}");

    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", instance.addr().port())).unwrap();
    let plain = match plain.connect().await {
        Ok(channel) => verify(&mut verifier(channel, Some(&instance.root_key)), &instance.root_key).await.err(),
        Err(_) => Some(tonic::Status::unavailable("refused")),
    };
    assert!(plain.is_some(), "plaintext h2 on the TLS port does not work");

    // SIGTERM with a TLS connection open: it drains, stops accepting at once, and exits 0.
    let mut open = verifier(channel(&instance, &ca.pem, None).await.unwrap(), Some(&instance.root_key));
    assert_eq!(verify(&mut open, &instance.root_key).await.unwrap().code(), VerifyCode::Valid);
    let (mut instance, started) = (instance, Instant::now());
    let port = instance.addr().port();
    assert!(instance.stop().await.success());
    assert!(started.elapsed() < Duration::from_secs(8), "no drain deadline reached: {:?}", started.elapsed());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn mtls_required_accepts_its_clients_and_refuses_foreign_and_missing_certificates() {
    let ca = Ca::new("keyward test CA");
    let clients = Ca::new("clients CA");
    let (instance, _files) = tls_instance(&ca.server("keyward", 1), |instance, files| {
        let clients_ca = files.write("clients.crt", &clients.pem);
        instance.serve_args.extend(["--client-ca".into(), clients_ca]);
    })
    .await;
    logged(&instance, "mTLS, client certificate required").await;

    let good = clients.client("spiffe://test/gateway");
    assert_eq!(try_call(&instance, &ca.pem, Some(&good)).await, Ok(VerifyCode::Valid));

    // Another CA with the same name (a forgery), and one with a name of its own.
    for (other, why) in [("clients CA", "BadSignature"), ("stranger CA", "UnknownIssuer")] {
        let foreign = Ca::new(other).client("spiffe://test/gateway");
        // With TLS 1.3 the client may consider the handshake done: then its first call fails.
        let refused = try_call(&instance, &ca.pem, Some(&foreign)).await;
        assert!(refused.is_err(), "{other}: {refused:?}");
        // The server logs why once its side of the handshake has failed: maybe after the client saw it.
        logged(&instance, &format!("invalid peer certificate: {why}")).await;
    }
    let refused = try_call(&instance, &ca.pem, None).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    logged(&instance, "peer sent no certificates").await;
    assert_eq!(try_call(&instance, &ca.pem, Some(&good)).await, Ok(VerifyCode::Valid), "still serving");
}

#[tokio::test]
async fn a_mapped_client_certificate_stands_for_its_key_and_a_bearer_wins() {
    let ca = Ca::new("keyward test CA");
    let clients = Ca::new("clients CA");
    let mut instance = Instance::started().await;
    let (_payments_key, payments_id) = instance.create_key("payments", &["keyward:verify"]).await;
    let (reader_key, _) = instance.create_key("reader", &["keyward:keys:read"]).await;
    let (checked_key, _) = instance.create_key("checked", &["orders:read"]).await;
    instance.stop().await;

    let files = Files::new(&instance);
    instance.serve_args = files.server(&ca.server("keyward", 1));
    instance.configure("tls", "client_ca", &toml_str(Path::new(&files.write("clients.crt", &clients.pem))));
    instance.configure("tls", "identities", &format!("{{ \"spiffe://team-a/payments\" = \"{payments_id}\" }}"));
    instance.configure("tls", "client_auth", "\"optional\"");
    instance.start().await;
    logged(&instance, "mTLS, client certificate optional").await;

    let mapped = clients.client("spiffe://team-a/payments");
    let unmapped = clients.client("spiffe://team-b/unknown");
    let mut as_payments = verifier(channel(&instance, &ca.pem, Some(&mapped)).await.unwrap(), None);
    let answer = verify(&mut as_payments, &checked_key).await.expect("VerifyKey with no bearer");
    assert_eq!(answer.code(), VerifyCode::Valid);
    assert_eq!(answer.scopes, vec!["orders:read".to_string()]);

    // The key's permissions, no more: payments holds keyward:verify only.
    let mut keys = KeyServiceClient::with_interceptor(
        channel(&instance, &ca.pem, Some(&mapped)).await.unwrap(),
        Instance::bearer(None),
    );
    let err = keys.list_keys(proto::ListKeysRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let mut stranger = verifier(channel(&instance, &ca.pem, Some(&unmapped)).await.unwrap(), None);
    let err = verify(&mut stranger, &checked_key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("stands for no key"), "{err:?}");

    // A bearer, when present, wins: reader lacks keyward:verify even over the payments certificate.
    let mut with_bearer = verifier(channel(&instance, &ca.pem, Some(&mapped)).await.unwrap(), Some(&reader_key));
    let err = verify(&mut with_bearer, &checked_key).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut bad_bearer = verifier(channel(&instance, &ca.pem, Some(&mapped)).await.unwrap(), Some("kw_forged"));
    assert_eq!(verify(&mut bad_bearer, &checked_key).await.unwrap_err().code(), Code::Unauthenticated);

    // Optional client authentication: no certificate, then the bearer is the only credential.
    let mut anonymous = verifier(channel(&instance, &ca.pem, None).await.unwrap(), None);
    let err = verify(&mut anonymous, &checked_key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("missing credential"), "{err:?}");

    // The key's state applies on the next call, as for a bearer key.
    let mut root = KeyServiceClient::with_interceptor(
        channel(&instance, &ca.pem, None).await.unwrap(),
        Instance::bearer(Some(&instance.root_key)),
    );
    let id = payments_id.clone();
    root.disable_key(proto::DisableKeyRequest { key_id: id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(verify(&mut as_payments, &checked_key).await.unwrap_err().code(), Code::Unauthenticated);
    root.enable_key(proto::EnableKeyRequest { key_id: id.clone() }).await.unwrap();
    assert_eq!(verify(&mut as_payments, &checked_key).await.unwrap().code(), VerifyCode::Valid);
    root.revoke_key(proto::RevokeKeyRequest { key_id: id, ..Default::default() }).await.unwrap();
    let err = verify(&mut as_payments, &checked_key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

/// Calls VerifyKey on one connection until told to stop; counts successes and failures.
fn call_loop(
    mut client: Verifier,
    key: String,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<Vec<String>>, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match verify(&mut client, &key).await {
                Ok(r) if r.code() == VerifyCode::Valid => {}
                Ok(r) => failures.push(format!("{:?}", r.code())),
                Err(e) => failures.push(format!("{e:?}")),
            }
            counted.fetch_add(1, Ordering::SeqCst);
        }
        failures
    });
    (task, calls)
}

/// TLS connections the server has established so far (it logs each at debug level).
fn handshakes(instance: &Instance) -> usize {
    instance.logs().matches("TLS connection established").count()
}

#[tokio::test]
async fn a_changed_certificate_is_picked_up_while_calls_go_on_on_an_existing_connection() {
    let ca = Ca::new("keyward test CA");
    let first = ca.server("keyward first", 1);
    let (instance, files) =
        tls_instance(&first, |instance, _| instance.configure("tls", "reload_interval", "\"200ms\"")).await;
    assert_eq!(presented(&instance, &ca.pem).await, der(&first.cert));

    let stop = Arc::new(AtomicBool::new(false));
    let client = verifier(channel(&instance, &ca.pem, None).await.unwrap(), Some(&instance.root_key));
    let (task, calls) = call_loop(client, instance.root_key.clone(), stop.clone());
    eventually("calls before the change", Duration::from_secs(10), async || calls.load(Ordering::SeqCst) > 20).await;
    // The server logs a handshake once its side is done, maybe after the client has moved on.
    let connections = 2; // the first probe and the calls' connection
    eventually("two handshakes", Duration::from_secs(10), async || handshakes(&instance) >= connections).await;
    assert_eq!(handshakes(&instance), connections);

    let second = ca.server("keyward second", 2);
    // In place, the certificate first: for a moment the pair on disk does not match.
    files.write("server.crt", &second.cert);
    files.write("server.key", &second.key);
    let mut probes = 0;
    eventually("the new certificate on new connections", Duration::from_secs(15), async || {
        probes += 1;
        presented(&instance, &ca.pem).await == der(&second.cert)
    })
    .await;
    let at_change = calls.load(Ordering::SeqCst);
    eventually("calls after the change", Duration::from_secs(10), async || {
        calls.load(Ordering::SeqCst) > at_change + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let failures = task.await.unwrap();
    assert!(failures.is_empty(), "calls failed during the reload: {failures:?}");
    eventually("the probes' handshakes", Duration::from_secs(10), async || {
        handshakes(&instance) >= connections + probes
    })
    .await;
    assert_eq!(handshakes(&instance), connections + probes, "the calls' connection was never replaced");
    assert_eq!(try_call(&instance, &ca.pem, None).await, Ok(VerifyCode::Valid), "a new connection works");
    logged(&instance, "TLS certificate reloaded (file change)").await;
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_previous_certificate() {
    let ca = Ca::new("keyward test CA");
    let first = ca.server("keyward first", 1);
    let (instance, files) =
        tls_instance(&first, |instance, _| instance.configure("tls", "reload_interval", "\"off\"")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let client = verifier(channel(&instance, &ca.pem, None).await.unwrap(), Some(&instance.root_key));
    let (task, calls) = call_loop(client, instance.root_key.clone(), stop.clone());

    let secret_marker = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    files.write("server.key", &format!("-----BEGIN PRIVATE KEY-----\n{secret_marker}\n-----END PRIVATE KEY-----\n"));
    instance.signal("HUP");
    logged(&instance, "TLS reload failed").await;
    assert_eq!(presented(&instance, &ca.pem).await, der(&first.cert), "the previous certificate stays");
    assert!(!instance.logs().contains(secret_marker), "key material reached the log");

    let second = ca.server("keyward second", 2);
    files.write("server.crt", &second.cert);
    files.write("server.key", &second.key);
    // Without SIGHUP nothing changes (reload_interval is off).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(presented(&instance, &ca.pem).await, der(&first.cert));
    instance.signal("HUP");
    eventually("the new certificate after SIGHUP", Duration::from_secs(10), async || {
        presented(&instance, &ca.pem).await == der(&second.cert)
    })
    .await;
    let at_change = calls.load(Ordering::SeqCst);
    eventually("calls after the reload", Duration::from_secs(10), async || {
        calls.load(Ordering::SeqCst) > at_change + 10
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let failures = task.await.unwrap();
    assert!(failures.is_empty(), "calls failed during the reloads: {failures:?}");
    logged(&instance, "TLS certificate reloaded (SIGHUP)").await;
}

#[tokio::test]
async fn plaintext_off_loopback_needs_the_allow_flag_and_bad_tls_settings_stop_startup() {
    let mut instance = Instance::init();
    let (status, stderr) = serve_expecting_refusal_with(&instance, &["--dev", "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to serve plaintext gRPC on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--allow-plaintext"), "{stderr}");

    let files = Files::new(&instance);
    let ca = Ca::new("keyward test CA");
    let pair = ca.server("keyward", 1);
    let cert = files.write("server.crt", &pair.cert);
    let (_, stderr) = serve_expecting_refusal_with(&instance, &["--dev", "--tls-cert", &cert], &[]);
    assert!(stderr.contains("without its private key"), "{stderr}");
    let bad_key = files.write("bad.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let (_, stderr) =
        serve_expecting_refusal_with(&instance, &["--dev", "--tls-cert", &cert, "--tls-key", &bad_key], &[]);
    assert!(stderr.contains("bad.key") && stderr.contains("private key"), "{stderr}");
    assert!(!stderr.contains("AAAA"), "{stderr}");

    instance.listen = "0.0.0.0:0".into();
    instance.serve_args = vec!["--allow-plaintext".into()];
    instance.start().await;
    logged(&instance, "serving plaintext gRPC on a non-loopback address").await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", instance.addr().port())).unwrap();
    let mut client = verifier(channel.connect().await.unwrap(), Some(&instance.root_key));
    assert_eq!(verify(&mut client, &instance.root_key).await.unwrap().code(), VerifyCode::Valid);
    // SIGHUP without TLS: nothing to reload, and the server goes on.
    instance.signal("HUP");
    logged(&instance, "no TLS configured, nothing to reload").await;
    assert_eq!(verify(&mut client, &instance.root_key).await.unwrap().code(), VerifyCode::Valid);
    drop(client);
    instance.stop().await;

    // TLS needs no allow flag off loopback.
    instance.serve_args = files.server(&pair);
    instance.start().await;
    assert_eq!(try_call(&instance, &ca.pem, None).await, Ok(VerifyCode::Valid));
}

#[tokio::test]
async fn admin_commands_speak_tls_and_a_mapped_certificate_stands_in_for_the_key_file() {
    let ca = Ca::new("keyward test CA");
    let clients = Ca::new("clients CA");
    let mut instance = Instance::started().await;
    let (_, auditor_id) = instance.create_key("auditor", &["keyward:audit:read", "keyward:master:read"]).await;
    instance.stop().await;
    let files = Files::new(&instance);
    instance.serve_args = files.server(&ca.server("keyward", 1));
    instance.configure("tls", "client_ca", &toml_str(Path::new(&files.write("clients.crt", &clients.pem))));
    instance.configure("tls", "client_auth", "\"optional\"");
    instance.configure("tls", "identities", &format!("{{ \"spiffe://ops/auditor\" = \"{auditor_id}\" }}"));
    instance.start().await;

    let auditor = clients.client("spiffe://ops/auditor");
    let target = format!("127.0.0.1:{}", instance.addr().port());
    let ca_file = files.write("ca.crt", &ca.pem);
    let (cert, key) = (files.write("auditor.crt", &auditor.cert), files.write("auditor.key", &auditor.key));
    let tls = ["--target", &target, "--ca-cert", &ca_file];
    let mtls = [&tls[..], &["--client-cert", &cert, "--client-key", &key]].concat();

    let out = instance.keyward(&[&["audit", "checkpoint"], &mtls[..]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(checkpoint["seq"].as_u64().unwrap() >= 2, "{checkpoint}");
    let out = instance.keyward(&[&["master", "status"], &mtls[..]].concat());
    assert!(String::from_utf8_lossy(&out.stdout).contains("current master key: v1"), "{out:?}");
    // The auditor's permissions, no more.
    let out = instance.keyward(&[&["master", "rotate"], &mtls[..]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"), "{out:?}");

    // TLS without a client certificate: the key file is the credential, and it is required.
    let out = instance.keyward(&[&["master", "status"], &tls[..]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key-file is required"), "{out:?}");
    let root_key = instance.data_dir.join("root.key");
    let out = instance.keyward(&[&["master", "status", "--key-file", root_key.to_str().unwrap()], &tls[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Plaintext against the TLS port fails.
    let out = instance.keyward(&["master", "status", "--target", &target, "--key-file", root_key.to_str().unwrap()]);
    assert!(!out.status.success());
}
