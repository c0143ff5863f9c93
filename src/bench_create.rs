//! `keyward bench create`: durable CreateKey calls/s and latency against a running server.
//! Every call makes a real key (and its audit event): use a scratch data directory.

use std::time::{Duration, Instant};

use crate::{
    bench::{Figures, Target, plain_key, status_text},
    proto::key_service_client::KeyServiceClient,
};

/// CreateKey from `concurrency` tasks over `connections` HTTP/2 connections for `duration`;
/// only acknowledged creations count. Returns the figures and the first error, if any.
pub async fn create(
    target: &str,
    admin_key: &str,
    concurrency: usize,
    connections: usize,
    duration: Duration,
) -> Result<(Figures, Option<String>), String> {
    let target = Target::connect(target, admin_key, connections).await?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut client = KeyServiceClient::new(target.channel(i));
        let template = crate::proto::CreateKeyRequest { name: "bench-create".into(), ..plain_key() };
        let auth = target.auth();
        let request = move || {
            let mut request = tonic::Request::new(template.clone());
            request.metadata_mut().insert("authorization", auth.clone());
            request
        };
        tasks.push(tokio::spawn(async move {
            let (mut latencies_us, mut errors, mut first) = (Vec::new(), 0usize, None);
            while Instant::now() < deadline {
                let t = Instant::now();
                match client.create_key(request()).await {
                    Ok(_) => latencies_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert_with(|| status_text(&e));
                    }
                }
            }
            (latencies_us, errors, first)
        }));
    }
    let (mut all, mut errors, mut first) = (Vec::new(), 0, None);
    for t in tasks {
        let (l, e, f) = t.await.map_err(|e| e.to_string())?;
        all.extend(l);
        errors += e;
        first = first.or(f);
    }
    Ok((Figures::new(all, errors, start.elapsed()), first))
}
