//! [`EmbeddedEvents`]: the relay side of the `embedded` placement. A claim takes whole
//! documents (their `_outbox.due_at` moves to the end of the lease, their token is ours);
//! every later change is fenced on the token and addresses the documents by `_id`, which this
//! process remembers per claim. Events requeued by an operator live as ordinary entries in
//! `OUTBOX_COLLECTION` and are claimed from there once no document is due.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
use mongodb::{Collection, Database};

use super::elements::{element_entry, event_elements, events_in, events_of, ids_bson};
use super::embedded_field as f;
use super::relay_state::{Documents, Held};
use crate::db::{DbError, classify};
use crate::domain::EventId;
use crate::outbox::store::OutboxStore;
use crate::outbox::store::claim::Claim;
use crate::outbox::store::entry::{after, bson_time, error_doc};
use crate::outbox::store::token::ClaimToken;
use crate::outbox::{ClaimedEntry, EntryStatus, LastError};

/// Failures kept in an event's history, as for entries.
const HISTORY_LEN: i32 = 10;
/// How long a claim's documents are remembered after its lease ended: a batch records its
/// outcomes before its lease ends, so this only bounds the memory.
const FORGET_AFTER: chrono::Duration = chrono::Duration::minutes(10);
/// Documents whose expired keys one purge batch removes.
const PURGE_BATCH: i64 = 1000;
/// Purge batches one run takes at most.
const PURGE_ROUNDS: usize = 10;

/// The `embedded` placement's events, in the documents' collection, with dead letters and
/// requeued events in the entries' collection.
#[derive(Debug)]
pub struct EmbeddedEvents {
    /// The documents, with the relay's relaxed write concern (see [`OutboxStore`]).
    pub(super) documents: Collection<Document>,
    /// The documents' collection's name, for a dead letter's `document.collection`.
    collection: String,
    /// Dead letters and requeued events.
    pub(super) entries: OutboxStore,
    /// The shard key's name, copied onto dead letters.
    shard_key: Option<String>,
    /// What each live claim of this process holds.
    claims: Mutex<HashMap<ClaimToken, Held>>,
}

/// A claimed document read back.
#[derive(serde::Deserialize)]
struct ClaimedDoc {
    #[serde(rename = "_id")]
    id: Bson,
    #[serde(rename = "_outbox", default)]
    outbox: Option<Document>,
    #[serde(rename = "_meta", default)]
    meta: Option<Document>,
}

