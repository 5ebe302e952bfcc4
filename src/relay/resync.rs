//! `handler outbox resync`: after the change stream lost its position, publish every document
//! as it is (`…DocumentSnapshot`), then let the stream resume from a position recorded
//! *before* the snapshot began — the way Debezium snapshots. A change made during the snapshot
//! is therefore announced by the stream afterwards too (at least once, never lost).
//!
//! It holds the checkpoint's lease while it runs, so no reader reads meanwhile; it refuses to
//! start while a reader holds it.

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::change_batch::ChangeBatch;
use super::report::StopReason;
use super::time::instant_after;
use crate::config::LEASE_MARGIN_DIVISOR;
use crate::db::DbError;
use crate::outbox::stream::{ChangeStore, Lease, StreamError};
use crate::progress::Progress;

/// What a resync did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Resynced {
    /// Documents read.
    pub documents: u64,
    /// Snapshot events Event Grid accepted.
    pub published: u64,
    /// Snapshot events dead-lettered.
    pub dead_lettered: u64,
}

/// Why a resync did not finish; the checkpoint is then as it was.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// A reader holds the change stream's lease.
    #[error(
        "a reader holds the change stream's lease; stop the relay (or wait until its lease runs out) and run resync again"
    )]
    ReaderActive,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Publishing stopped (Event Grid down or refusing the configuration, time, shutdown).
    #[error("publishing stopped: {0:?}; nothing was recorded, run resync again")]
    Stopped(StopReason),
}

impl Relay {
    /// Publishes every document as a snapshot event, then sets the stream's position to the
    /// one recorded before the snapshot began. `progress` is told the documents'
    /// estimated number, then each batch's count.
    ///
    /// # Errors
    /// See [`ResyncError`].
    pub async fn resync(
        &self,
        shutdown: &CancellationToken,
        progress: &dyn Progress,
    ) -> Result<Resynced, ResyncError> {
        let store = self.storage.change_store().await?;
        let owner = format!("resync, pid {}", std::process::id());
        let Some((mut lease, _)) = store
            .acquire(&owner, self.settings.lease, Utc::now())
            .await?
        else {
            return Err(ResyncError::ReaderActive);
        };
        let outcome = self.snapshot(&store, &mut lease, shutdown, progress).await;
        let _ = store.release(&lease, Utc::now()).await;
        outcome
    }

    async fn snapshot(
        &self,
        store: &ChangeStore,
        lease: &mut Lease,
        shutdown: &CancellationToken,
        progress: &dyn Progress,
    ) -> Result<Resynced, ResyncError> {
        let position = store.present_position().await?;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let mut snapshot = store.snapshot().await?;
        progress.start(store.estimated_documents().await?);
        let mut done = Resynced::default();
        let limit = self.settings.batch_size.get() as usize;
        let (database, collection) = (store.database(), store.collection());
        loop {
            let batch = snapshot.next_batch(&name, limit).await?;
            if batch.is_empty() {
                break;
            }
            store
                .save(lease, self.settings.lease, None, Utc::now())
                .await?;
            let count = batch.len() as u64;
            let (events, raw) = batch
                .into_iter()
                .map(|(c, d)| (c.event(database, collection, &self.event_types), d))
                .unzip();
            let settled = ChangeBatch {
                publisher: &self.publisher,
                store,
                events,
                raw,
                deadline: self.lease_deadline(lease),
                stop: shutdown,
            }
            .run()
            .await;
            done.published += settled.published;
            done.dead_lettered += settled.dead_lettered;
            if let Some(stop) = settled.stop {
                return Err(ResyncError::Stopped(stop));
            }
            done.documents += count;
            progress.advance(count);
        }
        store
            .save(
                lease,
                self.settings.lease,
                Some((&position, None)),
                Utc::now(),
            )
            .await?;
        Ok(done)
    }

    /// No request may end after the lease, less a margin.
    fn lease_deadline(&self, lease: &Lease) -> Instant {
        let left = (lease.until - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.settings.lease / LEASE_MARGIN_DIVISOR);
        instant_after(Instant::now(), left).unwrap_or_else(Instant::now)
    }
}
