//! Changes whose event Event Grid refused (400/413, or over 1 MiB): kept with the change and
//! the reason, so the stream moves on and nothing is lost silently.

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document, doc};

use super::read::read_change;
use super::{ChangeStore, Read, bson_time, chrono_time};
use crate::db::{DbError, classify};
use crate::domain::stream_change::StreamChange;
use crate::domain::{EventId, OutboxEvent};
use crate::outbox::LastError;

/// A dead letter waiting for an operator.
const DEAD: &str = "dead";
/// A dead letter the reader publishes again before reading on.
const REQUEUED: &str = "requeued";
/// A dead letter never to be published.
const SKIPPED: &str = "skipped";
/// A requeued dead letter Event Grid accepted.
const PUBLISHED: &str = "published";

impl ChangeStore {
    /// Records the change `raw` whose `event` was refused for `error`. Keyed on the event id,
    /// so a change read again after a crash is recorded once.
    ///
    /// # Errors
    /// When the database fails: the position must then not move past the change.
    pub async fn dead_letter(
        &self,
        event: &OutboxEvent,
        raw: &Document,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let reason = doc! {
            "kind": error.kind.as_str(),
            "status": error.status.map(i32::from),
            "code": error.code.clone(),
            "message": &error.message,
            "request_id": error.request_id.clone(),
        };
        let letter = doc! {
            "_id": event.id.to_string(),
            "collection": &self.collection,
            "status": DEAD,
            "subject": &event.subject,
            "event_type": &event.event_type,
            "event_time": bson_time(event.event_time),
            "change": Bson::Document(raw.clone()),
            "reason": reason,
            "dead_at": bson_time(now),
        };
        self.dead_letters
            .replace_one(doc! { "_id": event.id.to_string() }, letter)
            .upsert(true)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// A dead-lettered change, as `handler outbox status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangeDeadLetter {
    /// The event's id.
    pub id: String,
    /// The event's subject.
    pub subject: String,
    /// `dead`, `requeued` (waiting for the reader to publish it again) or `skipped`.
    pub state: String,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
    /// Event Grid's HTTP status, if it answered.
    pub status: Option<u16>,
}

impl ChangeStore {
    /// The dead letters not yet published again or skipped, oldest first, at most `limit`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<ChangeDeadLetter>, DbError> {
        let mut cursor = self
            .dead_letters
            .find(doc! { "collection": &self.collection, "status": { "$in": [DEAD, REQUEUED] } })
            .sort(doc! { "dead_at": 1 })
            .limit(limit)
            .projection(doc! { "change": 0 })
            .await
            .map_err(classify)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let d = cursor.deserialize_current().map_err(classify)?;
            let reason = d.get_document("reason").ok();
            out.push(ChangeDeadLetter {
                id: d.get_str("_id").unwrap_or_default().to_owned(),
                subject: d.get_str("subject").unwrap_or_default().to_owned(),
                state: d.get_str("status").unwrap_or_default().to_owned(),
                dead_at: d.get_datetime("dead_at").ok().map(|t| chrono_time(*t)),
                reason: reason
                    .and_then(|r| r.get_str("message").ok())
                    .unwrap_or_default()
                    .to_owned(),
                status: reason
                    .and_then(|r| r.get_i32("status").ok())
                    .and_then(|s| u16::try_from(s).ok()),
            });
        }
        Ok(out)
    }

    /// How many dead letters are in `state`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn count_dead_letters(&self, state: &str) -> Result<u64, DbError> {
        self.dead_letters
            .count_documents(doc! { "collection": &self.collection, "status": state })
            .await
            .map_err(classify)
    }

    /// Asks the reader to publish dead letters again (every one with `ids: None`); it does so
    /// before reading on. Returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn requeue_dead(
        &self,
        ids: Option<&[EventId]>,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.decide(ids, REQUEUED, "requeued_at", now).await
    }

    /// Marks dead letters as never to be published. Returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn skip_dead(&self, ids: &[EventId], now: DateTime<Utc>) -> Result<u64, DbError> {
        self.decide(Some(ids), SKIPPED, "skipped_at", now).await
    }

    async fn decide(
        &self,
        ids: Option<&[EventId]>,
        state: &str,
        at: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let mut filter = doc! { "collection": &self.collection, "status": DEAD };
        if let Some(ids) = ids {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            filter.insert("_id", doc! { "$in": ids });
        }
        let r = self
            .dead_letters
            .update_many(
                filter,
                doc! { "$set": { "status": state, at: bson_time(now) } },
            )
            .await
            .map_err(classify)?;
        Ok(r.modified_count)
    }

    /// Requeued dead letters, oldest first, at most `limit`: each change read again.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn requeued(
        &self,
        limit: i64,
    ) -> Result<Vec<(Box<StreamChange>, Document)>, DbError> {
        let mut cursor = self
            .dead_letters
            .find(doc! { "collection": &self.collection, "status": REQUEUED })
            .sort(doc! { "dead_at": 1 })
            .limit(limit)
            .await
            .map_err(classify)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let d = cursor.deserialize_current().map_err(classify)?;
            if let Ok(raw) = d.get_document("change")
                && let Some(Read::Change(change, raw)) = read_change(raw, Utc::now())
            {
                out.push((change, raw));
            }
        }
        Ok(out)
    }

    /// Marks requeued dead letters as published again (those refused again were dead-lettered
    /// anew and are left alone). Returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mark_republished(
        &self,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let r = self
            .dead_letters
            .update_many(
                doc! { "_id": { "$in": ids }, "status": REQUEUED },
                doc! { "$set": { "status": PUBLISHED, "published_at": bson_time(now) } },
            )
            .await
            .map_err(classify)?;
        Ok(r.modified_count)
    }
}
