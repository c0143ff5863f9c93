//! Use-case tests of the brute-force defence: a source failing too often is refused before the
//! HSM and the database, for a back-off that doubles; other sources are unaffected.

use crate::domain::brute_force::BruteForceConfig;
use crate::domain::testing::*;

const N: u32 = 5;

async fn defended() -> Fixture {
    fixture_with(ServicesConfig {
        brute_force: BruteForceConfig { max_failures: N, ..BruteForceConfig::default() },
        ..ServicesConfig::default()
    })
    .await
}

/// A well-formed key for a random id: INVALID after one HSM call (the decoy).
fn guess() -> KeyString {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    key_format::render("kw", KeyId::new_v7(), &Secret::from_bytes(secret))
}

fn from(ip: &str) -> RequestContext {
    RequestContext { client_addr: Some(format!("{ip}:4000").parse().unwrap()) }
}

impl Fixture {
    async fn verify_from(&self, key: &str, client_ip: &str) -> Result<VerifyCode> {
        self.verify.verify(&self.root, req(key, client_ip, &[])).await.map(|v| v.code)
    }

    /// Fails `n` verifications from `client_ip` with random well-formed keys.
    async fn guesses(&self, client_ip: &str, n: u32) {
        for _ in 0..n {
            assert_eq!(self.verify_from(guess().expose(), client_ip).await.unwrap(), VerifyCode::Invalid);
        }
    }

    fn hsm_and_store(&self) -> (u64, u64) {
        (self.hsm.calls(), self.store.reads.load(Ordering::SeqCst))
    }
}

fn retry_after(result: Result<VerifyCode>) -> Duration {
    match result {
        Err(Error::Blocked(wait)) => wait,
        other => panic!("expected a blocked source, got {other:?}"),
    }
}

#[tokio::test]
async fn a_source_is_blocked_after_n_failures_without_touching_the_hsm_or_the_database() {
    let f = defended().await;
    let good = f.create("svc", &[]).await;
    f.guesses("203.0.113.9", N).await;
    let before = f.hsm_and_store();
    for key in [guess().expose(), good.key.expose(), "kw_garbage"] {
        assert_eq!(retry_after(f.verify_from(key, "203.0.113.9").await), Duration::from_secs(1));
    }
    assert_eq!(f.hsm_and_store(), before, "no HSM call and no store read while blocked");
    assert_eq!(f.verify_from(good.key.expose(), "198.51.100.7").await.unwrap(), VerifyCode::Valid, "another source");
    assert_eq!(f.code(good.key.expose(), &[]).await, VerifyCode::Valid, "the caller itself, without client_ip");
}

#[tokio::test]
async fn the_back_off_doubles_each_time_the_source_trips_again_and_expires() {
    let f = defended().await;
    let ip = "203.0.113.9";
    f.guesses(ip, N).await;
    assert_eq!(retry_after(f.verify_from(guess().expose(), ip).await), Duration::from_secs(1));
    f.clock.advance(Duration::from_secs(1));
    f.guesses(ip, N).await;
    assert_eq!(retry_after(f.verify_from(guess().expose(), ip).await), Duration::from_secs(2));
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(retry_after(f.verify_from(guess().expose(), ip).await), Duration::from_secs(1), "counting down");
    f.clock.advance(Duration::from_secs(1));
    f.guesses(ip, N).await;
    assert_eq!(retry_after(f.verify_from(guess().expose(), ip).await), Duration::from_secs(4));
}

#[tokio::test]
async fn successes_neither_clear_the_count_nor_lift_a_block() {
    let f = defended().await;
    let good = f.create("svc", &[]).await;
    let ip = "203.0.113.9";
    f.guesses(ip, N - 1).await;
    assert_eq!(f.verify_from(good.key.expose(), ip).await.unwrap(), VerifyCode::Valid);
    f.guesses(ip, 1).await;
    assert!(matches!(f.verify_from(good.key.expose(), ip).await, Err(Error::Blocked(_))));
}

#[tokio::test]
async fn without_client_ip_the_caller_is_the_source() {
    let f = defended().await;
    let gateway = f.create("gateway", &["keyward:verify"]).await;
    let gateway = f.auth.authenticate(Some(gateway.key.expose()), &RequestContext::default()).await.unwrap();
    for _ in 0..N {
        let v = f.verify.verify(&gateway, req(guess().expose(), "", &[])).await.unwrap();
        assert_eq!(v.code, VerifyCode::Invalid);
    }
    assert!(matches!(f.verify.verify(&gateway, req(guess().expose(), "", &[])).await, Err(Error::Blocked(_))));
    assert!(f.verify_from(guess().expose(), "").await.is_ok(), "another caller (root) is not blocked");
}

#[tokio::test]
async fn failed_authentications_block_the_peer_but_proven_credentials_still_pass() {
    let f = defended().await;
    let other = f.create("other", &[]).await;
    let attacker = from("10.9.9.9");
    for _ in 0..N {
        let e = f.auth.authenticate(Some(guess().expose()), &attacker).await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    }
    let before = f.hsm_and_store();
    assert!(matches!(f.auth.authenticate(Some(guess().expose()), &attacker).await, Err(Error::Blocked(_))));
    assert!(matches!(f.auth.authenticate(None, &attacker).await, Err(Error::Blocked(_))));
    assert!(
        matches!(f.auth.authenticate(Some(other.key.expose()), &attacker).await, Err(Error::Blocked(_))),
        "a key never proven is not let through a blocked address"
    );
    assert_eq!(f.hsm_and_store(), before, "no HSM call and no store read while blocked");
    let root = f.auth.authenticate(Some(&f.root_key), &attacker).await.expect("a credential proven lately passes");
    assert_eq!(root.key_id, f.root.key_id);
    f.auth.authenticate(Some(other.key.expose()), &from("10.9.9.10")).await.expect("another address");
}

#[tokio::test]
async fn refused_calls_of_a_blocked_source_are_audited_with_the_block() {
    let f = defended().await;
    f.guesses("203.0.113.9", N).await;
    for _ in 0..3 {
        assert!(f.verify_from(guess().expose(), "203.0.113.9").await.is_err());
    }
    f.auth.flush_auth_failures().await.unwrap();
    let q = crate::domain::audit::AuditQuery { code: Some("RESOURCE_EXHAUSTED".into()), ..Default::default() };
    let (events, _) = f.audit.query_events(&f.root, &q, 10, "").unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0].event;
    assert_eq!(e.action, AuditAction::AuthFailed);
    assert_eq!(e.client_addr.as_deref(), Some("203.0.113.9"));
    assert_eq!(e.actor, Actor::Key(f.root.key_id), "the caller whose requests were refused");
    assert_eq!(e.reason.as_deref(), Some("3 calls refused: blocked for 1s after 5 failed verifications within 60s"));
}

#[tokio::test]
async fn disabled_it_never_blocks() {
    let f = fixture_with(ServicesConfig {
        brute_force: BruteForceConfig { enabled: false, max_failures: 1, ..BruteForceConfig::default() },
        ..ServicesConfig::default()
    })
    .await;
    f.guesses("203.0.113.9", 10).await;
}
