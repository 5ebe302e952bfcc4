//! The change-stream source (`OUTBOX_SOURCE=change-stream`), run by the tail: one event per
//! change to `MONGODB_COLLECTION` by anyone, from the position in the checkpoint.
//!
//! One reader per collection is active: the one holding the checkpoint's lease. Others stand
//! by, trying again every `OUTBOX_POLL_MS`, and take over once the lease has run out (a reader
//! that stops cleanly gives it back at once). The active reader gathers a batch (up to
//! `OUTBOX_BATCH_SIZE` changes, or what came within a moment), publishes it in order
//! ([`super::change_batch`]), and only when every change in it was accepted or dead-lettered
//! saves the position after it, fenced on its lease. A crash therefore re-reads at most the
//! batch in flight, with the same event ids. A position the server no longer has, or a stream
//! that ended (the collection dropped or renamed), stops the reader with an error naming the
//! gap and the fix: it never restarts "from now" on its own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::Document;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::change_batch::ChangeBatch;
use super::change_feed::ChangeFeed;
use super::report::{RelayReport, StopReason};
use super::time::{far_future, instant_after, millis};
use crate::config::LEASE_MARGIN_DIVISOR;
use crate::domain::{EventId, OutboxEvent};
use crate::outbox::stream::{ChangeStore, Checkpoint, Lease, Read, StreamError};
use crate::telemetry::chain;

/// Longest wait of one read for new changes (the stream's `maxAwaitTime`): how often an idle
/// reader looks, and how long a batch's first change may be waited for.
const CHANGE_WAIT: Duration = Duration::from_millis(200);
/// First pause after an empty page that came back at once (see [`empty_page_pause`]).
const FIRST_EMPTY_PAUSE: Duration = Duration::from_millis(50);

/// How long to wait before reading again after `streak` empty pages in a row that the server
/// returned at once instead of waiting up to [`CHANGE_WAIT`] for changes: a throttled Cosmos DB
/// RU stream ("HTTP error code 16500 – When the change stream is throttled, it returns an
/// empty page"), or a server that does not honour `maxAwaitTimeMS`. Doubling from
/// [`FIRST_EMPTY_PAUSE`] up to `OUTBOX_POLL_MS`, so a throttled stream is not asked again at
/// once, and an idle one costs few requests. The cursor stays where it was: nothing is skipped.
fn empty_page_pause(streak: u32, poll: Duration) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    FIRST_EMPTY_PAUSE
        .saturating_mul(1 << doublings)
        .min(poll.max(FIRST_EMPTY_PAUSE))
}

impl Relay {
    /// Reads the change stream until `shutdown`, or for `budget` when one is given (a timer
    /// invocation under the Functions host); returns what it published.
    pub(super) async fn follow_changes(
        &self,
        budget: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> RelayReport {
        let started = Instant::now();
        let end = budget
            .and_then(|b| instant_after(started, b))
            .unwrap_or_else(far_future);
        let owner = format!(
            "pid {} ({})",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let mut total = RelayReport::default();
        let mut standing_by = false;
        let needed = self.settings.time_to_claim(self.publisher.timeout());
        while !shutdown.is_cancelled() && end.saturating_duration_since(Instant::now()) > needed {
            match self.lead(&owner, end, shutdown, &mut standing_by).await {
                Ok(Some(run)) => {
                    total.merge(&run);
                    if matches!(
                        run.stopped,
                        Some(
                            StopReason::PositionLost(_)
                                | StopReason::Misconfigured(_)
                                | StopReason::StreamRefused(_)
                        )
                    ) {
                        break;
                    }
                }
                Ok(None) => total.stopped = None,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "Cannot reach the change stream's checkpoint; trying again");
                    total.stopped = Some(StopReason::Database(chain(&e)));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll) => {}
                () = tokio::time::sleep_until(end) => {}
                () = shutdown.cancelled() => {}
            }
        }
        if let Some(StopReason::PositionLost(why) | StopReason::StreamRefused(why)) = &total.stopped
        {
            tracing::error!("The change stream stopped: {why}");
        }
        total.duration_ms = millis(started.elapsed());
        total
    }

