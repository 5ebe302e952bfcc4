//! What `handler outbox …` reads and decides: counts, dead letters, requeue, skip.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use serde::Deserialize;

use super::OutboxStore;
use super::entry::{Row, bson_time, chrono_time, ids_bson};
use super::fields::{claim_order, field};
use crate::db::DbError;
use crate::domain::EventId;
use crate::outbox::{EntryStatus, OutboxCounts};

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

impl OutboxStore {
    /// Entries not yet published, from the claim index.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn count_pending(&self) -> Result<u64, DbError> {
        self.count(doc! { field::STATUS: EntryStatus::Pending.as_str() })
            .await
    }

    /// Counts entries by state, from the claim index.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn counts(&self, now: DateTime<Utc>) -> Result<OutboxCounts, DbError> {
        let status = |s: EntryStatus| doc! { field::STATUS: s.as_str() };
        let pending = self.count(status(EntryStatus::Pending)).await?;
        let due = self
            .count(doc! {
                field::STATUS: EntryStatus::Pending.as_str(),
                field::DUE_AT: { "$lte": bson_time(now) },
            })
            .await?;
        let published = self.count(status(EntryStatus::Published)).await?;
        let dead = self.count(status(EntryStatus::Dead)).await?;
        let skipped = self.count(status(EntryStatus::Skipped)).await?;
        let head = self
            .entries
            .clone_with_type::<Row<HeadState>>()
            .find_one(status(EntryStatus::Pending))
            .sort(claim_order())
            .projection(doc! { field::CREATED_AT: 1 })
            .await?;
        Ok(OutboxCounts {
            pending,
            due,
            published,
            dead,
            skipped,
            oldest_pending_created_at: head.and_then(|h| h.state.created_at).map(chrono_time),
        })
    }

    async fn count(&self, filter: Document) -> Result<u64, DbError> {
        Ok(self.entries.count_documents(filter).await?)
    }

    /// The dead-lettered entries, oldest first, at most `limit`: id, subject, attempts and the
    /// last error, for an operator deciding what to requeue.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, DbError> {
        let rows: Vec<Row<DeadLetterState>> = self
            .entries
            .clone_with_type::<Row<DeadLetterState>>()
            .find(doc! { field::STATUS: EntryStatus::Dead.as_str() })
            .sort(claim_order())
            .limit(limit)
            .projection(doc! {
                field::ID: 1,
                field::SUBJECT: 1,
                field::ATTEMPTS: 1,
                field::DEAD_AT: 1,
                field::LAST_ERROR: 1,
            })
            .await?
            .try_collect()
            .await?;
        Ok(rows.into_iter().filter_map(Row::into_dead_letter).collect())
    }

    /// Marks dead-lettered entries as skipped: kept, never published, no longer holding back
    /// later entries of their subject. Returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn skip_dead(&self, ids: &[EventId], now: DateTime<Utc>) -> Result<u64, DbError> {
        self.decided_update(
            doc! { field::ID: { "$in": ids_bson(ids) }, field::STATUS: EntryStatus::Dead.as_str() },
            doc! { "$set": {
                field::STATUS: EntryStatus::Skipped.as_str(),
                field::SKIPPED_AT: bson_time(now),
            } },
        )
        .await
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
            filter.insert(field::ID, doc! { "$in": ids_bson(ids) });
        }
        self.decided_update(
            filter,
            doc! {
                "$set": {
                    field::STATUS: EntryStatus::Pending.as_str(),
                    field::DUE_AT: bson_time(now),
                    field::ATTEMPTS: 0_i32,
                    field::LEASE_TOKEN: Bson::Null,
                    field::REQUEUED_AT: bson_time(now),
                },
                "$unset": { field::DEAD_AT: "" },
            },
        )
        .await
    }

    /// An operator's decision: the default (majority) write concern, not the relay's relaxed
    /// one, so a failover cannot silently undo it. Returns how many entries changed.
    async fn decided_update(&self, filter: Document, update: Document) -> Result<u64, DbError> {
        Ok(self
            .in_transaction
            .update_many(filter, update)
            .await?
            .modified_count)
    }
}

/// The longest-waiting pending entry's `created_at`, for the lag.
#[derive(Deserialize)]
struct HeadState {
    #[serde(default)]
    created_at: Option<bson::DateTime>,
}

/// A dead entry, as [`OutboxStore::dead_letters`] projects it.
#[derive(Deserialize)]
struct DeadLetterState {
    #[serde(default)]
    attempts: i32,
    #[serde(default)]
    dead_at: Option<bson::DateTime>,
    #[serde(default)]
    last_error: Option<LastErrorRow>,
    #[serde(default)]
    event: Option<SubjectRow>,
}

#[derive(Deserialize)]
struct LastErrorRow {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<i32>,
}

#[derive(Deserialize)]
struct SubjectRow {
    #[serde(default)]
    subject: String,
}

impl Row<DeadLetterState> {
    /// `None` for a row whose id is not an entry's (not a binary UUID).
    fn into_dead_letter(self) -> Option<DeadLetter> {
        let id = self.event_id()?;
        let state = self.state;
        let (reason, status) = state.last_error.map_or((String::new(), None), |l| {
            (l.message, l.status.and_then(|s| u16::try_from(s).ok()))
        });
        Some(DeadLetter {
            id,
            subject: state.event.map(|e| e.subject).unwrap_or_default(),
            attempts: u32::try_from(state.attempts).unwrap_or(0),
            dead_at: state.dead_at.map(chrono_time),
            reason,
            status,
        })
    }
}
