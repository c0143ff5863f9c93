//! Group commit: writers that committed a transaction wait for a flush that began after their
//! commit; one flusher thread serves them all with one `fsync` per batch. Waits are bounded by
//! the caller (`store.write_timeout`): a flush that never returns (sled 0.34 can hang in
//! `flush` after ENOSPC) never holds a caller, nor shutdown, past it.

use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::domain::ports::StoreError;

#[derive(Clone, Copy, Debug, Default)]
struct Flushed {
    /// Every ticket up to here is durable.
    upto: u64,
    /// A flush covering tickets up to here failed: those writes were not acknowledged.
    failed_upto: u64,
}

#[derive(Default)]
struct Pending {
    issued: u64,
    stop: bool,
}

/// Hands out flush tickets: take one after a commit, then [`Flusher::wait`] for it.
#[derive(Clone)]
pub struct Tickets(Arc<(Mutex<Pending>, Condvar)>);

impl Tickets {
    /// A ticket for everything committed so far; wakes the flusher.
    pub fn issue(&self) -> u64 {
        let (lock, wake) = &*self.0;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        p.issued += 1;
        wake.notify_one();
        p.issued
    }
}

/// What the flush thread calls to make committed writes durable: sled's `flush`, or in tests
/// one that never returns.
pub type FlushFn = Box<dyn FnMut() -> sled::Result<usize> + Send>;

/// sled's own flush of `db`.
pub fn sled_flush(db: sled::Db) -> FlushFn {
    Box::new(move || db.flush())
}

pub struct Flusher {
    pending: Arc<(Mutex<Pending>, Condvar)>,
    flushed: watch::Receiver<Flushed>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The longest `stop` waits for the thread's last flush.
    stop_within: Duration,
}

impl Flusher {
    /// Starts the flush thread; `stop` waits at most `stop_within` for it.
    pub fn start(flush: FlushFn, stop_within: Duration) -> Self {
        let pending = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let (tx, rx) = watch::channel(Flushed::default());
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("keyward-flush".into())
            .spawn(move || run(flush, &shared, &tx))
            .expect("spawning the flush thread");
        Self { pending, flushed: rx, thread: Mutex::new(Some(thread)), stop_within }
    }

    /// Call after a transaction has committed; resolves once it is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.tickets().issue();
        self.wait(ticket).await
    }

    /// Issues tickets for this flusher from another thread (the write combiner).
    pub fn tickets(&self) -> Tickets {
        Tickets(self.pending.clone())
    }

    /// Resolves once a flush that began after `ticket` was issued has finished.
    pub async fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let mut rx = self.flushed.clone();
        let state = *rx
            .wait_for(|f| f.upto >= ticket || f.failed_upto >= ticket)
            .await
            .map_err(|_| StoreError::Unavailable("the store is closing".into()))?;
        if state.failed_upto >= ticket {
            Err(StoreError::Unavailable("flushing to disk failed".into()))
        } else {
            Ok(())
        }
    }

    /// Flushes what is pending and stops the thread, waiting for it at most `stop_within` (a
    /// flush that hangs is left behind, logged).
    pub fn stop(&self) {
        {
            let (lock, wake) = &*self.pending;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            wake.notify_one();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            join_within(t, self.stop_within, "the flush thread");
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Joins `thread` if it ends within `within`; else leaves it running (it holds only the
/// database, which the process is about to leave) and says so.
pub fn join_within(thread: JoinHandle<()>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            tracing::error!(
                thread = what,
                waited_ms = within.as_millis() as u64,
                "the database did not answer in time; not waiting for it"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = thread.join();
}

fn run(mut flush: FlushFn, pending: &(Mutex<Pending>, Condvar), tx: &watch::Sender<Flushed>) {
    let (lock, wake) = pending;
    let mut done = 0u64;
    loop {
        let target = {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            while p.issued == done && !p.stop {
                p = wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.issued == done && p.stop {
                break;
            }
            p.issued
        };
        let started = std::time::Instant::now();
        let flushed = flush();
        crate::metrics::get().store_flush(started.elapsed(), flushed.is_ok());
        match flushed {
            Ok(_) => tx.send_modify(|f| f.upto = target),
            Err(e) => {
                tracing::error!(error = %e, "flushing the database failed; pending writes are refused");
                tx.send_modify(|f| f.failed_upto = target);
            }
        }
        done = target;
    }
    if let Err(e) = flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}
