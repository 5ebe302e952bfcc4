//! Every name the store's queries use: the entry's fields, as dotted paths, and the names of its
//! indexes. Statuses are spelled by [`EntryStatus::as_str`](crate::outbox::EntryStatus::as_str).
//! The typed rows use the same names, undotted; `entry.rs`'s tests check that the paths of the
//! fields a new entry has name fields [`new_entry`](super::new_entry) writes.

use mongodb::bson::{Document, doc};

/// The field that holds an entry's state; also what tells an entry from a document.
pub const ROOT: &str = "_outbox";

/// Dotted field paths used in queries.
pub mod field {
    /// The document id; an entry's is its event id (binary UUID).
    pub const ID: &str = "_id";
    /// `pending` | `published` | `dead` | `skipped` ([`EntryStatus`](crate::outbox::EntryStatus)).
    pub const STATUS: &str = "_outbox.status";
    /// When the entry may next be claimed: creation, end of the lease, or end of the backoff.
    pub const DUE_AT: &str = "_outbox.due_at";
    /// Token of the claim that holds the entry, or null.
    pub const LEASE_TOKEN: &str = "_outbox.lease_token";
    /// Failed publishes.
    pub const ATTEMPTS: &str = "_outbox.attempts";
    /// Times the entry was claimed.
    pub const CLAIMS: &str = "_outbox.claims";
    /// When the entry was written.
    pub const CREATED_AT: &str = "_outbox.created_at";
    /// When Event Grid accepted it (the TTL index counts from here).
    pub const PUBLISHED_AT: &str = "_outbox.published_at";
    /// When it was dead-lettered (removed when it is requeued).
    pub const DEAD_AT: &str = "_outbox.dead_at";
    /// When an operator skipped it.
    pub const SKIPPED_AT: &str = "_outbox.skipped_at";
    /// When an operator last requeued it.
    pub const REQUEUED_AT: &str = "_outbox.requeued_at";
    /// The last failure.
    pub const LAST_ERROR: &str = "_outbox.last_error";
    /// The last few failures.
    pub const HISTORY: &str = "_outbox.history";
    /// The event to publish, complete.
    pub const EVENT: &str = "_outbox.event";
    /// The event's subject (ordering).
    pub const SUBJECT: &str = "_outbox.event.subject";
    /// The event's place among the changes of its subject, when the write gave one.
    pub const SEQUENCE: &str = "_outbox.event.sequence";
}

/// Name of the index the claim query uses.
pub const CLAIM_INDEX: &str = "outbox_claim";
/// Name of the index the ordering check uses (`OUTBOX_ORDERING=subject` only).
pub const SUBJECT_INDEX: &str = "outbox_subject";
/// Name of the TTL index that removes published entries.
pub const RETENTION_INDEX: &str = "outbox_published_ttl";
/// Plain index on the idempotency records' expiry, made only where the TTL index was refused,
/// so the relay's bounded deletes find expired records without a scan.
pub const EXPIRY_PLAIN_INDEX: &str = "outbox_idempotency_expiry_plain";

/// The claim index's keys. Every scan over entries sorts by them, so that the claim index
/// serves it: oldest due first, within one status.
pub(super) fn claim_order() -> Document {
    doc! { field::STATUS: 1, field::DUE_AT: 1 }
}
