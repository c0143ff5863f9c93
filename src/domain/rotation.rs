//! The rotation settings: client keys' (grace periods, `max_age`, the reaper) and the pacing of
//! the background re-digest after a master key rotation. The use cases are `keys::rotation` and
//! `master`.

use std::time::Duration;

use super::policy::RotationRules;

const DAY: Duration = Duration::from_secs(86_400);

/// The rotation settings of an installation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationConfig {
    /// How long a rotated key keeps verifying when RotateKey names no grace period.
    pub default_grace: Duration,
    /// The `max_age` of new keys that name none; `None`: no limit.
    pub default_max_age: Option<Duration>,
    pub rules: RotationRules,
    /// The reaper disables active keys unused this long; `None`: never.
    pub inactive_after: Option<Duration>,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            default_grace: DAY,
            default_max_age: Some(90 * DAY),
            rules: RotationRules::default(),
            inactive_after: Some(90 * DAY),
        }
    }
}

/// How the background re-digest after a master key rotation paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationConfig {
    /// Keys per transaction (and per progress checkpoint).
    pub batch: usize,
    /// HSM operations in flight at once.
    pub concurrency: usize,
    /// Pause between batches, to leave the HSM to verifications.
    pub pause: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self { batch: 1000, concurrency: 4, pause: Duration::ZERO }
    }
}
