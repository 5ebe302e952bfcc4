//! The push path's publisher: events handed over by this process's committed writes (see
//! [`crate::push`]) are published at once, without waiting for a drain.
//!
//! The loop takes the first waiting event, lingers up to `OUTBOX_LINGER_MS` for more to share
//! its request (or until a batch is full), and publishes the batch exactly as a drain publishes
//! a claimed one ([`InFlight`]): the entries are already held by this process's token, so the
//! batch *is* a claim. What Event Grid accepted is marked published by one update fenced on
//! that token, shared by the batches accepted within a second ([`super::marks`]). That is the push
//! path's whole database cost per event: the claim a drain makes (find, take, read back) never
//! happens.
//!
//! Up to `OUTBOX_PUBLISH_CONCURRENCY` batches are published at once. A failed publish is
//! recorded as a drain records it (reschedule with backoff, dead letter, release); from then on
//! the sweeper owns the entry.

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::report::{BatchReport, RelayReport};
use super::time::far_future;
use crate::outbox::ClaimedEntry;
use crate::outbox::store::{Claim, ClaimToken};
use crate::push::{Inbox, Pushed};
use crate::telemetry::chain;

/// What the push loop did over its life, logged when it stops.
#[derive(Debug, Default)]
struct Totals {
    report: RelayReport,
    batches: u64,
}

impl Relay {
    /// Publishes what this process's writes hand over until `shutdown`; then publishes what
    /// is already queued within the stop's grace, and returns. Events still queued when the
    /// process dies are published by the sweeper once their holds end.
    pub async fn push(&self, mut inbox: Inbox, shutdown: CancellationToken) {
        let mut in_flight: JoinSet<BatchReport> = JoinSet::new();
        let mut totals = Totals::default();
        let (marks, marking) = super::marks::start(self.settings.batch_size.get() as usize);
        tracing::info!(
            linger_ms = super::time::millis(self.settings.linger),
            "Push path on: committed events are published at once"
        );
        while let Some(batch) = self.next_batch(&mut inbox, &shutdown).await {
            while in_flight.len() >= self.settings.publish_concurrency.get() {
                if let Some(done) = in_flight.join_next().await {
                    totals.absorb(done);
                }
            }
            let store = match self.storage.ready().await {
                Ok(ready) => ready.store,
                Err(e) => {
                    tracing::warn!(
                        error = %chain(&e),
                        events = batch.len(),
                        "Cannot push events: the database is unavailable; the sweeper publishes them when their holds end"
                    );
                    continue;
                }
            };
            let (claim, receipts) = held_claim(inbox.token, batch);
            let mut flight = self.in_flight(claim, store, far_future(), CancellationToken::new());
            flight.marks = Some(marks.clone());
            in_flight.spawn(async move {
                let report = flight.run_on(crate::metrics::Path::Push).await;
                if report.all_published(receipts.len()) {
                    for receipt in receipts {
                        // A write that stopped waiting has dropped its end: nothing to tell.
                        let _ = receipt.send(());
                    }
                }
                report
            });
            totals.batches += 1;
        }
        while let Some(done) = in_flight.join_next().await {
            totals.absorb(done);
        }
        // Every batch has handed over its marks: the marking task marks the rest and ends.
        drop(marks);
        match marking.await {
            Ok(marked) => totals.report.published += marked,
            Err(e) => {
                tracing::error!(error = %e, "The push path's marking task failed; the sweeper publishes its events again when their holds end")
            }
        }
        let r = &totals.report;
        tracing::info!(
            batches = totals.batches,
            published = r.published,
            rescheduled = r.rescheduled,
            dead_lettered = r.dead_lettered,
            released = r.released,
            "Push path stopped"
        );
    }

    /// The next batch: the first event to arrive, and what follows it within the linger, up
    /// to a batch. `None` once shutdown begins and nothing is queued, or the hand-off closed.
    async fn next_batch(
        &self,
        inbox: &mut Inbox,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Pushed>> {
        let first = tokio::select! {
            biased;
            first = inbox.queue.recv() => first?,
            () = shutdown.cancelled() => inbox.queue.try_recv().ok()?,
        };
        let limit = self.settings.batch_size.get() as usize;
        let mut batch = Vec::with_capacity(limit.min(64));
        batch.push(first);
        let linger_end = Instant::now() + self.settings.linger;
        while batch.len() < limit {
            // Whatever is queued already goes without waiting.
            if let Ok(next) = inbox.queue.try_recv() {
                batch.push(next);
                continue;
            }
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                next = inbox.queue.recv() => match next {
                    Some(next) => batch.push(next),
                    None => break,
                },
                () = tokio::time::sleep_until(linger_end) => break,
            }
        }
        Some(batch)
    }
}

/// The pushed events as the claim their holds make: fenced by the process's token, lasting
/// until the earliest hold ends, and marked by id (their holds end at different times); and
/// the receipts of the writes that may wait for them.
fn held_claim(token: ClaimToken, batch: Vec<Pushed>) -> (Claim, Vec<oneshot::Sender<()>>) {
    let lease_until = batch
        .iter()
        .map(|p| p.hold.until)
        .min()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let (entries, receipts) = batch
        .into_iter()
        .map(|p| {
            let entry = ClaimedEntry {
                event: p.event,
                attempts: 0,
            };
            (entry, p.published)
        })
        .unzip();
    let claim = Claim {
        token,
        lease_until,
        entries,
        contended: 0,
        ranged: false,
    };
    (claim, receipts)
}

impl Totals {
    fn absorb(&mut self, done: Result<BatchReport, tokio::task::JoinError>) {
        match done {
            Ok(batch) => {
                self.report.add(&batch);
                if let Some(reason) = &batch.stop {
                    tracing::warn!(
                        reason = %reason,
                        "A pushed batch was not fully published; the sweeper takes what is left"
                    );
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "A push batch task failed; its events are published by the sweeper when their holds end"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventId, OutboxEvent};
    use crate::outbox::store::Hold;

    fn pushed(n: u64, until_secs: i64) -> Pushed {
        Pushed {
            published: oneshot::channel().0,
            event: OutboxEvent::new(
                EventId::for_change("d", "c", "1", "l", n),
                "c/1".into(),
                "T".into(),
                "1.0".into(),
                serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                Utc::now(),
            ),
            hold: Hold {
                token: ClaimToken::new(),
                until: DateTime::from_timestamp(until_secs, 0).unwrap(),
            },
        }
    }

    #[test]
    fn a_pushed_batch_is_a_claim_until_its_earliest_hold_marked_by_id() {
        let token = ClaimToken::new();
        let (claim, receipts) =
            held_claim(token, vec![pushed(1, 300), pushed(2, 100), pushed(3, 200)]);
        assert_eq!(receipts.len(), 3);
        assert_eq!(claim.token, token);
        assert_eq!(claim.lease_until, DateTime::from_timestamp(100, 0).unwrap());
        assert!(!claim.ranged, "holds end at different times: mark by id");
        let versions: Vec<_> = claim.entries.iter().map(|e| e.event.id).collect();
        assert_eq!(
            versions,
            (1..=3)
                .map(|n| EventId::for_change("d", "c", "1", "l", n))
                .collect::<Vec<_>>(),
            "commit order is kept"
        );
        assert!(claim.entries.iter().all(|e| e.attempts == 0));
    }
}
