//! `embedded`: each document carries its own pending events (`_outbox.events`) and its recent
//! idempotency keys (`_idempotency`), so every write is **one single-document operation** —
//! an insert, or a replace conditional on the document as it was read — and no transaction.
//! That is what a sharded Cosmos DB for MongoDB RU collection allows (transactions only inside
//! one unsharded collection), and one command instead of a transaction's three.
//!
//! A delete leaves a tombstone (`_meta.deleted: true`) holding its `Deleted` event until it is
//! published; the relay then removes it. Reads never see tombstones, pending events or keys.
//! The stored shape, and how the relay takes events out, is in
//! [`crate::outbox::store::embedded`]. Dead letters (and idempotency records of nothing) live
//! in `OUTBOX_COLLECTION`, where the operator commands find them.
//!
//! A replace is conditional on the `_meta` it read (another write moves it) and on
//! `_outbox.v` (every change the relay makes bumps it): a write that lost a race reads again
//! and decides again, as a transaction would be rerun.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
use mongodb::{Collection, Database};

use super::{Placement, probe};
use crate::config::MongoSettings;
use crate::db::{self, DbError, classify};
use crate::domain::change::META_FIELD;
use crate::outbox::idempotency::{self, IdempotencyKey, Recorded, RecordedWrite};
use crate::outbox::store::embedded::{
    self as shape, KEY_INDEX, embedded_field as f, pending_count, pending_event, with_event,
};
use crate::outbox::store::{self, EmbeddedEvents, Expiry, OutboxStore, RelayStore};
use crate::outbox::write::{
    Change, Committed, Decision, DocumentChange, PlacementStore, Refusal, WriteFailure,
};

/// The largest document Cosmos DB for MongoDB RU stores.
const COSMOS_RU_MAX_BYTES: usize = 2 * 1024 * 1024;
/// The largest document MongoDB stores.
const MONGODB_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How often a write reads again after losing a race before it answers 409: far more than
/// a document sees at once, so only a runaway loop ends here.
const RACES: usize = 64;

/// Documents carrying their events; dead letters in `OUTBOX_COLLECTION`.
#[derive(Debug)]
pub(super) struct Embedded {
    database: Database,
    settings: MongoSettings,
    /// The documents, with majority write concern: a write's one operation is its commit.
    documents: Collection<Document>,
    /// The largest stored document.
    max_bytes: usize,
}

/// What one attempt did. Built once per write and moved at once: its size does not matter.
#[expect(clippy::large_enum_variant, reason = "one per write, never stored")]
enum Attempt {
    Written(Decision),
    /// The document changed since it was read: read again.
    Raced,
}

impl Embedded {
    pub(super) fn new(database: &Database, settings: &MongoSettings) -> Self {
        let majority = CollectionOptions::builder()
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .build();
        let max_bytes = settings.embedded.max_document_bytes.unwrap_or_else(|| {
            if probe::is_cosmos_ru_host(settings) {
                COSMOS_RU_MAX_BYTES
            } else {
                MONGODB_MAX_BYTES
            }
        });
        Self {
            database: database.clone(),
            settings: settings.clone(),
            documents: database.collection_with_options(&settings.collection, majority),
            max_bytes,
        }
    }

    #[tracing::instrument(skip_all, fields(database = %self.database.name()))]
    async fn prepare(&self) -> Result<Expiry, DbError> {
        let s = &self.settings;
        db::create_collection(&self.database, &s.collection).await?;
        db::create_collection(&self.database, &s.outbox_collection).await?;
        let entries = store::ensure_indexes(
            &self.database,
            &s.outbox_collection,
            s.retention,
            false,
            s.ordered_by_subject,
        )
        .await?;
        shape::ensure_indexes(&self.documents).await?;
        tracing::info!(
            collection = %s.collection,
            entries_collection = %s.outbox_collection,
            placement = ?Placement::Embedded,
            max_document_bytes = self.max_bytes,
            max_pending = s.embedded.max_pending,
            "Collections and indexes are in place"
        );
        // Keys expire inside documents, where no TTL index reaches: the relay removes them.
        Ok(Expiry {
            published_by_ttl: entries.published_by_ttl,
            records_by_ttl: false,
        })
    }

    async fn write_change(&self, change: &dyn Change) -> Result<Committed, WriteFailure> {
        let id = change.document_id();
        let mut read = change.reads_current();
        for _ in 0..RACES {
            let current = if read {
                self.documents
                    .find_one(doc! { "_id": id })
                    .await
                    .map_err(|e| WriteFailure::Db(classify(e)))?
            } else {
                None
            };
            match self.attempt(change, current.as_ref()).await? {
                Attempt::Written(decision) => {
                    return Ok(Committed {
                        entry_ids: vec![decision.event.id],
                        decision,
                    });
                }
                Attempt::Raced => read = true,
            }
        }
        Err(WriteFailure::Refused(Refusal::Conflict))
    }

