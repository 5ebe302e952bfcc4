//! Changes whose event Event Grid refused (400/413, or over 1 MiB): kept with the change and
//! the reason, so the stream moves on and nothing is lost silently.

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document, doc};

use super::{ChangeStore, bson_time};
use crate::db::{DbError, classify};
use crate::domain::OutboxEvent;
use crate::outbox::LastError;

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
            "status": "dead",
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
