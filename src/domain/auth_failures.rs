//! Refused calls in the audit trail, without letting a flood of bad calls become a flood of
//! HSM-sealed writes: failures are counted in memory per source address, named key, code and
//! reason, and written periodically as one `auth.failed` event per group (the busiest first, at
//! most `MAX_GROUPS` per interval; the rest summed into one more event).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use super::{
    audit::{Actor, AuditAction, AuditEvent},
    brute_force::Source,
    error::Result,
    key::KeyId,
    ports::Store,
};

/// Groups kept per interval; failures beyond them are only counted.
pub const MAX_GROUPS: usize = 100;

/// What a group of refused calls shares.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Group {
    source: Option<IpAddr>,
    /// For `UNAUTHENTICATED`: the existing key the credential named, if any. For
    /// `PERMISSION_DENIED` and a blocked VerifyKey (`RESOURCE_EXHAUSTED`): the caller.
    key: Option<KeyId>,
    code: &'static str,
    why: String,
}

#[derive(Clone, Copy, Debug)]
struct Tally {
    count: u64,
    first_at: SystemTime,
}

#[derive(Default)]
pub(crate) struct AuthFailures {
    groups: Mutex<HashMap<Group, Tally>>,
    /// Failures that found no room among the groups.
    overflow: AtomicU64,
}

impl AuthFailures {
    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<Group, Tally>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, group: Group, at: SystemTime) {
        let mut groups = self.groups();
        let room = groups.len() < MAX_GROUPS;
        match groups.get_mut(&group) {
            Some(tally) => tally.count += 1,
            None if room => {
                groups.insert(group, Tally { count: 1, first_at: at });
            }
            None => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The events for what was counted since the last call, the busiest groups first, and how
    /// many refused calls they stand for.
    fn take(&self, now: SystemTime) -> (Vec<AuditEvent>, u64) {
        let groups = std::mem::take(&mut *self.groups());
        let overflow = self.overflow.swap(0, Ordering::Relaxed);
        let total = overflow + groups.values().map(|t| t.count).sum::<u64>();
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.1.count));
        let mut events: Vec<_> = groups
            .into_iter()
            .map(|(g, tally)| {
                // The caller is the actor of what it was refused.
                let denied = g.code != "UNAUTHENTICATED";
                AuditEvent {
                    at: tally.first_at,
                    actor: match g.key {
                        Some(caller) if denied => Actor::Key(caller),
                        _ => Actor::System("auth".into()),
                    },
                    action: AuditAction::AuthFailed,
                    target: if denied { None } else { g.key },
                    client_addr: g.source.map(|ip| ip.to_string()),
                    reason: Some(format!("{} call{} refused: {}", tally.count, plural(tally.count), g.why)),
                    changes: Vec::new(),
                    code: Some(g.code.to_owned()),
                }
            })
            .collect();
        if overflow > 0 {
            events.push(AuditEvent {
                at: now,
                actor: Actor::System("auth".into()),
                action: AuditAction::AuthFailed,
                target: None,
                client_addr: None,
                reason: Some(format!(
                    "{overflow} more call{} refused, from sources beyond the {MAX_GROUPS} counted one by one",
                    plural(overflow)
                )),
                changes: Vec::new(),
                code: None,
            });
        }
        (events, total)
    }

    /// Counts again what a failed write took (as overflow), so the next interval reports it.
    fn restore(&self, refused: u64) {
        self.overflow.fetch_add(refused, Ordering::Relaxed);
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl AuthFailures {
    /// Counts a call refused as `UNAUTHENTICATED`.
    pub(crate) fn unauthenticated(&self, source: Option<IpAddr>, named: Option<KeyId>, why: &str, at: SystemTime) {
        self.record(Group { source, key: named, code: "UNAUTHENTICATED", why: why.to_owned() }, at);
    }

    /// Counts a call refused as `RESOURCE_EXHAUSTED` because its source is blocked (see
    /// `brute_force`); `why` says the block, `caller` is the VerifyKey caller, if any.
    pub(crate) fn blocked(&self, source: Source, caller: Option<KeyId>, why: &str, at: SystemTime) {
        let key = match source {
            Source::Caller(id) => Some(id),
            _ => caller,
        };
        self.record(Group { source: source.address(), key, code: "RESOURCE_EXHAUSTED", why: why.to_owned() }, at);
    }

    /// Counts a call answered `NOT_FOUND` because the key it named belongs to a team the
    /// caller's team-scoped permission does not reach (see `ownership`).
    pub(crate) fn outside_teams(&self, source: Option<IpAddr>, caller: KeyId, permission: &str, at: SystemTime) {
        let why = format!("the caller holds `{permission}` only for teams other than the key's owner");
        self.record(Group { source, key: Some(caller), code: "NOT_FOUND", why }, at);
    }

    /// Counts a call refused as `PERMISSION_DENIED`.
    pub(crate) fn denied(&self, source: Option<IpAddr>, caller: KeyId, permission: &str, at: SystemTime) {
        let why = format!("needs the `{permission}` permission");
        self.record(Group { source, key: Some(caller), code: "PERMISSION_DENIED", why }, at);
    }

    /// Writes the refused calls counted since the last call as `auth.failed` events; what a
    /// failed write took is counted again. Returns how many events were written.
    pub(crate) async fn flush<S: Store>(&self, store: &S, now: SystemTime) -> Result<usize> {
        let (events, refused) = self.take(now);
        let n = events.len();
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = store.append_events(events).await {
            self.restore(refused);
            return Err(e.into());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn group(ip: &str, why: &str) -> Group {
        Group { source: Some(ip.parse().unwrap()), key: None, code: "UNAUTHENTICATED", why: why.into() }
    }

    #[test]
    fn failures_group_by_source_and_beyond_the_limit_are_summed() {
        let f = AuthFailures::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        for _ in 0..5 {
            f.record(group("10.0.0.1", "invalid credential"), t);
        }
        for i in 0..(MAX_GROUPS + 10) {
            f.record(group(&format!("10.1.{}.{}", i / 256, i % 256), "invalid credential"), t);
        }
        let (events, refused) = f.take(t);
        assert_eq!((events.len(), refused), (MAX_GROUPS + 1, 5 + MAX_GROUPS as u64 + 10));
        assert_eq!(events[0].reason.as_deref(), Some("5 calls refused: invalid credential"));
        assert_eq!(events[0].client_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(events[0].code.as_deref(), Some("UNAUTHENTICATED"));
        let last = events.last().unwrap();
        assert!(last.reason.as_deref().unwrap().starts_with("11 more calls refused"), "{last:?}");
        assert!(f.take(t).0.is_empty(), "taken once");

        f.restore(6);
        let (again, _) = f.take(t);
        assert!(again[0].reason.as_deref().unwrap().starts_with("6 more calls refused"), "{again:?}");
    }
}
