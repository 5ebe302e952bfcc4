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
//! [`resolve`] settles by looking at the server (`probe.rs`). First it asks how the documents'
//! collection is sharded (`sharding.rs`): a sharded Cosmos DB RU collection takes `embedded`
//! only, with its shard key in `MONGODB_SHARD_KEY`, and anything else is refused before the
//! first write. [`report`] gives `handler outbox doctor` the same verdict. [`store_for`] is the one place a
//! placement is turned into its [`PlacementStore`]; nothing else branches on it.
//!
//! Adding a placement: a new module with a type implementing [`PlacementStore`], a variant
//! here, its arm in [`store_for`] (and in [`resolve`] if the setting can name it).

mod colocated;
mod documents_only;
mod embedded;
mod probe;
mod separate;
mod sharding;
mod transactional;

use std::sync::Arc;

use mongodb::Database;

pub use sharding::{Refusal, Sharding};

use super::Placement;
use super::write::PlacementStore;
use crate::config::{EventSource, MongoSettings, PlacementSetting};
use crate::db::{Db, DbError};

/// Decides the placement: as configured, or for `auto` by probing the server (see
/// `probe.rs`), after asking how the documents' collection is sharded (`sharding.rs`). Also
/// returns the settings as the server completes them: the largest document it stores, where it
/// says (RU's `GetCollection`) and `OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES` is unset.
///
/// # Errors
/// [`DbError::Misconfigured`] when the placement cannot work on the collection as it is (a
/// sharded Cosmos DB RU collection and `colocated` / `separate`, or a wrong or missing
/// `MONGODB_SHARD_KEY`), naming the settings to change; other errors when the database cannot
/// be reached, or the probe failed transiently (a later call tries again).
pub async fn resolve(db: &Db) -> Result<(Placement, MongoSettings), DbError> {
    let settings = db.settings();
    let collection = sharding::detect(&db.database().await?, &settings.collection).await?;
    let sharding = collection.sharding;
    let placement = match named(settings.placement) {
        Some(placement) => placement,
        None => probe::choose(db, &sharding).await?,
    };
    if let Some(description) = sharding.describe(settings) {
        tracing::info!(placement = placement.as_str(), "{description}");
    }
    if let Some(refusal) = sharding.refusal(placement, settings) {
        return Err(DbError::Misconfigured(refusal.to_string()));
    }
    let mut completed = settings.clone();
    if completed.embedded.max_document_bytes.is_none() {
        completed.embedded.max_document_bytes = collection.max_document_bytes;
    }
    Ok((placement, completed))
}

/// The placement a setting names; `None` for `auto`.
const fn named(setting: PlacementSetting) -> Option<Placement> {
    match setting {
        PlacementSetting::Separate => Some(Placement::Separate),
        PlacementSetting::Colocated => Some(Placement::Colocated),
        PlacementSetting::Embedded => Some(Placement::Embedded),
        PlacementSetting::Auto => None,
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

/// What the server allows against what is configured, for `handler outbox doctor`.
#[derive(Debug, Clone)]
pub struct PlacementReport {
    /// The placement the setting resolves to.
    pub configured: Placement,
    /// What `auto` would choose here: the most the server allows.
    pub allowed: Placement,
    /// How the documents' collection is sharded, in words (`None`: not sharded).
    pub sharding: Option<String>,
    /// Why the configured placement cannot work here, with the fix.
    pub refusal: Option<Refusal>,
}

impl PlacementReport {
    /// One line on what was found, for a check that passed.
    #[must_use]
    pub fn summary(&self, setting: PlacementSetting) -> String {
        let mut line = if setting == PlacementSetting::Auto {
            format!(
                "OUTBOX_PLACEMENT=auto: the server allows {}, so entries go there",
                self.allowed.as_str()
            )
        } else {
            format!(
                "OUTBOX_PLACEMENT={} (the server allows {})",
                self.configured.as_str(),
                self.allowed.as_str()
            )
        };
        if let Some(sharding) = &self.sharding {
            line.push_str("; ");
            line.push_str(sharding);
        }
        line
    }
}

/// The placement the server really allows, whatever the setting says (the `auto` probe: a
/// two-collection transaction, always aborted), how the collection is sharded, and whether
/// the configured placement can work.
///
/// # Errors
/// When the database cannot be reached, or the probe failed transiently.
pub async fn report(db: &Db) -> Result<PlacementReport, DbError> {
    let settings = db.settings();
    let sharding = sharding::detect(&db.database().await?, &settings.collection)
        .await?
        .sharding;
    let allowed = probe::choose(db, &sharding).await?;
    let configured = named(settings.placement).unwrap_or(allowed);
    let refusal = sharding
        .refusal(configured, settings)
        .or_else(|| beyond(configured, allowed));
    Ok(PlacementReport {
        configured,
        allowed,
        sharding: sharding.describe(settings),
        refusal,
    })
}

/// The transactions a placement needs: none, inside one collection, across two.
const fn needs(placement: Placement) -> u8 {
    match placement {
        Placement::Embedded => 0,
        Placement::Colocated => 1,
        Placement::Separate => 2,
    }
}

/// A configured placement that needs more transactions than the server allows.
fn beyond(configured: Placement, allowed: Placement) -> Option<Refusal> {
    (needs(configured) > needs(allowed)).then(|| Refusal {
        problem: format!(
            "OUTBOX_PLACEMENT={}, but the server refuses {}: every write would fail",
            configured.as_str(),
            if allowed == Placement::Colocated {
                "a transaction across two collections (Cosmos DB for MongoDB RU does)"
            } else {
                "multi-document transactions"
            }
        ),
        fix: format!("set OUTBOX_PLACEMENT={} (or auto)", allowed.as_str()),
    })
}
