//! The relay: drains due outbox entries to Event Grid.
//!
//! [`Relay::drain_once`] is the unit of work, called by the `OutboxTimer` function, by the
//! standalone schedule, and by tests. One run:
//!
//! 1. **claims** a batch of due entries under a lease (see [`crate::outbox::store`]), and keeps
//!    claiming while up to `OUTBOX_PUBLISH_CONCURRENCY` batches are being published;
//! 2. **publishes** each batch in requests of at most 1 MiB and 5,000 events, retrying a
//!    transient failure a few times while the lease and the run's budget allow;
//! 3. **records** the outcome on the entries, fenced by the claim's token: published after the
//!    200; rescheduled with persisted backoff after a transient failure; dead-lettered when
//!    Event Grid rejects an event (a rejected request is split until the offending event is
//!    isolated, and the rest is published) or when it is out of attempts; released untouched
//!    when the run stops (time budget, shutdown, misconfiguration).
//!
//! It stops claiming when the time budget is nearly spent, when shutdown begins, when the
//! topic is unreachable (no point burning every entry's attempts) or misconfigured (401, 403,
//! 404, 415: touch nothing), when the database fails, or when a batch task panics (a bug).
//!
//! **Delivery is at least once.** A crash at any point loses nothing: an entry is marked
//! published only after the 200 for the request that carried it; a claim that is never
//! recorded runs out and the entries are claimed again. Duplicates come from requests whose
//! outcome was unknown (timeouts, resets) and from crashes between the 200 and the record;
//! every copy carries the same event id, which consumers de-duplicate on.
//!
//! Here: the run (claim → defer blocked subjects → publish batches in flight → absorb their
//! reports → purge → summarise). `in_flight.rs`: one claimed batch, its requests and the
//! record of each outcome. `report.rs`: what a run did, and its one log line. `time.rs`:
//! checked time arithmetic (a duration can be anything; adding it never panics).

mod backlog;
mod change_batch;
mod change_feed;
mod change_stream;
mod in_flight;
mod marks;
mod push;
mod report;
mod resync;
mod tail;
mod time;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::marks::MARK_EVERY;
pub use self::report::{RelayReport, StopReason};
pub use self::resync::{ResyncError, Resynced};
pub use self::time::next_attempt_at;

use self::in_flight::InFlight;
use self::report::BatchReport;
use self::time::{far_future, instant_after, millis};
use crate::config::LEASE_MARGIN_DIVISOR;
use crate::config::RelaySettings;
use crate::db::DbError;
use crate::domain::EventTypes;
use crate::metrics::Path;
use crate::outbox::Storage;
use crate::outbox::store::{Claim, Expiry, RelayStore};
use crate::publisher::Publisher;
use crate::telemetry::chain;

/// Drains the outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    storage: Arc<Storage>,
    publisher: Publisher,
    settings: RelaySettings,
    /// `OUTBOX_ORDERING=subject`: hold back entries behind older ones of their subject.
    ordered_by_subject: bool,
    /// How long published entries are kept (what the purge deletes past).
    retention: Duration,
    /// How change-stream events are typed (`OUTBOX_SOURCE=change-stream`).
    event_types: EventTypes,
}

/// What the next claim gave.
enum Next {
    /// Entries to publish.
    Publish(Claim),
    /// Nothing to publish, but more may be due behind what was seen (others took it, or it
    /// was all held back behind older entries of its subject): claim again.
    ClaimAgain,
    /// Nothing is due.
    NothingDue,
}

/// One run's moving parts: its report so far, the batches being published, and the token
/// that stops them all.
struct Run {
    report: RelayReport,
    in_flight: JoinSet<BatchReport>,
    /// Cancelled by shutdown, or by a batch that hit a run-wide failure.
    stop: CancellationToken,
    deadline: Instant,
}

/// What a run deletes where the server has no TTL index for it.
#[derive(Debug, Clone, Copy)]
enum Expired {
    /// Published entries published before this.
    PublishedBefore(DateTime<Utc>),
    /// Idempotency records expired by this.
    RecordsBy(DateTime<Utc>),
}

impl Relay {
    /// A relay over `storage`, publishing with `publisher`.
    #[must_use]
    pub fn new(storage: Arc<Storage>, publisher: Publisher, settings: RelaySettings) -> Self {
        let ordered_by_subject = storage.settings().ordered_by_subject;
        let retention = storage.settings().retention;
        Self {
            storage,
            publisher,
            settings,
            ordered_by_subject,
            retention,
            event_types: EventTypes::PerOperation {
                prefix: "CosmosDB".to_owned(),
            },
        }
    }

    /// With the event types of `OUTBOX_EVENT_TYPE(_PREFIX)`, which the change-stream source
    /// names its events by (outbox entries carry theirs already).
    #[must_use]
    pub fn with_event_types(mut self, event_types: EventTypes) -> Self {
        self.event_types = event_types;
        self
    }

