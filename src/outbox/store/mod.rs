//! The only queries on outbox entries: insert, claim, the fenced state changes, the operator's
//! commands, retention and index set-up.
//!
//! Where things are:
//!
//! | File | What |
//! |---|---|
//! | `fields.rs` | every field path and index name |
//! | `entry.rs` | [`new_entry`], the claimed row read back, stored forms of ids and times |
//! | `claim.rs` | [`OutboxStore::claim`] and the fenced changes under a [`Claim`]: mark published, reschedule, dead-letter, release |
//! | `ordering.rs` | [`OutboxStore::defer_blocked`] (`OUTBOX_ORDERING=subject`) |
//! | `operator.rs` | counts, [`DeadLetter`]s, requeue, skip |
//! | `retention.rs` | bounded purges where the server has no TTL index |
//! | `indexes.rs` | [`ensure_indexes`] and the [`Expiry`] it reports |
//! | `relay_side.rs` | [`RelayStore`]: what the relay claims from; entries here, or `embedded.rs` |
//! | `embedded.rs` | [`EmbeddedEvents`]: the `embedded` placement's events inside documents |
//!
//! An entry, as stored (`?`: only once set):
//!
//! ```text
//! { _id: UUID (the event id; binary, so it never collides with a document's string _id),
//!   _outbox: { status: "pending" | "published" | "dead" | "skipped",
//!              due_at, lease_token (the claim holding it; null when none does),
//!              attempts, claims, created_at,
//!              published_at?, dead_at?, skipped_at?, requeued_at?,
//!              last_error?, history?: [..10 last errors],
//!              document: { collection, id },
//!              event: { subject, type, time, data_version, data (JSON text), sequence?,
//!                       traceparent? } },
//!   <shard key>?: copied from the document }
//! ```
//!
//! Its life: `pending` → `published`, or → `dead`; an operator moves a dead entry back to
//! `pending` (requeue) or on to `skipped`.
//!
//! **Claiming** is our `FOR UPDATE SKIP LOCKED`: candidates are read in claim order, then one
//! conditional `updateMany` takes those still pending and due, setting a fresh lease token and
//! moving `due_at` to the end of the lease. An entry is due again when its lease runs out, so a
//! killed or stalled relay frees its entries by itself. Two relays never hold the same entry:
//! the condition is evaluated per document, atomically, by the server.
//!
//! **Fencing**: every later change (published, rescheduled, dead-lettered, released, deferred)
//! is conditional on the lease token. A relay whose lease expired and was taken over (a
//! "zombie") changes nothing; at worst it has published an event again, which consumers
//! de-duplicate by its id.
//!
//! Times come from the relay's clock; relays on different machines should keep their clocks in
//! sync (NTP does, on Azure), or a fast clock sees leases expire early. Nothing is lost either
//! way: an early takeover only risks a duplicate.

mod backlog;
mod claim;
mod diagnose;
pub mod embedded;
mod entry;
mod fields;
mod indexes;
mod operator;
mod ordering;
mod relay_side;
mod replay;
mod retention;
mod throughput;
mod token;
mod watch;

use chrono::{DateTime, Utc};
use mongodb::bson::Document;
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
use mongodb::{ClientSession, Collection, Database};

pub use backlog::{BacklogCounts, PendingEvents};
pub use claim::{Claim, ClaimToken, Hold};
pub use diagnose::{ClaimPlan, IndexInfo};
pub use embedded::{EmbeddedEvents, embedded_field};
pub use entry::new_entry;
pub use fields::{CLAIM_INDEX, EXPIRY_PLAIN_INDEX, RETENTION_INDEX, ROOT, SUBJECT_INDEX, field};
pub use indexes::{Expiry, ensure_indexes};
pub use operator::DeadLetter;
pub use relay_side::RelayStore;
pub use replay::{ReplayCheckpoint, ReplayCheckpoints, ReplayWindow, stored_time, window_time};
pub use watch::NewEntries;

use crate::db::DbError;

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
    /// Whether a published entry is kept (marked `published`, removed after the retention) or
    /// deleted at once (`OUTBOX_RETENTION_HOURS=0`).
    keep_published: bool,
}

impl OutboxStore {
    /// The entries in `collection` of `db`.
    #[must_use]
    pub fn new(db: &Database, collection: &str) -> Self {
        let relaxed = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Nodes(1))
                    .journal(false)
                    .build(),
            )
            .build();
        Self {
            entries: db.collection_with_options(collection, relaxed),
            in_transaction: db.collection(collection),
            keep_published: true,
        }
    }

    /// The same entries, published ones kept (the default) or deleted once Event Grid accepted
    /// them (`keep` false, `OUTBOX_RETENTION_HOURS=0`). Deleting is the cheaper state change:
    /// no index key moves and none is added, and no TTL delete follows later.
    #[must_use]
    pub fn keeping_published(mut self, keep: bool) -> Self {
        self.keep_published = keep;
        self
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

    /// The relay's state changes, all alike: one `updateMany` whose `filter` is fenced (on a
    /// claim's token, or on being still due), with the relay's relaxed write concern. Returns
    /// how many entries still matched and changed; the others belong to another claim now.
    async fn fenced_update(&self, filter: Document, update: Document) -> Result<u64, DbError> {
        Ok(self
            .entries
            .update_many(filter, update)
            .await?
            .modified_count)
    }

    /// Ends the hold of the entries `filter` (fenced) matches because Event Grid accepted them:
    /// marked published, or deleted where published entries are not kept. Returns how many.
    async fn fenced_publish(&self, filter: Document, now: DateTime<Utc>) -> Result<u64, DbError> {
        if self.keep_published {
            return self.fenced_update(filter, claim::published_at(now)).await;
        }
        Ok(self.entries.delete_many(filter).await?.deleted_count)
    }
}
