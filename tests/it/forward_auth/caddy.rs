//! Real Caddy (`forward_auth`) running deploy/caddy/Caddyfile in front of the echo upstream,
//! asking a real keyward.

use std::{net::SocketAddr, process::Command};

use super::{Gateway, Keys, echo_upstream, free_port, gateway_matrix, keyward_with_http, render};
use crate::common::require_tool;

/// Caddy in the foreground with deploy/caddy/Caddyfile; its data and configuration directories
/// in `dir`. `keyward` is keyward's forward-auth listener as Caddy dials it (`127.0.0.1:PORT` or
/// `unix//path`).
pub async fn start_caddy(dir: &std::path::Path, keyward: &str, app: SocketAddr, gateway_key: &str) -> Gateway {
    let caddy = require_tool("caddy", "sudo apt-get install caddy (or run ./scripts/install-deps.sh)");
    let port = free_port();
    let caddyfile = render(
        "deploy/caddy/Caddyfile",
        &[
            ("@SITE@", &format!("http://:{port}")),
            ("@BIND@", "127.0.0.1"),
            ("@KEYWARD@", keyward),
            ("@APP@", &app.to_string()),
            ("@GATEWAY_KEY@", gateway_key),
        ],
    );
    let file = dir.join("Caddyfile");
    std::fs::write(&file, caddyfile).unwrap();
    let mut command = Command::new(caddy);
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("HOME", dir);
    Gateway::start("caddy", command, dir.join("caddy.out"), format!("127.0.0.1:{port}").parse().unwrap()).await
}

#[tokio::test]
async fn caddy_forward_auth_allows_refuses_and_fails_closed_when_keyward_stops() {
    let mut kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let app = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let caddy = start_caddy(dir.path(), &kw.http_addr().to_string(), app, &keys.gateway).await;

    gateway_matrix(&kw, &keys, &caddy).await;

    kw.stop().await;
    let refused = caddy.get("/orders/1", &[("x-api-key", &keys.limited)]).await;
    assert_eq!(refused.status, 502, "Caddy fails closed with 502 when keyward is unreachable: {refused:?}");
}

#[tokio::test]
async fn caddy_passes_signed_requests_keyward_verifies_from_the_forwarded_headers() {
    let kw = keyward_with_http().await;
    let keys = Keys::create(&kw).await;
    let app = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_caddy(dir.path(), &kw.http_addr().to_string(), app, &keys.gateway).await;
    super::signed::signed_requests(&kw, &gateway).await;
}
