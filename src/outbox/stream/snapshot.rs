//! What `handler outbox resync` reads: the stream's present position, recorded before the
//! snapshot begins, and every document as it is.

use chrono::Utc;
use futures_util::TryStreamExt as _;
use mongodb::bson::{Bson, Document};
use mongodb::change_stream::event::ResumeToken;

use super::{ChangeStore, Checkpoint, StreamError};
use crate::db::classify;
use crate::domain::stream_change::{ChangeKind, StreamChange};
use crate::outbox::{idempotency, store};

impl ChangeStore {
    /// The stream's position now: where the stream resumes once the snapshot is published, so
    /// that every change made during the snapshot is read afterwards (at least once).
    ///
    /// # Errors
    /// When the database fails or has no change streams.
    pub async fn present_position(&self) -> Result<ResumeToken, StreamError> {
        let changes = self
            .open(&Checkpoint::default(), std::time::Duration::from_millis(1))
            .await?;
        changes.position().ok_or_else(|| {
            StreamError::Db(crate::db::DbError::Other(mongodb::error::Error::custom(
                "the server gave the new change stream no position",
            )))
        })
    }

    /// The server's estimate of the documents in the collection (from its metadata, no scan;
    /// idempotency records count too): the length of a resync's progress bar.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn estimated_documents(&self) -> Result<u64, StreamError> {
        Ok(self
            .documents
            .estimated_document_count()
            .await
            .map_err(classify)?)
    }

    /// Every document of the collection (never an outbox entry or a record), in `_id` order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn snapshot(&self) -> Result<Snapshot, StreamError> {
        let cursor = self
            .documents
            .find(mongodb::bson::doc! {
                store::ROOT: { "$exists": false },
                idempotency::ROOT: { "$exists": false },
            })
            .sort(mongodb::bson::doc! { "_id": 1 })
            .await
            .map_err(classify)?;
        Ok(Snapshot(cursor))
    }
}

/// The documents of a snapshot being read.
pub struct Snapshot(mongodb::Cursor<Document>);

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Up to `limit` more documents as snapshot changes (empty at the end). `name` names this
    /// resync: the event ids derive from it and the document id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn next_batch(
        &mut self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<(StreamChange, Document)>, StreamError> {
        let mut out = Vec::with_capacity(limit);
        while out.len() < limit {
            let Some(d) = self.0.try_next().await.map_err(classify)? else {
                break;
            };
            let Some(id) = d.get("_id") else {
                continue;
            };
            let id = super::read::id_text(id);
            let change = StreamChange {
                kind: ChangeKind::Snapshot,
                position: format!("snapshot\0{name}\0{id}"),
                document_id: id,
                document: Some(Bson::Document(d.clone()).into_relaxed_extjson()),
                sequence: None,
                at: Utc::now(),
            };
            out.push((change, d));
        }
        Ok(out)
    }
}
