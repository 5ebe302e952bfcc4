//! A change stream on the entries' collection that tells the tail when an entry nobody holds
//! arrives (written by a process without the push path, or by another application), so that it
//! is relayed at once rather than at the next poll.

use futures_util::StreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;

use super::OutboxStore;
use super::fields::field;
use crate::db::DbError;
use crate::outbox::EntryStatus;

/// A stream of "a new unheld entry exists" signals.
pub struct NewEntries(ChangeStream<Document>);

impl std::fmt::Debug for NewEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEntries").finish_non_exhaustive()
    }
}

impl OutboxStore {
    /// Watches for inserted entries that are pending and held by no one. Only the resume token
    /// comes back (the entry itself is claimed by the ordinary query), so a large event costs the
    /// stream nothing. Entries a write holds for its own push path are not reported: that
    /// process publishes them, and the sweeper takes them if it cannot.
    ///
    /// # Errors
    /// When the server has no change streams (a standalone server, or a pipeline the server
    /// refuses, as Cosmos DB RU does for this shape): the caller polls instead.
    pub async fn watch_new_unheld(&self) -> Result<NewEntries, DbError> {
        let full = |path: &str| format!("fullDocument.{path}");
        let pipeline = [
            doc! { "$match": {
                "operationType": "insert",
                full(field::STATUS): EntryStatus::Pending.as_str(),
                full(field::LEASE_TOKEN): Bson::Null,
            } },
            doc! { "$project": { "_id": 1 } },
        ];
        let stream = self
            .entries
            .watch()
            .pipeline(pipeline)
            .await?
            .with_type::<Document>();
        Ok(NewEntries(stream))
    }
}

impl NewEntries {
    /// Waits for the next new unheld entry.
    ///
    /// # Errors
    /// When the stream fails beyond the driver's own resume (the server restarted for longer
    /// than the driver waits, the collection was dropped): open a new one.
    pub async fn next(&mut self) -> Result<(), DbError> {
        match self.0.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
            None => Err(DbError::Other(mongodb::error::Error::custom(
                "the change stream ended",
            ))),
        }
    }
}
