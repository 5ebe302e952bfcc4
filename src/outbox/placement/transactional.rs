//! What the transactional placements (`separate`, `colocated`) share: each write is one
//! MongoDB transaction through the driver's convenient transaction API (which reruns it on
//! transient errors and retries an unknown commit result) that reads the current document
//! when needed, writes the document, inserts its outbox entry and, with an `Idempotency-Key`,
//! the idempotency record. Only MongoDB is called inside (Cosmos DB caps a transaction at 5
//! seconds); everything else was decided before, or is decided by the [`Change`] without I/O.
//!
//! The two placements differ only in where entries and records go (the entries' collection
//! here) and in how a create is written (see each placement's module).

use chrono::Utc;
use futures_util::future::BoxFuture;
use mongodb::bson::{Document, doc};
use mongodb::options::{Acknowledgment, TransactionOptions, WriteConcern};
use mongodb::{ClientSession, Collection, Database};

use crate::config::MongoSettings;
use crate::db::{self, DbError, classify};
use crate::outbox::Placement;
use crate::outbox::idempotency::{self, IdempotencyKey, Recorded, RecordedWrite};
use crate::outbox::store::{self, Expiry, OutboxStore};
use crate::outbox::write::{Change, Committed, Decision, DocumentChange, Refusal, WriteFailure};

/// The collections and settings of a transactional placement.
#[derive(Debug, Clone)]
pub(super) struct Transactional {
    database: Database,
    settings: MongoSettings,
    /// The documents' collection.
    documents: Collection<Document>,
    /// The entries; its `insert` adds one inside the write's transaction.
    entries: OutboxStore,
    /// Name of the collection holding entries and records.
    entries_collection: String,
    /// Idempotency records, beside the entries.
    records: Collection<Document>,
}

impl Transactional {
    /// Documents in `settings.collection`, entries and records in `entries_collection`.
    pub(super) fn new(
        database: &Database,
        settings: &MongoSettings,
        entries_collection: &str,
    ) -> Self {
        Self {
            database: database.clone(),
            settings: settings.clone(),
            documents: database.collection(&settings.collection),
            entries: OutboxStore::new(database, entries_collection),
            entries_collection: entries_collection.to_owned(),
            records: database.collection(entries_collection),
        }
    }

    /// The collection holding entries and records.
    pub(super) fn entries_collection(&self) -> &str {
        &self.entries_collection
    }

    /// The documents' collection.
    pub(super) fn documents(&self) -> &Collection<Document> {
        &self.documents
    }

    /// Creates the collections and indexes, idempotently; `placement` names the caller in the
    /// log.
    ///
    /// # Errors
    /// When the database cannot be reached or refuses the claim index.
    #[tracing::instrument(skip_all, fields(database = %self.database.name()))]
    pub(super) async fn prepare(&self, placement: Placement) -> Result<Expiry, DbError> {
        let settings = &self.settings;
        // Collections must exist before the first transaction: Cosmos DB cannot create them
        // inside one, and unique indexes can only be built while a collection is empty.
        db::create_collection(&self.database, &settings.collection).await?;
        let beside_documents = self.entries_collection == settings.collection;
        if !beside_documents {
            db::create_collection(&self.database, &self.entries_collection).await?;
        }
        let expiry = store::ensure_indexes(
            &self.database,
            &self.entries_collection,
            settings.retention,
            beside_documents,
            settings.ordered_by_subject,
        )
        .await?;
        tracing::info!(
            collection = %settings.collection,
            entries_collection = %self.entries_collection,
            placement = ?placement,
            published_by_ttl = expiry.published_by_ttl,
            records_by_ttl = expiry.records_by_ttl,
            "Collections and indexes are in place"
        );
        Ok(expiry)
    }

