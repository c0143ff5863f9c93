//! The audit page's whole-chain check, run in the background: reading every event and having
//! the HSM check its MAC takes seconds on a long trail, longer than a page should take. A
//! signed-in key with `keyward:audit:read` starts it (a form with the CSRF token); one runs at a
//! time per console, in slices of `SLICE` events (each slice checked against the event before
//! it, the last one also against the chain's recorded head), so the page shows how far it got
//! and, once done, the result, who asked for it and when.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use crate::domain::{
    access::Caller, audit::ChainReport, audit_reader::AuditReader, error::Result, key::KeyId, ports::Store,
};

/// Events checked per VerifyChain call.
pub const SLICE: u64 = 10_000;

/// A check under way.
#[derive(Clone, Debug)]
pub struct Progress {
    pub started_at: SystemTime,
    pub by: KeyId,
    /// Events up to this sequence number are checked.
    pub checked_to: u64,
    /// The chain's last event when the check started.
    pub head: u64,
}

/// The last check's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub started_at: SystemTime,
    pub took: Duration,
    pub by: KeyId,
    /// The report over the whole trail, or why the check could not finish.
    pub result: std::result::Result<ChainReport, String>,
}

#[derive(Default)]
struct State {
    running: Option<Progress>,
    last: Option<Outcome>,
}

/// The console's whole-chain check: at most one running, and the last result.
#[derive(Default)]
pub struct ChainCheck {
    state: Mutex<State>,
}

impl ChainCheck {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The check under way, if any, and the last one finished.
    pub fn snapshot(&self) -> (Option<Progress>, Option<Outcome>) {
        let state = self.lock();
        (state.running.clone(), state.last.clone())
    }

    /// Starts checking the whole chain (whose last event is `head` now) as `caller`, unless a
    /// check is under way. Returns whether this call started one.
    pub fn start<S: Store>(self: &Arc<Self>, reader: Arc<AuditReader<S>>, caller: Caller, head: u64) -> bool {
        let started_at = SystemTime::now();
        {
            let mut state = self.lock();
            if state.running.is_some() {
                return false;
            }
            state.running = Some(Progress { started_at, by: caller.key_id, checked_to: 0, head });
        }
        let this = self.clone();
        tokio::spawn(async move {
            let clock = Instant::now();
            let result = this.run(&reader, &caller, head).await.map_err(|e| e.to_string());
            if let Ok(report) = &result {
                tracing::info!(checked = report.checked, broken = report.broken.is_some(), "whole audit chain checked");
            }
            let mut state = this.lock();
            state.running = None;
            state.last = Some(Outcome { started_at, took: clock.elapsed(), by: caller.key_id, result });
        });
        true
    }

    async fn run<S: Store>(&self, reader: &AuditReader<S>, caller: &Caller, head: u64) -> Result<ChainReport> {
        let mut whole = ChainReport::default();
        let mut from: u64 = 1;
        loop {
            // The last slice is open-ended: it takes events written since, and the head check.
            let last = from.saturating_add(SLICE) > head;
            let to = if last { 0 } else { from + SLICE - 1 };
            let part = reader.verify_chain(caller, from, to).await?;
            merge(&mut whole, part);
            if last || whole.broken.is_some() {
                return Ok(whole);
            }
            if let Some(p) = self.lock().running.as_mut() {
                p.checked_to = to;
            }
            from = to + 1;
        }
    }
}

/// Adds the report of the slice after those `whole` covers.
fn merge(whole: &mut ChainReport, part: ChainReport) {
    if whole.first == 0 {
        whole.first = part.first;
    }
    if part.last != 0 {
        whole.last = part.last;
    }
    whole.checked += part.checked;
    whole.unsealed += part.unsealed;
    if whole.broken.is_none() {
        whole.broken = part.broken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(first: u64, last: u64, unsealed: u64, broken: Option<u64>) -> ChainReport {
        ChainReport {
            first,
            last,
            checked: if first == 0 { 0 } else { last - first + 1 - unsealed },
            unsealed,
            broken: broken.map(|seq| (seq, "event unreadable (edited?)".into())),
        }
    }

    #[test]
    fn slices_add_up_to_the_whole_trail() {
        let mut whole = ChainReport::default();
        // A cluster copy that starts after a checkpoint: the first slice is empty.
        merge(&mut whole, report(0, 0, 0, None));
        merge(&mut whole, report(10_001, 20_000, 3, None));
        merge(&mut whole, report(20_001, 20_500, 0, None));
        assert_eq!((whole.first, whole.last, whole.checked, whole.unsealed), (10_001, 20_500, 10_497, 3));
        assert!(whole.broken.is_none());
    }

    #[test]
    fn the_first_break_is_kept() {
        let mut whole = report(1, 10_000, 0, None);
        merge(&mut whole, report(10_001, 10_400, 0, Some(10_401)));
        merge(&mut whole, report(10_402, 10_500, 0, Some(10_450)));
        assert_eq!(whole.broken.as_ref().map(|b| b.0), Some(10_401));
    }
}
