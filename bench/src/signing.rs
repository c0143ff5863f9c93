//! `keyward-bench verify --signing`: VerifySignature against VerifyKey in the same run,
//! alternating rounds. Each signed call carries a fresh nonce and the current time, signed with
//! HMAC-SHA256 in the bench (a client's cost, outside keyward): the server unwraps the key's
//! secret once (then uses its cached handle) and checks each signature with one `C_Verify`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use keyward::proto::{self, key_service_client::KeyServiceClient};
use sha2::Sha256;

use crate::{
    error::{BenchError, Result},
    figures::{Figures, Samples, merge},
    target::{Presented, Target},
};

/// A signing key and what signing with it needs.
struct Signer {
    key_id: String,
    secret: Vec<u8>,
    /// Makes every nonce of the run unique.
    counter: AtomicU64,
}

impl Signer {
    fn signed(&self) -> (Vec<u8>, Vec<u8>) {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let nonce = self.counter.fetch_add(1, Ordering::Relaxed);
        let base = format!(
            "\"@method\": GET\n\"@authority\": api.example.com\n\"@path\": /bench\n\"@signature-params\": \
             (\"@method\" \"@authority\" \"@path\");created={created};keyid=\"{}\";alg=\"hmac-sha256\";nonce=\"b{nonce}\"",
            self.key_id
        )
        .into_bytes();
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("any key length"));
        mac.update(&base);
        (base, mac.finalize().into_bytes().to_vec())
    }
}

async fn create_signer(target: &Target) -> Result<Signer> {
    let create = proto::CreateKeyRequest {
        name: "bench-signing".into(),
        scopes: vec!["bench:read".into()],
        kind: proto::KeyKind::Signing as i32,
        ..Default::default()
    };
    let created = KeyServiceClient::new(target.channels[0].clone()).create_key(target.request(create)).await;
    let created = created.map_err(|s| BenchError::call("CreateKey", &s))?.into_inner();
    let key_id = created.info.map(|i| i.key_id).unwrap_or_default();
    Ok(Signer { key_id, secret: created.signing_secret, counter: AtomicU64::new(0) })
}

/// VerifySignature from `concurrency` tasks for `duration`; only VALID counts.
async fn run_signed(target: &Target, signer: &Arc<Signer>, concurrency: usize, duration: Duration) -> Result<Figures> {
    let (deadline, start) = (Instant::now() + duration, Instant::now());
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let (mut client, signer, auth) = (target.verify_client(i), signer.clone(), target.auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let (signature_base, signature) = signer.signed();
                let mut request = tonic::Request::new(proto::VerifySignatureRequest {
                    signature_base,
                    signature,
                    required_scopes: vec!["bench:read".into()],
                    ..Default::default()
                });
                request.metadata_mut().insert("authorization", auth.clone());
                let t = Instant::now();
                let ok = matches!(client.verify_signature(request).await, Ok(r) if r.get_ref().valid);
                samples.record(t, ok);
            }
            samples
        }));
    }
    let mut parts = Vec::with_capacity(tasks.len());
    for t in tasks {
        parts.push(t.await?);
    }
    Ok(merge(parts, start.elapsed()))
}

/// VerifyKey and VerifySignature, alternating rounds of `round`; returns (VerifyKey, VerifySignature).
pub async fn verify_signing(
    target: &str,
    admin_key: &str,
    concurrency: usize,
    connections: usize,
    round: Duration,
    rounds: usize,
) -> Result<(Figures, Figures)> {
    let target = Target::connect(target, admin_key, connections).await?;
    let bearer = proto::CreateKeyRequest {
        name: "bench-bearer".into(),
        scopes: vec!["bench:read".into()],
        ..Default::default()
    };
    let bearer = Presented {
        key: Arc::new(target.create(bearer).await?),
        client_ip: String::new(),
        required_scopes: vec!["bench:read".into()],
    };
    let signer = Arc::new(create_signer(&target).await?);
    // Warm both paths (connections, caches, the unwrapped secret) before measuring.
    target.run(&bearer, concurrency, Duration::from_millis(500)).await?;
    run_signed(&target, &signer, concurrency, Duration::from_millis(500)).await?;
    let (mut keys, mut signed) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        keys.push(target.run(&bearer, concurrency, round).await?);
        signed.push(run_signed(&target, &signer, concurrency, round).await?);
    }
    Ok((Figures::combine(keys), Figures::combine(signed)))
}