    /// Runs `body` as one transaction with majority write concern, on a session of its own;
    /// the driver reruns `body` on transient errors.
    ///
    /// # Errors
    /// The driver's error, unclassified: [`failure`] or the placement classifies it.
    pub(super) async fn transaction<C: Send>(
        &self,
        context: C,
        body: impl for<'b> FnMut(
            &'b mut ClientSession,
            &'b mut C,
        ) -> BoxFuture<'b, mongodb::error::Result<Decision>>,
    ) -> mongodb::error::Result<Decision> {
        let mut session = self.database.client().start_session().await?;
        let options = TransactionOptions::builder()
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .build();
        // `and_run` with an explicit context rather than `and_run2`: the async-closure form
        // trips rust-lang/rust#96865 ("Send is not general enough") inside axum handlers, as
        // the driver's documentation warns. The behaviour is the same.
        session
            .start_transaction()
            .with_options(options)
            .and_run(context, body)
            .await
    }

    /// Inside the transaction: reads the current document when the change needs it, and
    /// lets the change decide. A refusal travels as the driver's custom error.
    ///
    /// # Errors
    /// The driver's error, or the refusal as [`mongodb::error::Error::custom`].
    pub(super) async fn decide(
        &self,
        s: &mut ClientSession,
        change: &dyn Change,
    ) -> mongodb::error::Result<Decision> {
        let current = if change.reads_current() {
            self.documents
                .find_one(doc! { "_id": change.document_id() })
                .session(s)
                .await?
        } else {
            None
        };
        change
            .decide(current.as_ref())
            .map_err(mongodb::error::Error::custom)
    }

    /// Inside the transaction: inserts, replaces or deletes the document.
    ///
    /// # Errors
    /// The driver's error; [`Refusal::Conflict`] (as a custom error) when the document to
    /// replace is gone.
    pub(super) async fn write_document(
        &self,
        s: &mut ClientSession,
        id: &str,
        change: &DocumentChange,
    ) -> mongodb::error::Result<()> {
        match change {
            DocumentChange::Insert(document) => {
                self.documents.insert_one(document).session(s).await?;
            }
            DocumentChange::Replace(document) => {
                let replaced = self
                    .documents
                    .replace_one(doc! { "_id": id }, document)
                    .session(s)
                    .await?;
                if replaced.matched_count == 0 {
                    return Err(mongodb::error::Error::custom(Refusal::Conflict));
                }
            }
            DocumentChange::Delete => {
                self.documents
                    .delete_one(doc! { "_id": id })
                    .session(s)
                    .await?;
            }
        }
        Ok(())
    }

    /// The outbox entry announcing `decision`.
    pub(super) fn entry(&self, change: &dyn Change, decision: &Decision) -> Document {
        store::new_entry(
            &decision.event,
            &self.settings.collection,
            change.document_id(),
            shard_key(decision),
            change.hold(),
        )
    }

    /// Inside the transaction: inserts `entry` into the entries' collection.
    ///
    /// # Errors
    /// The driver's error.
    pub(super) async fn insert_entry(
        &self,
        s: &mut ClientSession,
        entry: &Document,
    ) -> mongodb::error::Result<()> {
        self.entries.insert(entry, s).await
    }

    /// Inside the transaction: records the answer under the change's `Idempotency-Key`, if it
    /// has one. A live record under the same key fails with a duplicate key.
    ///
    /// # Errors
    /// The driver's error.
    pub(super) async fn insert_record(
        &self,
        s: &mut ClientSession,
        change: &dyn Change,
        decision: &Decision,
    ) -> mongodb::error::Result<()> {
        let Some((key, fingerprint)) = change.idempotency() else {
            return Ok(());
        };
        let now = Utc::now();
        let collection = &self.settings.collection;
        let record = idempotency::new_record(
            collection,
            key,
            fingerprint,
            &RecordedWrite {
                operation: decision.operation,
                document_id: change.document_id().to_owned(),
                event_id: decision.event.id.to_string(),
                version: decision.revision.version,
                lineage: decision.revision.lineage.clone(),
            },
            now,
            self.settings.idempotency_ttl,
            shard_key(decision),
        );
        idempotency::insert(&self.records, collection, key, &record, now, s).await
    }

    /// The document with this id, never an entry or a record.
    ///
    /// # Errors
    /// When the database fails.
    pub(super) async fn read(&self, id: &str) -> Result<Option<Document>, DbError> {
        // A document's `_id` is a string, an entry's a binary UUID and a record's a
        // subdocument, so a string `_id` alone cannot select an entry or a record (the
        // `colocated` placement keeps them in this collection). The query says so explicitly
        // with their roots, so it stays true whatever their ids become.
        self.documents
            .find_one(doc! {
                "_id": id,
                store::ROOT: { "$exists": false },
                idempotency::ROOT: { "$exists": false },
            })
            .await
            .map_err(classify)
    }

    /// The unexpired idempotency record under `key`, if any.
    ///
    /// # Errors
    /// When the database fails.
    pub(super) async fn recorded(&self, key: &IdempotencyKey) -> Result<Option<Recorded>, DbError> {
        idempotency::find(
            &self.records,
            &self.settings.collection,
            key,
            Utc::now(),
            None,
        )
        .await
    }
}

/// The committed write, with the one entry a transactional write inserts.
pub(super) fn committed(decision: Decision) -> Committed {
    Committed {
        entry_ids: vec![decision.event.id],
        decision,
    }
}

/// What a failed transaction means for the caller: the change's refusal, or the classified
/// database error.
pub(super) fn failure(e: mongodb::error::Error) -> WriteFailure {
    match e.get_custom::<Refusal>() {
        Some(refusal) => WriteFailure::Refused(refusal.clone()),
        None => WriteFailure::Db(classify(e)),
    }
}

fn shard_key(decision: &Decision) -> Option<(&str, &mongodb::bson::Bson)> {
    decision.shard_key.as_ref().map(|(n, v)| (n.as_str(), v))
}
