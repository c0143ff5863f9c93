//! The HSM going away and coming back, on a real server and a real SoftHSM2 token: within 1 s
//! calls answer `UNAVAILABLE` and health says `NOT_SERVING`; within 5 s of the token's return
//! the same process serves again; meanwhile no answer is wrong (the valid key is never
//! `INVALID`, a wrong secret never `VALID`).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keyward::{
    domain::{key_format, secret::Secret},
    proto::{self, VerifyCode},
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::common::{Instance, VerifyClient};

const SERVICES: [&str; 6] = [
    "",
    "keyward.v1.VerifyService",
    "keyward.v1.KeyService",
    "keyward.v1.MasterKeyService",
    "keyward.v1.AuditService",
    "keyward.v1.ClusterService",
];

/// An outcome of `VerifyKey`: its code, or the status code of the failed call.
type Outcome = Result<VerifyCode, Code>;

async fn verify(client: &mut VerifyClient, key: &str) -> Outcome {
    let request = proto::VerifyKeyRequest { key: key.into(), ..Default::default() };
    client.verify_key(request).await.map(|r| r.into_inner().code()).map_err(|s| s.code())
}

/// Whether every health name reports `want`.
async fn health_is(kw: &Instance, want: ServingStatus) -> bool {
    let mut health = kw.health().await;
    for service in SERVICES {
        match health.check(HealthCheckRequest { service: service.into() }).await {
            Ok(r) if r.get_ref().status() == want => {}
            _ => return false,
        }
    }
    true
}

/// Polls until a verification of `key` answers `want` and health reports `status`, or fails
/// after `within`.
async fn until(kw: &Instance, key: &str, want: Outcome, status: ServingStatus, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    let mut client = kw.root_verifier().await;
    loop {
        let got = verify(&mut client, key).await;
        if got == want && health_is(kw, status).await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?} (last answer {got:?}); log:\n{}", kw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The valid key with another secret: well formed, the right key id, never valid.
fn wrong_secret(key: &str) -> String {
    let parsed = key_format::parse(key).expect("a key");
    key_format::render("kw", parsed.key_id, &Secret::from_bytes([7; 32])).expose().to_owned()
}

/// Steady VerifyKey load from a few tasks, alternating the valid key and a wrong secret, until
/// stopped; returns every answer for each.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Outcome>, Vec<Outcome>)>>,
}

impl Load {
    async fn start(kw: &Instance, valid: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = wrong_secret(valid);
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (stop, valid, wrong) = (stop.clone(), valid.to_owned(), wrong.clone());
            let mut client = kw.root_verifier().await;
            tasks.push(tokio::spawn(async move {
                let (mut good, mut bad) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    good.push(verify(&mut client, &valid).await);
                    bad.push(verify(&mut client, &wrong).await);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (good, bad)
            }));
        }
        Self { stop, tasks }
    }

    /// Stops the load and checks that no answer was wrong.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for task in self.tasks {
            let (g, b) = task.await.unwrap();
            good.extend(g);
            bad.extend(b);
        }
        let valid = good.iter().filter(|o| **o == Ok(VerifyCode::Valid)).count();
        let unavailable = good.iter().filter(|o| **o == Err(Code::Unavailable)).count();
        assert_eq!(valid + unavailable, good.len(), "the valid key was only VALID or UNAVAILABLE: {good:?}");
        assert!(valid > 0 && unavailable > 0, "the load saw both the outage and the service: {valid} {unavailable}");
        let invalid = bad.iter().filter(|o| **o == Ok(VerifyCode::Invalid)).count();
        let bad_unavailable = bad.iter().filter(|o| **o == Err(Code::Unavailable)).count();
        assert_eq!(invalid + bad_unavailable, bad.len(), "a wrong secret was only INVALID or UNAVAILABLE: {bad:?}");
    }
}

