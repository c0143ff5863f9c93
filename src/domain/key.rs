//! A key's stored record and the small types that name its parts.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    str::FromStr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use uuid::Uuid;

use super::{
    anomaly::{AnomalyAction, KeyAnomaly},
    signing::{KeyKind, WrappedSecret},
};

/// A key's public identifier: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(Uuid);

impl KeyId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self)
    }
}

/// A duration as people write it: `90d`, `12h`, `30m`, `45s` when it is a whole number of that
/// unit, else humantime's form (`1h 30m 5s 200ms`). `humantime::parse_duration` reads both.
pub fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return humantime::format_duration(d).to_string();
    }
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Which master key in the HSM made a digest. Versions start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MasterKeyVersion(pub u32);

impl fmt::Display for MasterKeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Length in bytes of an HMAC-SHA256 digest.
pub const DIGEST_LEN: usize = 32;

/// What the HSM signs to wrap a digest under a newer master key: this context, then the older
/// MAC. Domain separation: a wrapped digest never stands for a key digest.
pub const WRAP_CONTEXT: &[u8] = b"keyward/v1/wrap\0";

/// An HMAC-SHA256 the HSM computed over a key's id and secret, with the master key version that
/// made it. Not a secret by itself, but never logged: `Debug` shows only the versions.
///
/// After a master key rotation, a digest keyward could not recompute (it never holds the secret)
/// is *wrapped*: `mac` = HMAC under `version` of `WRAP_CONTEXT ‖ inner mac`, where the inner mac
/// was made under the versions in `wrapped`, innermost first. Checking it takes one HSM
/// operation per version; the next successful verification replaces it with a plain digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    /// The outermost version: the key `C_Verify` runs under.
    pub version: MasterKeyVersion,
    pub mac: [u8; DIGEST_LEN],
    /// Versions under which the inner MACs were made, innermost first; empty for a plain digest.
    pub wrapped: Vec<MasterKeyVersion>,
}

impl Digest {
    pub fn plain(version: MasterKeyVersion, mac: [u8; DIGEST_LEN]) -> Self {
        Self { version, mac, wrapped: Vec::new() }
    }

    /// Every version checking this digest needs.
    pub fn versions(&self) -> impl Iterator<Item = MasterKeyVersion> + '_ {
        self.wrapped.iter().copied().chain(std::iter::once(self.version))
    }

    pub fn uses(&self, version: MasterKeyVersion) -> bool {
        self.versions().any(|v| v == version)
    }

    /// A plain digest made under `version`: nothing left to migrate.
    pub fn is_plain_under(&self, version: MasterKeyVersion) -> bool {
        self.version == version && self.wrapped.is_empty()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}", self.version)?;
        for v in self.wrapped.iter().rev() {
            write!(f, " wrapping {v}")?;
        }
        write!(f, ", <redacted>)")
    }
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    /// Paused; `EnableKey` makes it active again.
    Disabled,
    /// For good.
    Revoked,
    /// Replaced by RotateKey: verifies until its `rotation_deadline`, then is expired.
    Rotated,
}

/// At most `limit` verifications per `window` (GCRA: a burst of `limit`, then one per window/limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub window: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.limit, self.window)
    }
}

/// Every `interval` after the last refill, `remaining` is set to `amount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refill {
    pub amount: u64,
    pub interval: Duration,
}

impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} every {:?}", self.amount, self.interval)
    }
}

/// A key's uses left, as stored. Verifications spend from leases taken out of `remaining` (see
/// `quota`), so the true count is `remaining` plus what this node holds leased.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub remaining: u64,
    pub refill: Option<Refill>,
    /// When `remaining` was last refilled or set; the next refill is one interval later.
    pub refilled_at: SystemTime,
}

/// How a key has been used. Counted in memory and written in batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub last_used_at: Option<SystemTime>,
    pub last_used_ip: Option<IpAddr>,
    pub valid_count: u64,
    pub rejected_count: u64,
}

