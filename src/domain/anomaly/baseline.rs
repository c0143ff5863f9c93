//! One key's baseline and the math of closing a window: the EWMA rate per window, the EWMA
//! failure ratio, the client networks and callers seen (bounded, least recently seen forgotten
//! first), the last use; and the checks a closed window goes through. Pure: no clock, no I/O.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use super::{AnomalyConfig, AnomalyKind, Finding};
use crate::domain::{key::KeyId, policy::VerifyCode, usage_log::UsageRecord};

/// A client network: the /24 of an IPv4 address, the /48 of an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Network {
    V4([u8; 3]),
    V6([u16; 3]),
}

impl Network {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let o = a.octets();
                Network::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                Network::V6([s[0], s[1], s[2]])
            }
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Network::V4([a, b, c]) => write!(f, "{}/24", Ipv4Addr::new(a, b, c, 0)),
            Network::V6([a, b, c]) => write!(f, "{}/48", Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0)),
        }
    }
}

/// An idle time in days and hours (`45d 3h`), or humantime's form under a day.
fn idle_text(idle: Duration) -> String {
    let secs = idle.as_secs();
    if secs < 86_400 {
        return humantime::format_duration(Duration::from_secs(secs)).to_string();
    }
    format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600)
}

/// Seconds since the epoch, the compact time a baseline's sets keep.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Items with the time each was last seen, at most `cap` (the least recently seen forgotten).
#[derive(Clone, Debug)]
struct Seen<T> {
    items: Vec<(T, u64)>,
}

impl<T> Default for Seen<T> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<T: PartialEq + Copy> Seen<T> {
    fn contains(&self, item: T) -> bool {
        self.items.iter().any(|(i, _)| *i == item)
    }

