//! The relay's view of a placement's events: [`RelayStore`], what `relay/` claims from and
//! records outcomes in. Entries in a collection ([`OutboxStore`]) are one implementation; the
//! `embedded` placement's documents (`embedded.rs`) are the other. The relay holds an
//! `Arc<dyn RelayStore>` and never asks which it is.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use super::{BacklogCounts, Claim, ClaimToken, OutboxStore};
use crate::db::DbError;
use crate::domain::EventId;
use crate::outbox::{LastError, OutboxCounts};

/// Claims and the fenced outcome records of one placement's events. Every method has the
/// meaning and the guarantees of the [`OutboxStore`] method of the same name: a claim takes
/// due events under a lease token, and every later change is fenced on that token.
pub trait RelayStore: std::fmt::Debug + Send + Sync {
    /// Claims up to `limit` due events for `lease`.
    ///
    /// # Errors
    /// When the database fails.
    fn claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> BoxFuture<'_, Result<Claim, DbError>>;

    /// `OUTBOX_ORDERING=subject`: gives back the claimed events an older unpublished event of
    /// their subject must precede; returns how many.
    ///
    /// # Errors
    /// When the database fails.
    fn defer_blocked<'a>(
        &'a self,
        claim: &'a mut Claim,
        now: DateTime<Utc>,
        parked_for: Duration,
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Marks published every event the claim still holds; returns how many.
    ///
    /// # Errors
    /// When the database fails.
    fn mark_claim_published(
        &self,
        token: ClaimToken,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, DbError>>;

    /// Marks these events published, if still held under `token`; returns how many.
    ///
    /// # Errors
    /// When the database fails.
    fn mark_published<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Records a failed publish; the events are due again at `next_attempt_at`.
    ///
    /// # Errors
    /// When the database fails.
    fn reschedule<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        next_attempt_at: DateTime<Utc>,
        error: &'a LastError,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Dead-letters the events: kept with their last error for an operator.
    ///
    /// # Errors
    /// When the database fails.
    fn dead_letter<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        error: &'a LastError,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Gives events back, due at once, without counting an attempt.
    ///
    /// # Errors
    /// When the database fails.
    fn release<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>>;

    /// Deletes up to `limit` published events published before `cutoff`.
    ///
    /// # Errors
    /// When the database fails.
    fn purge_published(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, DbError>>;

    /// Deletes up to `limit` idempotency records expired by `now`.
    ///
    /// # Errors
    /// When the database fails.
    fn purge_expired_records(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, DbError>>;

    /// What is still waiting to be published.
    ///
    /// # Errors
    /// When the database fails.
    fn count_pending(&self) -> BoxFuture<'_, Result<u64, DbError>>;

    /// The backlog at `now` as the metrics report it: every pending event of the placement
    /// (entries, and events inside documents), due now, the oldest's age, and dead letters.
    ///
    /// # Errors
    /// When the database fails.
    fn backlog(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<BacklogCounts, DbError>>;

    /// Counts by state for operators (`handler outbox status`, the status page): the
    /// entries' counts, with every pending event of the placement in `pending`, `due` and the
    /// oldest pending time.
    ///
    /// # Errors
    /// When the database fails.
    fn counts(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<OutboxCounts, DbError>>;
}

impl From<OutboxStore> for Arc<dyn RelayStore> {
    fn from(store: OutboxStore) -> Self {
        Arc::new(store)
    }
}

impl RelayStore for OutboxStore {
    fn claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> BoxFuture<'_, Result<Claim, DbError>> {
        Box::pin(Self::claim(self, now, lease, limit))
    }

    fn defer_blocked<'a>(
        &'a self,
        claim: &'a mut Claim,
        now: DateTime<Utc>,
        parked_for: Duration,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(Self::defer_blocked(self, claim, now, parked_for))
    }

    fn mark_claim_published(
        &self,
        token: ClaimToken,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(Self::mark_claim_published(self, token, lease_until, now))
    }

    fn mark_published<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(Self::mark_published(self, token, ids, now))
    }

    fn reschedule<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        next_attempt_at: DateTime<Utc>,
        error: &'a LastError,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(Self::reschedule(
            self,
            token,
            ids,
            next_attempt_at,
            error,
            now,
        ))
    }

    fn dead_letter<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        error: &'a LastError,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(Self::dead_letter(
            self,
            token,
            ids,
            error,
            count_attempt,
            now,
        ))
    }

    fn release<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(Self::release(self, token, ids, now))
    }

    fn purge_published(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(Self::purge_published(self, cutoff, limit))
    }

    fn purge_expired_records(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(Self::purge_expired_records(self, now, limit))
    }

    fn count_pending(&self) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(Self::count_pending(self))
    }

    fn backlog(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<BacklogCounts, DbError>> {
        Box::pin(Self::backlog(self, now))
    }

    fn counts(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<OutboxCounts, DbError>> {
        Box::pin(Self::counts(self, now))
    }
}
