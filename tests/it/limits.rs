//! Rate limits and quotas under load, on a real server: accuracy of a limit against a burst,
//! exact spending by concurrent verifiers, and what a crash may and may not do to a quota. And
//! request deadlines: a call past its deadline answers DEADLINE_EXCEEDED.

use std::time::{Duration, Instant};

use keyward::proto::{self, VerifyCode};
use tonic::Code;

use crate::common::{
    Instance,
    raw::{self, RawRequest},
};

/// Fires `calls` verifications of `key` from `workers` concurrent clients; returns the count of
/// each code.
async fn burst(kw: &Instance, key: &str, calls: usize, workers: usize) -> (usize, usize, usize) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut v = kw.root_verifier().await;
        let key = key.to_owned();
        let share = calls / workers + usize::from(w < calls % workers);
        tasks.push(tokio::spawn(async move {
            let (mut valid, mut limited, mut exceeded) = (0, 0, 0);
            for _ in 0..share {
                let r = v
                    .verify_key(proto::VerifyKeyRequest { key: key.clone(), ..Default::default() })
                    .await
                    .expect("VerifyKey")
                    .into_inner();
                match r.code() {
                    VerifyCode::Valid => valid += 1,
                    VerifyCode::RateLimited => limited += 1,
                    VerifyCode::QuotaExceeded => exceeded += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (valid, limited, exceeded)
        }));
    }
    let mut total = (0, 0, 0);
    for t in tasks {
        let (a, b, c) = t.await.unwrap();
        total = (total.0 + a, total.1 + b, total.2 + c);
    }
    total
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().position(|l| l.contains("panicked at")).unwrap_or(lines.len().saturating_sub(20));
    lines[at.saturating_sub(5)..(at + 120).min(lines.len())].join("\n")
}