    /// Marks `item` seen at `at`; adds it (forgetting the least recently seen if full).
    fn touch(&mut self, item: T, at: u64, cap: usize) {
        if let Some(entry) = self.items.iter_mut().find(|(i, _)| *i == item) {
            entry.1 = entry.1.max(at);
            return;
        }
        if self.items.len() >= cap.max(1)
            && let Some(oldest) = self.items.iter().enumerate().min_by_key(|(_, (_, t))| *t).map(|(n, _)| n)
        {
            self.items.swap_remove(oldest);
        }
        self.items.push((item, at));
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// A failure that counts toward FAILURE_SPIKE: a wrong secret for a known key id, a missing
/// scope, an address outside the allowlist.
fn failure_slot(code: VerifyCode) -> Option<usize> {
    match code {
        VerifyCode::Invalid => Some(0),
        VerifyCode::InsufficientScope => Some(1),
        VerifyCode::IpNotAllowed => Some(2),
        _ => None,
    }
}

const FAILURE_NAMES: [&str; 3] = ["INVALID", "INSUFFICIENT_SCOPE", "IP_NOT_ALLOWED"];

/// What one key did in the open window.
#[derive(Clone, Debug)]
struct WindowCounts {
    /// The window of the first record in it.
    index: u64,
    total: u64,
    failures: [u64; 3],
    /// Distinct networks not in the baseline, up to `networks_per_key`.
    new_networks: Vec<Network>,
    /// Distinct callers not in the baseline, up to `callers_per_key`.
    new_callers: Vec<KeyId>,
}

impl WindowCounts {
    fn new(index: u64) -> Self {
        Self { index, total: 0, failures: [0; 3], new_networks: Vec::new(), new_callers: Vec::new() }
    }

    fn failures(&self) -> u64 {
        self.failures.iter().sum()
    }
}

/// One key's baseline.
#[derive(Clone, Debug)]
pub(super) struct KeyBaseline {
    /// The first verification the baseline saw: it is established `min_baseline` after.
    first_seen: SystemTime,
    /// The latest verification of any kind (for eviction).
    pub last_seen: SystemTime,
    /// The latest use that proved the secret (any code but INVALID).
    last_used: Option<SystemTime>,
    /// Verifications per window (EWMA; empty windows decay it).
    rate: f64,
    /// Failures per verification (EWMA over windows with traffic).
    failure_ratio: f64,
    /// Windows with traffic closed so far.
    windows: u64,
    last_window: Option<u64>,
    /// Spiking windows in a row.
    spike_streak: u32,
    networks: Seen<Network>,
    callers: Seen<KeyId>,
    open: Option<WindowCounts>,
    /// A use after a long idle time, seen in the open window: the evidence.
    idle: Option<String>,
    /// When each kind was last flagged (the in-memory cool-down).
    flagged: [Option<SystemTime>; 4],
}

impl KeyBaseline {
    /// A key first seen at `at`, last used (as the store knew it before) at `last_used`.
    pub fn new(at: SystemTime, last_used: Option<SystemTime>) -> Self {
        Self {
            first_seen: at,
            last_seen: at,
            last_used,
            rate: 0.0,
            failure_ratio: 0.0,
            windows: 0,
            last_window: None,
            spike_streak: 0,
            networks: Seen::default(),
            callers: Seen::default(),
            open: None,
            idle: None,
            flagged: [None; 4],
        }
    }

    /// The window `open` counts, if any.
    pub fn open_window(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.index)
    }

    /// Counts one verification of the key into the open window (opened at window `index`).
    pub fn observe(&mut self, r: &UsageRecord, index: u64, config: &AnomalyConfig) {
        self.last_seen = self.last_seen.max(r.at);
        let open = self.open.get_or_insert_with(|| WindowCounts::new(index));
        open.total += 1;
        if let Some(slot) = failure_slot(r.code) {
            open.failures[slot] += 1;
        }
        if r.code == VerifyCode::Invalid {
            // Not a use: the secret was wrong.
            return;
        }
        if let Some(ip) = r.client_ip {
            let net = Network::of(ip);
            if self.networks.contains(net) {
                self.networks.touch(net, secs(r.at), config.networks_per_key);
            } else if !open.new_networks.contains(&net) && open.new_networks.len() < config.networks_per_key {
                open.new_networks.push(net);
            }
        }
        if let Some(caller) = r.caller {
            if self.callers.contains(caller) {
                self.callers.touch(caller, secs(r.at), config.callers_per_key);
            } else if !open.new_callers.contains(&caller) && open.new_callers.len() < config.callers_per_key {
                open.new_callers.push(caller);
            }
        }
        if let (Some(idle_after), Some(last)) = (config.idle_after, self.last_used)
            && let Ok(idle) = r.at.duration_since(last)
            && idle >= idle_after
            && self.idle.is_none()
        {
            self.idle = Some(format!(
                "used after {} idle (previous use {}){}",
                idle_text(idle),
                humantime::format_rfc3339_seconds(last),
                r.client_ip.map(|ip| format!(" from {}", Network::of(ip))).unwrap_or_default(),
            ));
        }
        self.last_used = Some(self.last_used.map_or(r.at, |t| t.max(r.at)));
    }

    /// Closes the open window at `now`: checks it against the baseline, then folds it in.
    /// `alpha` is the EWMA weight of one window. Findings go to `found`.
    pub fn close(&mut self, key: KeyId, now: SystemTime, config: &AnomalyConfig, alpha: f64, found: &mut Vec<Finding>) {
        let Some(open) = self.open.take() else { return };
        if let Some(last) = self.last_window {
            let empty = open.index.saturating_sub(last + 1).min(100_000);
            self.rate *= (1.0 - alpha).powi(empty as i32);
        }
        let established = now.duration_since(self.first_seen).is_ok_and(|age| age >= config.min_baseline);
        let window = humantime::format_duration(config.window);
        let mut flag = |me: &mut Self, kind: AnomalyKind, evidence: String| {
            let last = &mut me.flagged[kind.index()];
            if last.is_some_and(|t| now.duration_since(t).map_or(true, |d| d < config.cooldown)) {
                return;
            }
            *last = Some(now);
            found.push(Finding { key, kind, at: now, evidence });
        };

        // Rate: a spike needs `rate_windows` spiking windows in a row; while they build up the
        // baseline is left alone, and once flagged the new level becomes the baseline.
        let total = open.total as f64;
        if self.windows == 0 {
            self.rate = total;
        } else if established && open.total >= config.rate_min_requests && total > config.rate_factor * self.rate {
            self.spike_streak += 1;
            if self.spike_streak >= config.rate_windows {
                let evidence = format!(
                    "{} verifications in the last {window} window, above {}x the baseline of {:.1} per window for {} windows in a row",
                    open.total, config.rate_factor, self.rate, self.spike_streak
                );
                flag(self, AnomalyKind::RateSpike, evidence);
                self.spike_streak = 0;
                self.rate = total;
            }
        } else {
            self.spike_streak = 0;
            self.rate += alpha * (total - self.rate);
        }

        // Failures: a ratio at or above the threshold, at least twice the key's usual one.
        let failures = open.failures();
        let ratio = failures as f64 / total.max(1.0);
        let jump = self.windows == 0 || ratio >= 2.0 * self.failure_ratio;
        if failures >= config.failure_min && ratio >= config.failure_ratio && jump {
            let by_code: Vec<String> = open
                .failures
                .iter()
                .zip(FAILURE_NAMES)
                .filter(|(n, _)| **n > 0)
                .map(|(n, name)| format!("{n} {name}"))
                .collect();
            let evidence = format!(
                "{failures} of {} verifications failed in one {window} window ({:.0}%, usually {:.0}%): {}",
                open.total,
                ratio * 100.0,
                self.failure_ratio * 100.0,
                by_code.join(", ")
            );
            flag(self, AnomalyKind::FailureSpike, evidence);
        }
        self.failure_ratio =
            if self.windows == 0 { ratio } else { self.failure_ratio + alpha * (ratio - self.failure_ratio) };

        // Networks: a burst of networks never seen, once the baseline is established.
        if established && open.new_networks.len() >= config.new_networks {
            let shown: Vec<String> = open.new_networks.iter().take(5).map(Network::to_string).collect();
            let mut evidence = format!(
                "{} client networks never seen for this key within one {window} window ({} known): {}{}",
                open.new_networks.len(),
                self.networks.len(),
                shown.join(", "),
                if open.new_networks.len() > shown.len() { ", ..." } else { "" }
            );
            if !open.new_callers.is_empty() {
                evidence.push_str(&format!("; {} new caller(s)", open.new_callers.len()));
            }
            flag(self, AnomalyKind::NewNetworks, evidence);
        }
        let at = secs(now);
        for net in &open.new_networks {
            self.networks.touch(*net, at, config.networks_per_key);
        }
        for caller in &open.new_callers {
            self.callers.touch(*caller, at, config.callers_per_key);
        }

        if let Some(evidence) = self.idle.take() {
            flag(self, AnomalyKind::IdleKeyUsed, evidence);
        }
        self.windows += 1;
        self.last_window = Some(open.index);
    }

    /// The baseline rate (verifications per window), for tests.
    #[cfg(test)]
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Networks known, for tests.
    #[cfg(test)]
    pub fn known_networks(&self) -> usize {
        self.networks.len()
    }
}