    /// Decides from `current` (as read; `None` when absent or not read) and writes the
    /// document with its new event in one operation.
    async fn attempt(
        &self,
        change: &dyn Change,
        current: Option<&Document>,
    ) -> Result<Attempt, WriteFailure> {
        let now = Utc::now();
        if let (Some((key, _)), Some(c)) = (change.idempotency(), current)
            && live_keys(c, now).any(|k| k.get_str("key") == Ok(key.as_str()))
        {
            // Another request under this key wrote this document first: its answer stands.
            return Err(WriteFailure::Db(DbError::Conflict(
                mongodb::error::Error::custom("the Idempotency-Key is recorded"),
            )));
        }
        let live = current.filter(|c| !is_tombstone(c));
        let decision = change.decide(live.map(data_of).as_ref())?;
        let outbox = current.and_then(|c| c.get_document(f::OUTBOX).ok());
        let pending = pending_count(outbox);
        if pending >= self.settings.embedded.max_pending as usize {
            return Err(WriteFailure::Refused(Refusal::Backlogged { pending }));
        }
        let stored = self.stored(change, &decision, current, outbox, now)?;
        match (&decision.document, current, live) {
            (DocumentChange::Insert(_), None, _) => self.insert(stored, decision).await,
            // POST of an id that exists.
            (DocumentChange::Insert(_), Some(_), Some(_)) => Err(WriteFailure::Db(
                DbError::Conflict(mongodb::error::Error::custom("the document exists")),
            )),
            (_, Some(c), _) => self.replace(c, stored, decision).await,
            (_, None, _) => Err(WriteFailure::Refused(Refusal::Conflict)),
        }
    }

    /// The document as stored: its data (or a tombstone), its pending events with the new
    /// one, and its live idempotency keys with the new one. Refused when over the size limit.
    fn stored(
        &self,
        change: &dyn Change,
        decision: &Decision,
        current: Option<&Document>,
        outbox: Option<&Document>,
        now: DateTime<Utc>,
    ) -> Result<Document, WriteFailure> {
        let mut stored = match &decision.document {
            DocumentChange::Insert(d) | DocumentChange::Replace(d) => d.clone(),
            DocumentChange::Delete => self.tombstone(change.document_id(), decision, current),
        };
        let event = pending_event(&decision.event);
        stored.insert(f::OUTBOX, with_event(outbox, event, now));
        let mut keys: Vec<Bson> = current
            .map(|c| live_keys(c, now).map(Bson::Document).collect())
            .unwrap_or_default();
        if let Some((key, fingerprint)) = change.idempotency() {
            keys.push(Bson::Document(self.key_record(
                change,
                decision,
                key,
                fingerprint,
                now,
            )));
        }
        if !keys.is_empty() {
            stored.insert(f::KEYS, keys);
        }
        let size = bson::to_vec(&stored).map_or(usize::MAX, |b| b.len());
        if size > self.max_bytes {
            return Err(WriteFailure::Refused(Refusal::TooLarge {
                size,
                limit: self.max_bytes,
            }));
        }
        Ok(stored)
    }

    /// What a deleted document leaves while its `Deleted` event waits: its id, shard key and
    /// revision, marked deleted.
    fn tombstone(&self, id: &str, decision: &Decision, current: Option<&Document>) -> Document {
        let revision = &decision.revision;
        let mut tomb = doc! { "_id": id };
        if let Some(k) = &self.settings.shard_key
            && let Some(v) = current.and_then(|c| c.get(k))
        {
            tomb.insert(k.as_str(), v.clone());
        }
        tomb.insert(
            META_FIELD,
            doc! {
                "version": i64::try_from(revision.version).unwrap_or(i64::MAX),
                "lineage": &revision.lineage,
                "updated_at": bson::DateTime::now(),
                "deleted": true,
            },
        );
        tomb
    }

    /// The answer recorded under `key`, as an element of `_idempotency`.
    fn key_record(
        &self,
        change: &dyn Change,
        decision: &Decision,
        key: &IdempotencyKey,
        fingerprint: &str,
        now: DateTime<Utc>,
    ) -> Document {
        let record = idempotency::new_record(
            &self.settings.collection,
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
            None,
        );
        let mut element = doc! { "key": key.as_str() };
        if let Ok(fields) = record.get_document(idempotency::ROOT) {
            element.extend(fields.clone());
        }
        element
    }

