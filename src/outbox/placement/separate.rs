//! `separate`: entries and idempotency records in `OUTBOX_COLLECTION`, so each write is a
//! transaction across two collections. MongoDB and Cosmos DB vCore allow that; Cosmos DB for
//! MongoDB RU does not, which is why this placement also recognises that refusal and says
//! what to change.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use mongodb::ClientSession;
use mongodb::bson::Document;

use super::Placement;
use super::transactional::{self, Transactional};
use crate::config::MongoSettings;
use crate::db::{DbError, is_transaction_not_active};
use crate::outbox::idempotency::{IdempotencyKey, Recorded};
use crate::outbox::store::Expiry;
use crate::outbox::write::{Change, Committed, Decision, PlacementStore, WriteFailure};
use crate::telemetry::chain;

/// A transaction refused as "not active" sooner than this cannot have hit Cosmos DB's
/// 5-second limit.
const CROSS_COLLECTION_HINT_BEFORE: Duration = Duration::from_secs(4);

/// Documents in their collection, entries and records in `OUTBOX_COLLECTION`.
#[derive(Debug)]
pub(super) struct Separate {
    inner: Transactional,
}

impl Separate {
    pub(super) fn new(database: &mongodb::Database, settings: &MongoSettings) -> Self {
        Self {
            inner: Transactional::new(database, settings, &settings.outbox_collection),
        }
    }

    /// The transaction's body: the document, then its entry in the other collection, then the
    /// record.
    async fn apply(
        &self,
        s: &mut ClientSession,
        change: &dyn Change,
    ) -> mongodb::error::Result<Decision> {
        let decision = self.inner.decide(s, change).await?;
        self.inner
            .write_document(s, change.document_id(), &decision.document)
            .await?;
        let entry = self.inner.entry(change, &decision);
        self.inner.insert_entry(s, &entry).await?;
        self.inner.insert_record(s, change, &decision).await?;
        Ok(decision)
    }
}

impl PlacementStore for Separate {
    fn placement(&self) -> Placement {
        Placement::Separate
    }

    fn entries_collection(&self) -> &str {
        self.inner.entries_collection()
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Expiry, DbError>> {
        Box::pin(self.inner.prepare(Placement::Separate))
    }

    fn write<'a>(
        &'a self,
        change: &'a dyn Change,
    ) -> BoxFuture<'a, Result<Committed, WriteFailure>> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self
                .inner
                .transaction((self, change), |s, (this, change)| {
                    Box::pin(this.apply(s, *change))
                })
                .await;
            match outcome {
                Ok(decision) => Ok(transactional::committed(decision)),
                Err(e) => Err(explain(e, started.elapsed())),
            }
        })
    }

    fn recorded<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Recorded>, DbError>> {
        Box::pin(async move {
            self.inner
                .recorded(key)
                .await
                .inspect_err(hint_on_unexpected)
        })
    }

    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Document>, DbError>> {
        Box::pin(self.inner.read(id))
    }
}

/// Classifies a failed write, recognising Cosmos DB RU's refusal of a second collection.
fn explain(e: mongodb::error::Error, elapsed: Duration) -> WriteFailure {
    // "Transaction isn't active" long before Cosmos DB's 5-second limit, with the entry in
    // another collection: this is a Cosmos DB RU account refusing a transaction across
    // collections. A setup problem, not a transient one.
    if is_transaction_not_active(&e) && elapsed < CROSS_COLLECTION_HINT_BEFORE {
        tracing::error!(
            error = %chain(&e),
            "The database refused a transaction across the documents' and the outbox collections: this looks like Azure Cosmos DB for MongoDB (RU), which allows transactions inside one collection only. Set OUTBOX_PLACEMENT=colocated (or auto)"
        );
        return WriteFailure::Db(DbError::Other(e));
    }
    let failure = transactional::failure(e);
    if let WriteFailure::Db(e) = &failure {
        hint_on_unexpected(e);
    }
    failure
}

/// An unexpected failure in this placement may be a server that cannot span two collections.
fn hint_on_unexpected(e: &DbError) {
    if matches!(e, DbError::Other(_)) {
        tracing::error!(
            error = %chain(e),
            "A document write failed. If the server is Azure Cosmos DB for MongoDB (RU), which allows transactions inside one collection only, set OUTBOX_PLACEMENT=colocated"
        );
    }
}