    /// The relay's settings.
    #[must_use]
    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// Runs one drain for at most `budget`, or until `shutdown` is cancelled: claims and
    /// publishes batches until nothing is due or the run must stop, then deletes expired data
    /// and logs one summary.
    #[tracing::instrument(skip_all, name = "drain")]
    pub async fn drain_once(&self, budget: Duration, shutdown: &CancellationToken) -> RelayReport {
        let started = Instant::now();
        let (store, expiry) = match self.store().await {
            Ok(found) => found,
            Err(e) => {
                return RelayReport {
                    stopped: Some(StopReason::Database(chain(&e))),
                    duration_ms: millis(started.elapsed()),
                    ..RelayReport::default()
                };
            }
        };
        // A budget too long to add to now never runs out.
        let deadline = instant_after(started, budget).unwrap_or_else(far_future);
        let mut run = Run::new(shutdown.child_token(), deadline);
        while let Some(claim) = self.next_claim(&store, &mut run).await {
            run.report.claimed += claim.entries.len() as u64;
            let batch = self.in_flight(claim, Arc::clone(&store), deadline, run.stop.clone());
            run.in_flight.spawn(batch.run_on(Path::Sweep));
        }
        let mut report = run.finish().await;
        if shutdown.is_cancelled() {
            report.stopped.get_or_insert(StopReason::Shutdown);
        } else {
            report.purged = self.purge(&store, expiry, deadline).await;
        }
        report.remaining = store.count_pending().await.ok();
        report.duration_ms = millis(started.elapsed());
        report.log();
        report
    }

    /// The placement's relay side, and how expired data goes; the one place the relay
    /// reaches the database's set-up.
    async fn store(&self) -> Result<(Arc<dyn RelayStore>, Expiry), DbError> {
        let db = self.storage.ready().await?;
        Ok((db.relay, db.expiry))
    }

    /// Waits for a free publishing slot, then claims the next batch; `None` once the run must
    /// stop claiming (nothing due, budget spent, stopped, or the database failed).
    async fn next_claim(&self, store: &Arc<dyn RelayStore>, run: &mut Run) -> Option<Claim> {
        // Enough time must be left to publish a claimed batch at least once.
        let cutoff = self.settings.time_to_claim(self.publisher.timeout());
        loop {
            run.wait_for_slot(self.settings.publish_concurrency.get())
                .await;
            if run.stop.is_cancelled() {
                return None;
            }
            if run.deadline.saturating_duration_since(Instant::now()) < cutoff {
                run.report.stopped.get_or_insert(StopReason::Budget);
                return None;
            }
            match self.claim_due(store, &mut run.report).await {
                Ok(Next::Publish(claim)) => return Some(claim),
                Ok(Next::ClaimAgain) => {}
                Ok(Next::NothingDue) => return None,
                Err(e) => {
                    tracing::error!(error = %chain(&e), "Cannot claim outbox entries");
                    run.report
                        .stopped
                        .get_or_insert(StopReason::Database(chain(&e)));
                    return None;
                }
            }
        }
    }

    /// Claims a batch of due entries and, with `OUTBOX_ORDERING=subject`, defers those behind
    /// an older unpublished entry of their subject.
    async fn claim_due(
        &self,
        store: &Arc<dyn RelayStore>,
        report: &mut RelayReport,
    ) -> Result<Next, DbError> {
        let mut claim = store
            .claim(
                Utc::now(),
                self.settings.lease,
                self.settings.batch_size.get(),
            )
            .await?;
        crate::metrics::global().claim_conflicts(claim.contended);
        if claim.entries.is_empty() {
            return Ok(if claim.contended > 0 {
                Next::ClaimAgain
            } else {
                Next::NothingDue
            });
        }
        if self.ordered_by_subject {
            report.deferred += store
                .defer_blocked(&mut claim, Utc::now(), self.settings.max_backoff)
                .await?;
            if claim.entries.is_empty() {
                return Ok(Next::ClaimAgain);
            }
        }
        Ok(Next::Publish(claim))
    }

