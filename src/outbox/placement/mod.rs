//! Where outbox entries and idempotency records live, decided once when the database is first
//! ready, and the storage implementing each placement.
//!
//! - `separate` (`separate.rs`): entries and records in `OUTBOX_COLLECTION`; each write is a
//!   transaction across two collections (MongoDB, Cosmos DB vCore).
//! - `colocated` (`colocated.rs`): entries and records in the documents' own collection, so a
//!   transaction touches one collection (required on Cosmos DB for MongoDB RU).
//! - `embedded` (`embedded.rs`): each document carries its pending events and recent
//!   idempotency keys, so a write is one single-document operation and no transaction
//!   (sharded Cosmos DB for MongoDB RU collections, and the fastest writes).
//!
//! `OUTBOX_PLACEMENT` ([`crate::config::PlacementSetting`]) names one, or `auto`, which
//! [`resolve`] settles by looking at the server (`probe.rs`). [`store_for`] is the one place a
//! placement is turned into its [`PlacementStore`]; nothing else branches on it.
//!
//! Adding a placement: a new module with a type implementing [`PlacementStore`], a variant
//! here, its arm in [`store_for`] (and in [`resolve`] if the setting can name it).

mod colocated;
mod documents_only;
mod embedded;
mod probe;
mod separate;
mod transactional;

use std::sync::Arc;

use mongodb::Database;

use super::Placement;
use super::write::PlacementStore;
use crate::config::{EventSource, MongoSettings, PlacementSetting};
use crate::db::{Db, DbError};

/// Decides the placement: as configured, or for `auto` by probing the server (see
/// `probe.rs`).
///
/// # Errors
/// When `auto` cannot reach the database, or its probe fails transiently; a later call tries
/// again.
pub async fn resolve(db: &Db) -> Result<Placement, DbError> {
    match db.settings().placement {
        PlacementSetting::Separate => Ok(Placement::Separate),
        PlacementSetting::Colocated => Ok(Placement::Colocated),
        PlacementSetting::Embedded => Ok(Placement::Embedded),
        PlacementSetting::Auto => probe::choose(db).await,
    }
}

/// The storage for `placement` in `database`: the one place a placement is chosen. With
/// `OUTBOX_SOURCE=change-stream` no write has an entry, wherever entries would go.
#[must_use]
pub fn store_for(
    placement: Placement,
    database: &Database,
    settings: &MongoSettings,
) -> Arc<dyn PlacementStore> {
    if settings.source == EventSource::ChangeStream {
        return Arc::new(documents_only::DocumentsOnly::new(database, settings));
    }
    match placement {
        Placement::Separate => Arc::new(separate::Separate::new(database, settings)),
        Placement::Colocated => Arc::new(colocated::Colocated::new(database, settings)),
        Placement::Embedded => Arc::new(embedded::Embedded::new(database, settings)),
    }
}

/// The placement the server really allows, whatever the setting says: the `auto` probe
/// (a two-collection transaction, always aborted). For `handler outbox doctor`.
///
/// # Errors
/// When the database cannot be reached, or the probe failed transiently.
pub async fn allowed(db: &Db) -> Result<Placement, DbError> {
    probe::choose(db).await
}
