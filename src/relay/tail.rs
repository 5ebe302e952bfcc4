//! The tail: relaying continuously instead of once per schedule tick.
//!
//! [`Relay::tail`] runs drains back to back for as long as it is given — until shutdown in
//! standalone mode, for the whole budget of one timer invocation under the Functions host
//! (background work between invocations is not tracked by the host, so the invocation itself
//! is what relays there). Between drains it waits for a reason to look again:
//!
//! - a new entry nobody holds (written without the push path, or by another application),
//!   reported by a change stream on the entries' collection where the server has one;
//!   On Cosmos DB RU the stream has RU's mandatory shape and the entries are picked out of
//!   every change (see `outbox/store/watch.rs`);
//! - `OUTBOX_POLL_MS` passing — the sweeper's beat, and the only wake-up where there is no
//!   change stream (a standalone server, a DocumentDB without its change-stream flag, or
//!   `OUTBOX_TAIL_WATCH=off`): entries whose hold or backoff ended, requeued dead letters,
//!   entries whose push failed.
//!
//! The stream is not free: `mongod` wakes it for every write to the deployment and reads the
//! change to decide that nobody needs it, also for each entry a write holds for its own push.
//! `make bench` (`relay-cost`, `tail`) measures what that costs per write;
//! `OUTBOX_TAIL_WATCH=off` saves it where every write goes through the push path.
//!
//! Entries this process's writes push (see [`crate::push`]) do not need the tail at all; it is
//! the safety net for everything else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::report::{RelayReport, StopReason};
use super::time::{far_future, instant_after, millis};
use crate::config::EventSource;
use crate::outbox::Storage;
use crate::telemetry::chain;

/// First wait before opening a change stream again after it failed or was refused; it doubles
/// up to [`REOPEN_AT_MOST`] while opening keeps failing (a server that refuses the pipeline is
/// asked once a minute), and starts again from here once a stream was open.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to open the change stream.
const REOPEN_AT_MOST: Duration = Duration::from_secs(60);

impl Relay {
    /// Relays until `shutdown`, or for `budget` when one is given; returns what all its drains
    /// did together (the stop reason is the last drain's). Stops early enough that no drain
    /// outlives the budget: a drain never starts with less time left than one publish needs.
    pub async fn tail(
        &self,
        budget: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> RelayReport {
        if self.storage.settings().source == EventSource::ChangeStream {
            return self.follow_changes(budget, shutdown).await;
        }
        let started = Instant::now();
        let end = budget
            .and_then(|b| instant_after(started, b))
            .unwrap_or_else(far_future);
        let wake = Arc::new(Notify::new());
        let watching = shutdown.child_token();
        // OUTBOX_TAIL_WATCH=off: no change stream, the poll is the only wake-up.
        let watcher = self.settings.watch.then(|| {
            tokio::spawn(watch(
                Arc::clone(&self.storage),
                Arc::clone(&wake),
                watching.clone(),
            ))
        });
        let mut total = RelayReport::default();
        let needed = self.settings.time_to_claim(self.publisher.timeout());
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left <= needed || shutdown.is_cancelled() {
                break;
            }
            let run = self
                .drain_once(left.min(self.settings.time_budget), shutdown)
                .await;
            total.merge(&run);
            match &run.stopped {
                // It stopped on its own budget and left work: go on at once.
                Some(StopReason::Budget) if run.made_progress() => continue,
                // Event Grid refused the configuration (key, topic, identity): that does not
                // heal by waiting, so the invocation fails now and says why.
                Some(StopReason::Misconfigured(_)) => break,
                // Nothing is due, or the topic or database failed (it may come back: look
                // again after the poll, without spinning).
                _ => {}
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll) => {}
                () = tokio::time::sleep_until(end) => {}
                () = shutdown.cancelled() => {}
            }
        }
        watching.cancel();
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        total.duration_ms = millis(started.elapsed());
        total
    }
}

/// Wakes the tail for every new unheld entry while a change stream can be had; tries to open
/// one again after a failure, waiting longer each time it cannot. Says once why it polls.
async fn watch(storage: Arc<Storage>, wake: Arc<Notify>, stop: CancellationToken) {
    let mut told = false;
    let mut wait = REOPEN_AFTER;
    loop {
        let opened = match storage.ready().await {
            Ok(ready) => ready.store.watch_new_unheld().await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(mut stream) => {
                tracing::debug!("Watching the outbox for entries nobody holds");
                told = false;
                wait = REOPEN_AFTER;
                // Whatever arrived while no stream was open is found by this drain.
                wake.notify_one();
                loop {
                    tokio::select! {
                        next = stream.next() => match next {
                            Ok(()) => wake.notify_one(),
                            Err(e) => {
                                tracing::warn!(error = %chain(&e), "The outbox change stream failed; polling until it is open again");
                                break;
                            }
                        },
                        () = stop.cancelled() => return,
                    }
                }
            }
            Err(e) if !told => {
                tracing::info!(
                    error = %chain(&e),
                    "No change stream on the outbox here; new entries nobody holds are found every OUTBOX_POLL_MS"
                );
                told = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        wait = (wait * 2).min(REOPEN_AT_MOST);
    }
}
