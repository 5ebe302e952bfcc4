//! The only queries on outbox entries: insert, claim, and the fenced state changes.
//!
//! **Claiming** is our `FOR UPDATE SKIP LOCKED`: candidates are read in claim order, then one
//! conditional `updateMany` takes those still pending and due, setting a fresh lease token and
//! moving `due_at` to the end of the lease. An entry is due again when its lease runs out, so a
//! killed or stalled relay frees its entries by itself. Two relays never hold the same entry:
//! the condition is evaluated per document, atomically, by the server.
//!
//! **Fencing**: every later change (published, rescheduled, dead-lettered, released) is
//! conditional on the lease token. A relay whose lease expired and was taken over (a "zombie")
//! changes nothing; at worst it has published an event again, which consumers de-duplicate by
//! its id.
//!
//! Times come from the relay's clock; relays on different machines should keep their clocks in
//! sync (NTP does, on Azure), or a fast clock sees leases expire early. Nothing is lost either
//! way: an early takeover only risks a duplicate.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{self, Binary, Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{ClaimedEntry, EntryStatus, LastError, OutboxCounts};
use crate::db::{DbError, classify, error_code};
use crate::domain::{EventId, OutboxEvent};

/// The field that holds an entry's state; also what tells an entry from a document.
pub const ROOT: &str = "_outbox";

/// Dotted field paths used in queries.
pub mod field {
    /// `pending` | `published` | `dead`.
    pub const STATUS: &str = "_outbox.status";
    /// When the entry may next be claimed: creation, end of the lease, or end of the backoff.
    pub const DUE_AT: &str = "_outbox.due_at";
    /// Token of the claim that holds the entry, or null.
    pub const LEASE_TOKEN: &str = "_outbox.lease_token";
    /// Failed publishes.
    pub const ATTEMPTS: &str = "_outbox.attempts";
    /// Times the entry was claimed.
    pub const CLAIMS: &str = "_outbox.claims";
    /// When the entry was written.
    pub const CREATED_AT: &str = "_outbox.created_at";
    /// When Event Grid accepted it (the TTL index counts from here).
    pub const PUBLISHED_AT: &str = "_outbox.published_at";
    /// When it was dead-lettered.
    pub const DEAD_AT: &str = "_outbox.dead_at";
    /// The last failure.
    pub const LAST_ERROR: &str = "_outbox.last_error";
    /// The last few failures.
    pub const HISTORY: &str = "_outbox.history";
    /// The event's subject (ordering).
    pub const SUBJECT: &str = "_outbox.event.subject";
}

/// Name of the index the claim query uses.
pub const CLAIM_INDEX: &str = "outbox_claim";
/// Name of the index the ordering check uses (`OUTBOX_ORDERING=subject` only).
pub const SUBJECT_INDEX: &str = "outbox_subject";
/// Name of the TTL index that removes published entries.
pub const RETENTION_INDEX: &str = "outbox_published_ttl";
/// Plain index on the idempotency records' expiry, made only where the TTL index was refused,
/// so the relay's bounded deletes find expired records without a scan.
pub const EXPIRY_PLAIN_INDEX: &str = "outbox_idempotency_expiry_plain";

/// How expired outbox data goes away: by the server's TTL indexes, or, where the server
/// refused them (Cosmos DB for MongoDB RU offers TTL on `_ts` only), by the relay's bounded
/// deletes after each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Expiry {
    /// Published entries are removed by the TTL index after the retention.
    pub published_by_ttl: bool,
    /// Expired idempotency records are removed by the TTL index.
    pub records_by_ttl: bool,
}

/// Failures kept in an entry's history.
const HISTORY_LEN: i32 = 10;

/// Identifies one claim; every change under the claim is conditional on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken(Uuid);

impl ClaimToken {
    /// A fresh token.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    fn bson(self) -> Bson {
        uuid_bson(&self.0)
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Entries claimed together.
#[derive(Debug)]
pub struct Claim {
    /// The fencing token.
    pub token: ClaimToken,
    /// When the claim runs out; nothing may be published for it after this.
    pub lease_until: DateTime<Utc>,
    /// The entries, in claim order (oldest due first).
    pub entries: Vec<ClaimedEntry>,
    /// Candidates another relay took between our read and our update.
    pub contended: usize,
}

fn uuid_bson(u: &Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: u.as_bytes().to_vec(),
    })
}

