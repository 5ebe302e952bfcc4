//! The `embedded` placement's events, kept inside the documents they announce. A document
//! with unpublished events carries them in `_outbox` (absent when there are none):
//!
//! ```text
//! { _id, <data>, _meta: { version, lineage, updated_at, deleted? },
//!   _outbox: { due_at, lease_token, claims, v (bumped by every change to _outbox),
//!              events: [ { id: UUID, attempts, created_at, last_error?, history?,
//!                          event: { subject, type, time, data_version, data, … } } ] },
//!   _idempotency: [ { key, fingerprint, operation, document_id, event_id, version,
//!                     lineage, created_at, expires_at } ] }
//! ```
//!
//! A deleted document stays as a **tombstone** (`_meta.deleted: true`, no data) while its
//! `Deleted` event waits; the relay removes it once nothing is pending on it. The relay
//! claims whole documents through the partial index on `_outbox.due_at` (the document's
//! lease), publishes their events in array order, and removes the published ones with `$pull`
//! by event id, fenced on its lease token: a write that appended an event meanwhile keeps it.
//! A dead-lettered event moves to `OUTBOX_COLLECTION` as an ordinary dead entry, where the
//! operator commands find it; a requeued one is relayed from there.

mod backlog;
mod dispatch;
mod elements;
mod relay;
mod relay_state;

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

pub use relay::EmbeddedEvents;

use super::ROOT;
use super::entry::{bson_time, new_entry};
use crate::db::{DbError, classify};
use crate::domain::OutboxEvent;

/// Field paths of an embedded document's outbox state.
pub mod embedded_field {
    /// The outbox state's root (absent when nothing is pending).
    pub const OUTBOX: &str = "_outbox";
    /// When the document's events may next be claimed (its lease, or backoff).
    pub const DUE_AT: &str = "_outbox.due_at";
    /// Token of the claim holding the document.
    pub const LEASE_TOKEN: &str = "_outbox.lease_token";
    /// Times the document was claimed.
    pub const CLAIMS: &str = "_outbox.claims";
    /// Bumped by every change of `_outbox`: a write's replace is conditional on it.
    pub const VERSION: &str = "_outbox.v";
    /// The pending events, oldest first.
    pub const EVENTS: &str = "_outbox.events";
    /// A pending event's id.
    pub const EVENT_ID: &str = "_outbox.events.id";
    /// `true` on a tombstone.
    pub const DELETED: &str = "_meta.deleted";
    /// Recent idempotency keys.
    pub const KEYS: &str = "_idempotency";
    /// An idempotency key.
    pub const KEY: &str = "_idempotency.key";
    /// When a key expires.
    pub const KEY_EXPIRES_AT: &str = "_idempotency.expires_at";
}

use embedded_field as f;

/// The index claims use: documents with pending events by due time.
pub const DUE_INDEX: &str = "outbox_embedded_due";
/// The unique index on recent idempotency keys.
pub const KEY_INDEX: &str = "outbox_embedded_key";
/// The index the relay finds expired keys by.
pub const KEY_EXPIRY_INDEX: &str = "outbox_embedded_key_expiry";

/// `event` as a pending element of `_outbox.events`: the entry's own stored event, so a dead
/// letter moved to the entries' collection is an ordinary entry.
#[must_use]
pub fn pending_event(event: &OutboxEvent) -> Document {
    let entry = new_entry(event, "", "", None, None);
    let state = entry.get_document(ROOT).cloned().unwrap_or_default();
    doc! {
        "id": entry.get("_id").cloned().unwrap_or(Bson::Null),
        "attempts": 0_i32,
        "created_at": state.get("created_at").cloned().unwrap_or(Bson::Null),
        "event": state.get("event").cloned().unwrap_or(Bson::Null),
    }
}

/// The document's `_outbox` with `element` appended: the current state kept as it is (a
/// claim holding the document keeps holding it; the new event is published after), or a
/// fresh one due at `now`.
#[must_use]
pub fn with_event(current: Option<&Document>, element: Document, now: DateTime<Utc>) -> Document {
    match current {
        Some(current) => {
            let mut next = current.clone();
            let mut events = current.get_array("events").cloned().unwrap_or_default();
            events.push(Bson::Document(element));
            let v = current.get_i64("v").unwrap_or(0);
            next.insert("v", v.saturating_add(1));
            next.insert("events", events);
            next
        }
        None => doc! {
            "due_at": bson_time(now),
            "lease_token": Bson::Null,
            "claims": 0_i32,
            "v": 0_i64,
            "events": [element],
        },
    }
}

/// How many events are pending in `outbox` (a document's `_outbox`).
#[must_use]
pub fn pending_count(outbox: Option<&Document>) -> usize {
    outbox
        .and_then(|o| o.get_array("events").ok())
        .map_or(0, Vec::len)
}

/// Creates the documents' indexes: the due index (partial where the server allows, else
/// sparse), the unique index on recent idempotency keys and the one on their expiry.
///
/// # Errors
/// When the database refuses the due index or the key index.
pub async fn ensure_indexes(documents: &Collection<Document>) -> Result<(), DbError> {
    partial_or_sparse(documents, DUE_INDEX, f::DUE_AT, false).await?;
    partial_or_sparse(documents, KEY_INDEX, f::KEY, true).await?;
    partial_or_sparse(documents, KEY_EXPIRY_INDEX, f::KEY_EXPIRES_AT, false).await
}

/// `{path: 1}` over the documents that have `path` only: partial, or sparse where partial
/// indexes are refused (Cosmos DB for MongoDB RU).
async fn partial_or_sparse(
    documents: &Collection<Document>,
    name: &str,
    path: &str,
    unique: bool,
) -> Result<(), DbError> {
    let model = |partial: bool| {
        let options = IndexOptions::builder()
            .name(name.to_owned())
            .unique(unique.then_some(true));
        let options = if partial {
            options
                .partial_filter_expression(doc! { path: { "$exists": true } })
                .build()
        } else {
            options.sparse(true).build()
        };
        IndexModel::builder()
            .keys(doc! { path: 1 })
            .options(options)
            .build()
    };
    match documents.create_index(model(true)).await {
        Ok(_) => Ok(()),
        Err(e) if !classify(e.clone()).is_retryable() => {
            tracing::warn!(error = %crate::telemetry::chain(&e), index = name, "The database refused a partial index; using a sparse one");
            documents
                .create_index(model(false))
                .await
                .map(drop)
                .map_err(classify)
        }
        Err(e) => Err(classify(e)),
    }
}
