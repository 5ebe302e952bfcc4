//! What the metrics read on an interval: the backlog, without the counts of published and
//! skipped entries (`handler outbox status` has those), which grow with the retention and would
//! make every reading cost more on a request-unit account.

use chrono::{DateTime, Utc};
use mongodb::bson::{self, doc};
use serde::Deserialize;

use super::OutboxStore;
use super::entry::{Row, bson_time, chrono_time};
use super::fields::{claim_order, field};
use crate::db::DbError;
use crate::outbox::{EntryStatus, OutboxCounts};

/// The backlog as the metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogCounts {
    /// Entries not yet published, due or not.
    pub pending: u64,
    /// Pending entries due now.
    pub due: u64,
    /// Dead-lettered entries.
    pub dead: u64,
    /// When the oldest pending entry was written.
    pub oldest_pending_created_at: Option<DateTime<Utc>>,
}

/// Events pending outside the entries' collection (the `embedded` placement's, inside their
/// documents), added to the entries' figures by the placement's [`RelayStore`](super::RelayStore).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingEvents {
    /// Events not yet published, due or not.
    pub pending: u64,
    /// Of those, events due now.
    pub due: u64,
    /// When the oldest of them was written.
    pub oldest_created_at: Option<DateTime<Utc>>,
}

/// The older of two optional times.
fn oldest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl BacklogCounts {
    /// The backlog with `more` pending events added.
    #[must_use]
    pub fn with(self, more: PendingEvents) -> Self {
        Self {
            pending: self.pending + more.pending,
            due: self.due + more.due,
            dead: self.dead,
            oldest_pending_created_at: oldest(
                self.oldest_pending_created_at,
                more.oldest_created_at,
            ),
        }
    }
}

impl OutboxCounts {
    /// The counts with `more` pending events added.
    #[must_use]
    pub fn with(self, more: PendingEvents) -> Self {
        Self {
            pending: self.pending + more.pending,
            due: self.due + more.due,
            oldest_pending_created_at: oldest(
                self.oldest_pending_created_at,
                more.oldest_created_at,
            ),
            ..self
        }
    }
}

impl OutboxStore {
    /// The backlog at `now`: three counts and one read of the oldest pending entry, all over
    /// the claim index.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn backlog(&self, now: DateTime<Utc>) -> Result<BacklogCounts, DbError> {
        let pending_filter = doc! { field::STATUS: EntryStatus::Pending.as_str() };
        let pending = self.entries.count_documents(pending_filter.clone()).await?;
        let due = self
            .entries
            .count_documents(doc! {
                field::STATUS: EntryStatus::Pending.as_str(),
                field::DUE_AT: { "$lte": bson_time(now) },
            })
            .await?;
        let dead = self
            .entries
            .count_documents(doc! { field::STATUS: EntryStatus::Dead.as_str() })
            .await?;
        let head = self
            .entries
            .clone_with_type::<Row<Head>>()
            .find_one(pending_filter)
            .sort(claim_order())
            .projection(doc! { field::CREATED_AT: 1 })
            .await?;
        Ok(BacklogCounts {
            pending,
            due,
            dead,
            oldest_pending_created_at: head.and_then(|h| h.state.created_at).map(chrono_time),
        })
    }
}

/// The oldest pending entry, as [`OutboxStore::backlog`] projects it.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    created_at: Option<bson::DateTime>,
}
