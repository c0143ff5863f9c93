//! The adapter's sessions invalidated behind its back, with the real SoftHSM2 module: a second
//! handle on the same (process-global) module logs the application out of the token, so every
//! session the adapter holds loses its login. The next calls are `Unavailable` or correct, never
//! wrong, and the adapter is correct and healthy again within 5 s by itself.
//! (Its own test binary: SoftHSM2 reads `SOFTHSM2_CONF` once per process.)

use std::time::{Duration, Instant};

use cryptoki::{context::Pkcs11, session::UserType, types::AuthPin};
use keyward::{
    domain::{
        key::MasterKeyVersion,
        ports::{Hsm, HsmError},
        secret::{Pin, SensitiveBytes},
    },
    hsm::{Pkcs11Config, Pkcs11Hsm},
};

#[tokio::test]
async fn sessions_logged_out_behind_the_adapters_back_recover_without_a_wrong_answer() {
    let module = keyward::config::find_softhsm_module().expect("SoftHSM2 is installed (./scripts/test.sh installs it)");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["init", "--dev", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: set before the module is loaded, the only SoftHSM2 use of this test binary.
    unsafe { std::env::set_var("SOFTHSM2_CONF", data.join("softhsm/softhsm2.conf")) };
    let pin = std::fs::read_to_string(data.join("softhsm/user.pin")).unwrap().trim().to_owned();
    let config = Pkcs11Config {
        module: module.clone(),
        token_label: "keyward-dev".into(),
        pin: Pin::new(pin.clone()),
        pin_file: None,
        sessions: 2,
    };
    let (hsm, unreachable) = Pkcs11Hsm::open_serving(config).unwrap();
    assert!(unreachable.is_none());
    let v1 = MasterKeyVersion(1);
    let input = || SensitiveBytes::new(b"a key's secret".to_vec());
    let other = || SensitiveBytes::new(b"another secret".to_vec());
    let digest = hsm.digest(v1, input()).await.unwrap();
    assert!(hsm.verify(input(), &digest).await.unwrap());

    // A second handle on the same module: C_Logout is per application, so it logs out every
    // session of the adapter too.
    let other_handle = Pkcs11::new(&module).unwrap();
    let slot = *other_handle
        .get_slots_with_token()
        .unwrap()
        .iter()
        .find(|s| other_handle.get_token_info(**s).is_ok_and(|t| t.label().trim_end() == "keyward-dev"))
        .unwrap();
    let session = other_handle.open_ro_session(slot).unwrap();
    session.login(UserType::User, Some(&AuthPin::from(pin))).ok();
    session.logout().unwrap();
    drop(session);

    let (mut unavailable, mut recovered) = (0, None);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        match hsm.verify(input(), &digest).await {
            Ok(valid) => {
                assert!(valid, "the right input never fails to verify");
                assert!(!hsm.verify(other(), &digest).await.unwrap_or(false), "a wrong input never verifies");
                if unavailable > 0 && hsm.is_healthy() {
                    recovered = Some(started.elapsed());
                    break;
                }
            }
            Err(HsmError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("neither an answer nor Unavailable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unavailable > 0, "the lost login was noticed");
    let recovered = recovered.expect("correct and healthy again within 5 s");
    eprintln!("recovered {recovered:?} after the sessions were logged out");
    std::mem::forget(other_handle);
}
