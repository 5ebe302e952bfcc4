//! The outbox's storage as the rest of the product sees it: the database, prepared once for
//! its placement, handing out the write side (for documents) and the relay side (for the relay
//! and operators).

use std::sync::Arc;

use mongodb::Database;
use tokio::sync::OnceCell;

use super::Placement;
use super::placement;
use super::store::{Expiry, OutboxStore, RelayStore};
use super::stream::{self, ChangeStore};
use super::write::PlacementStore;
use crate::config::{MongoSettings, StreamTarget};
use crate::db::{Db, DbError};

/// The storage, prepared on first use.
///
/// The first successful [`Storage::ready`] decides the placement (probing the server for
/// `auto`), creates the collections and indexes, and keeps the result for the life of the
/// process; until then every call tries again. Nothing connects before the first call, so the
/// handler answers the host's readiness probe at once.
#[derive(Debug)]
pub struct Storage {
    db: Db,
    prepared: OnceCell<Prepared>,
    /// Whose change-stream rules apply, decided on first use of the change stream.
    stream_target: OnceCell<StreamTarget>,
}

/// What preparation settled.
#[derive(Debug, Clone)]
struct Prepared {
    writer: Arc<dyn PlacementStore>,
    entries: OutboxStore,
    relay: Arc<dyn RelayStore>,
    expiry: Expiry,
}

/// The storage, ready for use: collections and indexes exist, the placement is decided.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where entries live.
    pub placement: Placement,
    /// Name of the collection holding entries and idempotency records.
    pub entries_collection: String,
    /// Whether TTL indexes remove expired data, or the relay must.
    pub expiry: Expiry,
    /// The write side: documents with their entries and idempotency records.
    pub writer: Arc<dyn PlacementStore>,
    /// The entries' collection: requeues, skips, counts, dead letters.
    pub store: OutboxStore,
    /// The relay side: where this placement's events are claimed and their outcomes recorded
    /// (the entries themselves, except for `embedded`).
    pub relay: Arc<dyn RelayStore>,
}

impl Storage {
    /// Storage over `db`; nothing happens until the first [`Storage::ready`].
    #[must_use]
    pub fn new(db: Db) -> Self {
        Self {
            db,
            prepared: OnceCell::new(),
            stream_target: OnceCell::new(),
        }
    }

    /// The database settings.
    #[must_use]
    pub fn settings(&self) -> &MongoSettings {
        self.db.settings()
    }

    /// The change-stream source's storage (`OUTBOX_SOURCE=change-stream`), once the
    /// collections are in place and the target (`OUTBOX_CHANGE_STREAM_TARGET`) is decided: the
    /// first call logs the choice and what the target cannot deliver.
    ///
    /// # Errors
    /// As [`Storage::ready`], or when `auto` cannot ask the server yet.
    pub async fn change_store(&self) -> Result<ChangeStore, DbError> {
        self.ready().await?;
        let target = *self
            .stream_target
            .get_or_try_init(|| stream::target::resolve(&self.db))
            .await?;
        let database = self.db.database().await?;
        Ok(ChangeStore::new(&database, self.settings(), target))
    }

    /// The storage, with the placement decided and collections and indexes in place.
    ///
    /// # Errors
    /// When the database cannot be reached or the set-up fails; a later call tries again.
    pub async fn ready(&self) -> Result<Ready, DbError> {
        let prepared = self
            .prepared
            .get_or_try_init(|| async {
                let database = self.db.database().await?;
                let (placement, settings) = placement::resolve(&self.db).await?;
                let writer = placement::store_for(placement, &database, &settings);
                let expiry = writer.prepare().await?;
                let entries = OutboxStore::new(&database, writer.entries_collection())
                    .keeping_published(settings.keeps_published());
                let relay = writer.relay_store(&entries);
                Ok::<_, DbError>(Prepared {
                    writer,
                    entries,
                    relay,
                    expiry,
                })
            })
            .await?;
        Ok(Ready {
            placement: prepared.writer.placement(),
            entries_collection: prepared.writer.entries_collection().to_owned(),
            expiry: prepared.expiry,
            writer: Arc::clone(&prepared.writer),
            store: prepared.entries.clone(),
            relay: Arc::clone(&prepared.relay),
        })
    }
}

/// Creates the collections and indexes `placement` needs in `database`, idempotently, and says
/// how expired data goes away: what [`Storage::ready`] does once the placement is decided,
/// for callers that decide it themselves (test and benchmark databases).
///
/// # Errors
/// When the database cannot be reached or refuses the claim index.
pub async fn ensure_indexes(
    database: &Database,
    settings: &MongoSettings,
    placement: Placement,
) -> Result<Expiry, DbError> {
    placement::store_for(placement, database, settings)
        .prepare()
        .await
}
