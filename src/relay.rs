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
//! 404, 415: touch nothing), or when the database fails.
//!
//! **Delivery is at least once.** A crash at any point loses nothing: an entry is marked
//! published only after the 200 for the request that carried it; a claim that is never
//! recorded runs out and the entries are claimed again. Duplicates come from requests whose
//! outcome was unknown (timeouts, resets) and from crashes between the 200 and the record;
//! every copy carries the same event id, which consumers de-duplicate on.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RelaySettings;
use crate::db::DbError;
use crate::domain::{EventId, MAX_EVENT_BYTES};
use crate::outbox::Storage;
use crate::outbox::store::{Claim, ClaimToken, Expiry, OutboxStore};
use crate::outbox::{ClaimedEntry, LastError};
use crate::publisher::backoff::{persisted_delay, quick_retry_delay};
use crate::publisher::batch::{self, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS};
use crate::publisher::{FailureKind, Outcome, PublishFailure, Publisher};
use crate::telemetry::chain;

/// Share of a lease kept free at its end: no request may still be running then, so that a
/// slow response never overlaps another relay's claim of the same entries.
const LEASE_MARGIN_DIVISOR: u32 = 10;

/// Why a run stopped before the outbox was empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum StopReason {
    /// The time budget was spent.
    Budget,
    /// Shutdown began.
    Shutdown,
    /// Event Grid kept failing transiently (down, throttling).
    TopicUnavailable(String),
    /// Event Grid refused the request as misconfigured (401, 403, 404, 415).
    Misconfigured(String),
    /// The database failed.
    Database(String),
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayReport {
    /// Entries claimed.
    pub claimed: u64,
    /// Entries published (Event Grid answered 200 and the entry was marked).
    pub published: u64,
    /// Entries rescheduled after a transient failure.
    pub rescheduled: u64,
    /// Entries dead-lettered.
    pub dead_lettered: u64,
    /// Entries given back untouched (run stopped).
    pub released: u64,
    /// Entries held back behind an older entry of their subject (`OUTBOX_ORDERING=subject`).
    pub deferred: u64,
    /// Publish requests sent.
    pub requests: u64,
    /// Published entries past the retention and expired idempotency records deleted by this
    /// run, where the server has no TTL index for them.
    pub purged: u64,
    /// Entries pending after the run (due or not), if the database could tell.
    pub remaining: Option<u64>,
    /// How long the run took.
    pub duration_ms: u64,
    /// The longest time, among the entries this run published, from the write of the change
    /// to its entry being marked published: the commit-to-publish lag to alert on. `None` when
    /// nothing was published.
    pub max_lag_ms: Option<u64>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
}

impl RelayReport {
    /// Did the run achieve anything, or was there nothing to do? `false` means the run failed:
    /// the database or the topic was unreachable or misconfigured.
    #[must_use]
    pub fn made_progress(&self) -> bool {
        match &self.stopped {
            Some(
                StopReason::TopicUnavailable(_)
                | StopReason::Misconfigured(_)
                | StopReason::Database(_),
            ) => self.published + self.dead_lettered > 0,
            _ => true,
        }
    }

    /// One-line summary for logs.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "outbox drain: {} published, {} rescheduled, {} dead-lettered, {} released, {} remaining, {} ms",
            self.published,
            self.rescheduled,
            self.dead_lettered,
            self.released,
            self.remaining
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            self.duration_ms,
        );
        if self.purged > 0 {
            s.push_str(&format!("; {} expired removed", self.purged));
        }
        if let Some(lag) = self.max_lag_ms {
            s.push_str(&format!("; longest commit-to-publish lag {lag} ms"));
        }
        if self.deferred > 0 {
            s.push_str(&format!(
                "; {} deferred behind older entries of their subject",
                self.deferred
            ));
        }
        match &self.stopped {
            None => {}
            Some(StopReason::Budget) => s.push_str("; stopped: time budget spent"),
            Some(StopReason::Shutdown) => s.push_str("; stopped: shutting down"),
            Some(StopReason::TopicUnavailable(d)) => {
                s.push_str("; stopped: Event Grid unavailable: ");
                s.push_str(d);
            }
            Some(StopReason::Misconfigured(d)) => {
                s.push_str("; stopped: Event Grid refused the configuration: ");
                s.push_str(d);
            }
            Some(StopReason::Database(d)) => {
                s.push_str("; stopped: database error: ");
                s.push_str(d);
            }
        }
        s
    }

    fn add(&mut self, b: &BatchReport) {
        self.published += b.published;
        self.rescheduled += b.rescheduled;
        self.dead_lettered += b.dead_lettered;
        self.released += b.released;
        self.requests += b.requests;
        self.max_lag_ms = self.max_lag_ms.max(b.max_lag_ms);
    }
}