impl EmbeddedEvents {
    /// The events in `collection` of `db`; dead letters in `entries`.
    #[must_use]
    pub fn new(
        db: &Database,
        collection: &str,
        entries: OutboxStore,
        shard_key: Option<String>,
    ) -> Self {
        let relaxed = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Nodes(1))
                    .journal(false)
                    .build(),
            )
            .build();
        Self {
            documents: db.collection_with_options(collection, relaxed),
            collection: collection.to_owned(),
            entries,
            shard_key,
            claims: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn held(&self, token: ClaimToken) -> Option<Held> {
        let claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.get(&token).cloned()
    }

    fn remember(&self, token: ClaimToken, held: Held, now: DateTime<Utc>) {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.retain(|_, h| h.lease_until + FORGET_AFTER > now);
        claims.insert(token, held);
    }

    fn note_moved(&self, token: ClaimToken) {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(docs) = claims.get_mut(&token).and_then(|h| h.documents.as_mut()) {
            docs.moved = true;
        }
    }

    /// Claims due documents; when none is due, due entries of the entries' collection.
    pub(super) async fn claim_any(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Claim, DbError> {
        let claim = self.claim_documents(now, lease, limit).await?;
        if !claim.entries.is_empty() || claim.contended > 0 {
            return Ok(claim);
        }
        let claim = self.entries.claim(now, lease, limit).await?;
        if !claim.entries.is_empty() {
            let held = Held {
                lease_until: claim.lease_until,
                documents: None,
            };
            self.remember(claim.token, held, now);
        }
        Ok(claim)
    }

    /// Claims up to `limit` due documents: their ids in due order, one conditional update
    /// taking those still due, and the read-back of what this claim holds.
    async fn claim_documents(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Claim, DbError> {
        let token = ClaimToken::new();
        let lease_until = after(now, lease);
        let held_until = bson_time(lease_until);
        let due = doc! { f::DUE_AT: { "$lte": bson_time(now) } };
        let mut projection = doc! { "_id": 1 };
        if let Some(k) = &self.shard_key {
            projection.insert(k.as_str(), 1);
        }
        let found: Vec<Document> = self
            .documents
            .find(due.clone())
            .sort(doc! { f::DUE_AT: 1 })
            .limit(i64::from(limit.max(1)))
            .projection(projection)
            .await?
            .try_collect()
            .await?;
        let ids: Vec<Bson> = found
            .iter()
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
        let shards = self.shard_values(&found);
        let mut claim = Claim {
            token,
            lease_until,
            entries: Vec::new(),
            contended: 0,
            ranged: false,
        };
        if ids.is_empty() {
            return Ok(claim);
        }
        let mut take = due;
        take.insert("_id", doc! { "$in": &ids });
        self.add_shards(&mut take, &shards);
        let taken = self
            .documents
            .update_many(
                take,
                doc! {
                    "$set": { f::DUE_AT: held_until, f::LEASE_TOKEN: token.bson() },
                    "$inc": { f::CLAIMS: 1, f::VERSION: 1_i64 },
                },
            )
            .await?
            .modified_count;
        claim.contended = ids
            .len()
            .saturating_sub(usize::try_from(taken).unwrap_or(0));
        if taken == 0 {
            return Ok(claim);
        }
        let docs = self.read_back(token, held_until, &ids).await?;
        let mut held = Documents {
            shards,
            ..Documents::default()
        };
        let mut empty = Vec::new();
        for d in docs {
            let events = events_of(d.outbox.as_ref());
            if events.is_empty() {
                empty.push(d.id.clone());
            }
            held.tombstones |= d
                .meta
                .as_ref()
                .is_some_and(|m| m.get_bool("deleted").unwrap_or(false));
            for entry in events {
                held.of_event.insert(entry.event.id, d.id.clone());
                claim.entries.push(entry);
            }
        }
        if !empty.is_empty() {
            // Left behind by a relay that stopped between removing the last events and
            // tidying up: tidy up now.
            self.tidy(token, &empty, &held.shards, true).await?;
        }
        self.remember(
            token,
            Held {
                lease_until,
                documents: Some(held),
            },
            now,
        );
        Ok(claim)
    }

    async fn read_back(
        &self,
        token: ClaimToken,
        held_until: bson::DateTime,
        ids: &[Bson],
    ) -> Result<Vec<ClaimedDoc>, DbError> {
        Ok(self
            .documents
            .clone_with_type::<ClaimedDoc>()
            .find(doc! {
                "_id": { "$in": ids },
                f::LEASE_TOKEN: token.bson(),
                f::DUE_AT: held_until,
            })
            .sort(doc! { f::DUE_AT: 1 })
            .projection(doc! { "_id": 1, f::EVENTS: 1, f::DELETED: 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// Documents of `docs` still held under `token`; with `MONGODB_SHARD_KEY`, the filter
    /// names the claim's shard key values too (RU requires the shard key in every filter).
    fn fence(&self, token: ClaimToken, docs: &[Bson], shards: &[Bson]) -> Document {
        let mut filter = doc! { "_id": { "$in": docs }, f::LEASE_TOKEN: token.bson() };
        self.add_shards(&mut filter, shards);
        filter
    }

    /// Adds `{<shard key>: {$in: shards}}` to `filter` when the collection is sharded.
    fn add_shards(&self, filter: &mut Document, shards: &[Bson]) {
        if let Some(k) = &self.shard_key {
            filter.insert(k.as_str(), doc! { "$in": shards });
        }
    }

    /// The distinct shard key values of `docs` (none unless the collection is sharded).
    fn shard_values(&self, docs: &[Document]) -> Vec<Bson> {
        let Some(k) = &self.shard_key else {
            return Vec::new();
        };
        let mut values: Vec<Bson> = Vec::new();
        for v in docs.iter().map(|d| d.get(k).cloned().unwrap_or(Bson::Null)) {
            if !values.contains(&v) {
                values.push(v);
            }
        }
        values
    }

    /// After events were removed: a document left with none loses its `_outbox`, and a
    /// tombstone left with none is deleted. Both conditional on "no events" and on our token,
    /// per document and atomically: an event a write appended meanwhile keeps either.
    async fn tidy(
        &self,
        token: ClaimToken,
        docs: &[Bson],
        shards: &[Bson],
        tombstones: bool,
    ) -> Result<(), DbError> {
        let mut empty = self.fence(token, docs, shards);
        empty.insert(f::EVENTS, doc! { "$size": 0 });
        if tombstones {
            let mut tomb = empty.clone();
            tomb.insert(f::DELETED, true);
            self.documents.delete_many(tomb).await?;
        }
        self.documents
            .update_many(empty, doc! { "$unset": { f::OUTBOX: "" } })
            .await?;
        Ok(())
    }

    /// Removes the published events `ids` from the claim's documents.
    pub(super) async fn remove_published(
        &self,
        token: ClaimToken,
        held: &Held,
        docs: &Documents,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let of = docs.of(ids);
        if of.is_empty() {
            return Ok(0);
        }
        let pull = doc! { f::EVENTS: { "id": { "$in": ids_bson(ids) } } };
        // Still at the end of our lease: due again at once, for whatever a write appended
        // meanwhile. A document an outcome moved keeps its new due time.
        let mut at_lease_end = self.fence(token, &of, &docs.shards);
        at_lease_end.insert(f::DUE_AT, bson_time(held.lease_until));
        let mut removed = self
            .documents
            .update_many(
                at_lease_end,
                doc! {
                    "$pull": pull.clone(),
                    "$set": { f::DUE_AT: bson_time(now) },
                    "$inc": { f::VERSION: 1_i64 },
                },
            )
            .await?
            .modified_count;
        if docs.moved {
            let mut moved = self.fence(token, &of, &docs.shards);
            moved.insert(f::DUE_AT, doc! { "$ne": bson_time(held.lease_until) });
            removed += self
                .documents
                .update_many(moved, doc! { "$pull": pull, "$inc": { f::VERSION: 1_i64 } })
                .await?
                .modified_count;
        }
        self.tidy(token, &of, &docs.shards, docs.tombstones).await?;
        Ok(events_in(ids, docs, removed, of.len()))
    }

    /// Moves the events `ids` to the entries' collection as dead entries, then removes them
    /// from their documents. The entry is written first: a crash between leaves the event
    /// in both (claimed again later, its dead entry already there), never in neither.
    pub(super) async fn move_to_dead(
        &self,
        token: ClaimToken,
        docs: &Documents,
        ids: &[EventId],
        error: &LastError,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let of = docs.of(ids);
        if of.is_empty() {
            return Ok(0);
        }
        let mut projection = doc! { "_id": 1, f::EVENTS: 1 };
        if let Some(k) = &self.shard_key {
            projection.insert(k.as_str(), 1);
        }
        let held: Vec<Document> = self
            .documents
            .find(self.fence(token, &of, &docs.shards))
            .projection(projection)
            .await?
            .try_collect()
            .await?;
        let err = error_doc(error, now);
        let mut moved = 0;
        for d in &held {
            for element in event_elements(d.get_document(f::OUTBOX).ok()) {
                let Some(entry) = element_entry(&element) else {
                    continue;
                };
                if !ids.contains(&entry.event.id) {
                    continue;
                }
                let dead = self.dead_entry(d, &element, &entry, &err, count_attempt, now);
                // Already there: an earlier attempt wrote it before it could remove the event.
                match self
                    .entries
                    .in_transaction
                    .insert_one(dead)
                    .await
                    .map_err(classify)
                {
                    Ok(_) | Err(DbError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                moved += 1;
            }
        }
        self.documents
            .update_many(
                self.fence(token, &of, &docs.shards),
                doc! {
                    "$pull": { f::EVENTS: { "id": { "$in": ids_bson(ids) } } },
                    "$inc": { f::VERSION: 1_i64 },
                },
            )
            .await?;
        self.tidy(token, &of, &docs.shards, docs.tombstones).await?;
        Ok(moved)
    }

    /// The dead entry for `element` of document `d`.
    fn dead_entry(
        &self,
        d: &Document,
        element: &Document,
        entry: &ClaimedEntry,
        err: &Document,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> Document {
        let id = d.get_str("_id").unwrap_or_default();
        let shard = self
            .shard_key
            .as_deref()
            .and_then(|k| d.get(k).map(|v| (k, v)));
        let mut dead =
            crate::outbox::store::new_entry(&entry.event, &self.collection, id, shard, None);
        let attempts = element.get_i32("attempts").unwrap_or(0) + i32::from(count_attempt);
        let mut history = element.get_array("history").cloned().unwrap_or_default();
        history.push(Bson::Document(err.clone()));
        let keep = usize::try_from(HISTORY_LEN).unwrap_or(10);
        if history.len() > keep {
            history.drain(..history.len() - keep);
        }
        if let Ok(state) = dead.get_document_mut(super::super::ROOT) {
            state.insert("status", EntryStatus::Dead.as_str());
            state.insert("dead_at", bson_time(now));
            state.insert("attempts", attempts);
            state.insert("last_error", err.clone());
            state.insert("history", history);
        }
        dead
    }

    /// Records a failed publish on the events: an attempt, the error, and the document due
    /// again at `next`.
    pub(super) async fn record_failure(
        &self,
        token: ClaimToken,
        docs: &Documents,
        ids: &[EventId],
        next: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let of = docs.of(ids);
        if of.is_empty() {
            return Ok(0);
        }
        let err = error_doc(error, now);
        let updated = self
            .documents
            .update_many(
                self.fence(token, &of, &docs.shards),
                doc! {
                    "$set": { f::DUE_AT: bson_time(next), "_outbox.events.$[e].last_error": err.clone() },
                    "$inc": { "_outbox.events.$[e].attempts": 1, f::VERSION: 1_i64 },
                    "$push": { "_outbox.events.$[e].history": { "$each": [err], "$slice": -HISTORY_LEN } },
                },
            )
            .array_filters(vec![doc! { "e.id": { "$in": ids_bson(ids) } }])
            .await?
            .modified_count;
        self.note_moved(token);
        Ok(events_in(ids, docs, updated, of.len()))
    }

    pub(super) async fn give_back(
        &self,
        token: ClaimToken,
        docs: &Documents,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let of = docs.of(ids);
        if of.is_empty() {
            return Ok(0);
        }
        let updated = self
            .documents
            .update_many(
                self.fence(token, &of, &docs.shards),
                doc! { "$set": { f::DUE_AT: bson_time(now) }, "$inc": { f::VERSION: 1_i64 } },
            )
            .await?
            .modified_count;
        self.note_moved(token);
        Ok(events_in(ids, docs, updated, of.len()))
    }

    /// Removes expired idempotency keys from the documents that hold any: found first (with
    /// their shard key values), then pulled by `_id` and shard key, since a sharded Cosmos DB
    /// RU collection refuses an update whose filter does not name the shard key. A bounded
    /// number of batches per run; the next run goes on.
    pub(super) async fn purge_keys(&self, now: DateTime<Utc>) -> Result<u64, DbError> {
        let expired = doc! { "$lte": bson_time(now) };
        let mut projection = doc! { "_id": 1 };
        if let Some(k) = &self.shard_key {
            projection.insert(k.as_str(), 1);
        }
        let mut removed = 0;
        for _ in 0..PURGE_ROUNDS {
            let found: Vec<Document> = self
                .documents
                .find(doc! { f::KEY_EXPIRES_AT: expired.clone() })
                .projection(projection.clone())
                .limit(PURGE_BATCH)
                .await?
                .try_collect()
                .await?;
            if found.is_empty() {
                break;
            }
            let ids: Vec<Bson> = found
                .iter()
                .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
                .collect();
            let mut filter = doc! { "_id": { "$in": ids }, f::KEY_EXPIRES_AT: expired.clone() };
            self.add_shards(&mut filter, &self.shard_values(&found));
            removed += self
                .documents
                .update_many(
                    filter,
                    doc! { "$pull": { f::KEYS: { "expires_at": expired.clone() } } },
                )
                .await?
                .modified_count;
            if found.len() < usize::try_from(PURGE_BATCH).unwrap_or(usize::MAX) {
                break;
            }
        }
        Ok(removed)
    }
}
