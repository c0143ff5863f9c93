//! Cluster mode against an etcd that speaks only TLS and wants client certificates: `init` and a
//! node reach it with the CA and the node's certificate, and without the certificate etcd is not
//! reachable.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keyward::proto::VerifyCode;

use crate::{
    common::{
        Instance,
        cluster::init,
        etcd::{free_ports, require_etcd},
    },
    tls::Ca,
};

/// One etcd member serving clients on `https://127.0.0.1:port` with `--client-cert-auth`.
struct TlsEtcd {
    child: Child,
    url: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_etcd(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> TlsEtcd {
    let ports = free_ports(2);
    let (client, peer) = (format!("https://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new(require_etcd())
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("m0={peer}")])
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .arg("--trusted-ca-file")
        .arg(ca)
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting etcd");
    TlsEtcd { child, url: client }
}

#[tokio::test]
async fn a_node_reaches_an_etcd_that_wants_tls_and_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new("etcd test CA");
    let (server, client) = (ca.server("etcd", 1), ca.client("spiffe://keyward/n1"));
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca.pem);
    let (server_cert, server_key) = (write("etcd.pem", &server.cert), write("etcd-key.pem", &server.key));
    let (client_cert, client_key) = (write("node.pem", &client.cert), write("node-key.pem", &client.key));
    let etcd = start_tls_etcd(dir, &ca_file, &server_cert, &server_key);

    let data_dir = dir.join("data");
    let ca_arg = ca_file.to_str().unwrap();
    let tls = ["--etcd-ca-file", ca_arg, "--etcd-cert-file", client_cert.to_str().unwrap()];
    let with = [&tls[..], &["--etcd-key-file", client_key.to_str().unwrap()]].concat();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = init(&data_dir, &etcd.url, &with);
        if out.status.success() {
            break;
        }
        let _ = std::fs::remove_dir_all(&data_dir);
        assert!(
            Instant::now() < deadline,
            "keyward init over TLS failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without a client certificate etcd does not let keyward in (another prefix, which holds
    // no cluster: only the missing certificate stands in the way).
    let without = init(&dir.join("refused"), &etcd.url, &["--etcd-ca-file", ca_arg, "--etcd-prefix", "/other/"]);
    assert!(!without.status.success(), "init without a client certificate succeeded");
    let why = String::from_utf8_lossy(&without.stderr);
    assert!(why.contains("etcd"), "the refusal names etcd: {why}");

    // The node finds the endpoints and the TLS files in the configuration init wrote.
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut node = Instance::sharing(data_dir, run_dir, dir.join("n1.log"));
    node.log_filter = "info";
    node.serve_args = vec!["--node-id".into(), "n1".into()];
    node.start().await;
    let (key, _) = node.create_key("over-tls", &[]).await;
    assert_eq!(node.code(&key, &[]).await, VerifyCode::Valid);
    drop(etcd);
}