#[derive(Debug, Default)]
struct BatchReport {
    /// Ranges Event Grid accepted, marked published together when the batch ends.
    accepted: Vec<Range<usize>>,
    published: u64,
    rescheduled: u64,
    dead_lettered: u64,
    released: u64,
    requests: u64,
    /// See [`RelayReport::max_lag_ms`].
    max_lag_ms: Option<u64>,
    stop: Option<StopReason>,
}

/// What a run deletes where the server has no TTL index for it.
#[derive(Debug, Clone, Copy)]
enum Expired {
    /// Published entries published before this.
    PublishedBefore(DateTime<Utc>),
    /// Idempotency records expired by this.
    RecordsBy(DateTime<Utc>),
}

/// Drains the outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Arc<Storage>,
    publisher: Publisher,
    settings: RelaySettings,
}

/// A claimed batch being published, with what is shared by its requests.
struct InFlight {
    store: OutboxStore,
    publisher: Publisher,
    settings: RelaySettings,
    token: ClaimToken,
    /// End of the claim's lease.
    lease_until: DateTime<Utc>,
    /// No request may end after this: the earlier of the lease's end (minus a margin) and the
    /// run's deadline.
    deadline: Instant,
    entries: Vec<ClaimedEntry>,
    rendered: Vec<Vec<u8>>,
    /// Stops the whole run (misconfiguration, topic down, shutdown).
    stop: CancellationToken,
}

impl Relay {
    /// A relay over `db`, publishing with `publisher`.
    #[must_use]
    pub fn new(db: Arc<Storage>, publisher: Publisher, settings: RelaySettings) -> Self {
        Self {
            db,
            publisher,
            settings,
        }
    }

