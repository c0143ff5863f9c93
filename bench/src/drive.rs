//! The load driver the benches share: `concurrency` workers making calls until a time or call
//! budget is spent, each call's latency recorded, failures counted by code.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{error::Result, figures::Figures};

/// How long each run lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Calls keep starting for this long.
    For(Duration),
    /// This many calls in all, shared by the workers.
    Calls(u64),
}

/// One call's result.
pub(crate) struct Outcome {
    /// `Err` names what it got instead of success: a gRPC code or an unexpected verify code.
    pub(crate) result: Result<(), String>,
    /// Something the scenario counts apart (a VALID answer where none may be).
    pub(crate) flagged: bool,
    /// The latency to record, when only part of the call is timed.
    pub(crate) took: Option<Duration>,
}

impl Outcome {
    pub(crate) fn ok() -> Self {
        Self { result: Ok(()), flagged: false, took: None }
    }

    pub(crate) fn failed(code: impl Into<String>) -> Self {
        Self { result: Err(code.into()), flagged: false, took: None }
    }

    pub(crate) fn status(s: &tonic::Status) -> Self {
        Self::failed(code_name(s.code()))
    }

    pub(crate) fn of(ok: bool, otherwise: &str) -> Self {
        if ok { Self::ok() } else { Self::failed(otherwise) }
    }
}

/// A gRPC code as the wire spells it: `RESOURCE_EXHAUSTED`.
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A driven run: the figures of successful calls, failures by code, flagged calls.
pub(crate) struct Run {
    pub(crate) figures: Figures,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) flagged: u64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    flagged: u64,
}

/// Runs `make(worker)`'s call from `concurrency` workers within `limit`. A call gets its index
/// (0, 1, 2, … across all workers) and answers `None` when there is nothing left to do.
pub(crate) async fn drive<M, F, Fut>(concurrency: usize, limit: Limit, make: M) -> Result<Run>
where
    M: Fn(usize) -> F,
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Option<Outcome>> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match limit {
        Limit::For(d) => Some(start + d),
        Limit::Calls(_) => None,
    };
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let (call, next) = (make(w), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if matches!(limit, Limit::Calls(n) if i >= n) {
                    break;
                }
                let t = Instant::now();
                let Some(outcome) = call(i).await else { break };
                tally.flagged += u64::from(outcome.flagged);
                match outcome.result {
                    Ok(()) => {
                        let took = outcome.took.unwrap_or_else(|| t.elapsed());
                        tally.latencies_us.push(crate::figures::micros(took));
                    }
                    Err(code) => *tally.errors.entry(code).or_default() += 1,
                }
            }
            tally
        }));
    }
    let (mut latencies, mut errors, mut flagged) = (Vec::new(), BTreeMap::new(), 0);
    for t in tasks {
        let tally = t.await?;
        latencies.extend(tally.latencies_us);
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
        flagged += tally.flagged;
    }
    let failed = errors.values().sum::<u64>() as usize;
    Ok(Run { figures: Figures::new(latencies, failed, start.elapsed()), errors, flagged })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_on_the_wire() {
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[tokio::test]
    async fn a_call_budget_is_shared_and_failures_are_counted_by_code() {
        let run = drive(3, Limit::Calls(10), |_| {
            |i: u64| async move {
                Some(if i % 5 == 0 { Outcome { flagged: true, ..Outcome::failed("VALID") } } else { Outcome::ok() })
            }
        })
        .await
        .unwrap();
        assert_eq!(run.figures.calls, 8);
        assert_eq!(run.errors.get("VALID"), Some(&2));
        assert_eq!(run.flagged, 2);
    }

    #[tokio::test]
    async fn a_worker_stops_when_there_is_nothing_left() {
        let run = drive(2, Limit::For(Duration::from_secs(30)), |_| |i: u64| async move { (i < 4).then(Outcome::ok) })
            .await
            .unwrap();
        assert_eq!(run.figures.calls, 4);
        assert!(run.figures.elapsed < Duration::from_secs(5));
    }
}
