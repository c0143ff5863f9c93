//! The forward-auth listener with keyward's TLS configured: TLS (ALPN http/1.1) with the gRPC
//! listener's certificate, a gateway authenticated by its mapped client certificate instead of a
//! key, and plaintext off loopback refused without TLS.

use std::{path::Path, sync::Arc};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    },
};

use super::{Reply, exchange};
use crate::{
    common::{Instance, serve_expecting_refusal_with},
    tls::{Ca, Pair},
};

/// A TLS client trusting `ca` (and presenting `client`), offering HTTP/1.1.
fn connector(ca: &str, client: Option<&Pair>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let chain = vec![CertificateDer::from_pem_slice(pair.cert.as_bytes()).unwrap()];
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap()).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn authorize_over_tls(kw: &Instance, ca: &str, client: Option<&Pair>, headers: &[(&str, &str)]) -> Reply {
    let tcp = tokio::net::TcpStream::connect(kw.http_addr()).await.unwrap();
    let tls =
        connector(ca, client).connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("a TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    exchange(tls, "GET", "/v1/authorize", headers, None).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    format!("{:?}", path.to_str().unwrap())
}

#[tokio::test]
async fn forward_auth_serves_tls_and_takes_a_mapped_gateway_certificate_for_its_key() {
    let ca = Ca::new("keyward test CA");
    let gateways = Ca::new("gateways CA");
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.start().await;
    let (_, gateway_id) = kw.create_key("nginx", &["keyward:verify"]).await;
    let (client_key, client_id) = kw.create_key("orders-client", &["orders:read"]).await;
    kw.stop().await;

    let dir = kw.data_dir.with_file_name("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let server = ca.server("keyward", 1);
    kw.configure("tls", "cert", &write(&dir, "server.crt", &server.cert));
    kw.configure("tls", "key", &write(&dir, "server.key", &server.key));
    kw.configure("tls", "client_ca", &write(&dir, "gateways.crt", &gateways.pem));
    kw.configure("tls", "client_auth", "\"optional\"");
    kw.configure("tls", "identities", &format!("{{ \"spiffe://edge/nginx\" = \"{gateway_id}\" }}"));
    kw.http_listen = Some("127.0.0.1:0".into());
    kw.start().await;

    let client = [("x-api-key", client_key.as_str())];
    let mapped = gateways.client("spiffe://edge/nginx");
    let allowed = authorize_over_tls(&kw, &ca.pem, Some(&mapped), &client).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-keyward-key-id"), Some(client_id.as_str()));

    let unmapped = gateways.client("spiffe://edge/unknown");
    let refused = authorize_over_tls(&kw, &ca.pem, Some(&unmapped), &client).await;
    assert_eq!((refused.status, refused.error()), (401, "gateway_unauthenticated".into()), "{refused:?}");
    let refused = authorize_over_tls(&kw, &ca.pem, None, &client).await;
    assert_eq!((refused.status, refused.error()), (401, "gateway_unauthenticated".into()), "{refused:?}");
    // A key header, when present, decides alone.
    let refused =
        authorize_over_tls(&kw, &ca.pem, Some(&mapped), &[client[0], ("x-keyward-gateway-key", "kw_bad")]).await;
    assert_eq!(refused.status, 401, "{refused:?}");

    // No plaintext on the TLS listener.
    let mut tcp = tokio::net::TcpStream::connect(kw.http_addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/"), "a plaintext request got an HTTP answer");
}

#[tokio::test]
async fn plaintext_forward_auth_off_loopback_is_refused_unless_allowed() {
    let kw = Instance::init();
    let (status, stderr) =
        serve_expecting_refusal_with(&kw, &["--dev", "--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"], &[]);
    assert!(!status.success());
    assert!(stderr.contains("refusing to serve plaintext HTTP forward-auth on 0.0.0.0:0"), "{stderr}");
}