async fn serving(unprivileged: bool) -> (Instance, String) {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    kw.unprivileged = unprivileged;
    // The load's wrong secrets would otherwise block the test's own address.
    kw.configure("brute_force", "max_failures", "1000000");
    kw.start().await;
    let (key, _) = kw.create_key("svc", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
    (kw, key)
}

fn tokens(kw: &Instance) -> PathBuf {
    kw.data_dir.join("softhsm/tokens")
}

/// Takes the token away with `remove`, checks the outage under load, brings it back with
/// `restore`, checks the recovery in the same process.
async fn outage_and_recovery(kw: &Instance, key: &str, remove: impl FnOnce(&Path), restore: impl FnOnce(&Path)) {
    let pid = kw.pid();
    let load = Load::start(kw, key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    remove(&tokens(kw));
    let s = Duration::from_secs(1);
    until(kw, key, Err(Code::Unavailable), ServingStatus::NotServing, s, "UNAVAILABLE and NOT_SERVING").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    restore(&tokens(kw));
    until(kw, key, Ok(VerifyCode::Valid), ServingStatus::Serving, 5 * s, "VALID and SERVING again").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.finish().await;
    assert_eq!(kw.pid(), pid, "recovered without a restart");
}

#[tokio::test]
async fn the_token_directory_renamed_away_and_back_under_load() {
    let (kw, key) = serving(false).await;
    let away = |t: &Path| t.with_extension("away");
    outage_and_recovery(&kw, &key, |t| fs::rename(t, away(t)).unwrap(), |t| fs::rename(away(t), t).unwrap()).await;
    assert!(kw.logs().contains("HSM reconnected"), "{}", kw.logs());
}

#[tokio::test]
async fn the_token_directory_made_unreadable_and_readable_again_under_load() {
    use std::os::unix::fs::PermissionsExt;
    let (kw, key) = serving(true).await;
    let mode = |m: u32| move |t: &Path| fs::set_permissions(t, fs::Permissions::from_mode(m)).unwrap();
    outage_and_recovery(&kw, &key, mode(0o000), mode(0o700)).await;
}

#[tokio::test]
async fn a_wrong_pin_in_the_pin_file_serves_not_serving_until_the_file_is_corrected() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    let pin_file = kw.data_dir.join("softhsm/user.pin");
    let real_pin = fs::read_to_string(&pin_file).unwrap();
    fs::write(&pin_file, "wrong-pin-0000\n").unwrap();
    kw.start().await;
    let pid = kw.pid();
    let s = Duration::from_secs(1);
    let root = kw.root_key.clone();
    until(&kw, &root, Err(Code::Unavailable), ServingStatus::NotServing, s, "UNAVAILABLE at start").await;
    let status = kw.root_verifier().await.verify_key(proto::VerifyKeyRequest::default()).await.unwrap_err();
    assert!(status.message().contains("HSM is unreachable"), "{}", status.message());
    // Not retried with the same PIN meanwhile: one refusal only.
    tokio::time::sleep(2 * s).await;
    assert_eq!(kw.logs().matches("the HSM PIN is wrong").count(), 1, "{}", kw.logs());
    fs::write(&pin_file, &real_pin).unwrap();
    until(&kw, &root, Ok(VerifyCode::Valid), ServingStatus::Serving, 5 * s, "SERVING once the PIN is right").await;
    assert_eq!(kw.pid(), pid, "recovered without a restart");
    let logs = kw.logs();
    assert!(!logs.contains("wrong-pin-0000") && !logs.contains(real_pin.trim()), "{logs}");
}

#[tokio::test]
async fn a_token_missing_at_start_is_waited_for() {
    let mut kw = Instance::init();
    kw.log_filter = "info";
    let (tokens, away) = (tokens(&kw), kw.data_dir.join("softhsm/tokens.away"));
    fs::rename(&tokens, &away).unwrap();
    fs::create_dir(&tokens).unwrap();
    kw.start().await;
    let pid = kw.pid();
    let s = Duration::from_secs(1);
    let root = kw.root_key.clone();
    until(&kw, &root, Err(Code::Unavailable), ServingStatus::NotServing, s, "UNAVAILABLE at start").await;
    assert!(kw.logs().contains("no token labelled"), "{}", kw.logs());
    fs::remove_dir(&tokens).unwrap();
    fs::rename(&away, &tokens).unwrap();
    until(&kw, &root, Ok(VerifyCode::Valid), ServingStatus::Serving, 5 * s, "SERVING once the token is back").await;
    assert_eq!(kw.pid(), pid, "recovered without a restart");
    let (key, _) = kw.create_key("after", &[]).await;
    assert_eq!(kw.code(&key, &[]).await, VerifyCode::Valid);
}
