//! The write side of the outbox: create, replace or delete a document together with the
//! outbox entry announcing the change (and the idempotency record when a key was sent),
//! atomically — whatever the placement.
//!
//! The use case ([`crate::documents`]) describes one write as a [`Change`]: which document,
//! whether the current one must be read, and — given the current one — the [`Decision`]:
//! what happens to the document and which event announces it. A [`PlacementStore`] (one
//! implementation per placement, see [`crate::outbox::placement`]) runs it: it reads the
//! current document, asks the change to decide, and writes the document, the entry and the
//! record wherever its placement keeps them, in one transaction. The use case never learns
//! where that is. The same store reads a document back ([`PlacementStore::read`]), leaving out
//! whatever the placement keeps beside it.
//!
//! [`PlacementStore`] is a trait object behind an `Arc`, chosen once when the database is
//! first ready: its async methods return boxed futures, so it stays object-safe (async
//! functions in traits are not) and a new placement is one new implementation plus one arm in
//! [`crate::outbox::placement::store_for`]. The box costs one allocation per call, nothing
//! next to a round trip to the database.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mongodb::bson::{Bson, Document};

use super::Placement;
use super::idempotency::{IdempotencyKey, Recorded};
use super::store::{Expiry, Hold, OutboxStore, RelayStore};
use crate::db::DbError;
use crate::domain::{EventId, Operation, OutboxEvent, Revision};

/// One write, as the use case planned it. A store calls [`Change::decide`] inside its
/// transaction, possibly more than once (the driver reruns a transaction after a transient
/// error), so deciding must only compute: no I/O, the same answer for the same input.
pub trait Change: Sync {
    /// The document's id.
    fn document_id(&self) -> &str;

    /// Whether [`Change::decide`] needs the current document (a create does not: it does not
    /// read before inserting).
    fn reads_current(&self) -> bool;

    /// The request's `Idempotency-Key` and fingerprint, when a key was sent: the answer is then
    /// recorded under it in the same transaction.
    fn idempotency(&self) -> Option<(&IdempotencyKey, &str)>;

    /// The hold the write puts on its own new entry, when this process will publish the
    /// event itself right after the commit (the push path); `None` leaves the entry due at once.
    fn hold(&self) -> Option<Hold> {
        None
    }

    /// What to store, given the current document (`None` when there is none, or when
    /// [`Change::reads_current`] is false).
    ///
    /// # Errors
    /// A [`Refusal`]: the write stops and nothing is stored.
    fn decide(&self, current: Option<&Document>) -> Result<Decision, Refusal>;
}

/// What happens to the document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentChange {
    /// Insert this new document (a unique `_id` refuses a duplicate).
    Insert(Document),
    /// Replace the current document with this one.
    Replace(Document),
    /// Delete the current document.
    Delete,
}

/// Everything one write stores, decided from the current document.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The document's change.
    pub document: DocumentChange,
    /// What the write did, as answered (and recorded under the `Idempotency-Key`).
    pub operation: Operation,
    /// The document's revision after the write.
    pub revision: Revision,
    /// The event announcing the change; its id is the outbox entry's id.
    pub event: OutboxEvent,
    /// The shard key's name and value, copied onto the entry and the record so that they
    /// land in the document's partition.
    pub shard_key: Option<(String, Bson)>,
}

/// A committed write.
#[derive(Debug, Clone)]
pub struct Committed {
    /// What was stored: the decision of the transaction's last (committed) run.
    pub decision: Decision,
    /// The ids of the outbox entries the write inserted, i.e. of the events it produced (today
    /// exactly the decision's event): what a push path would publish at once.
    pub entry_ids: Vec<EventId>,
}

/// Why a write was refused after reading the current document. Nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// There is no document with this id.
    #[error("there is no such document")]
    NotFound,
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed: {reason}")]
    PreconditionFailed {
        /// Which precondition, and why, in words for the client.
        reason: String,
        /// The document's current revision, when it exists and has one: a client can retry
        /// with it.
        current: Option<Revision>,
    },
    /// The document changed (or vanished) between reading and writing it.
    #[error("the document changed during the write")]
    Conflict,
    /// The document already holds as many unpublished events as it may (`embedded`
    /// placement, `OUTBOX_EMBEDDED_MAX_PENDING`): the topic is behind; try again later.
    #[error("the document holds {pending} unpublished events, the most it may")]
    Backlogged {
        /// The events waiting on the document.
        pending: usize,
    },
    /// The document with its pending events (`embedded` placement) would pass the largest
    /// document the server stores.
    #[error("the document with its pending events would be {size} bytes, more than {limit}")]
    TooLarge {
        /// The stored document's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why a write did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// The change refused; nothing was stored.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The database failed, classified. [`DbError::Conflict`] means a unique index refused:
    /// the document's id exists, or another request recorded the same `Idempotency-Key`.
    /// Every other kind leaves nothing stored, except that an unavailable database may have
    /// committed the last attempt.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The storage of one placement: where documents, outbox entries and idempotency records go.
/// Chosen once, by [`crate::outbox::placement::store_for`]; see the module doc for why it is a
/// trait object.
pub trait PlacementStore: std::fmt::Debug + Send + Sync {
    /// Which placement this is.
    fn placement(&self) -> Placement;

    /// The collection holding the outbox entries (and idempotency records), where the relay's
    /// [`crate::outbox::store::OutboxStore`] works.
    fn entries_collection(&self) -> &str;

    /// Creates the collections and indexes this placement needs, idempotently, and says how
    /// expired data goes away. Safe to run at every start and from several instances at once.
    ///
    /// # Errors
    /// When the database cannot be reached or refuses an index the claim query needs.
    fn prepare(&self) -> BoxFuture<'_, Result<Expiry, DbError>>;

    /// Runs `change` atomically: reads the current document if asked, lets the change decide,
    /// then writes the document, its entry and (with a key) its idempotency record. One
    /// attempt; the driver reruns a transaction on transient errors inside it.
    ///
    /// # Errors
    /// See [`WriteFailure`].
    fn write<'a>(
        &'a self,
        change: &'a dyn Change,
    ) -> BoxFuture<'a, Result<Committed, WriteFailure>>;

    /// The unexpired idempotency record under `key`, if any.
    ///
    /// # Errors
    /// When the database fails.
    fn recorded<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Recorded>, DbError>>;

    /// The document with this id as the last committed [`Decision`] stored it (its `_meta`
    /// included), or `None` when there is none. Never an outbox entry, an idempotency record
    /// or anything else the placement keeps beside documents: the placement knows what it adds,
    /// so it is the one to leave it out.
    ///
    /// # Errors
    /// When the database fails.
    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Document>, DbError>>;

    /// The relay side for this placement, given the store of its entries' collection: where
    /// events are claimed and their outcomes recorded. The entries themselves, unless the
    /// placement keeps its events elsewhere.
    fn relay_store(&self, entries: &OutboxStore) -> Arc<dyn RelayStore> {
        Arc::new(entries.clone())
    }
}