    async fn insert(&self, stored: Document, decision: Decision) -> Result<Attempt, WriteFailure> {
        match self.documents.insert_one(stored).await.map_err(classify) {
            Ok(_) => Ok(Attempt::Written(decision)),
            // The id exists (a tombstone, or a concurrent create): read it and decide again.
            Err(DbError::Conflict(e)) if !names_key_index(&e) => Ok(Attempt::Raced),
            Err(e) => Err(WriteFailure::Db(e)),
        }
    }

    /// Replaces `current` with `stored` if nothing changed it since it was read.
    async fn replace(
        &self,
        current: &Document,
        stored: Document,
        decision: Decision,
    ) -> Result<Attempt, WriteFailure> {
        let mut filter = doc! { "_id": current.get("_id").cloned().unwrap_or(Bson::Null) };
        filter.insert(
            META_FIELD,
            current
                .get(META_FIELD)
                .cloned()
                .unwrap_or_else(|| Bson::Document(doc! { "$exists": false })),
        );
        match current
            .get_document(f::OUTBOX)
            .ok()
            .and_then(|o| o.get("v"))
        {
            Some(v) => filter.insert(f::VERSION, v.clone()),
            None => filter.insert(f::OUTBOX, doc! { "$exists": false }),
        };
        if let Some(k) = &self.settings.shard_key
            && let Some(v) = current.get(k)
        {
            filter.insert(k.as_str(), v.clone());
        }
        match self.documents.replace_one(filter, stored).await {
            Ok(r) if r.matched_count == 1 => Ok(Attempt::Written(decision)),
            Ok(_) => Ok(Attempt::Raced),
            Err(e) => Err(WriteFailure::Db(classify(e))),
        }
    }

    async fn recorded(&self, key: &IdempotencyKey) -> Result<Option<Recorded>, DbError> {
        let now = Utc::now();
        let found = self
            .documents
            .find_one(doc! { f::KEY: key.as_str() })
            .projection(doc! { f::KEYS: 1 })
            .await?;
        Ok(found.as_ref().and_then(|d| {
            live_keys(d, now)
                .find(|k| k.get_str("key") == Ok(key.as_str()))
                .and_then(|k| idempotency::parse_record(&doc! { idempotency::ROOT: k }))
        }))
    }

    async fn read(&self, id: &str) -> Result<Option<Document>, DbError> {
        self.documents
            .find_one(doc! { "_id": id, f::DELETED: { "$ne": true } })
            .projection(doc! { f::OUTBOX: 0, f::KEYS: 0 })
            .await
            .map_err(classify)
    }
}

/// Whether a duplicate key came from the idempotency keys' unique index (another document
/// recorded the key), not from the `_id`.
fn names_key_index(e: &mongodb::error::Error) -> bool {
    e.to_string().contains(KEY_INDEX)
}

fn is_tombstone(d: &Document) -> bool {
    d.get_document(META_FIELD)
        .is_ok_and(|m| m.get_bool("deleted").unwrap_or(false))
}

/// The document as a write decides on it: without its pending events and keys.
fn data_of(d: &Document) -> Document {
    let mut data = d.clone();
    data.remove(f::OUTBOX);
    data.remove(f::KEYS);
    data
}

/// The unexpired idempotency keys of `d`.
fn live_keys(d: &Document, now: DateTime<Utc>) -> impl Iterator<Item = Document> + '_ {
    let now = bson::DateTime::from_millis(now.timestamp_millis());
    d.get_array(f::KEYS)
        .map(|keys| keys.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.as_document())
        .filter(move |k| k.get_datetime("expires_at").is_ok_and(|t| *t > now))
        .cloned()
}

impl PlacementStore for Embedded {
    fn placement(&self) -> Placement {
        Placement::Embedded
    }

    fn entries_collection(&self) -> &str {
        &self.settings.outbox_collection
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Expiry, DbError>> {
        Box::pin(self.prepare())
    }

    fn write<'a>(
        &'a self,
        change: &'a dyn Change,
    ) -> BoxFuture<'a, Result<Committed, WriteFailure>> {
        Box::pin(self.write_change(change))
    }

    fn recorded<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Recorded>, DbError>> {
        Box::pin(self.recorded(key))
    }

    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Document>, DbError>> {
        Box::pin(self.read(id))
    }

    fn relay_store(&self, entries: &OutboxStore) -> Arc<dyn RelayStore> {
        Arc::new(EmbeddedEvents::new(
            &self.database,
            &self.settings.collection,
            entries.clone(),
            self.settings.shard_key.clone(),
        ))
    }
}
