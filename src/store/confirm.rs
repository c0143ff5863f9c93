//! The bound on every wait for sled in the write path (`store.write_timeout`): sled 0.34 can
//! hang in `flush` after ENOSPC under concurrent writers (a missed wake-up). Past the timeout the
//! write answers `UNAVAILABLE` (never acknowledged, so never reported as done, though it may
//! still land), and every later write is refused at once until keyward is restarted:
//! `keyward_store_restart_needed` is 1 and the write services report `NOT_SERVING`. Reads go on
//! from sled.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::domain::ports::StoreError;

pub struct WriteGate {
    timeout: Duration,
    /// Set once sled did not confirm a write within `timeout`; only a restart clears it.
    restart_needed: AtomicBool,
}

impl WriteGate {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, restart_needed: AtomicBool::new(false) }
    }

    /// False once a write was not confirmed in time.
    pub fn writes_confirmed(&self) -> bool {
        !self.restart_needed.load(Ordering::SeqCst)
    }

    /// Waits for `write` (a commit and its flush) for at most the timeout.
    pub async fn confirm<T, E: From<StoreError>>(&self, write: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        if !self.writes_confirmed() {
            return Err(StoreError::Unavailable(
                "the database did not confirm an earlier write in time; writes are refused until keyward is restarted"
                    .into(),
            )
            .into());
        }
        match tokio::time::timeout(self.timeout, write).await {
            Ok(result) => result,
            Err(_) => {
                if !self.restart_needed.swap(true, Ordering::SeqCst) {
                    crate::metrics::get().store_restart_needed(true);
                    tracing::error!(
                        timeout_ms = self.timeout.as_millis() as u64,
                        "the database did not confirm a write in time; writes are refused until keyward is \
                         restarted (reads go on)"
                    );
                }
                Err(StoreError::Unavailable(
                    "the database did not confirm the write in time; keyward needs a restart".into(),
                )
                .into())
            }
        }
    }
}
