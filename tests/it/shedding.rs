//! Server-wide limits: calls beyond `server.max_in_flight` are shed `RESOURCE_EXHAUSTED` at once
//! and counted, even under an open-loop flood (memory bounded, the server serving on); request
//! metadata beyond `server.max_header_list_bytes` is refused by HTTP/2.

use std::time::Instant;

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::{
    Instance,
    raw::{self, Outcome, RawRequest},
    scrape,
};

#[tokio::test]
async fn calls_beyond_max_in_flight_are_shed_at_once_counted_and_the_server_recovers() {
    let mut kw = Instance::init();
    kw.metrics = true;
    kw.log_filter = "info";
    kw.configure("server", "max_in_flight", "2");
    kw.start().await;
    let (key, _) = kw.create_key("busy", &[]).await;

    let (mut served, mut shed) = (0, 0);
    // 64 clients at once against 2 places: some are shed in the first round on any machine; a
    // few rounds make sure of it.
    for _ in 0..10 {
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(kw.root_verifier().await);
        }
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut v| {
                let key = key.clone();
                tokio::spawn(async move {
                    let mut codes = Vec::new();
                    for _ in 0..4 {
                        let r = v.verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() }).await;
                        codes.push(match r {
                            Ok(r) => {
                                assert_eq!(r.into_inner().code(), VerifyCode::Valid);
                                Code::Ok
                            }
                            Err(status) => {
                                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                                assert!(status.message().contains("server.max_in_flight"), "{status:?}");
                                Code::ResourceExhausted
                            }
                        });
                    }
                    codes
                })
            })
            .collect();
        for task in tasks {
            for code in task.await.unwrap() {
                if code == Code::Ok { served += 1 } else { shed += 1 }
            }
        }
        if shed > 0 {
            break;
        }
    }
    println!("max_in_flight 2: {served} served, {shed} shed");
    assert!(shed > 0, "no call was shed");
    assert!(served > 0, "some calls were served all along");
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid, "served again once the burst is over");

    let response = scrape::http(kw.metrics_addr().unwrap(), "GET", "/metrics").await;
    let metrics = scrape::parse(&response.body);
    assert_eq!(metrics.value("keyward_rpc_shed_total", &[]), f64::from(shed));
    let verify_shed =
        [("service", "keyward.v1.VerifyService"), ("method", "VerifyKey"), ("code", "RESOURCE_EXHAUSTED")];
    assert_eq!(metrics.value("keyward_rpc_requests_total", &verify_shed), f64::from(shed));
}

#[tokio::test]
async fn metadata_over_max_header_list_bytes_is_refused_and_the_connection_still_serves() {
    let mut kw = Instance::init();
    kw.configure("server", "max_header_list_bytes", "4096");
    kw.start().await;
    let (key, _) = kw.create_key("meta", &[]).await;
    let addr = kw.addr();
    let mut message = Vec::new();
    assert!(key.len() < 128, "a one-byte length");
    message.push(0x0a);
    message.push(key.len() as u8);
    message.extend(key.as_bytes());
    let verify = |extra: usize| {
        RawRequest::new("/keyward.v1.VerifyService/VerifyKey", raw::frame(&message))
            .header("authorization", format!("Bearer {}", kw.root_key))
            .header("x-extra", vec![b'x'; extra])
    };
    let send = raw::connect(addr).await;
    assert_eq!(raw::call(&send, addr, verify(3000)).await.code(), Some(0), "metadata within the limit");
    let refused = raw::call(&send, addr, verify(5000)).await;
    assert!(
        matches!(&refused, Outcome::Http(431)) || matches!(&refused, Outcome::Reset(r) if r == "REFUSED_STREAM"),
        "{refused:?}"
    );
    assert_eq!(raw::call(&send, addr, verify(10)).await.code(), Some(0), "the same connection serves on");
}

#[tokio::test]
async fn an_open_loop_flood_gets_valid_or_fast_resource_exhausted_with_bounded_memory_and_the_server_serves_on() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.configure("server", "max_in_flight", "4");
    kw.start().await;
    let (key, _) = kw.create_key("flood", &[]).await;
    let pid = kw.pid();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(kw.root_verifier().await);
    }
    // Warm every connection, then take the server's memory.
    for c in &mut clients {
        let r = c.verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(r.into_inner().code(), VerifyCode::Valid);
    }
    let rss_before = vm_rss_bytes(pid).expect("the server's VmRSS");

    // Open loop: every call is started at once, none waits for another's answer.
    let start = Instant::now();
    let calls: Vec<_> = (0..800)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let key = key.clone();
            tokio::spawn(async move {
                let r = client.verify_key(proto::VerifyKeyRequest { key, ..Default::default() }).await;
                let code = match r {
                    Ok(r) => {
                        assert_eq!(r.into_inner().code(), VerifyCode::Valid);
                        Code::Ok
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "only VALID or shed: {status:?}");
                        Code::ResourceExhausted
                    }
                };
                (code, start.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let last_valid = answers.iter().filter(|(c, _)| *c == Code::Ok).map(|(_, at)| *at).max().expect("some VALID");
    let shed = answers.iter().filter(|(c, _)| *c == Code::ResourceExhausted).count();
    let shed_while_serving = answers.iter().filter(|(c, at)| *c == Code::ResourceExhausted && *at < last_valid).count();
    println!(
        "800 calls, max_in_flight 4: {} VALID, {shed} shed, {shed_while_serving} of them before the last VALID",
        800 - shed
    );
    assert!(shed > 0, "the flood was shed");
    assert!(shed_while_serving > 0, "shed answers came back while accepted calls were still being served");

    let rss_after = vm_rss_bytes(pid).expect("the server's VmRSS");
    println!("server VmRSS {} KiB before, {} KiB after", rss_before / 1024, rss_after / 1024);
    assert!(rss_after < rss_before + 64 * 1024 * 1024, "memory stays bounded: {rss_before} -> {rss_after} bytes");
    assert!(kw.is_running(), "no crash");
    assert_eq!(kw.pid(), pid);
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid, "served normally after the flood");
}

/// `VmRSS` of process `pid` in bytes (Linux `/proc`).
fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim();
    Some(kib.parse::<u64>().ok()? * 1024)
}
