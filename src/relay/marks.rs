//! The push path's marks: events Event Grid accepted are marked published many batches at a
//! time, not one update per pushed batch.
//!
//! Why: a pushed batch is small (what arrived within `OUTBOX_LINGER_MS`, ~5 events at 1,000
//! writes/s), and `mongod` pays for each update far more than its entries alone cost: the
//! fewer, larger the updates, the cheaper each entry. `make bench` (`relay-cost`), marking
//! 20,000 held entries at the push path's rate of 1,000 a second, measured `mongod` CPU per
//! entry of ~80 µs in updates of 50 (one every 50 ms), 40–46 µs in updates of 250 (every
//! 250 ms), 31–32 µs in updates of 1,000 (every second), against ~27 µs for updates of 1,000
//! sent back to back. So the marks of the batches accepted within [`MARK_EVERY`], or as soon as
//! `OUTBOX_BATCH_SIZE` events (1,000 by default) are waiting, go in one update, fenced on the
//! process's push token as before. Nothing waits for it: the writes' receipts say "published"
//! once Event Grid accepted the event, and the commit → publish lag is measured then, not at
//! the mark. A batch whose holds end sooner (a short `OUTBOX_LEASE_SECS`) is marked by its
//! deadline instead, before a drain may take its entries.
//!
//! What it changes: a process that dies after Event Grid accepted a batch and before its mark
//! publishes those events again once their holds end (the sweeper, the same ids), as it did
//! when it died between the 200 and the per-batch update; the window grows from one update to
//! at most [`MARK_EVERY`] and `OUTBOX_BATCH_SIZE` events. A mark that fails is logged and
//! dropped the same way.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::domain::EventId;
use crate::metrics::Path;
use crate::outbox::store::{ClaimToken, RelayStore};
use crate::telemetry::chain;

/// Longest a mark waits for others to share its update.
pub const MARK_EVERY: Duration = Duration::from_secs(1);

/// Events Event Grid accepted, to be marked published.
pub(super) struct Accepted {
    pub(super) store: Arc<dyn RelayStore>,
    pub(super) token: ClaimToken,
    pub(super) ids: Vec<EventId>,
    /// Each event's commit → accepted lag, recorded once it is marked.
    pub(super) lags: Vec<Duration>,
    /// The latest the mark may be made: the batch's deadline (its earliest hold's end less the
    /// lease margin), after which a drain may take the entries and publish them again. With a
    /// short `OUTBOX_LEASE_SECS` this comes before [`MARK_EVERY`].
    pub(super) mark_by: Instant,
}

/// Where pushed batches hand what Event Grid accepted.
pub(super) type MarkSender = mpsc::UnboundedSender<Accepted>;

/// Starts the marking task; it marks what it was handed and ends once every sender is
/// dropped, returning how many events it marked published.
pub(super) fn start(limit: usize) -> (MarkSender, JoinHandle<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio::spawn(run(rx, limit.max(1))))
}

async fn run(mut rx: mpsc::UnboundedReceiver<Accepted>, limit: usize) -> u64 {
    let mut waiting: Vec<Accepted> = Vec::new();
    let mut count = 0_usize;
    let mut due: Option<Instant> = None;
    let mut marked = 0;
    loop {
        let next = match due {
            None => rx.recv().await,
            Some(at) => tokio::select! {
                next = rx.recv() => next,
                () = tokio::time::sleep_until(at) => {
                    marked += mark(std::mem::take(&mut waiting)).await;
                    (count, due) = (0, None);
                    continue;
                }
            },
        };
        let Some(accepted) = next else {
            return marked + mark(waiting).await;
        };
        count += accepted.ids.len();
        let by = accepted.mark_by.min(Instant::now() + MARK_EVERY);
        due = Some(due.map_or(by, |at| at.min(by)));
        waiting.push(accepted);
        if count >= limit {
            marked += mark(std::mem::take(&mut waiting)).await;
            (count, due) = (0, None);
        }
    }
}

/// One update per push token (a process has one) for everything `waiting`.
async fn mark(waiting: Vec<Accepted>) -> u64 {
    let mut marked = 0;
    let mut groups: Vec<Accepted> = Vec::new();
    for a in waiting {
        match groups.iter_mut().find(|g| g.token == a.token) {
            Some(g) => {
                g.ids.extend(a.ids);
                g.lags.extend(a.lags);
            }
            None => groups.push(a),
        }
    }
    for g in groups {
        let now = Utc::now();
        match g.store.mark_published(g.token, &g.ids, now).await {
            Ok(n) => {
                marked += n;
                let metrics = crate::metrics::global();
                metrics.outcomes(Path::Push, n, 0, 0);
                metrics.publish_lags(g.lags.iter().copied());
                if n < g.ids.len() as u64 {
                    tracing::warn!(
                        accepted = g.ids.len(),
                        marked = n,
                        "Some pushed events had been claimed by the sweeper after their hold ran out; they may be published again"
                    );
                }
            }
            Err(e) => tracing::error!(
                error = %chain(&e),
                events = g.ids.len(),
                "Cannot mark pushed events published; the sweeper publishes them again (same ids) when their holds end"
            ),
        }
    }
    marked
}