fn id_bson(id: &EventId) -> Bson {
    uuid_bson(id.as_uuid())
}

fn ids_bson(ids: &[EventId]) -> Vec<Bson> {
    ids.iter().map(id_bson).collect()
}

fn bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

fn chrono_time(t: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
}

fn duration_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The outbox entry for `event`, to insert in the same transaction as the change it
/// announces. Its `_id` is the event id. `shard_key` (name and value) is copied from the
/// document onto the entry so both land in one partition of a sharded collection.
#[must_use]
pub fn new_entry(
    event: &OutboxEvent,
    collection: &str,
    document_id: &str,
    shard_key: Option<(&str, &Bson)>,
) -> Document {
    let created = bson_time(event.event_time);
    let mut entry = doc! {
        "_id": id_bson(&event.id),
        ROOT: {
            "status": EntryStatus::Pending.as_str(),
            "due_at": created,
            "lease_token": Bson::Null,
            "attempts": 0_i32,
            "claims": 0_i32,
            "created_at": created,
            "document": { "collection": collection, "id": document_id },
            "event": {
                "subject": &event.subject,
                "type": &event.event_type,
                "time": created,
                "data_version": &event.data_version,
                "data": event.data.get(),
            },
        },
    };
    if let Ok(state) = entry.get_document_mut(ROOT)
        && let Ok(ev) = state.get_document_mut("event")
    {
        if let Some(seq) = event.sequence {
            ev.insert("sequence", i64::try_from(seq).unwrap_or(i64::MAX));
        }
        if let Some(tp) = &event.traceparent {
            ev.insert("traceparent", tp.as_str());
        }
    }
    if let Some((name, value)) = shard_key {
        entry.insert(name, value.clone());
    }
    entry
}

fn error_doc(e: &LastError, now: DateTime<Utc>) -> Document {
    doc! {
        "at": bson_time(now),
        "kind": &e.kind,
        "status": e.status.map(i32::from),
        "code": e.code.as_deref(),
        "message": &e.message,
        "request_id": e.request_id.as_deref(),
    }
}

#[derive(Deserialize)]
struct ClaimRow {
    #[serde(rename = "_id")]
    id: Binary,
    #[serde(rename = "_outbox")]
    state: ClaimRowState,
}

#[derive(Deserialize)]
struct ClaimRowState {
    attempts: i32,
    event: EventRow,
}

#[derive(Deserialize)]
struct EventRow {
    subject: String,
    #[serde(rename = "type")]
    event_type: String,
    time: bson::DateTime,
    data_version: String,
    data: String,
    #[serde(default)]
    sequence: Option<i64>,
    #[serde(default)]
    traceparent: Option<String>,
}

impl ClaimRow {
    fn into_entry(self) -> Option<ClaimedEntry> {
        let uuid = Uuid::from_slice(&self.id.bytes).ok()?;
        let e = self.state.event;
        let data = RawValue::from_string(e.data).ok()?;
        Some(ClaimedEntry {
            event: OutboxEvent {
                id: EventId::from_uuid(uuid),
                subject: e.subject,
                event_type: e.event_type,
                event_time: chrono_time(e.time),
                data_version: e.data_version,
                data,
                sequence: e.sequence.and_then(|s| u64::try_from(s).ok()),
                traceparent: e.traceparent,
            },
            attempts: u32::try_from(self.state.attempts).unwrap_or(0),
        })
    }
}

/// A dead-lettered entry, as `handler outbox status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The entry's (and event's) id.
    #[serde(serialize_with = "display")]
    pub id: EventId,
    /// The event's subject.
    pub subject: String,
    /// Failed publishes.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
    /// The last error's message.
    pub reason: String,
    /// The last error's HTTP status, if any.
    pub status: Option<u16>,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Outbox entries in one collection.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    /// For the relay's state changes: acknowledged by the primary, not waiting for the journal
    /// or a majority. Losing one of these writes (crash, failover rollback) can only make an
    /// entry be claimed, or published, again — a duplicate, never a loss — and not waiting for
    /// a journal flush per batch is what lets one relay claim tens of thousands of entries a
    /// second.
    entries: Collection<Document>,
    /// The default (majority) write concern: inserts inside the write's transaction (which has
    /// its own), and operator commands.
    in_transaction: Collection<Document>,
}

