//! `colocated`: entries and idempotency records in the documents' own collection, so each
//! write is a transaction inside one collection — what Cosmos DB for MongoDB RU allows. They
//! are told apart from documents by their roots (`_outbox`, `_idempotency`) and their `_id`s
//! (binary and subdocument, where documents have strings).

use futures_util::future::BoxFuture;
use mongodb::ClientSession;
use mongodb::bson::Document;

use super::Placement;
use super::transactional::{self, Transactional};
use crate::config::MongoSettings;
use crate::db::DbError;
use crate::outbox::idempotency::{IdempotencyKey, Recorded};
use crate::outbox::store::Expiry;
use crate::outbox::write::{
    Change, Committed, Decision, DocumentChange, PlacementStore, WriteFailure,
};

/// Documents, entries and records in the documents' collection.
#[derive(Debug)]
pub(super) struct Colocated {
    inner: Transactional,
}

impl Colocated {
    pub(super) fn new(database: &mongodb::Database, settings: &MongoSettings) -> Self {
        Self {
            inner: Transactional::new(database, settings, &settings.collection),
        }
    }

    /// The transaction's body: the document and its entry, then the record.
    async fn apply(
        &self,
        s: &mut ClientSession,
        change: &dyn Change,
    ) -> mongodb::error::Result<Decision> {
        let decision = self.inner.decide(s, change).await?;
        let entry = self.inner.entry(change, &decision);
        match &decision.document {
            // A created document goes in with its entry, in one insert command: one round
            // trip less inside the transaction. (A replace that finds no document and creates
            // one has already paid for a read; it inserts the two separately.)
            DocumentChange::Insert(document) if !change.reads_current() => {
                self.inner
                    .documents()
                    .insert_many([document, &entry])
                    .session(&mut *s)
                    .await?;
            }
            document => {
                self.inner
                    .write_document(s, change.document_id(), document)
                    .await?;
                self.inner.insert_entry(s, &entry).await?;
            }
        }
        self.inner.insert_record(s, change, &decision).await?;
        Ok(decision)
    }
}

impl PlacementStore for Colocated {
    fn placement(&self) -> Placement {
        Placement::Colocated
    }

    fn entries_collection(&self) -> &str {
        self.inner.entries_collection()
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Expiry, DbError>> {
        Box::pin(self.inner.prepare(Placement::Colocated))
    }

    fn write<'a>(
        &'a self,
        change: &'a dyn Change,
    ) -> BoxFuture<'a, Result<Committed, WriteFailure>> {
        Box::pin(async move {
            self.inner
                .transaction((self, change), |s, (this, change)| {
                    Box::pin(this.apply(s, *change))
                })
                .await
                .map(transactional::committed)
                .map_err(transactional::failure)
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
