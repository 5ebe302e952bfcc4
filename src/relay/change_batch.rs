//! One batch of changes read from the change stream, being published: requests of at most
//! 1 MiB and 5,000 events, quick retries, a refused request split in halves until the refused
//! event is found, which is dead-lettered with its change. The batch is *settled* when every
//! change was accepted or dead-lettered: only then may the checkpoint move past it.
//!
//! The request mechanics are [`crate::publisher::batch`]'s and the retry timing
//! [`crate::publisher::backoff`]'s, as for outbox entries; unlike [`super::in_flight`] there
//! is nothing to record per event: the checkpoint is the record.

use std::ops::Range;
use std::time::Duration;

use chrono::Utc;
use mongodb::bson::Document;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::StopReason;
use super::time::ends_by;
use crate::domain::OutboxEvent;
use crate::outbox::LastError;
use crate::outbox::stream::ChangeStore;
use crate::publisher::backoff::quick_retry_delay;
use crate::publisher::batch::{self, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS};
use crate::publisher::{Outcome, PublishFailure, Publisher};
use crate::telemetry::chain;

/// A batch of changes: each event with the raw change it announces.
pub(super) struct ChangeBatch<'a> {
    pub(super) publisher: &'a Publisher,
    pub(super) store: &'a ChangeStore,
    pub(super) events: Vec<OutboxEvent>,
    pub(super) raw: Vec<Document>,
    /// No request may end after this (the lease's end, less a margin, or the budget's).
    pub(super) deadline: Instant,
    pub(super) stop: &'a CancellationToken,
}

/// What became of a batch.
#[derive(Debug, Default)]
pub(super) struct Settled {
    pub(super) published: u64,
    pub(super) dead_lettered: u64,
    pub(super) requests: u64,
    /// Why the batch stopped before every change was settled; `None` when it was settled.
    pub(super) stop: Option<StopReason>,
}

impl ChangeBatch<'_> {
    /// Publishes the batch in order, splitting refused requests; stops at the first request
    /// that can be neither published nor dead-lettered.
    pub(super) async fn run(self) -> Settled {
        let rendered: Vec<Vec<u8>> = self
            .events
            .iter()
            .map(|e| self.publisher.render(e))
            .collect();
        let sizes: Vec<usize> = rendered.iter().map(Vec::len).collect();
        let mut pending: Vec<Range<usize>> =
            batch::pack(&sizes, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS)
                .into_iter()
                .rev()
                .collect();
        let mut settled = Settled::default();
        while let Some(range) = pending.pop() {
            if self.stop.is_cancelled() {
                settled.stop = Some(StopReason::Shutdown);
                break;
            }
            let alone_too_large = (range.len() == 1)
                .then(|| PublishFailure::too_large(sizes[range.start]))
                .flatten();
            if let Some(error) = alone_too_large {
                if !self.dead_letter(range.start, &error, &mut settled).await {
                    break;
                }
                continue;
            }
            match self.publish(&rendered, range.clone(), &mut settled).await {
                Sent::Published => {
                    settled.published += range.len() as u64;
                    let now = chrono::Utc::now();
                    for event in &self.events[range] {
                        let lag = (now - event.event_time).to_std().unwrap_or_default();
                        crate::metrics::global().change_stream_lag(lag);
                    }
                }
                Sent::Split => {
                    let mid = range.start + range.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
                Sent::Refused(failure) => {
                    if !self.dead_letter(range.start, &failure, &mut settled).await {
                        break;
                    }
                }
                Sent::Stopped => break,
            }
        }
        crate::metrics::global().outcomes(
            crate::metrics::Path::ChangeStream,
            settled.published,
            0,
            settled.dead_lettered,
        );
        settled
    }

    /// Sends one request with quick retries.
    async fn publish(
        &self,
        rendered: &[Vec<u8>],
        range: Range<usize>,
        settled: &mut Settled,
    ) -> Sent {
        let mut retries = 0;
        loop {
            if !ends_by(Instant::now(), self.publisher.timeout(), self.deadline) {
                settled.stop = Some(StopReason::Budget);
                return Sent::Stopped;
            }
            let body = batch::body(rendered[range.clone()].iter().map(Vec::as_slice));
            settled.requests += 1;
            match self.publisher.send(body, range.len()).await {
                Outcome::Published => return Sent::Published,
                Outcome::Rejected { failure } if range.len() > 1 => {
                    tracing::warn!(events = range.len(), error = %failure, "Event Grid rejected a request of changes; splitting it to find the offending change");
                    return Sent::Split;
                }
                Outcome::Rejected { failure } => return Sent::Refused(failure),
                Outcome::Halt { failure } => {
                    tracing::error!(error = %failure, "Event Grid refused the request as misconfigured; the change stream stops at its checkpoint");
                    settled.stop = Some(StopReason::Misconfigured(failure.to_string()));
                    return Sent::Stopped;
                }
                Outcome::Retry {
                    retry_after,
                    failure,
                } => {
                    retries += 1;
                    if !self.wait_to_retry(retries, retry_after, &failure).await {
                        settled.stop = Some(StopReason::TopicUnavailable(failure.to_string()));
                        return Sent::Stopped;
                    }
                }
            }
        }
    }

    /// Waits before quick retry number `retry`; `false` when out of retries or time.
    async fn wait_to_retry(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        failure: &PublishFailure,
    ) -> bool {
        tracing::warn!(error = %failure, attempt = retry, "Publishing changes failed; retrying with the same event ids");
        let wait = quick_retry_delay(retry, rand::random(), retry_after);
        let fits = ends_by(
            Instant::now(),
            wait.saturating_add(self.publisher.timeout()),
            self.deadline,
        );
        if retry > self.publisher.retries() || !fits {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// Dead-letters change `i`; `false` (with the stop reason) when that cannot be recorded.
    async fn dead_letter(&self, i: usize, error: &LastError, settled: &mut Settled) -> bool {
        let event = &self.events[i];
        match self
            .store
            .dead_letter(event, &self.raw[i], error, Utc::now())
            .await
        {
            Ok(()) => {
                settled.dead_lettered += 1;
                tracing::error!(event.id = %event.id, subject = %event.subject, reason = %error.message, "Change dead-lettered");
                true
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), "Cannot dead-letter a change; the stream stops at its checkpoint");
                settled.stop = Some(StopReason::Database(chain(&e)));
                false
            }
        }
    }
}

/// What became of one request.
enum Sent {
    Published,
    Split,
    Refused(PublishFailure),
    Stopped,
}
