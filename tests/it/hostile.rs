//! Hostile input: 10,000 malformed or abusive requests, as raw HTTP/2 (no tonic client to tidy
//! them up), across keyward's RPCs and health. None is answered `INTERNAL`, nothing panics,
//! and the server serves normally afterwards.

use std::{collections::BTreeMap, sync::Arc};

use keyward::proto::VerifyCode;

use crate::common::{
    Instance,
    raw::{self, Outcome, RawRequest},
};

const REQUESTS: usize = 10_000;
const WORKERS: usize = 16;

const PATHS: [&str; 13] = [
    "/keyward.v1.VerifyService/VerifyKey",
    "/keyward.v1.KeyService/CreateKey",
    "/keyward.v1.KeyService/GetKey",
    "/keyward.v1.KeyService/ListKeys",
    "/keyward.v1.KeyService/UpdateKey",
    "/keyward.v1.KeyService/RevokeKey",
    "/keyward.v1.KeyService/RotateKey",
    "/keyward.v1.AuditService/QueryEvents",
    "/keyward.v1.AuditService/KeyUsage",
    "/keyward.v1.AuditService/QueryUsage",
    "/keyward.v1.MasterKeyService/GetMasterKeyStatus",
    "/grpc.health.v1.Health/Check",
    "/keyward.v1.KeyService/NoSuchMethod",
];

/// xorshift64*: reproducible noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn tag(field: u64, wire_type: u64, out: &mut Vec<u8>) {
    varint(field << 3 | wire_type, out);
}

fn length_delimited(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    tag(field, 2, out);
    varint(bytes.len() as u64, out);
    out.extend(bytes);
}

/// The kinds of hostile request, each built for a path.
const KINDS: [&str; 16] = [
    "random bytes in a gRPC frame",
    "random bytes, no framing",
    "truncated frame",
    "declared length over max_message_bytes",
    "message over max_message_bytes",
    "bad UTF-8 in string field 1",
    "invalid enum numbers",
    "deeply nested groups",
    "deeply nested unknown messages",
    "one huge metadata value",
    "many metadata entries",
    "wrong content-type",
    "compressed flag without grpc-encoding",
    "unsupported grpc-encoding",
    "non-UTF-8 authorization and garbage grpc-timeout",
    "empty body",
];

/// Enum fields out of range: `ListKeysRequest.state`, `QueryUsageRequest.code`; elsewhere
/// varints where strings belong.
fn bad_enums(path: &str, noise: &mut Noise) -> Vec<u8> {
    let field = match path {
        "/keyward.v1.KeyService/ListKeys" => 3,
        "/keyward.v1.AuditService/QueryUsage" => 2,
        _ => 1,
    };
    let mut message = Vec::new();
    tag(field, 0, &mut message);
    varint([99, u64::MAX, 1 << 31, 0xffff_ffff][noise.below(4)], &mut message);
    message
}

/// `kind` of request to `path`; `bearer` authenticates it (see the test for which key).
fn hostile(kind: usize, path: &str, bearer: &str, noise: &mut Noise) -> RawRequest {
    let auth = format!("Bearer {bearer}");
    let body = match kind {
        0 => {
            let n = noise.below(200);
            raw::frame(&noise.bytes(n))
        }
        1 => {
            let n = 1 + noise.below(100);
            noise.bytes(n)
        }
        2 => {
            let mut framed = raw::frame(&noise.bytes(100));
            framed.truncate(5 + noise.below(100));
            framed
        }
        3 => {
            let mut framed = vec![0];
            framed.extend((10_000_000u32 + noise.next() as u32 % 1000).to_be_bytes());
            framed.extend(noise.bytes(100));
            framed
        }
        4 => raw::frame(&vec![b'a'; 64 * 1024 + 1 + noise.below(1000)]),
        5 => {
            let mut message = Vec::new();
            let mut text = b"kw_".to_vec();
            text.extend([0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]);
            let n = noise.below(8);
            text.extend(noise.bytes(n));
            length_delimited(1, &text, &mut message);
            raw::frame(&message)
        }
        6 => raw::frame(&bad_enums(path, noise)),
        7 => {
            // Start-group tags 1000 deep, never closed, on an unknown field.
            let mut message = Vec::new();
            for _ in 0..1000 {
                tag(99, 3, &mut message);
            }
            raw::frame(&message)
        }
        8 => {
            // An unknown length-delimited field holding itself 500 deep.
            let mut inner = Vec::new();
            for _ in 0..500 {
                let mut outer = Vec::new();
                length_delimited(99, &inner, &mut outer);
                inner = outer;
            }
            raw::frame(&inner)
        }
        15 => Vec::new(),
        _ => raw::frame(&[]),
    };
    let request = RawRequest::new(path, body);
    match kind {
        // Just over max_header_list_bytes (16 KiB) mostly; now and then far over, which makes
        // HTTP/2 close the connection.
        9 => {
            let far = if noise.below(25) == 0 { 64_000 } else { 0 };
            request.header("authorization", auth).header("x-huge", vec![b'h'; 17_000 + far + noise.below(8_000)])
        }
        10 => (0..200 + noise.below(100) + if noise.below(25) == 0 { 1000 } else { 0 })
            .fold(request.header("authorization", auth), |r, i| r.header(&format!("x-m-{i}"), vec![b'v'; 64])),
        11 => request
            .header("authorization", auth)
            .header("content-type", ["application/json", "text/plain", "application/grpc+json"][noise.below(3)]),
        12 => {
            let mut request = request.header("authorization", auth);
            request.body = raw::frame(&noise.bytes(20));
            request.body[0] = [1, 2, 0xff][noise.below(3)];
            request
        }
        13 => {
            request.header("authorization", auth).header("grpc-encoding", ["gzip", "br", "x-nonsense"][noise.below(3)])
        }
        14 => request
            .header("authorization", [b"Bearer \xff\xfe".to_vec(), b"\x80".to_vec()][noise.below(2)].clone())
            .header("grpc-timeout", ["99999999999H", "-1S", "xS", ""][noise.below(4)]),
        _ => request.header("authorization", auth),
    }
}