#[tokio::test]
async fn a_burst_of_ten_times_the_limit_gets_the_limit_within_the_documented_tolerance() {
    let kw = Instance::started_quiet().await;
    const N: u32 = 50;
    let created = kw
        .root_keys()
        .await
        .create_key(proto::CreateKeyRequest {
            name: "limited".into(),
            rate_limit: Some(proto::RateLimit {
                limit: N,
                window: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let (valid, limited, _) = burst(&kw, &created.key, 10 * N as usize, 16).await;
    let elapsed = started.elapsed();
    // GCRA: the full burst of N at once, then one more every window/N while the burst lasts.
    let tolerance = (f64::from(N) * elapsed.as_secs_f64()).ceil() as usize + 1;
    println!("rate limit {N}/s: {valid} VALID, {limited} RATE_LIMITED of {} calls in {elapsed:?}", 10 * N);
    assert_eq!(valid + limited, 10 * N as usize);
    assert!(valid >= N as usize, "at least the burst passes: {valid}");
    assert!(valid <= N as usize + tolerance, "{valid} VALID > {N} + {tolerance} for a burst of {elapsed:?}");
}

#[tokio::test]
async fn concurrent_verifiers_spend_a_quota_exactly_and_a_crash_never_over_spends() {
    let mut kw = Instance::started_quiet().await;
    let mut admin = kw.root_keys().await;
    let create = |remaining| proto::CreateKeyRequest {
        name: "metered".into(),
        remaining: Some(remaining),
        ..Default::default()
    };
    let exact = admin.create_key(create(1000)).await.unwrap().into_inner();
    let (valid, _, exceeded) = burst(&kw, &exact.key, 1300, 64).await;
    assert_eq!((valid, exceeded), (1000, 300), "64 verifiers, 1000 uses");

    // A second key, part spent, when the server is killed without warning.
    let partial = admin.create_key(create(1000)).await.unwrap().into_inner();
    let (spent, _, _) = burst(&kw, &partial.key, 300, 8).await;
    assert_eq!(spent, 300);
    kw.kill();
    kw.start().await;
    let mut admin = kw.root_keys().await;
    let remaining = |info: proto::KeyInfo| info.remaining.expect("a quota");
    let get = |id: &str| proto::GetKeyRequest { key_id: id.to_owned() };
    let exact_id = exact.info.unwrap().key_id;
    let partial_id = partial.info.unwrap().key_id;
    assert_eq!(remaining(admin.get_key(get(&exact_id)).await.unwrap().into_inner()), 0);
    let left = remaining(admin.get_key(get(&partial_id)).await.unwrap().into_inner());
    // Documented loss window: at most the unspent lease, ≤ quota_max_lease (100) uses per key.
    println!("after SIGKILL: {left} uses left of 700 (lost {})", 700 - left.min(700));
    assert!(left <= 700, "over-spent: {left} > 700 after a crash");
    assert!(left >= 600, "lost {} uses, more than the documented 100", 700 - left);
    let (valid, _, exceeded) = burst(&kw, &partial.key, left as usize + 5, 4).await;
    assert_eq!((valid, exceeded), (left as usize, 5), "what is left is spendable, exactly");

    // A clean stop returns the lease: nothing is lost.
    let clean = admin.create_key(create(500)).await.unwrap().into_inner();
    let (spent, _, _) = burst(&kw, &clean.key, 123, 4).await;
    assert_eq!(spent, 123);
    let status = kw.stop().await;
    assert!(status.success(), "{status}; log:\n{}", tail(&kw.logs()));
    kw.start().await;
    let mut admin = kw.root_keys().await;
    let clean_id = clean.info.unwrap().key_id;
    assert_eq!(remaining(admin.get_key(get(&clean_id)).await.unwrap().into_inner()), 377);
}

#[tokio::test]
async fn usage_facts_are_kept_across_a_clean_restart() {
    let mut kw = Instance::started_quiet().await;
    let (key, id) = kw.create_key("used", &[]).await;
    let mut v = kw.root_verifier().await;
    for ip in ["10.0.0.1", "2001:db8::5"] {
        let r = v
            .verify_key(proto::VerifyKeyRequest { key: key.clone(), client_ip: ip.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.code(), VerifyCode::Valid);
    }
    let r = v
        .verify_key(proto::VerifyKeyRequest {
            key: key.clone(),
            required_scopes: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.code(), VerifyCode::InsufficientScope);
    let usage = |info: proto::KeyInfo| info.usage.expect("usage");
    let before =
        usage(kw.root_keys().await.get_key(proto::GetKeyRequest { key_id: id.clone() }).await.unwrap().into_inner());
    assert_eq!((before.valid_count, before.rejected_count), (2, 1));
    assert_eq!(before.last_used_ip, "2001:db8::5");
    assert!(kw.stop().await.success());
    kw.start().await;
    let after = usage(kw.root_keys().await.get_key(proto::GetKeyRequest { key_id: id }).await.unwrap().into_inner());
    assert_eq!(after, before);
}

/// A call that has to wait (its client never finishes sending the request) is answered
/// DEADLINE_EXCEEDED at its deadline: the caller's `grpc-timeout` when shorter than the server's
/// `request_timeout_ms`, else the server's. Never CANCELLED: nobody cancelled it.
#[tokio::test]
async fn a_call_past_its_deadline_answers_deadline_exceeded_not_cancelled() {
    let mut kw = Instance::init();
    // Far from the client deadline below, so that a loaded machine cannot blur the two.
    kw.configure("server", "request_timeout_ms", "3000");
    kw.start().await;
    let addr = kw.addr();
    let send = raw::connect(addr).await;
    let stalled = |timeout: Option<&str>| {
        let mut request = RawRequest::new("/keyward.v1.VerifyService/VerifyKey", Vec::new());
        if let Some(timeout) = timeout {
            request = request.header("grpc-timeout", timeout);
        }
        request
    };

    let started = Instant::now();
    let (code, message) = raw::call_stalled(&send, addr, stalled(Some("200m"))).await;
    let waited = started.elapsed();
    assert_eq!(code, Some(Code::DeadlineExceeded as i32), "{message}");
    assert!(message.contains("deadline"), "{message}");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(2500), "answered after {waited:?}");

    let started = Instant::now();
    let (code, message) = raw::call_stalled(&send, addr, stalled(None)).await;
    let waited = started.elapsed();
    assert_eq!(code, Some(Code::DeadlineExceeded as i32), "the server's own timeout: {message}");
    assert!(waited >= Duration::from_millis(3000) && waited < Duration::from_secs(8), "answered after {waited:?}");

    let (code, message) = raw::call_stalled(&send, addr, stalled(Some("60S"))).await;
    assert_eq!(code, Some(Code::DeadlineExceeded as i32), "a longer grpc-timeout than the server's: {message}");

    // A tonic client's own timeout header, on a call that does finish: answered normally.
    let (key, _) = kw.create_key("in-time", &[]).await;
    let mut request = tonic::Request::new(proto::VerifyKeyRequest { key, ..Default::default() });
    request.set_timeout(Duration::from_secs(5));
    let answer = kw.root_verifier().await.verify_key(request).await.unwrap().into_inner();
    assert_eq!(answer.code(), VerifyCode::Valid);
}