    /// Takes the lease if it is free and reads while it lasts; `None` when another reader
    /// holds it.
    async fn lead(
        &self,
        owner: &str,
        end: Instant,
        shutdown: &CancellationToken,
        standing_by: &mut bool,
    ) -> Result<Option<RelayReport>, crate::db::DbError> {
        let store = self.storage.change_store().await?;
        let Some((lease, checkpoint)) = store
            .acquire(owner, self.settings.lease, Utc::now())
            .await?
        else {
            if !*standing_by {
                tracing::info!(collection = %store.collection(), "Another reader holds the change stream's lease; standing by");
            }
            *standing_by = true;
            return Ok(None);
        };
        *standing_by = false;
        tracing::info!(collection = %store.collection(), owner, position_time = ?checkpoint.position_time, "Reading the change stream");
        let mut reader = Reader {
            relay: self,
            store: &store,
            lease,
            checkpoint,
            report: RelayReport::default(),
            end,
            shutdown,
        };
        let stop = match reader.follow().await {
            Ok(()) => None,
            Err(StreamError::LeaseLost { collection }) => {
                tracing::warn!(%collection, "Another reader took over the change stream's lease; standing by");
                None
            }
            Err(StreamError::PositionLost(why)) => Some(StopReason::PositionLost(why)),
            Err(StreamError::Refused(why)) => Some(StopReason::StreamRefused(why)),
            Err(StreamError::Db(e)) => {
                tracing::warn!(error = %chain(&e), "The change stream failed; opening it again from the checkpoint");
                Some(StopReason::Database(chain(&e)))
            }
        };
        if let Err(e) = store.release(&reader.lease, Utc::now()).await {
            tracing::debug!(error = %chain(&e), "Cannot give the change stream's lease back; it runs out on its own");
        }
        let mut report = reader.report;
        if report.stopped.is_none() {
            report.stopped = stop;
        }
        report.log();
        Ok(Some(report))
    }
}

/// The active reader: the lease it holds and what it did.
struct Reader<'a> {
    relay: &'a Relay,
    store: &'a ChangeStore,
    lease: Lease,
    checkpoint: Checkpoint,
    report: RelayReport,
    end: Instant,
    shutdown: &'a CancellationToken,
}

/// A gathered batch: the events, the raw changes, and why the stream ended after it, if it did.
#[derive(Default)]
struct Gathered {
    events: Vec<OutboxEvent>,
    raw: Vec<Document>,
    ended: Option<String>,
    /// The batch ended on an empty page the server returned at once (throttled).
    empty_at_once: bool,
    /// The stream failed after the batch's changes: settle them, then open it again.
    failed: Option<StreamError>,
}