    /// Where the server refused a TTL index: deletes what it would have removed (published
    /// entries past the retention, expired idempotency records) in batches of at most
    /// `OUTBOX_BATCH_SIZE`, while the run's budget lasts. Returns how many went. A failure
    /// (throttling, say) ends it for this run; the next one goes on.
    async fn purge(&self, store: &Arc<dyn RelayStore>, expiry: Expiry, deadline: Instant) -> u64 {
        let now = Utc::now();
        // A retention too long to subtract from now: nothing is that old.
        let cutoff = chrono::Duration::from_std(self.retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r));
        let kinds = [
            cutoff
                .filter(|_| !expiry.published_by_ttl)
                .map(Expired::PublishedBefore),
            (!expiry.records_by_ttl).then_some(Expired::RecordsBy(now)),
        ];
        let mut purged = 0;
        for kind in kinds.into_iter().flatten() {
            if let Err(e) = self
                .purge_in_batches(store, kind, deadline, &mut purged)
                .await
            {
                tracing::warn!(error = %chain(&e), "Cannot delete expired outbox data; the next run tries again");
                break;
            }
        }
        purged
    }

    /// Deletes `kind` a batch at a time until less than a batch went or the run's budget is
    /// near its end, adding what went to `total`.
    async fn purge_in_batches(
        &self,
        store: &Arc<dyn RelayStore>,
        kind: Expired,
        deadline: Instant,
        total: &mut u64,
    ) -> Result<(), DbError> {
        let limit = self.settings.batch_size.get() as usize;
        while instant_after(Instant::now(), self.lease_margin()).is_some_and(|t| t < deadline) {
            let n = match kind {
                Expired::PublishedBefore(cutoff) => store.purge_published(cutoff, limit).await?,
                Expired::RecordsBy(now) => store.purge_expired_records(now, limit).await?,
            };
            *total += n;
            if n < limit as u64 {
                break;
            }
        }
        Ok(())
    }

    fn lease_margin(&self) -> Duration {
        self.settings.lease / LEASE_MARGIN_DIVISOR
    }

    /// A claimed batch, ready to publish: rendered, with its deadline. `store` is where the
    /// claim was made (the placement's relay side, or the entries for a push).
    fn in_flight(
        &self,
        claim: Claim,
        store: impl Into<Arc<dyn RelayStore>>,
        run_deadline: Instant,
        stop: CancellationToken,
    ) -> InFlight {
        let lease_left = (claim.lease_until - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.lease_margin());
        let rendered = claim
            .entries
            .iter()
            .map(|e| self.publisher.render(&e.event))
            .collect();
        InFlight {
            store: store.into(),
            publisher: self.publisher.clone(),
            settings: self.settings.clone(),
            token: claim.token,
            lease_until: claim.lease_until,
            ranged: claim.ranged,
            deadline: instant_after(Instant::now(), lease_left)
                .map_or(run_deadline, |end| run_deadline.min(end)),
            entries: claim.entries,
            rendered,
            stop,
            marks: None,
        }
    }
}

impl Run {
    fn new(stop: CancellationToken, deadline: Instant) -> Self {
        Self {
            report: RelayReport::default(),
            in_flight: JoinSet::new(),
            stop,
            deadline,
        }
    }

    /// Waits until fewer than `concurrency` batches are being published.
    async fn wait_for_slot(&mut self, concurrency: usize) {
        while self.in_flight.len() >= concurrency {
            if let Some(done) = self.in_flight.join_next().await {
                self.absorb(done);
            }
        }
    }

    /// Waits for every batch still being published; the run's report.
    async fn finish(mut self) -> RelayReport {
        while let Some(done) = self.in_flight.join_next().await {
            self.absorb(done);
        }
        self.report
    }

    /// Adds what a batch did; a batch that stopped (or whose task failed) stops the run.
    fn absorb(&mut self, done: Result<BatchReport, JoinError>) {
        let reason = match done {
            Ok(b) => {
                self.report.add(&b);
                b.stop
            }
            Err(e) => {
                tracing::error!(error = %e, "An outbox batch task failed; its entries are published again when their lease runs out");
                Some(task_failure(e))
            }
        };
        if let Some(reason) = reason {
            self.report.stopped.get_or_insert(reason);
            self.stop.cancel();
        }
    }
}

/// Why a batch task ended without a report. It panicked (a bug), or it was cancelled, which
/// only happens when the runtime shuts down: the relay never aborts its tasks.
fn task_failure(e: JoinError) -> StopReason {
    match e.try_into_panic() {
        Ok(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            StopReason::Panicked(message)
        }
        Err(_) => StopReason::Shutdown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_batch_task_has_its_own_stop_reason() {
        let panicked = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(task_failure(panicked), StopReason::Panicked("boom".into()));
        let formatted = tokio::spawn(async { panic!("boom {}", 2) })
            .await
            .unwrap_err();
        assert_eq!(
            task_failure(formatted),
            StopReason::Panicked("boom 2".into())
        );
        let pending = tokio::spawn(std::future::pending::<()>());
        pending.abort();
        assert_eq!(
            task_failure(pending.await.unwrap_err()),
            StopReason::Shutdown
        );
    }

    #[tokio::test]
    async fn a_panicked_batch_stops_the_run_and_fails_it() {
        let mut run = Run::new(CancellationToken::new(), far_future());
        run.in_flight.spawn(async { panic!("boom") });
        let report = run.finish().await;
        assert_eq!(report.stopped, Some(StopReason::Panicked("boom".into())));
        assert!(!report.made_progress());
    }
}
