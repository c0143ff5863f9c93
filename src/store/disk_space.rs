//! The free-space guard: `statvfs` on the database directory, measured before every mutation
//! (one system call) and every 500 ms by the serve loop. Below the reserve, mutations are refused
//! before they are attempted, so sled never meets a full disk in the normal case.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use crate::domain::ports::StoreError;

pub struct DiskGuard {
    path: PathBuf,
    /// Bytes that must stay free; 0: no guard (sled's own write errors are the only stop).
    reserve: u64,
    /// Whether the last measurement was below the reserve (for the transition logs).
    full: AtomicBool,
}

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid place for statvfs to write.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

impl DiskGuard {
    pub fn new(path: &Path, reserve: u64) -> Self {
        Self { path: path.to_owned(), reserve, full: AtomicBool::new(false) }
    }

    /// Measures the free space (recording it in the metrics), logging each crossing of the
    /// reserve. `None` if it cannot be measured.
    pub fn measure(&self) -> Option<u64> {
        let free = match free_bytes(&self.path) {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(error = %e, path = %self.path.display(), "cannot measure the free space");
                return None;
            }
        };
        let full = free < self.reserve;
        crate::metrics::get().store_free_bytes(free);
        crate::metrics::get().store_disk_full(full);
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    free,
                    reserve = self.reserve,
                    path = %self.path.display(),
                    "the data directory is nearly full: mutations are refused until space returns"
                );
            } else {
                tracing::warn!(free, reserve = self.reserve, "free space is back above the reserve: mutations resume");
            }
        }
        Some(free)
    }

    /// Whether a mutation may be attempted: refused while the free space is below the reserve.
    pub fn admit(&self) -> Result<(), StoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        match self.measure() {
            Some(free) if free < self.reserve => Err(StoreError::Unavailable(format!(
                "the data directory is nearly full: {free} bytes free, reserve {}",
                self.reserve
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_temporary_directory_and_refuses_below_an_impossible_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(DiskGuard::new(dir.path(), 1).admit().is_ok());
        assert!(DiskGuard::new(dir.path(), 0).admit().is_ok());
        let err = DiskGuard::new(dir.path(), u64::MAX).admit().unwrap_err();
        let StoreError::Unavailable(message) = err else { panic!("{err:?}") };
        assert!(message.starts_with("the data directory is nearly full: "), "{message}");
        assert!(message.ends_with(&format!("reserve {}", u64::MAX)), "{message}");
    }

    #[test]
    fn a_missing_directory_does_not_block_writes() {
        let guard = DiskGuard::new(Path::new("/nonexistent/keyward-test"), u64::MAX);
        assert!(guard.admit().is_ok());
    }
}
