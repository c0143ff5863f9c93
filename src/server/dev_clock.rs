//! The domain's clock: the system's, or in `--dev` only, the system's moved by the whole seconds
//! held in the file `KEYWARD_DEV_CLOCK_OFFSET_FILE` names (read on each use), so tests can move
//! time on a running server.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    app::AppError,
    domain::clock::{Clock, SystemClock},
};

const DEV_CLOCK_ENV: &str = "KEYWARD_DEV_CLOCK_OFFSET_FILE";

/// The system clock, or the offset one when `dev` and the variable is set (refused otherwise).
pub(super) fn clock(dev: bool) -> Result<Arc<dyn Clock>, AppError> {
    match std::env::var_os(DEV_CLOCK_ENV) {
        None => Ok(Arc::new(SystemClock)),
        Some(_) if !dev => Err(AppError::Refused(format!("{DEV_CLOCK_ENV} is honoured only with --dev"))),
        Some(path) => {
            tracing::warn!("development clock: time is moved by the offset in {}", Path::new(&path).display());
            Ok(Arc::new(OffsetFileClock(PathBuf::from(path))))
        }
    }
}

struct OffsetFileClock(PathBuf);

impl Clock for OffsetFileClock {
    fn now(&self) -> SystemTime {
        let offset: i64 = std::fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let now = SystemTime::now();
        let shift = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 { now + shift } else { now - shift }
    }
}