impl Reader<'_> {
    /// Reads and publishes batch after batch while the lease, the budget and the stream last.
    /// `Ok` when the budget ended or shutdown began; the report says why a batch stopped.
    async fn follow(&mut self) -> Result<(), StreamError> {
        let opened = self.store.open(&self.checkpoint, CHANGE_WAIT).await?;
        let mut changes = ChangeFeed::start(self.store.clone(), opened, self.checkpoint.clone());
        if !self.checkpoint.is_set() {
            // The first reader ever starts at the present: save it at once, so a crash before
            // the first change cannot move the start past changes made meanwhile.
            if let Some(start) = changes.position() {
                self.store
                    .save(
                        &mut self.lease,
                        self.relay.settings.lease,
                        Some((&start, None)),
                        Utc::now(),
                    )
                    .await?;
                tracing::info!(collection = %self.store.collection(), "No saved position: the change stream starts at the present");
            }
        }
        let mut saved_at = Instant::now();
        let mut requeue_checked: Option<Instant> = None;
        let mut empty_streak = 0_u32;
        let needed = self
            .relay
            .settings
            .time_to_claim(self.relay.publisher.timeout());
        while !self.shutdown.is_cancelled()
            && self.end.saturating_duration_since(Instant::now()) > needed
        {
            if requeue_checked.is_none_or(|t| t.elapsed() >= self.relay.settings.poll) {
                requeue_checked = Some(Instant::now());
                if !self.republish().await? {
                    return Ok(());
                }
            }
            let batch = self.gather(&mut changes).await;
            let settled_some = !batch.events.is_empty();
            if settled_some {
                self.renew_if_half_gone().await?;
                if !self.publish(batch.events, batch.raw).await {
                    return Ok(());
                }
            }
            // A failed stream first saves what it settled (on Cosmos DB RU, the page it had
            // read to its end), so the stream opened again does not read it twice.
            if settled_some
                || batch.failed.is_some()
                || saved_at.elapsed() >= self.relay.settings.lease / 3
            {
                // Everything read so far is settled: the position moves past it (on an idle
                // stream, to the server's scan position, which keeps it inside the history).
                if let Some(position) = changes.position() {
                    let at = self.checkpoint.position_time;
                    self.store
                        .save(
                            &mut self.lease,
                            self.relay.settings.lease,
                            Some((&position, at)),
                            Utc::now(),
                        )
                        .await?;
                    self.checkpoint.token = Some(position);
                    saved_at = Instant::now();
                }
            }
            if let Some(failed) = batch.failed {
                return Err(failed);
            }
            if batch.empty_at_once {
                empty_streak = empty_streak.saturating_add(1);
                let pause = empty_page_pause(empty_streak, self.relay.settings.poll);
                tracing::debug!(
                    empty_pages = empty_streak,
                    pause_ms = millis(pause),
                    "The change stream returned an empty page at once (throttled); waiting before reading on from the same position"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = self.shutdown.cancelled() => {}
                }
            } else {
                empty_streak = 0;
            }
            if let Some(why) = batch.ended {
                return Err(StreamError::PositionLost(format!(
                    "the change stream of {}.{} ended ({why}); changes after it are not in this stream. Delete the checkpoint document {:?} to start a new stream from the present (and publish the current documents with `handler outbox resync` if the gap matters)",
                    self.store.database(),
                    self.store.collection(),
                    self.store.collection(),
                )));
            }
        }
        Ok(())
    }

    /// Reads up to a batch of changes: the first change is waited for up to the stream's wait;
    /// after it, what arrives within `OUTBOX_LINGER_MS` joins the batch (as on the push path),
    /// until the batch is full or the stream ends.
    ///
    /// The stream is read by its own task ([`ChangeFeed`]), so cutting the wait short at the
    /// linger's end never drops a read half done. A stream error ends the batch and is kept
    /// in it ([`Gathered::failed`]): the changes before it are still published.
    async fn gather(&self, changes: &mut ChangeFeed) -> Gathered {
        let limit = self.relay.settings.batch_size.get() as usize;
        let mut batch = Gathered::default();
        let mut linger_end: Option<Instant> = None;
        let (database, collection) = (self.store.database(), self.store.collection());
        loop {
            let next = match linger_end {
                None => changes.next().await,
                // Cancel-safe: a read not taken now is the next batch's first.
                Some(end) => match tokio::time::timeout_at(end, changes.next()).await {
                    Ok(next) => next,
                    Err(_lingered) => break,
                },
            };
            let next = match next {
                Ok(next) => next,
                Err(e) => {
                    batch.failed = Some(e);
                    break;
                }
            };
            let Some(read) = next.read else {
                // Nothing within the wait; an empty page at once is a throttled stream.
                batch.empty_at_once = batch.events.is_empty() && next.took < CHANGE_WAIT / 2;
                break;
            };
            match read {
                Read::Change(change, raw) => {
                    batch
                        .events
                        .push(change.event(database, collection, &self.relay.event_types));
                    batch.raw.push(raw);
                    linger_end.get_or_insert_with(|| Instant::now() + self.relay.settings.linger);
                }
                Read::Skip => {}
                Read::End(why) => {
                    batch.ended = Some(why);
                    break;
                }
            }
            if batch.events.len() >= limit || self.shutdown.is_cancelled() {
                break;
            }
        }
        batch
    }

    /// Publishes one batch; `true` when it is settled (every change accepted or
    /// dead-lettered), else the report says why it stopped.
    async fn publish(&mut self, events: Vec<OutboxEvent>, raw: Vec<Document>) -> bool {
        let count = events.len() as u64;
        let oldest = events.iter().map(|e| e.event_time).min();
        let newest = events.iter().map(|e| e.event_time).max();
        let settled = ChangeBatch {
            publisher: &self.relay.publisher,
            store: self.store,
            events,
            raw,
            deadline: self.deadline(),
            stop: self.shutdown,
        }
        .run()
        .await;
        self.report.requests += settled.requests;
        self.report.published += settled.published;
        self.report.dead_lettered += settled.dead_lettered;
        if let Some(stop) = settled.stop {
            self.report.released += count - settled.published - settled.dead_lettered;
            self.report.stopped = Some(stop);
            return false;
        }
        self.report.claimed += count;
        let now = Utc::now();
        self.report.max_lag_ms = self.report.max_lag_ms.max(oldest.map(|t| lag_ms(now, t)));
        self.checkpoint.position_time = self.checkpoint.position_time.max(newest);
        true
    }

    /// Publishes the dead letters an operator requeued (`handler outbox requeue`), before
    /// reading on; `false` when that stopped (the report says why). They come after changes
    /// published since, so consumers see them out of order: an operator's decision.
    async fn republish(&mut self) -> Result<bool, StreamError> {
        let limit = i64::from(self.relay.settings.batch_size.get());
        let requeued = self.store.requeued(limit).await?;
        if requeued.is_empty() {
            return Ok(true);
        }
        let (database, collection) = (self.store.database(), self.store.collection());
        let (events, raw): (Vec<OutboxEvent>, Vec<Document>) = requeued
            .into_iter()
            .map(|(change, raw)| {
                (
                    change.event(database, collection, &self.relay.event_types),
                    raw,
                )
            })
            .unzip();
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        self.renew_if_half_gone().await?;
        if !self.publish(events, raw).await {
            return Ok(false);
        }
        let n = self.store.mark_republished(&ids, Utc::now()).await?;
        tracing::info!(
            published = n,
            "Published requeued dead letters of the change stream again"
        );
        Ok(true)
    }

    /// Renews the lease when less than half of it is left, so a batch never outlives it.
    async fn renew_if_half_gone(&mut self) -> Result<(), StreamError> {
        let left = (self.lease.until - Utc::now()).to_std().unwrap_or_default();
        if left < self.relay.settings.lease / 2 {
            self.store
                .save(&mut self.lease, self.relay.settings.lease, None, Utc::now())
                .await?;
        }
        Ok(())
    }

    /// No request may end after the lease (less a margin) or the budget.
    fn deadline(&self) -> Instant {
        let margin = self.relay.settings.lease / LEASE_MARGIN_DIVISOR;
        let left = (self.lease.until - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(margin);
        instant_after(Instant::now(), left).map_or(self.end, |end| end.min(self.end))
    }
}

/// Milliseconds from `at` to `now`, 0 when `at` is later.
fn lag_ms(now: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
    u64::try_from((now - at).num_milliseconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_pages_at_once_are_waited_out_longer_each_time_up_to_the_poll() {
        let poll = Duration::from_secs(1);
        let pauses: Vec<u64> = (1..=7).map(|n| millis(empty_page_pause(n, poll))).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(empty_page_pause(u32::MAX, poll), poll);
        // A poll shorter than the first pause does not make it spin.
        assert_eq!(
            empty_page_pause(1, Duration::from_millis(1)),
            FIRST_EMPTY_PAUSE
        );
    }
}