    /// The relay's settings.
    #[must_use]
    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// Runs one drain for at most `budget`, or until `shutdown` is cancelled.
    #[tracing::instrument(skip_all, name = "drain")]
    pub async fn drain_once(&self, budget: Duration, shutdown: &CancellationToken) -> RelayReport {
        let started = Instant::now();
        let deadline = started + budget;
        let mut report = RelayReport::default();
        let db = match self.db.ready().await {
            Ok(db) => db,
            Err(e) => {
                report.stopped = Some(StopReason::Database(chain(&e)));
                report.duration_ms = millis(started.elapsed());
                return report;
            }
        };
        let store = db.store.clone();
        let stop = shutdown.child_token();
        let mut in_flight: JoinSet<BatchReport> = JoinSet::new();
        let concurrency = self.settings.publish_concurrency.get();
        // Enough time must be left to publish a claimed batch at least once.
        let claim_cutoff = self.publisher.timeout() + self.lease_margin();

        loop {
            while in_flight.len() >= concurrency {
                if let Some(done) = in_flight.join_next().await {
                    self.absorb(&mut report, done, &stop);
                }
            }
            if stop.is_cancelled() {
                break;
            }
            if deadline.saturating_duration_since(Instant::now()) < claim_cutoff {
                report.stopped.get_or_insert(StopReason::Budget);
                break;
            }
            let claimed = store
                .claim(
                    Utc::now(),
                    self.settings.lease,
                    self.settings.batch_size.get(),
                )
                .await;
            let claimed = match claimed {
                Ok(mut c) if self.db.settings().ordered_by_subject && !c.entries.is_empty() => {
                    match store
                        .defer_blocked(&mut c, Utc::now(), self.settings.max_backoff)
                        .await
                    {
                        Ok(n) => {
                            report.deferred += n;
                            if c.entries.is_empty() {
                                continue; // All held back; what is due behind them may not be.
                            }
                            Ok(c)
                        }
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            let claim = match claimed {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %chain(&e), "Cannot claim outbox entries");
                    report
                        .stopped
                        .get_or_insert(StopReason::Database(chain(&e)));
                    break;
                }
            };
            if claim.entries.is_empty() {
                if claim.contended > 0 {
                    continue; // Others took what we saw; there may be more behind it.
                }
                break;
            }
            report.claimed += claim.entries.len() as u64;
            let batch = self.in_flight(claim, store.clone(), deadline, stop.clone());
            in_flight.spawn(batch.run());
        }
        while let Some(done) = in_flight.join_next().await {
            self.absorb(&mut report, done, &stop);
        }
        if shutdown.is_cancelled() {
            report.stopped.get_or_insert(StopReason::Shutdown);
        } else {
            report.purged = self.purge(&store, db.expiry, deadline).await;
        }
        report.remaining = store.count_pending().await.ok();
        report.duration_ms = millis(started.elapsed());
        // One summary per run: at info when it made progress, else at error (the host drops a
        // failed run's Logs, so this line is where the reason survives).
        macro_rules! summary {
            ($level:ident) => {
                tracing::$level!(
                    claimed = report.claimed,
                    published = report.published,
                    rescheduled = report.rescheduled,
                    dead_lettered = report.dead_lettered,
                    released = report.released,
                    deferred = report.deferred,
                    remaining = report.remaining,
                    duration_ms = report.duration_ms,
                    max_lag_ms = report.max_lag_ms,
                    purged = report.purged,
                    "{}",
                    report.summary()
                )
            };
        }
        if report.made_progress() {
            summary!(info);
        } else {
            summary!(error);
        }
        report
    }

    /// Where the server refused a TTL index: deletes what it would have removed (published
    /// entries past the retention, expired idempotency records) in batches of at most
    /// `OUTBOX_BATCH_SIZE`, while the run's budget lasts. Returns how many went. A failure
    /// (throttling, say) ends it for this run; the next one goes on.
    async fn purge(&self, store: &OutboxStore, expiry: Expiry, deadline: Instant) -> u64 {
        let now = Utc::now();
        // A retention too long to subtract from now: nothing is that old.
        let cutoff = chrono::Duration::from_std(self.db.settings().retention)
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
        store: &OutboxStore,
        kind: Expired,
        deadline: Instant,
        total: &mut u64,
    ) -> Result<(), DbError> {
        let limit = self.settings.batch_size.get() as usize;
        while Instant::now() + self.lease_margin() < deadline {
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

    fn absorb(
        &self,
        report: &mut RelayReport,
        done: Result<BatchReport, tokio::task::JoinError>,
        stop: &CancellationToken,
    ) {
        match done {
            Ok(b) => {
                report.add(&b);
                if let Some(reason) = b.stop {
                    report.stopped.get_or_insert(reason);
                    stop.cancel();
                }
            }
            Err(e) => {
                // A panic in a batch task is a bug; its entries free themselves when the lease
                // runs out.
                tracing::error!(error = %e, "An outbox batch task failed");
                report
                    .stopped
                    .get_or_insert(StopReason::Database(format!("batch task failed: {e}")));
                stop.cancel();
            }
        }
    }

    fn in_flight(
        &self,
        claim: Claim,
        store: OutboxStore,
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
            store,
            publisher: self.publisher.clone(),
            settings: self.settings.clone(),
            token: claim.token,
            lease_until: claim.lease_until,
            deadline: run_deadline.min(Instant::now() + lease_left),
            entries: claim.entries,
            rendered,
            stop,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl InFlight {
    fn ids(&self, range: Range<usize>) -> Vec<EventId> {
        self.entries[range].iter().map(|e| e.event.id).collect()
    }

    async fn run(self) -> BatchReport {
        let mut report = BatchReport::default();
        let sizes: Vec<usize> = self.rendered.iter().map(Vec::len).collect();
        let ranges = batch::pack(&sizes, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS);
        let mut pending: Vec<Range<usize>> = ranges.into_iter().rev().collect();
        while let Some(range) = pending.pop() {
            if report.stop.is_some() || self.stop.is_cancelled() {
                self.release(range, &mut report).await;
                continue;
            }
            if range.len() == 1 && sizes[range.start] > MAX_EVENT_BYTES.min(MAX_REQUEST_BYTES - 2) {
                let size = sizes[range.start];
                let error = LastError {
                    kind: "too_large".into(),
                    status: None,
                    code: None,
                    message: format!(
                        "the event is {size} bytes; Event Grid accepts at most {MAX_EVENT_BYTES}"
                    ),
                    request_id: None,
                };
                self.dead_letter(range, &error, false, &mut report).await;
                continue;
            }
            match self.publish(range.clone(), &mut report).await {
                Sent::Done => {}
                Sent::Split => {
                    let mid = range.start + range.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
            }
        }
        self.mark_accepted(&mut report).await;
        report
    }

    /// Marks what Event Grid accepted as published: the whole claim in one range update when
    /// everything was accepted (the common case), else by id. Done once per batch, after its
    /// last request; a crash before it means those events are published again later.
    async fn mark_accepted(&self, report: &mut BatchReport) {
        let accepted: usize = report.accepted.iter().map(ExactSizeIterator::len).sum();
        if accepted == 0 {
            return;
        }
        let now = Utc::now();
        let (expected, marked) = if accepted == self.entries.len() {
            (
                accepted,
                self.store
                    .mark_claim_published(self.token, self.lease_until, now)
                    .await,
            )
        } else {
            let ids: Vec<EventId> = report
                .accepted
                .iter()
                .flat_map(|r| self.ids(r.clone()))
                .collect();
            (
                ids.len(),
                self.store.mark_published(self.token, &ids, now).await,
            )
        };
        match marked {
            Ok(n) => {
                report.published += n;
                let oldest = report
                    .accepted
                    .iter()
                    .flat_map(|r| self.entries[r.clone()].iter())
                    .map(|e| e.event.event_time)
                    .min();
                report.max_lag_ms =
                    oldest.map(|t| u64::try_from((now - t).num_milliseconds()).unwrap_or(0));
                if n < expected as u64 {
                    tracing::warn!(
                        expected,
                        marked = n,
                        "Some published entries had been claimed by another relay after our lease ran out; they may be published again"
                    );
                }
            }
            Err(e) => self.record_failed(report, &e, "mark entries published"),
        }
    }

    /// Publishes one request (with quick retries) and records the outcome.
    async fn publish(&self, range: Range<usize>, report: &mut BatchReport) -> Sent {
        let mut retries = 0;
        loop {
            if Instant::now() + self.publisher.timeout() > self.deadline {
                // Not enough lease or budget left for a request to finish: give the entries
                // back rather than risk publishing after another relay took them over.
                if report.stop.is_none() && !self.stop.is_cancelled() {
                    report.stop = Some(StopReason::Budget);
                }
                self.release(range, report).await;
                return Sent::Done;
            }
            let body = batch::body(self.rendered[range.clone()].iter().map(Vec::as_slice));
            report.requests += 1;
            match self.publisher.send(body).await {
                Outcome::Published => {
                    report.accepted.push(range);
                    return Sent::Done;
                }
                Outcome::Rejected { failure } if range.len() > 1 => {
                    tracing::warn!(
                        events = range.len(),
                        error = %failure,
                        "Event Grid rejected a request; splitting it to find the offending events"
                    );
                    return Sent::Split;
                }
                Outcome::Rejected { failure } => {
                    let error = last_error(&failure);
                    self.dead_letter(range, &error, true, report).await;
                    return Sent::Done;
                }
                Outcome::Halt { failure } => {
                    tracing::error!(
                        error = %failure,
                        "Event Grid refused the request as misconfigured; stopping the run without touching the entries"
                    );
                    report.stop = Some(StopReason::Misconfigured(failure.to_string()));
                    self.stop.cancel();
                    self.release(range, report).await;
                    return Sent::Done;
                }
                Outcome::Retry {
                    retry_after,
                    failure,
                } => {
                    retries += 1;
                    let wait = quick_retry_delay(retries, rand::random(), retry_after);
                    let fits = Instant::now() + wait + self.publisher.timeout() <= self.deadline;
                    if failure.kind == FailureKind::UnknownOutcome {
                        tracing::warn!(events = range.len(), error = %failure, "Publish outcome unknown; retrying with the same event ids");
                    } else {
                        tracing::warn!(events = range.len(), error = %failure, attempt = retries, "Publish failed; retrying");
                    }
                    if retries <= self.publisher.retries() && fits {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => continue,
                            () = self.stop.cancelled() => {}
                        }
                    }
                    // Out of quick retries (or time): record the failure on the entries and stop
                    // the run — the topic is down or throttling, and every further claim would
                    // only burn attempts.
                    self.reschedule(range, &failure, retry_after, report).await;
                    if report.stop.is_none() {
                        report.stop = Some(StopReason::TopicUnavailable(failure.to_string()));
                    }
                    self.stop.cancel();
                    return Sent::Done;
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        range: Range<usize>,
        error: &LastError,
        count_attempt: bool,
        report: &mut BatchReport,
    ) {
        let ids = self.ids(range);
        match self
            .store
            .dead_letter(self.token, &ids, error, count_attempt, Utc::now())
            .await
        {
            Ok(n) => {
                report.dead_lettered += n;
                for id in &ids {
                    tracing::error!(
                        outbox.entry_id = %id,
                        event.id = %id,
                        reason = %error.message,
                        "Outbox entry dead-lettered"
                    );
                }
            }
            Err(e) => self.record_failed(report, &e, "dead-letter entries"),
        }
    }

    async fn release(&self, range: Range<usize>, report: &mut BatchReport) {
        let ids = self.ids(range);
        match self.store.release(self.token, &ids, Utc::now()).await {
            Ok(n) => report.released += n,
            Err(e) => self.record_failed(report, &e, "release entries"),
        }
    }

    /// Records a transient failure: each entry's next attempt after its own backoff, or dead
    /// when it is out of attempts.
    async fn reschedule(
        &self,
        range: Range<usize>,
        failure: &PublishFailure,
        retry_after: Option<Duration>,
        report: &mut BatchReport,
    ) {
        let now = Utc::now();
        let error = last_error(failure);
        let max = self.settings.max_attempts.get();
        // Entries failed together but may have different histories: group them by attempts so
        // each group gets its own backoff in one update.
        let mut by_attempts: BTreeMap<u32, Vec<EventId>> = BTreeMap::new();
        let mut exhausted = Vec::new();
        for e in &self.entries[range] {
            let attempts = e.attempts.saturating_add(1);
            if attempts >= max {
                exhausted.push(e.event.id);
            } else {
                by_attempts.entry(attempts).or_default().push(e.event.id);
            }
        }
        for (attempts, ids) in by_attempts {
            let next = next_attempt_at(&self.settings, attempts, now, rand::random(), retry_after);
            match self
                .store
                .reschedule(self.token, &ids, next, &error, now)
                .await
            {
                Ok(n) => report.rescheduled += n,
                Err(e) => self.record_failed(report, &e, "reschedule entries"),
            }
        }
        if !exhausted.is_empty() {
            let error = LastError {
                kind: "max_attempts".into(),
                message: format!("gave up after {max} attempts; last error: {failure}"),
                ..error
            };
            match self
                .store
                .dead_letter(self.token, &exhausted, &error, true, now)
                .await
            {
                Ok(n) => {
                    report.dead_lettered += n;
                    for id in &exhausted {
                        tracing::error!(outbox.entry_id = %id, event.id = %id, reason = %error.message, "Outbox entry dead-lettered");
                    }
                }
                Err(e) => self.record_failed(report, &e, "dead-letter entries"),
            }
        }
    }

    fn record_failed(&self, report: &mut BatchReport, e: &DbError, what: &str) {
        tracing::error!(
            error = %chain(e),
            "Cannot {what}; the entries stay claimed until the lease runs out, then they are published again"
        );
        if !matches!(report.stop, Some(StopReason::Database(_))) {
            report.stop = Some(StopReason::Database(chain(e)));
        }
        self.stop.cancel();
    }
}

enum Sent {
    Done,
    Split,
}

fn last_error(f: &PublishFailure) -> LastError {
    LastError {
        kind: f.kind.as_str().into(),
        status: f.status,
        code: f.code.clone(),
        message: f.message.clone(),
        request_id: f.request_id.clone(),
    }
}

/// When the next run should claim an entry that failed `attempts` times, given `now`.
#[must_use]
pub fn next_attempt_at(
    settings: &RelaySettings,
    attempts: u32,
    now: DateTime<Utc>,
    random: f64,
    retry_after: Option<Duration>,
) -> DateTime<Utc> {
    let delay = persisted_delay(
        attempts,
        settings.initial_backoff,
        settings.max_backoff,
        random,
        retry_after,
    );
    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_could_not_reach_the_topic_made_no_progress() {
        let mut r = RelayReport {
            claimed: 10,
            rescheduled: 10,
            stopped: Some(StopReason::TopicUnavailable("HTTP 503".into())),
            ..RelayReport::default()
        };
        assert!(!r.made_progress());
        r.published = 1;
        assert!(r.made_progress());
        let idle = RelayReport::default();
        assert!(idle.made_progress());
        let budget = RelayReport {
            stopped: Some(StopReason::Budget),
            ..RelayReport::default()
        };
        assert!(budget.made_progress());
        let db = RelayReport {
            stopped: Some(StopReason::Database("down".into())),
            ..RelayReport::default()
        };
        assert!(!db.made_progress());
    }

    #[test]
    fn summaries_name_the_counts_and_the_reason() {
        let r = RelayReport {
            published: 12,
            remaining: Some(0),
            duration_ms: 418,
            ..RelayReport::default()
        };
        assert_eq!(
            r.summary(),
            "outbox drain: 12 published, 0 rescheduled, 0 dead-lettered, 0 released, 0 remaining, 418 ms"
        );
        let r = RelayReport {
            stopped: Some(StopReason::Misconfigured("HTTP 401".into())),
            ..RelayReport::default()
        };
        assert!(
            r.summary().ends_with("refused the configuration: HTTP 401"),
            "{}",
            r.summary()
        );
    }
}
