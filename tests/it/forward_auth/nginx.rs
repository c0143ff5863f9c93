//! Real nginx (`auth_request`) running deploy/nginx/keyward.conf in front of the echo upstream,
//! asking a real keyward.

use std::{net::SocketAddr, process::Command};

use super::{Gateway, Keys, echo_upstream, free_port, gateway_matrix, keyward_with_http, render};
use crate::common::require_tool;

/// nginx in the foreground with deploy/nginx/keyward.conf inside a minimal main configuration
/// whose pid, logs and temporary files are in `dir`. `keyward` is the upstream server of
/// keyward's forward-auth listener (`127.0.0.1:PORT` or `unix:/path`).
pub async fn start_nginx(dir: &std::path::Path, keyward: &str, app: SocketAddr, gateway_key: &str) -> Gateway {
    let nginx = require_tool_sbin("nginx");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let site = render(
        "deploy/nginx/keyward.conf",
        &[
            ("@LISTEN@", &addr.to_string()),
            ("@KEYWARD@", keyward),
            ("@APP@", &app.to_string()),
            ("@GATEWAY_KEY@", gateway_key),
        ],
    );
    std::fs::write(dir.join("keyward.conf"), site).unwrap();
    let d = dir.display();
    // `user root` matters only when the tests run as root: the workers then reach a Unix socket
    // of mode 0660 owned by the same user as keyward (and the test's private temporary files).
    let main = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/keyward.conf;\n}}\n"
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let mut command = Command::new(nginx);
    command.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf).args(["-g", "daemon off;"]);
    Gateway::start("nginx", command, dir.join("nginx.out"), addr).await
}

/// nginx is in /usr/sbin, which a non-root PATH may lack.
fn require_tool_sbin(tool: &str) -> std::path::PathBuf {
    let sbin = std::path::Path::new("/usr/sbin").join(tool);
    if sbin.is_file() {
        return sbin;
    }
    require_tool(tool, "sudo apt-get install nginx (or run ./scripts/install-deps.sh)")
}

#[tokio::test]
async fn nginx_auth_request_allows_refuses_and_fails_closed_when_keyward_stops() {
    let mut kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let app = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let nginx = start_nginx(dir.path(), &kw.http_addr().to_string(), app, &keys.gateway).await;

    gateway_matrix(&kw, &keys, &nginx).await;

    // The client is told the uses left on a key with a quota.
    let metered = super::create_metered(&kw, 5).await;
    let answered = nginx.get("/orders/1", &[("x-api-key", &metered)]).await;
    assert_eq!(answered.status, 200, "{answered:?}");
    assert_eq!(answered.header("x-ratelimit-remaining"), Some("4"), "{answered:?}");

    kw.stop().await;
    let refused = nginx.get("/orders/1", &[("x-api-key", &keys.limited)]).await;
    assert_eq!((refused.status, refused.error()), (503, "keyward_unavailable".into()), "fails closed: {refused:?}");
}

#[tokio::test]
async fn nginx_with_a_gateway_key_keyward_refuses_lets_nothing_through() {
    let kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let app = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (reader, _) = kw.create_key("not-a-gateway", &["keyward:keys:read"]).await;
    let nginx = start_nginx(dir.path(), &kw.http_addr().to_string(), app, &reader).await;
    let refused = nginx.get("/orders/1", &[("x-api-key", &keys.client)]).await;
    assert_eq!((refused.status, refused.error()), (403, "gateway_forbidden".into()), "{refused:?}");
}

#[tokio::test]
async fn nginx_passes_signed_requests_keyward_verifies_from_the_forwarded_headers() {
    let kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let app = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_nginx(dir.path(), &kw.http_addr().to_string(), app, &keys.gateway).await;
    super::signed::signed_requests(&kw, &gateway).await;
}
