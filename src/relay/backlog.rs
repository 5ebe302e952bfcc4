//! The backlog sampler: how much is waiting, read from the database on an interval (one task
//! per process, never per request) and recorded in the metrics.

use std::time::Duration;

use chrono::Utc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Relay;
use crate::db::DbError;
use crate::metrics::{self, Backlog};
use crate::telemetry::chain;

impl Relay {
    /// Reads the backlog (pending, due, dead letters, oldest pending age) every `every` until
    /// `shutdown`, recording each reading. A failed reading is logged once until one succeeds
    /// again; the gauges keep their last value meanwhile.
    pub async fn sample_backlog(&self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match self.read_backlog().await {
                Ok(backlog) => {
                    metrics::global().backlog(&backlog);
                    if failing {
                        tracing::info!("The outbox backlog can be read again");
                    }
                    failing = false;
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %chain(&e), "Cannot read the outbox backlog for the metrics; trying again every interval");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// One reading of the backlog, through the placement's relay side: the entries (from
    /// the claim index) and, under `embedded`, the events pending inside documents.
    async fn read_backlog(&self) -> Result<Backlog, DbError> {
        let store = self.storage.ready().await?.relay;
        let now = Utc::now();
        let counts = store.backlog(now).await?;
        Ok(Backlog {
            pending: counts.pending,
            due: counts.due,
            dead: counts.dead,
            oldest_pending_age: counts
                .oldest_pending_created_at
                .map(|t| (now - t).to_std().unwrap_or_default()),
        })
    }
}
