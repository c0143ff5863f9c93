//! The liveness probe: a thread that checks the token every `EVERY`, so that losing it is
//! noticed (health `NOT_SERVING`, calls `UNAVAILABLE`) within a second even when no call fails.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::pool::Inner;

/// How often the token is checked: two cheap, standard PKCS#11 calls.
pub const EVERY: Duration = Duration::from_millis(250);

/// Starts the probe; it ends when the adapter is closed or dropped.
pub(super) fn start(inner: &Arc<Inner>) {
    let inner: Weak<Inner> = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new().name("keyward-hsm-probe".into()).spawn(move || {
        loop {
            std::thread::sleep(EVERY);
            match inner.upgrade() {
                Some(inner) if !inner.is_closed() => inner.probe(),
                _ => break,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the HSM liveness probe");
    }
}
