//! A change stream on the entries' collection that tells the tail when an entry nobody holds
//! arrives (written by a process without the push path, or by another application), so that it
//! is relayed at once rather than at the next poll.
//!
//! Where the server takes a pipeline of our choosing, it reports only inserted unheld entries
//! and only their resume token. Cosmos DB for MongoDB RU refuses every pipeline but its own
//! mandatory one ([`crate::db::ru_change_stream_pipeline`]): there every insert, update and
//! replace in the collection comes back with its document, and the entries that matter are
//! picked out here (pending and held by no one; without `operationType` an insert cannot be
//! told from an update, so an entry rescheduled by a failed publish also wakes the tail, which
//! then finds it not yet due).

use futures_util::StreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentType;

use super::OutboxStore;
use super::fields::{ROOT, field};
use crate::db::{DbError, is_ru_pipeline_refusal, ru_change_stream_pipeline};
use crate::outbox::EntryStatus;

/// A stream of "a new unheld entry exists" signals.
pub struct NewEntries {
    stream: ChangeStream<Document>,
    /// Cosmos DB RU's stream: every change comes back, picked out here.
    pick: bool,
}

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
        match self.entries.watch().pipeline(pipeline).await {
            Ok(stream) => Ok(NewEntries {
                stream: stream.with_type::<Document>(),
                pick: false,
            }),
            Err(e) if is_ru_pipeline_refusal(&e) => {
                tracing::debug!(
                    "The server takes only Cosmos DB RU's change-stream pipeline; watching the outbox with it"
                );
                let stream = self
                    .entries
                    .watch()
                    .pipeline(ru_change_stream_pipeline())
                    .full_document(FullDocumentType::UpdateLookup)
                    .await?
                    .with_type::<Document>();
                Ok(NewEntries { stream, pick: true })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether a change from Cosmos DB RU's stream shows an entry that is pending and held by no
/// one (documents beside the entries, published and held entries are not).
fn is_unheld_pending_entry(change: &Document) -> bool {
    let Ok(entry) = change
        .get_document("fullDocument")
        .and_then(|d| d.get_document(ROOT))
    else {
        return false;
    };
    let leaf = |path: &str| path.rsplit('.').next().unwrap_or(path).to_owned();
    entry.get_str(leaf(field::STATUS)).ok() == Some(EntryStatus::Pending.as_str())
        && matches!(entry.get(leaf(field::LEASE_TOKEN)), None | Some(Bson::Null))
}

impl NewEntries {
    /// Waits for the next new unheld entry.
    ///
    /// # Errors
    /// When the stream fails beyond the driver's own resume (the server restarted for longer
    /// than the driver waits, the collection was dropped): open a new one.
    pub async fn next(&mut self) -> Result<(), DbError> {
        loop {
            match self.stream.next().await {
                Some(Ok(change)) if !self.pick || is_unheld_pending_entry(&change) => {
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(DbError::Other(mongodb::error::Error::custom(
                        "the change stream ended",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_cosmos_ru_changes_only_pending_entries_held_by_no_one_wake_the_tail() {
        let change = |doc: Document| doc! { "_id": { "_data": "page" }, "fullDocument": doc };
        let entry = |outbox: Document| change(doc! { "_id": "e", ROOT: outbox });
        assert!(is_unheld_pending_entry(&entry(
            doc! { "status": "pending", "due_at": 1 }
        )));
        assert!(is_unheld_pending_entry(&entry(
            doc! { "status": "pending", "lease_token": Bson::Null }
        )));
        // Held by a claim or a write's push path; published; dead.
        assert!(!is_unheld_pending_entry(&entry(
            doc! { "status": "pending", "lease_token": "t" }
        )));
        assert!(!is_unheld_pending_entry(&entry(
            doc! { "status": "published" }
        )));
        assert!(!is_unheld_pending_entry(&entry(doc! { "status": "dead" })));
        // A document beside the entries, and a change without its document (deleted since).
        assert!(!is_unheld_pending_entry(&change(
            doc! { "_id": "d", "n": 1 }
        )));
        assert!(!is_unheld_pending_entry(
            &doc! { "_id": { "_data": "page" } }
        ));
    }
}