/// Everything keyward keeps about a key. The secret is not here: only its digest.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub state: KeyState,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
    pub revoke_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The key that created this one; `None` for the root key made by `keyward init`.
    pub created_by: Option<KeyId>,
    pub digest: Digest,
    /// Networks the key may be used from; empty means anywhere.
    pub allowed_cidrs: Vec<IpNet>,
    pub not_before: Option<SystemTime>,
    pub rate_limit: Option<RateLimit>,
    /// `None`: unlimited uses.
    pub quota: Option<Quota>,
    pub disabled_at: Option<SystemTime>,
    pub disable_reason: Option<String>,
    /// The last admin change (update, disable, enable, revoke).
    pub updated_at: Option<SystemTime>,
    pub usage: Usage,
    /// The key this one replaced (RotateKey).
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one (RotateKey).
    pub rotated_to: Option<KeyId>,
    pub rotated_at: Option<SystemTime>,
    /// A rotated key verifies until this time, then answers `Expired`.
    pub rotation_deadline: Option<SystemTime>,
    /// The rotation policy: the key should be rotated before it is this old, and stops verifying
    /// a configured grace after. `None`: no limit.
    pub max_age: Option<Duration>,
    /// The team that owns the key: admins with team-scoped permissions (`keyward:keys:read@team`)
    /// reach only their teams' keys. `None`: only unrestricted admins reach it.
    pub owner: Option<String>,
    /// What the anomaly detector does when it finds unusual use of the key.
    pub anomaly_action: AnomalyAction,
    /// The most recent anomalies found (oldest first, at most `anomaly::MAX_RECENT_ANOMALIES`).
    pub anomalies: Vec<KeyAnomaly>,
    /// A signing key's secret, wrapped by the HSM; `None` for a bearer key.
    pub signing: Option<WrappedSecret>,
}

impl KeyRecord {
    /// A new active key with no policies beyond its scopes.
    pub fn new(id: KeyId, name: String, prefix: String, scopes: Vec<String>, now: SystemTime, digest: Digest) -> Self {
        Self {
            id,
            name,
            prefix,
            scopes,
            state: KeyState::Active,
            created_at: now,
            expires_at: None,
            revoked_at: None,
            revoke_reason: None,
            metadata: BTreeMap::new(),
            created_by: None,
            digest,
            allowed_cidrs: Vec::new(),
            not_before: None,
            rate_limit: None,
            quota: None,
            disabled_at: None,
            disable_reason: None,
            updated_at: None,
            usage: Usage::default(),
            rotated_from: None,
            rotated_to: None,
            rotated_at: None,
            rotation_deadline: None,
            max_age: None,
            owner: None,
            anomaly_action: AnomalyAction::Alert,
            anomalies: Vec::new(),
            signing: None,
        }
    }

    pub fn kind(&self) -> KeyKind {
        if self.signing.is_some() { KeyKind::Signing } else { KeyKind::Bearer }
    }

    /// When the key should have been rotated by, under its `max_age`.
    pub fn rotate_by(&self) -> Option<SystemTime> {
        self.max_age.map(|age| self.created_at + age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_round_trip_through_their_text_form() {
        let id = KeyId::new_v7();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<KeyId>().unwrap(), id);
        assert!("not-a-uuid".parse::<KeyId>().is_err());
    }

    #[test]
    fn durations_read_as_written_and_parse_back() {
        for (d, text) in [(90 * 86_400, "90d"), (7200, "2h"), (90, "90s"), (120, "2m"), (86_401, "86401s")] {
            assert_eq!(duration_text(Duration::from_secs(d)), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), Duration::from_secs(d));
        }
        assert_eq!(duration_text(Duration::from_millis(1500)), "1s 500ms");
    }

    #[test]
    fn digest_debug_hides_the_mac() {
        let mut d = Digest::plain(MasterKeyVersion(3), [0xab; DIGEST_LEN]);
        assert_eq!(format!("{d:?}"), "Digest(v3, <redacted>)");
        d.wrapped = vec![MasterKeyVersion(1), MasterKeyVersion(2)];
        assert_eq!(format!("{d:?}"), "Digest(v3 wrapping v2 wrapping v1, <redacted>)");
        assert!(d.uses(MasterKeyVersion(1)) && !d.uses(MasterKeyVersion(4)));
        assert!(!d.is_plain_under(MasterKeyVersion(3)));
    }
}
