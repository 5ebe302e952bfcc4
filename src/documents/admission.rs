//! Admission of writes: at most `MONGODB_MAX_CONCURRENT_WRITES` run against the database at
//! once, a few more may wait their turn, and the rest are turned away at once.
//!
//! Why: every write is a transaction (or, embedded, a conditional single-document operation)
//! that stays open on the server while its commands wait for a pooled connection. When writes
//! arrive faster than the database completes them, an unbounded number of open transactions
//! makes each one slower (they pin snapshots and contend), so throughput falls as the load
//! rises, until every write runs into `MONGODB_WRITE_TIMEOUT_MS` and answers 503 after
//! seconds — having cost the database its work anyway. Measured on the 2-core bench machine
//! (`outbox-bench --scenario latency`): 1,000 writes/s offered with nothing publishing, where
//! 16 at a time complete 1,543 writes/s, two thirds failed at ~6.8 ms of `mongod` CPU per
//! write; bounded, all 15,000 committed at ~1.0 ms each. Bounded, the database works at its
//! best rate, and a write beyond what it can take answers 503 with `Retry-After` at once,
//! having written nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Writes that may wait for a turn, per write allowed to run: enough to ride out a burst,
/// few enough that a waiting write gets its turn within a few writes' time.
const WAITING_PER_RUNNING: usize = 16;

/// Why a write was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// As many writes wait as may: the database is behind.
    Busy,
    /// The write's budget ended while it waited.
    TimedOut,
}

/// The gate every write passes.
#[derive(Debug)]
pub(super) struct Admission {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A write's turn; the next waiting write goes when it is dropped.
#[derive(Debug)]
pub(super) struct Turn(
    #[expect(
        dead_code,
        reason = "held for its Drop: the permit goes back when the turn ends"
    )]
    OwnedSemaphorePermit,
);

impl Admission {
    /// At most `running` writes at once, and [`WAITING_PER_RUNNING`] times as many waiting.
    pub(super) fn new(running: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(running)),
            waiting: AtomicUsize::new(0),
            max_waiting: running.saturating_mul(WAITING_PER_RUNNING),
        }
    }

    /// A turn for a write that must start by `deadline`.
    ///
    /// # Errors
    /// [`Refused::Busy`] at once when too many wait; [`Refused::TimedOut`] when the deadline
    /// passes while waiting.
    pub(super) async fn admit(&self, deadline: Instant) -> Result<Turn, Refused> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(Turn(permit));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Busy);
        }
        let waited =
            tokio::time::timeout_at(deadline.into(), Arc::clone(&self.running).acquire_owned())
                .await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(Turn(permit)),
            // The semaphore is never closed; a closed one admits nobody.
            Ok(Err(_closed)) => Err(Refused::Busy),
            Err(_elapsed) => Err(Refused::TimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn beyond_the_running_writes_a_few_wait_and_the_rest_are_refused_at_once() {
        let gate = Arc::new(Admission::new(2));
        let later = Instant::now() + Duration::from_secs(5);
        let a = gate.admit(later).await.unwrap();
        let _b = gate.admit(later).await.unwrap();
        // 32 may wait (16 per running write).
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.admit(later).await.map(drop) })
            })
            .collect();
        while gate.waiting.load(Ordering::Acquire) < 32 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert_eq!(gate.admit(later).await.unwrap_err(), Refused::Busy);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        // A finished write lets the waiting ones through, one turn each.
        drop(a);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_write_whose_budget_ends_while_waiting_is_refused_and_stops_waiting() {
        let gate = Admission::new(1);
        let _running = gate.admit(Instant::now()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(gate.admit(soon).await.unwrap_err(), Refused::TimedOut);
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }
}
