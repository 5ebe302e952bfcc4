//! What `handler outbox replay` reads and remembers: the published entries still retained in a
//! time window (by id, page after page), and the replay's checkpoint, so that a replay stopped
//! half-way resumes after the last request Event Grid accepted.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Binary, Document, doc, spec::BinarySubtype};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::OutboxStore;
use super::entry::{ClaimState, Row, bson_time, chrono_time, id_bson};
use super::fields::field;
use crate::db::DbError;
use crate::domain::{EventId, OutboxEvent};
use crate::outbox::EntryStatus;

/// Which published events to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Written at or after this time.
    pub since: DateTime<Utc>,
    /// Written before this time.
    pub until: DateTime<Utc>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
}

impl ReplayWindow {
    fn filter(&self, after: Option<&EventId>) -> Document {
        let mut f = doc! {
            field::STATUS: EntryStatus::Published.as_str(),
            field::CREATED_AT: { "$gte": bson_time(self.since), "$lt": bson_time(self.until) },
        };
        if let Some(s) = &self.subject {
            f.insert(field::SUBJECT, s.as_str());
        }
        if let Some(t) = &self.event_type {
            f.insert(EVENT_TYPE, t.as_str());
        }
        if let Some(id) = after {
            f.insert(field::ID, doc! { "$gt": id_bson(id) });
        }
        f
    }
}

/// The stored event's type.
const EVENT_TYPE: &str = "_outbox.event.type";

/// Where a replay got to: stored under the replay's key in the checkpoints collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCheckpoint {
    /// The window and options, as text: one checkpoint per distinct replay.
    #[serde(rename = "_id")]
    pub key: String,
    /// The end of the window, fixed when the replay first started (an open window ends then).
    pub until: bson::DateTime,
    /// The last event id Event Grid accepted, in id order; `None` before the first.
    pub after: Option<Binary>,
    /// Events replayed so far.
    pub replayed: i64,
    /// When the last event was replayed; `None` while unfinished.
    pub finished_at: Option<bson::DateTime>,
}

impl ReplayCheckpoint {
    /// The last replayed event's id.
    #[must_use]
    pub fn after_id(&self) -> Option<EventId> {
        let b = self.after.as_ref()?;
        uuid::Uuid::from_slice(&b.bytes)
            .ok()
            .map(EventId::from_uuid)
    }

    /// Records that every event up to `id` (in id order) was accepted.
    pub fn advance(&mut self, id: &EventId, events: u64) {
        self.after = Some(Binary {
            subtype: BinarySubtype::Uuid,
            bytes: id.as_uuid().as_bytes().to_vec(),
        });
        self.replayed = self
            .replayed
            .saturating_add(i64::try_from(events).unwrap_or(i64::MAX));
    }
}

impl OutboxStore {
    /// Published events of `window` after `after` in id order, at most `limit`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn published_page(
        &self,
        window: &ReplayWindow,
        after: Option<&EventId>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, DbError> {
        let rows: Vec<Row<ClaimState>> = self
            .entries
            .clone_with_type::<Row<ClaimState>>()
            .find(window.filter(after))
            .sort(doc! { field::ID: 1 })
            .limit(i64::from(limit))
            .projection(doc! { field::ID: 1, field::ATTEMPTS: 1, field::EVENT: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(Row::into_entry)
            .map(|e| e.event)
            .collect())
    }

    /// How many published events of `window` come after `after`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn count_published(
        &self,
        window: &ReplayWindow,
        after: Option<&EventId>,
    ) -> Result<u64, DbError> {
        Ok(self.entries.count_documents(window.filter(after)).await?)
    }
}

/// Replay checkpoints, one document per replay key.
#[derive(Debug, Clone)]
pub struct ReplayCheckpoints(Collection<ReplayCheckpoint>);

impl ReplayCheckpoints {
    /// The checkpoints in `collection` of `db`.
    #[must_use]
    pub fn new(db: &Database, collection: &str) -> Self {
        Self(db.collection(collection))
    }

    /// The checkpoint of `key`, if that replay ran before.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn load(&self, key: &str) -> Result<Option<ReplayCheckpoint>, DbError> {
        Ok(self.0.find_one(doc! { "_id": key }).await?)
    }

    /// Stores `checkpoint` (majority write concern: an acknowledged checkpoint survives a
    /// failover, so a resumed replay never sends an accepted event again).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn save(&self, checkpoint: &ReplayCheckpoint) -> Result<(), DbError> {
        self.0
            .replace_one(doc! { "_id": &checkpoint.key }, checkpoint)
            .upsert(true)
            .await?;
        Ok(())
    }
}

/// A window's end as stored.
#[must_use]
pub fn stored_time(t: DateTime<Utc>) -> bson::DateTime {
    bson_time(t)
}

/// A stored time back as a window's end.
#[must_use]
pub fn window_time(t: bson::DateTime) -> DateTime<Utc> {
    chrono_time(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_advances_to_the_last_accepted_id() {
        let mut c = ReplayCheckpoint {
            key: "k".into(),
            until: bson::DateTime::now(),
            after: None,
            replayed: 0,
            finished_at: None,
        };
        assert_eq!(c.after_id(), None);
        let id = EventId::from_uuid(uuid::Uuid::new_v4());
        c.advance(&id, 3);
        assert_eq!((c.after_id(), c.replayed), (Some(id), 3));
    }
}