#[tokio::test]
async fn ten_thousand_hostile_requests_get_no_internal_no_panic_and_leave_the_server_healthy() {
    let mut kw = Instance::started_quiet().await;
    // Hostile bodies are sent with a verify-only key: a body that happens to decode as a valid
    // mutation is refused PERMISSION_DENIED instead of changing anything.
    let (gateway, _) = kw.create_key("gateway", &["keyward:verify"]).await;
    let addr = kw.addr();
    // Out-of-range enums go with the root key to the read-only queries that have them, so that
    // they reach keyward's own checks.
    let keys = Arc::new((gateway, kw.root_key.clone()));
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut noise = Noise(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
            let mut send = raw::connect(addr).await;
            let mut seen: Vec<(usize, Outcome)> = Vec::new();
            for i in (worker..REQUESTS).step_by(WORKERS) {
                // Every kind on every connection, in a different order on each.
                let kind = (i / WORKERS + worker) % KINDS.len();
                // Real oversized messages are sent less often: they are 64 KiB each.
                let kind = if kind == 4 && i % 5 != 4 { 3 } else { kind };
                let path = PATHS[noise.below(PATHS.len())];
                let bearer = if kind == 6 { &keys.1 } else { &keys.0 };
                let outcome = raw::call(&send, addr, hostile(kind, path, bearer, &mut noise)).await;
                if matches!(&outcome, Outcome::Reset(_)) {
                    // HTTP/2 closes a connection after some header blocks it refuses.
                    send = raw::connect(addr).await;
                }
                let outcome = match outcome {
                    // Only the code matters here.
                    Outcome::Grpc(code, _) => Outcome::Grpc(code, Vec::new()),
                    other => other,
                };
                seen.push((kind, outcome));
            }
            seen
        }));
    }
    let mut by_kind: BTreeMap<usize, BTreeMap<Outcome, usize>> = BTreeMap::new();
    for task in tasks {
        for (kind, outcome) in task.await.unwrap() {
            *by_kind.entry(kind).or_default().entry(outcome).or_default() += 1;
        }
    }
    let total: usize = by_kind.values().flat_map(|m| m.values()).sum();
    assert_eq!(total, REQUESTS);
    let mut report = String::new();
    for (kind, outcomes) in &by_kind {
        report.push_str(&format!("{:<48} {outcomes:?}\n", KINDS[*kind]));
    }
    println!("{report}");

    let internal: usize =
        by_kind.values().flat_map(|m| m.iter()).filter(|(o, _)| o.code() == Some(13)).map(|(_, n)| n).sum();
    assert_eq!(internal, 0, "INTERNAL answers:\n{report}");
    // The only answers that are not gRPC statuses: metadata over max_header_list_bytes is
    // refused by HTTP/2 itself (HTTP 431, then the stream reset as REFUSED_STREAM).
    for (kind, outcomes) in &by_kind {
        for outcome in outcomes.keys() {
            let metadata_refused = matches!(outcome, Outcome::Http(431) | Outcome::Reset(_));
            assert!(
                outcome.code().is_some() || ((*kind == 9 || *kind == 10) && metadata_refused),
                "{}: {outcome:?}\n{report}",
                KINDS[*kind]
            );
        }
    }
    // Bodies tonic cannot decode name the problem as the caller's.
    for kind in [1, 2, 5, 7, 8, 12, 15] {
        assert!(by_kind[&kind].keys().any(|o| o.code() == Some(3)), "{}: no INVALID_ARGUMENT\n{report}", KINDS[kind]);
    }
    // Declared or real lengths over max_message_bytes: OUT_OF_RANGE (UNIMPLEMENTED for the unknown
    // method, whose body is never read).
    for kind in [3, 4] {
        let codes: Vec<_> = by_kind[&kind].keys().map(Outcome::code).collect();
        assert!(codes.iter().all(|c| matches!(c, Some(11 | 12))), "{}: {codes:?}", KINDS[kind]);
    }

    // keyward's own checks name the enum field.
    let send = raw::connect(addr).await;
    let mut noise = Noise(7);
    for (path, field) in [("/keyward.v1.KeyService/ListKeys", "state"), ("/keyward.v1.AuditService/QueryUsage", "code")]
    {
        let request = RawRequest::new(path, raw::frame(&bad_enums(path, &mut noise)))
            .header("authorization", format!("Bearer {}", kw.root_key))
            .header("grpc-accept-encoding", "identity");
        let answer = raw::call_with_message(&send, addr, request).await;
        assert_eq!(answer.0, Some(3), "{path}: {answer:?}");
        assert!(answer.1.contains(field), "{path}: {answer:?}");
    }

    let logs = kw.logs();
    assert!(!logs.contains("panicked"), "the server panicked:\n{logs}");
    assert!(kw.is_running(), "the server is still running");
    let health = raw::call(&send, addr, RawRequest::new("/grpc.health.v1.Health/Check", raw::frame(&[]))).await;
    assert_eq!(health, Outcome::Grpc(0, raw::frame(&[0x08, 0x01])), "health: SERVING");
    let (key, _) = kw.create_key("after", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
}
