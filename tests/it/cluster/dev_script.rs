//! `scripts/cluster-dev.sh` as a newcomer uses it: it starts 3 etcd members and 3 nodes, prints
//! the commands to try, and those exact commands create a key on n1, verify it on n2, revoke it
//! on n3 and see n1 refuse it; Ctrl-C stops everything. (The script's ports and binary are
//! overridden so that it runs beside other tests and needs no release build.)

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::etcd::free_ports;
use crate::common::{BIN, require_tool};

/// The script's process; SIGKILLed with its process group if the test fails half-way.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Runs a shell snippet with grpcurl on PATH; returns its stdout, failing on a non-zero exit.
fn sh(snippet: &str, path: &str) -> String {
    let out = Command::new("bash").args(["-euo", "pipefail", "-c", snippet]).env("PATH", path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{snippet}\nfailed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn the_printed_commands_create_verify_revoke_and_see_the_key_refused_and_ctrl_c_stops_it_all() {
    let grpcurl = require_tool("grpcurl", "./scripts/install-deps.sh");
    let path = format!("{}:{}", grpcurl.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(9);
    let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut command = Command::new("bash");
    command
        .arg(format!("{repo}/scripts/cluster-dev.sh"))
        .env("KEYWARD_CLUSTER_DIR", dir.path())
        .env("KEYWARD_BIN", BIN)
        .env("KEYWARD_CLUSTER_ETCD_PORTS", list(&ports[0..3]))
        .env("KEYWARD_CLUSTER_PEER_PORTS", list(&ports[3..6]))
        .env("KEYWARD_CLUSTER_NODE_PORTS", list(&ports[6..9]))
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut script = Script(command.spawn().expect("running scripts/cluster-dev.sh"));

    // What it prints once every node answers: the addresses, then the commands to try.
    let mut printed = Vec::new();
    let mut lines = BufReader::new(script.0.stdout.take().unwrap()).lines();
    let mut commands_seen = 0;
    while commands_seen < 4 {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the script stopped before printing its commands:\n{}", printed.join("\n")))
            .unwrap();
        if line.contains("keyward.v1.") {
            commands_seen += 1;
        }
        printed.push(line);
    }
    let text = printed.join("\n");
    for (i, port) in ports[6..9].iter().enumerate() {
        assert!(text.contains(&format!("node n{}   127.0.0.1:{port}", i + 1)), "{text}");
    }
    let start = printed.iter().position(|l| l.starts_with("Create a key on n1")).expect("the commands' heading") + 1;
    let commands: Vec<&str> = printed[start..].iter().map(|l| l.trim_start()).collect();
    // The commands are shell lines joined by trailing backslashes; the last one is the
    // verification on n1 after the revocation, run below on its own.
    let joined = commands.join("\n");
    let last_start = joined.rfind("grpcurl ").unwrap();
    let (setup, last) = joined.split_at(last_start);

    let created_to_revoked = sh(&format!("{setup}\necho \"KEY=$KEY\"\necho \"KEY_ID=$KEY_ID\""), &path);
    assert!(created_to_revoked.contains("\"code\": \"VERIFY_CODE_VALID\""), "VerifyKey on n2: {created_to_revoked}");
    assert!(created_to_revoked.contains("\"state\": \"KEY_STATE_REVOKED\""), "RevokeKey on n3: {created_to_revoked}");
    let value = |name: &str| {
        created_to_revoked
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("the printed commands set no {name}: {created_to_revoked}"))
            .to_owned()
    };
    let (key, key_id) = (value("KEY"), value("KEY_ID"));
    assert!(key.starts_with("kw_") && !key_id.is_empty());

    // The last printed command on n1: REVOKED (revocation reaches every node within 1 s, so a
    // VALID may only come from a call made within that second).
    let root = std::fs::read_to_string(dir.path().join("data/root.key")).unwrap();
    let last = format!("ROOT={}\nKEY={key}\n{last}", root.trim());
    let revoked_at = Instant::now();
    loop {
        let answer = sh(&last, &path);
        if answer.contains("\"code\": \"VERIFY_CODE_REVOKED\"") {
            break;
        }
        assert!(answer.contains("VERIFY_CODE_VALID"), "{answer}");
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "n1 still says VALID 1 s after the revocation");
    }

    // Ctrl-C stops every member and node.
    unsafe { libc::kill(script.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while script.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the script did not stop within 30 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = ports.iter().filter(|p| listening(**p)).collect::<Vec<_>>();
    assert!(still.is_empty(), "still listening after Ctrl-C: {still:?}");
}