impl OutboxStore {
    /// The entries in `collection` of `db`.
    #[must_use]
    pub fn new(db: &Database, collection: &str) -> Self {
        let relaxed = mongodb::options::CollectionOptions::builder()
            .write_concern(
                mongodb::options::WriteConcern::builder()
                    .w(mongodb::options::Acknowledgment::Nodes(1))
                    .journal(false)
                    .build(),
            )
            .build();
        Self {
            entries: db.collection_with_options(collection, relaxed),
            in_transaction: db.collection(collection),
        }
    }

    /// Inserts a new entry inside the caller's transaction.
    ///
    /// # Errors
    /// The driver's error, unclassified: the transaction callback must return it as is so that
    /// the driver can retry transient failures.
    pub async fn insert(
        &self,
        entry: &Document,
        session: &mut ClientSession,
    ) -> mongodb::error::Result<()> {
        self.in_transaction
            .insert_one(entry)
            .session(session)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` due entries for `lease`.
    ///
    /// A crash after this call leaves the entries claimed until the lease runs out; then any
    /// relay may claim them again. Nothing is lost.
    ///
    /// # Errors
    /// When the database fails; then nothing was claimed, or what was claimed frees itself
    /// when the lease runs out.
    #[tracing::instrument(skip_all, fields(limit))]
    pub async fn claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Claim, DbError> {
        let token = ClaimToken::new();
        let lease_until = now + duration_chrono(lease);
        let held_until = bson_time(lease_until);
        let due = doc! {
            field::STATUS: EntryStatus::Pending.as_str(),
            field::DUE_AT: { "$lte": bson_time(now) },
        };
        let take = doc! {
            "$set": { field::DUE_AT: held_until, field::LEASE_TOKEN: token.bson() },
            "$inc": { field::CLAIMS: 1 },
        };
        // 1. The `due_at` of the limit-th due entry, read from the claim index alone.
        let cutoff = self
            .entries
            .find_one(due.clone())
            .sort(doc! { field::STATUS: 1, field::DUE_AT: 1 })
            .skip(u64::from(limit.saturating_sub(1)))
            .projection(doc! { "_id": 0, field::STATUS: 1, field::DUE_AT: 1 })
            .await?
            .and_then(|d| {
                d.get_document(ROOT)
                    .ok()?
                    .get_datetime("due_at")
                    .ok()
                    .copied()
            });
        // 2. Take every due entry before the cutoff (or all of them, if fewer are due) with one
        //    conditional update over an index range. Each entry is taken by one claim only:
        //    the server evaluates the condition per document, and a taken entry's `due_at`
        //    has moved to the end of its lease.
        let mut filter = due.clone();
        if let Some(c) = cutoff {
            filter.insert(field::DUE_AT, doc! { "$lt": c });
        }
        let mut taken = self
            .entries
            .update_many(filter, take.clone())
            .await?
            .modified_count;
        let mut contended = 0;
        if let Some(c) = cutoff
            && taken < u64::from(limit)
        {
            // Top up from the entries due exactly at the cutoff, by id, so a claim takes
            // `limit` entries even when many share one millisecond.
            let want = u64::from(limit) - taken;
            let mut at_cutoff = due;
            at_cutoff.insert(field::DUE_AT, c);
            let ids: Vec<Bson> = self
                .entries
                .find(at_cutoff.clone())
                .limit(i64::try_from(want).unwrap_or(i64::MAX))
                .projection(doc! { "_id": 1 })
                .await?
                .try_collect::<Vec<Document>>()
                .await?
                .into_iter()
                .filter_map(|d| d.get("_id").cloned())
                .collect();
            if !ids.is_empty() {
                at_cutoff.insert("_id", doc! { "$in": &ids });
                let more = self
                    .entries
                    .update_many(at_cutoff, take)
                    .await?
                    .modified_count;
                contended = ids.len().saturating_sub(usize::try_from(more).unwrap_or(0));
                taken += more;
            }
        }
        if taken == 0 {
            return Ok(Claim {
                token,
                lease_until,
                entries: Vec::new(),
                contended,
            });
        }
        // 3. Read what this claim holds: the entries whose `due_at` is exactly the end of this
        //    lease (an index range) and whose token is ours.
        let rows: Vec<ClaimRow> = self
            .entries
            .clone_with_type::<ClaimRow>()
            .find(Self::held(token, held_until))
            .sort(doc! { field::STATUS: 1, field::DUE_AT: 1 })
            .projection(doc! { "_id": 1, "_outbox.attempts": 1, "_outbox.event": 1 })
            .await?
            .try_collect()
            .await?;
        let entries: Vec<ClaimedEntry> =
            rows.into_iter().filter_map(ClaimRow::into_entry).collect();
        tracing::debug!(
            claimed = entries.len(),
            contended,
            lease.token = %token,
            "Claimed outbox entries"
        );
        Ok(Claim {
            token,
            lease_until,
            entries,
            contended,
        })
    }

    /// Entries still held by a claim: pending, due at the end of its lease, with its token.
    fn held(token: ClaimToken, lease_until: bson::DateTime) -> Document {
        doc! {
            field::STATUS: EntryStatus::Pending.as_str(),
            field::DUE_AT: lease_until,
            field::LEASE_TOKEN: token.bson(),
        }
    }

    /// Marks published every entry the claim still holds — for a claim whose entries were all
    /// published. One update over an index range instead of a list of ids. Returns how many.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn mark_claim_published(
        &self,
        token: ClaimToken,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let r = self
            .entries
            .update_many(
                Self::held(token, bson_time(lease_until)),
                doc! { "$set": {
                    field::STATUS: EntryStatus::Published.as_str(),
                    field::PUBLISHED_AT: bson_time(now),
                } },
            )
            .await?;
        Ok(r.modified_count)
    }

    fn fenced(token: ClaimToken, ids: &[EventId]) -> Document {
        doc! {
            "_id": { "$in": ids_bson(ids) },
            field::LEASE_TOKEN: token.bson(),
            field::STATUS: EntryStatus::Pending.as_str(),
        }
    }

    /// Marks entries published; only those still held under `token`. Returns how many.
    ///
    /// Called only after Event Grid answered 200 for the request that carried them. A crash
    /// before this call leaves them claimed: they are published again after the lease (a
    /// duplicate, never a loss).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mark_published(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let r = self
            .entries
            .update_many(
                Self::fenced(token, ids),
                // The lease token stays: it records which claim published the entry.
                doc! { "$set": {
                    field::STATUS: EntryStatus::Published.as_str(),
                    field::PUBLISHED_AT: bson_time(now),
                } },
            )
            .await?;
        Ok(r.modified_count)
    }

    /// Records a failed publish and makes the entries due again at `next_attempt_at`.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn reschedule(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        next_attempt_at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let set = doc! { field::DUE_AT: bson_time(next_attempt_at) };
        self.record_failure(token, ids, set, error, 1, now).await
    }

    /// One fenced update that records a failure: `set` plus the last error, an attempt
    /// (`attempts_inc`), the lease given up, and the error appended to the history.
    async fn record_failure(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        mut set: Document,
        error: &LastError,
        attempts_inc: i32,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let err = error_doc(error, now);
        set.insert(field::LEASE_TOKEN, Bson::Null);
        set.insert(field::LAST_ERROR, err.clone());
        let r = self
            .entries
            .update_many(
                Self::fenced(token, ids),
                doc! {
                    "$set": set,
                    "$inc": { field::ATTEMPTS: attempts_inc },
                    "$push": { field::HISTORY: { "$each": [err], "$slice": -HISTORY_LEN } },
                },
            )
            .await?;
        Ok(r.modified_count)
    }

    /// Dead-letters entries: kept with their last error, never claimed again until requeued.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn dead_letter(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        error: &LastError,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let set = doc! {
            field::STATUS: EntryStatus::Dead.as_str(),
            field::DEAD_AT: bson_time(now),
        };
        self.record_failure(token, ids, set, error, i32::from(count_attempt), now)
            .await
    }

    /// Gives entries back without counting an attempt (the run ran out of time, or stopped on
    /// a configuration error): they are due again at once.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn release(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let r = self
            .entries
            .update_many(
                Self::fenced(token, ids),
                doc! { "$set": { field::DUE_AT: bson_time(now), field::LEASE_TOKEN: Bson::Null } },
            )
            .await?;
        Ok(r.modified_count)
    }

    /// Deletes up to `limit` published entries published before `cutoff`, oldest first,
    /// through the claim index (a published entry's `due_at` is the end of the lease it was
    /// published under, so it bounds the search); returns how many went. For servers without
    /// a TTL index: small deletes, never inside a business transaction.
    ///
    /// # Errors
    /// When the database fails; nothing is lost, the next run goes on.
    pub async fn purge_published(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        let filter = doc! {
            field::STATUS: EntryStatus::Published.as_str(),
            field::DUE_AT: { "$lt": bson_time(cutoff) },
            field::PUBLISHED_AT: { "$lt": bson_time(cutoff) },
        };
        self.delete_first(filter, doc! { field::STATUS: 1, field::DUE_AT: 1 }, limit)
            .await
    }

    /// Deletes up to `limit` idempotency records that expired before `now`; returns how many
    /// went. For servers without a TTL index (see [`Self::purge_published`]).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_expired_records(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        let expired = doc! { super::idempotency::EXPIRES_AT: { "$lte": bson_time(now) } };
        self.delete_first(expired, doc! { super::idempotency::EXPIRES_AT: 1 }, limit)
            .await
    }

    /// Deletes the first `limit` documents matching `filter` in `sort` order (MongoDB's
    /// `deleteMany` has no limit): reads their ids, then deletes those still matching.
    async fn delete_first(
        &self,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<u64, DbError> {
        let found: Vec<Document> = self
            .entries
            .find(filter.clone())
            .sort(sort)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let ids: Vec<Bson> = found
            .into_iter()
            .filter_map(|mut d| d.remove("_id"))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut still_matching = filter;
        still_matching.insert("_id", doc! { "$in": ids });
        Ok(self
            .entries
            .delete_many(still_matching)
            .await?
            .deleted_count)
    }

    /// Entries not yet published, from the claim index.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn count_pending(&self) -> Result<u64, DbError> {
        Ok(self
            .entries
            .count_documents(doc! { field::STATUS: EntryStatus::Pending.as_str() })
            .await?)
    }

    /// `OUTBOX_ORDERING=subject`: takes out of `claim` every entry that an older unpublished
    /// entry of its subject (pending, or dead — a dead entry parks its subject until requeued
    /// or skipped) outside this claim must precede, and gives those back: due again when the
    /// blocker may have moved on (a dead blocker: after `parked_for`). Entries of one subject
    /// inside one claim may go together: they are published in one request, which Event Grid
    /// accepts or refuses whole. Returns how many were deferred.
    ///
    /// # Errors
    /// When the database fails; the deferred entries then stay claimed until the lease runs
    /// out, which only delays them.
    pub async fn defer_blocked(
        &self,
        claim: &mut Claim,
        now: DateTime<Utc>,
        parked_for: Duration,
    ) -> Result<u64, DbError> {
        use std::collections::{BTreeSet, HashMap};
        let subjects: BTreeSet<&str> = claim
            .entries
            .iter()
            .map(|e| e.event.subject.as_str())
            .collect();
        if subjects.is_empty() {
            return Ok(0);
        }
        let others: Vec<Document> = self
            .entries
            .find(doc! {
                field::SUBJECT: { "$in": subjects.iter().copied().collect::<Vec<_>>() },
                field::STATUS: { "$in": [EntryStatus::Pending.as_str(), EntryStatus::Dead.as_str()] },
                field::LEASE_TOKEN: { "$ne": claim.token.bson() },
            })
            .projection(doc! {
                field::SUBJECT: 1, field::STATUS: 1, field::DUE_AT: 1, field::CREATED_AT: 1,
                field::LEASE_TOKEN: 1, "_outbox.event.sequence": 1,
            })
            .await?
            .try_collect()
            .await?;
        // The oldest unpublished entry of each subject outside this claim.
        let mut oldest: HashMap<String, ((i64, i64), bool, bson::DateTime)> = HashMap::new();
        for d in &others {
            let Ok(state) = d.get_document(ROOT) else {
                continue;
            };
            let Some(event) = state.get_document("event").ok() else {
                continue;
            };
            let subject = event.get_str("subject").unwrap_or_default().to_owned();
            let key = (
                state
                    .get_datetime("created_at")
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(0),
                event.get_i64("sequence").unwrap_or(0),
            );
            let dead = state.get_str("status") == Ok(EntryStatus::Dead.as_str());
            // A blocker held by another claim is being published now: look again soon. One
            // backing off is due at its `due_at`: look again then.
            let leased = !matches!(state.get("lease_token"), None | Some(Bson::Null));
            let due = if leased {
                bson_time(now)
            } else {
                state
                    .get_datetime("due_at")
                    .copied()
                    .unwrap_or_else(|_| bson_time(now))
            };
            let slot = oldest.entry(subject).or_insert((key, dead, due));
            if key < slot.0 {
                *slot = (key, dead, due);
            }
        }
        let mut deferred: Vec<(EventId, bson::DateTime)> = Vec::new();
        claim.entries.retain(|e| {
            let key = (
                e.event.event_time.timestamp_millis(),
                i64::try_from(e.event.sequence.unwrap_or(0)).unwrap_or(i64::MAX),
            );
            match oldest.get(&e.event.subject) {
                Some((blocker, dead, due)) if *blocker < key => {
                    let soon = now + chrono::Duration::seconds(1);
                    let again = if *dead {
                        bson_time(now + duration_chrono(parked_for))
                    } else {
                        bson_time(soon).max(*due)
                    };
                    deferred.push((e.event.id, again));
                    false
                }
                _ => true,
            }
        });
        let mut n = 0;
        for (id, again) in deferred {
            n += self
                .entries
                .update_one(
                    Self::fenced(claim.token, &[id]),
                    doc! { "$set": { field::DUE_AT: again, field::LEASE_TOKEN: Bson::Null } },
                )
                .await?
                .modified_count;
        }
        Ok(n)
    }

    /// Marks dead-lettered entries as skipped: kept, never published, no longer holding back
    /// later entries of their subject. Returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn skip_dead(&self, ids: &[EventId], now: DateTime<Utc>) -> Result<u64, DbError> {
        let r = self
            .in_transaction
            .update_many(
                doc! { "_id": { "$in": ids_bson(ids) }, field::STATUS: EntryStatus::Dead.as_str() },
                doc! { "$set": {
                    field::STATUS: EntryStatus::Skipped.as_str(),
                    "_outbox.skipped_at": bson_time(now),
                } },
            )
            .await?;
        Ok(r.modified_count)
    }

    /// Gives dead-lettered entries another chance: pending again, due now, attempts reset to
    /// 0. Their last error and history are kept. `ids: None` requeues every dead entry.
    /// Returns how many were requeued.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn requeue_dead(
        &self,
        ids: Option<&[EventId]>,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let mut filter = doc! { field::STATUS: EntryStatus::Dead.as_str() };
        if let Some(ids) = ids {
            filter.insert("_id", doc! { "$in": ids_bson(ids) });
        }
        // An operator's decision: default (majority) write concern, not the relay's relaxed
        // one, so a failover cannot silently undo it.
        let r = self
            .in_transaction
            .update_many(
                filter,
                doc! {
                    "$set": {
                        field::STATUS: EntryStatus::Pending.as_str(),
                        field::DUE_AT: bson_time(now),
                        field::ATTEMPTS: 0_i32,
                        field::LEASE_TOKEN: Bson::Null,
                        "_outbox.requeued_at": bson_time(now),
                    },
                    "$unset": { field::DEAD_AT: "" },
                },
            )
            .await?;
        Ok(r.modified_count)
    }

    /// The dead-lettered entries, oldest first, at most `limit`: id, subject, attempts and the
    /// last error, for an operator deciding what to requeue.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, DbError> {
        let rows: Vec<Document> = self
            .entries
            .find(doc! { field::STATUS: EntryStatus::Dead.as_str() })
            .sort(doc! { field::STATUS: 1, field::DUE_AT: 1 })
            .limit(limit)
            .projection(doc! {
                "_id": 1,
                "_outbox.event.subject": 1,
                field::ATTEMPTS: 1,
                field::DEAD_AT: 1,
                field::LAST_ERROR: 1,
            })
            .await?
            .try_collect()
            .await?;
        Ok(rows
            .iter()
            .filter_map(|d| {
                let Some(Bson::Binary(b)) = d.get("_id") else {
                    return None;
                };
                let id = Uuid::from_slice(&b.bytes).ok()?;
                let state = d.get_document(ROOT).ok()?;
                let last = state.get_document("last_error").ok();
                Some(DeadLetter {
                    id: EventId::from_uuid(id),
                    subject: state
                        .get_document("event")
                        .ok()
                        .and_then(|e| e.get_str("subject").ok())
                        .unwrap_or_default()
                        .to_owned(),
                    attempts: u32::try_from(state.get_i32("attempts").unwrap_or(0)).unwrap_or(0),
                    dead_at: state.get_datetime("dead_at").ok().map(|t| chrono_time(*t)),
                    reason: last
                        .and_then(|l| l.get_str("message").ok())
                        .unwrap_or_default()
                        .to_owned(),
                    status: last
                        .and_then(|l| l.get_i32("status").ok())
                        .and_then(|s| u16::try_from(s).ok()),
                })
            })
            .collect())
    }

    /// Counts entries by state, from the claim index.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn counts(&self, now: DateTime<Utc>) -> Result<OutboxCounts, DbError> {
        let count = |filter: Document| {
            let entries = self.entries.clone();
            async move { entries.count_documents(filter).await.map_err(classify) }
        };
        let pending = count(doc! { field::STATUS: "pending" }).await?;
        let due =
            count(doc! { field::STATUS: "pending", field::DUE_AT: { "$lte": bson_time(now) } })
                .await?;
        let published = count(doc! { field::STATUS: "published" }).await?;
        let dead = count(doc! { field::STATUS: "dead" }).await?;
        let skipped = count(doc! { field::STATUS: "skipped" }).await?;
        let head = self
            .entries
            .find_one(doc! { field::STATUS: "pending" })
            .sort(doc! { field::STATUS: 1, field::DUE_AT: 1 })
            .projection(doc! { field::CREATED_AT: 1 })
            .await?;
        let oldest_pending_created_at = head
            .as_ref()
            .and_then(|d| d.get_document(ROOT).ok())
            .and_then(|s| s.get_datetime("created_at").ok())
            .map(|t| chrono_time(*t));
        Ok(OutboxCounts {
            pending,
            due,
            published,
            dead,
            skipped,
            oldest_pending_created_at,
        })
    }
}

/// Creates the claim index, the retention (TTL) index of published entries and the expiry
/// index of idempotency records on the entries' collection.
///
/// In the documents' own collection (`colocated`) the claim index is partial, covering entries
/// only; a server that refuses partial indexes gets a plain one (documents then sit in it
/// under a null key, which costs space, not correctness). A server that refuses a TTL index
/// (Cosmos DB for MongoDB RU offers TTL on `_ts` only) is logged, not fatal: the returned
/// [`Expiry`] tells the relay to delete that data itself in small batches (expired records are
/// ignored when read meanwhile), and expired records get a plain index to be found by.
///
/// # Errors
/// When the claim index cannot be created: without it the claim query would scan (and fail on
/// Cosmos DB, which refuses to sort on unindexed fields).
pub async fn ensure_indexes(
    db: &Database,
    collection: &str,
    retention: Duration,
    colocated: bool,
    ordered_by_subject: bool,
) -> Result<Expiry, DbError> {
    let entries: Collection<Document> = db.collection(collection);
    if ordered_by_subject {
        entries
            .create_index(
                IndexModel::builder()
                    .keys(doc! { field::SUBJECT: 1, field::STATUS: 1 })
                    .options(
                        IndexOptions::builder()
                            .name(SUBJECT_INDEX.to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
            )
            .await?;
    }
    let claim_keys = doc! { field::STATUS: 1, field::DUE_AT: 1 };
    let plain = IndexOptions::builder().name(CLAIM_INDEX.to_owned()).build();
    let claim_options = if colocated {
        IndexOptions::builder()
            .name(CLAIM_INDEX.to_owned())
            .partial_filter_expression(doc! { field::STATUS: { "$exists": true } })
            .build()
    } else {
        plain.clone()
    };
    let made = entries
        .create_index(
            IndexModel::builder()
                .keys(claim_keys.clone())
                .options(claim_options)
                .build(),
        )
        .await;
    match made {
        Ok(_) => {}
        Err(e) if colocated && !classify_ref_retryable(&e) => {
            tracing::warn!(
                error = %crate::telemetry::chain(&e),
                "The database refused a partial claim index; using a plain one"
            );
            entries
                .create_index(
                    IndexModel::builder()
                        .keys(claim_keys)
                        .options(plain)
                        .build(),
                )
                .await?;
        }
        Err(e) => return Err(classify(e)),
    }
    let published_by_ttl = ensure_ttl(
        db,
        &entries,
        RETENTION_INDEX,
        field::PUBLISHED_AT,
        retention,
        "published outbox entries",
    )
    .await?;
    let records_by_ttl = ensure_ttl(
        db,
        &entries,
        super::idempotency::EXPIRY_INDEX,
        super::idempotency::EXPIRES_AT,
        Duration::ZERO,
        "expired idempotency records",
    )
    .await?;
    if !records_by_ttl {
        // The relay deletes expired records itself; this index finds them.
        match field_index(
            &entries,
            EXPIRY_PLAIN_INDEX,
            super::idempotency::EXPIRES_AT,
            None,
        )
        .await
        {
            // An index on that field exists already (made some other way): it serves.
            Err(e) if error_code(&e) == Some(85) => {}
            made => made.map_err(classify)?,
        }
    }
    Ok(Expiry {
        published_by_ttl,
        records_by_ttl,
    })
}

fn classify_ref_retryable(e: &mongodb::error::Error) -> bool {
    classify(e.clone()).is_retryable()
}

/// Creates the index `{path: 1}` named `name`, a TTL index when `expire_after` is set.
/// Sparse, so only documents that have the field (published entries, idempotency records) are
/// in it and writing a pending entry or a document costs it nothing; a server without sparse
/// indexes gets a plain one. An index of that name with other options (85, 86) or a
/// transient failure is returned as is.
async fn field_index(
    entries: &Collection<Document>,
    name: &str,
    path: &str,
    expire_after: Option<Duration>,
) -> Result<(), mongodb::error::Error> {
    let model = |sparse: bool| {
        IndexModel::builder()
            .keys(doc! { path: 1 })
            .options(
                IndexOptions::builder()
                    .name(name.to_owned())
                    .expire_after(expire_after)
                    .sparse(sparse)
                    .build(),
            )
            .build()
    };
    match entries.create_index(model(true)).await {
        Err(e) if !matches!(error_code(&e), Some(85 | 86)) && !classify_ref_retryable(&e) => {
            entries.create_index(model(false)).await.map(drop)
        }
        made => made.map(drop),
    }
}

async fn ensure_ttl(
    db: &Database,
    entries: &Collection<Document>,
    name: &str,
    path: &str,
    after: Duration,
    what: &str,
) -> Result<bool, DbError> {
    match field_index(entries, name, path, Some(after)).await {
        Ok(()) => {}
        // The index exists with another expiry: change it in place.
        Err(e) if matches!(error_code(&e), Some(85 | 86)) => {
            let secs = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
            db.run_command(doc! {
                "collMod": entries.name(),
                "index": { "name": name, "expireAfterSeconds": secs },
            })
            .await?;
            tracing::info!(
                index = name,
                expire_after_secs = secs,
                "Changed the expiry of {what}"
            );
        }
        Err(e) => {
            let e = classify(e);
            if e.is_retryable() {
                return Err(e);
            }
            tracing::warn!(
                error = %crate::telemetry::chain(&e),
                index = name,
                "The database refused the TTL index for {what}; the relay deletes them in small batches after each run instead"
            );
            return Ok(false);
        }
    }
    Ok(true)
}
