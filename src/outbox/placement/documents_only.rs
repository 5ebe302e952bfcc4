//! `OUTBOX_SOURCE=change-stream`: a write stores the document (and the idempotency record when
//! a key was sent) but no outbox entry — the event comes from the change stream on the
//! documents' collection, like the events of every other application writing there.
//!
//! Records stay in `OUTBOX_COLLECTION`, never beside the documents, so that the stream on the
//! documents' collection sees documents only.

use futures_util::future::BoxFuture;
use mongodb::ClientSession;
use mongodb::bson::Document;

use super::Placement;
use super::transactional::{self, Transactional};
use crate::config::MongoSettings;
use crate::db::DbError;
use crate::outbox::idempotency::{IdempotencyKey, Recorded};
use crate::outbox::store::Expiry;
use crate::outbox::write::{Change, Committed, Decision, PlacementStore, WriteFailure};

/// Documents in their collection, idempotency records in `OUTBOX_COLLECTION`, no entries.
#[derive(Debug)]
pub(super) struct DocumentsOnly {
    inner: Transactional,
}

impl DocumentsOnly {
    pub(super) fn new(database: &mongodb::Database, settings: &MongoSettings) -> Self {
        Self {
            inner: Transactional::new(database, settings, &settings.outbox_collection),
        }
    }

    /// The transaction's body: the document, then the record.
    async fn apply(
        &self,
        s: &mut ClientSession,
        change: &dyn Change,
    ) -> mongodb::error::Result<Decision> {
        let decision = self.inner.decide(s, change).await?;
        self.inner
            .write_document(s, change.document_id(), &decision.document)
            .await?;
        self.inner.insert_record(s, change, &decision).await?;
        Ok(decision)
    }
}

impl PlacementStore for DocumentsOnly {
    fn placement(&self) -> Placement {
        // Records live apart from the documents, as in `separate`.
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
            let outcome = self
                .inner
                .transaction((self, change), |s, (this, change)| {
                    Box::pin(this.apply(s, *change))
                })
                .await;
            match outcome {
                // No entry: nothing for a push path to publish.
                Ok(decision) => Ok(Committed {
                    decision,
                    entry_ids: Vec::new(),
                }),
                Err(e) => Err(transactional::failure(e)),
            }
        })
    }

    fn recorded<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Recorded>, DbError>> {
        Box::pin(self.inner.recorded(key))
    }

    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Document>, DbError>> {
        Box::pin(self.inner.read(id))
    }
}
