//! The outbox: entries that carry events from a committed write to Event Grid.
//!
//! An entry is written in the same transaction as its document and holds the complete event.
//! Its life: `pending` (due at `due_at`; claimed by a relay while its lease runs) →
//! `published` (after Event Grid's 200; removed after the retention period) or `dead`
//! (rejected by Event Grid, or out of attempts; kept until an operator acts). An operator
//! makes a dead entry `pending` again (requeue) or `skipped` (never published, kept).
//!
//! Every entry has the same shape, so the documents' own collection can hold entries too:
//!
//! ```text
//! { _id: UUID (the event id; binary, so it never collides with a document's string _id),
//!   _outbox: { status, due_at, lease_token, attempts, claims, created_at, published_at,
//!              dead_at, last_error, history: [..10 last errors], document: { collection, id },
//!              event: { subject, type, time, data_version, data (JSON text) } } }
//! ```
//!
//! Where to look:
//! - [`storage`] — [`Storage`]: the database, prepared once for its placement; hands out the
//!   write side and the relay side.
//! - [`placement`] — [`Placement`], `OUTBOX_PLACEMENT=auto`'s probe, and one storage
//!   implementation per placement (the only code that knows where entries live).
//! - [`write`](mod@write) — the write side's interface: a document change with its entry and
//!   idempotency record, atomically.
//! - [`store`] — the relay side: claim, record, requeue, skip, purge, counts, indexes.
//! - [`idempotency`] — records of answers under an `Idempotency-Key`.

pub mod idempotency;
pub mod placement;
pub mod storage;
pub mod store;
pub mod stream;
pub mod write;

pub use storage::{Ready, Storage};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::OutboxEvent;

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    /// Waiting to be published (possibly claimed right now).
    Pending,
    /// Accepted by Event Grid.
    Published,
    /// Given up on; kept for an operator.
    Dead,
    /// A dead entry an operator chose not to publish (`handler outbox skip`); kept, and no
    /// longer holding back later entries of its subject.
    Skipped,
}

impl EntryStatus {
    /// The stored form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
            Self::Skipped => "skipped",
        }
    }
}

/// Where outbox entries (and idempotency records) live, once decided (see [`placement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// In `OUTBOX_COLLECTION`.
    Separate,
    /// In the documents' collection, beside the documents.
    Colocated,
    /// In each document itself (its `_outbox.events`): one single-document write, no
    /// transaction. Dead-lettered events move to `OUTBOX_COLLECTION`.
    Embedded,
}

impl Placement {
    /// The name `OUTBOX_PLACEMENT` gives it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Separate => "separate",
            Self::Colocated => "colocated",
            Self::Embedded => "embedded",
        }
    }
}

/// An entry a relay holds under a claim.
#[derive(Debug, Clone)]
pub struct ClaimedEntry {
    /// The event to publish.
    pub event: OutboxEvent,
    /// Failed publishes so far.
    pub attempts: u32,
}

/// Why an entry's last publish failed; stored on the entry as
/// `{ kind, status, code, message, request_id }`. The publisher's own failure type, so what it
/// reports is stored as it is. Kinds: `connect`, `unknown_outcome`, `status`, `auth` (from the
/// publisher), `too_large`, `max_attempts` (from the relay).
pub use crate::publisher::failure::PublishFailure as LastError;

/// Counts of entries by state, from indexed queries (no scans).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    /// Entries not yet published (due or not, claimed or not).
    pub pending: u64,
    /// Pending entries that are due now (not leased, not backing off).
    pub due: u64,
    /// Published entries not yet removed by retention.
    pub published: u64,
    /// Dead-lettered entries.
    pub dead: u64,
    /// Dead entries skipped by an operator.
    pub skipped: u64,
    /// When the longest-waiting pending entry was written: the lag to alert on.
    pub oldest_pending_created_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::{idempotency, store};
    use crate::domain::document::{IDEMPOTENCY_FIELD, OUTBOX_FIELD, RESERVED_FIELDS};

    #[test]
    fn entries_and_records_live_under_reserved_roots() {
        assert_eq!(store::ROOT, OUTBOX_FIELD);
        assert_eq!(idempotency::ROOT, IDEMPOTENCY_FIELD);
        for root in [store::ROOT, idempotency::ROOT] {
            assert!(RESERVED_FIELDS.contains(&root), "{root}");
        }
        for path in [
            store::field::STATUS,
            store::field::DUE_AT,
            store::field::LEASE_TOKEN,
            store::field::ATTEMPTS,
            store::field::CLAIMS,
            store::field::CREATED_AT,
            store::field::PUBLISHED_AT,
            store::field::DEAD_AT,
            store::field::LAST_ERROR,
            store::field::HISTORY,
            store::field::SUBJECT,
        ] {
            assert!(path.starts_with(&format!("{}.", store::ROOT)), "{path}");
        }
        assert!(idempotency::EXPIRES_AT.starts_with(&format!("{}.", idempotency::ROOT)));
    }
}
