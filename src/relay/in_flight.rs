//! One claimed batch being published: its requests, and the record of each outcome on the
//! entries, fenced by the claim's token.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::marks::{Accepted, MarkSender};
use super::report::{BatchReport, StopReason};
use super::time::{ends_by, next_attempt_at};
use crate::config::RelaySettings;
use crate::db::DbError;
use crate::domain::EventId;
use crate::metrics::Path;
use crate::outbox::store::{ClaimToken, RelayStore};
use crate::outbox::{ClaimedEntry, LastError};
use crate::publisher::backoff::quick_retry_delay;
use crate::publisher::batch::{self, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS};
use crate::publisher::{FailureKind, Outcome, PublishFailure, Publisher};
use crate::telemetry::chain;

/// A claimed batch being published, with what is shared by its requests.
pub(super) struct InFlight {
    pub(super) store: std::sync::Arc<dyn RelayStore>,
    pub(super) publisher: Publisher,
    pub(super) settings: RelaySettings,
    pub(super) token: ClaimToken,
    /// End of the claim's lease.
    pub(super) lease_until: DateTime<Utc>,
    /// Whether every entry is due exactly at `lease_until` (a range claim), so that the whole
    /// claim can be marked published with one update over an index range.
    pub(super) ranged: bool,
    /// No request may end after this: the earlier of the lease's end (minus a margin) and the
    /// run's deadline.
    pub(super) deadline: Instant,
    pub(super) entries: Vec<ClaimedEntry>,
    /// The entries as they go on the wire, in the same order.
    pub(super) rendered: Vec<Vec<u8>>,
    /// Stops the whole run (misconfiguration, topic down, shutdown).
    pub(super) stop: CancellationToken,
    /// The push path: what Event Grid accepted is marked by its marking task, together with
    /// other batches' (see [`super::marks`]), instead of by one update here.
    pub(super) marks: Option<MarkSender>,
}

impl InFlight {
    fn ids(&self, range: Range<usize>) -> Vec<EventId> {
        self.entries[range].iter().map(|e| e.event.id).collect()
    }

    /// [`Self::run`], then counts the outcomes in the metrics as published by `path`.
    pub(super) async fn run_on(self, path: Path) -> BatchReport {
        let report = self.run().await;
        report.record_metrics(path);
        report
    }

    /// Publishes the batch in requests Event Grid accepts, splitting rejected ones, and
    /// records every outcome; gives the rest back untouched once the run stops.
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
            let alone_too_large = (range.len() == 1)
                .then(|| PublishFailure::too_large(sizes[range.start]))
                .flatten();
            if let Some(error) = alone_too_large {
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
        if let Some(marks) = self.marks.as_ref().filter(|_| !self.ranged) {
            let handed = Accepted {
                store: std::sync::Arc::clone(&self.store),
                token: self.token,
                ids: (report.accepted.iter())
                    .flat_map(|r| self.ids(r.clone()))
                    .collect(),
                lags: self.lags(&report.accepted, Utc::now()).collect(),
                mark_by: self.deadline,
            };
            if marks.send(handed).is_ok() {
                report.handed_to_marks += accepted as u64;
                return;
            }
            // The marking task has stopped (shutdown): mark here.
        }
        let now = Utc::now();
        let (expected, marked) = if self.ranged && accepted == self.entries.len() {
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
                crate::metrics::global().publish_lags(self.lags(&report.accepted, now));
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

    /// Each accepted entry's time from its change's commit to `now` (its commit → publish lag).
    fn lags<'a>(
        &'a self,
        accepted: &'a [Range<usize>],
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = Duration> + 'a {
        accepted
            .iter()
            .flat_map(|r| self.entries[r.clone()].iter())
            .map(move |e| (now - e.event.event_time).to_std().unwrap_or_default())
    }

    /// Publishes one request (with quick retries) and records the outcome.
    async fn publish(&self, range: Range<usize>, report: &mut BatchReport) -> Sent {
        let mut retries = 0;
        loop {
            if !ends_by(Instant::now(), self.publisher.timeout(), self.deadline) {
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
            match self.publisher.send(body, range.len()).await {
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
                    self.dead_letter(range, &failure, true, report).await;
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
                    if self
                        .wait_to_retry(range.len(), retries, retry_after, &failure)
                        .await
                    {
                        continue;
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

    /// After a transient failure of `events`: waits before quick retry number `retry` when
    /// retries are left and the retry can still end before the deadline. `false` when it
    /// should not be retried now (or the run stopped while waiting).
    async fn wait_to_retry(
        &self,
        events: usize,
        retry: u32,
        retry_after: Option<Duration>,
        failure: &PublishFailure,
    ) -> bool {
        let wait = quick_retry_delay(retry, rand::random(), retry_after);
        // A server's `Retry-After` can be anything; an absurd one simply does not fit.
        let fits = ends_by(
            Instant::now(),
            wait.saturating_add(self.publisher.timeout()),
            self.deadline,
        );
        if failure.kind == FailureKind::UnknownOutcome {
            tracing::warn!(events, error = %failure, "Publish outcome unknown; retrying with the same event ids");
        } else {
            tracing::warn!(events, error = %failure, attempt = retry, "Publish failed; retrying");
        }
        if retry > self.publisher.retries() || !fits {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.stop.cancelled() => false,
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
                .reschedule(self.token, &ids, next, failure, now)
                .await
            {
                Ok(n) => report.rescheduled += n,
                Err(e) => self.record_failed(report, &e, "reschedule entries"),
            }
        }
        if !exhausted.is_empty() {
            let error = LastError {
                kind: FailureKind::MaxAttempts,
                message: format!("gave up after {max} attempts; last error: {failure}"),
                ..failure.clone()
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

/// What became of a request's events.
enum Sent {
    /// Published, recorded, or given back.
    Done,
    /// Rejected as a whole: split it to find the offending events.
    Split,
}
