//! Claiming due entries, and the fenced state changes a claim makes: mark published,
//! reschedule, dead-letter, release. See the module doc of `store` for why this is safe with
//! any number of relays.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};

use super::OutboxStore;
use super::entry::{ClaimState, IdRow, Row, after, bson_time, error_doc, ids_bson};
use super::fields::{claim_order, field};
pub use super::token::{ClaimToken, Hold};
use crate::db::DbError;
use crate::domain::EventId;
use crate::outbox::{ClaimedEntry, EntryStatus, LastError};

/// Failures kept in an entry's history.
const HISTORY_LEN: i32 = 10;

/// Entries claimed together.
#[derive(Debug)]
pub struct Claim {
    /// The fencing token.
    pub token: ClaimToken,
    /// When the claim runs out; nothing may be published for it after this.
    pub lease_until: DateTime<Utc>,
    /// The entries, in claim order (oldest due first).
    pub entries: Vec<ClaimedEntry>,
    /// Due entries this claim read as candidates (step 1) but another claim took first: how
    /// many fewer it took than it saw due, so a claim that lost every candidate counts them
    /// all. A lower bound: entries that became due meanwhile make up for lost ones.
    pub contended: usize,
    /// Whether every entry's `due_at` is exactly `lease_until`, so the claim can be marked
    /// published in one update over an index range. False for entries held by the writes that
    /// made them (the push path), whose holds end at different times: they are marked by id.
    pub ranged: bool,
}

/// Entries due at `now`: pending, and due at or before it (not held, not backing off).
pub(super) fn due_by(now: DateTime<Utc>) -> Document {
    doc! {
        field::STATUS: EntryStatus::Pending.as_str(),
        field::DUE_AT: { "$lte": bson_time(now) },
    }
}

/// Entries still held by a claim: pending, due at the end of its lease, with its token.
fn held(token: ClaimToken, lease_until: bson::DateTime) -> Document {
    doc! {
        field::STATUS: EntryStatus::Pending.as_str(),
        field::DUE_AT: lease_until,
        field::LEASE_TOKEN: token.bson(),
    }
}

/// Entries among `ids` still held under `token`: a relay whose lease was taken over matches
/// none of them.
///
/// The token alone says "pending": every change that ends a hold (mark, reschedule,
/// dead-letter, release, the operator's commands) clears it. The filter must not name the
/// status: `mongod`'s planner then weighs the claim index (`status` first) against `_id`, and
/// for a list of a few hundred ids it picks the claim index and reads every pending entry — a
/// mark of 250 entries examined all 20,000 of a backlog, where `_id` examines 250.
pub(super) fn fenced(token: ClaimToken, ids: &[EventId]) -> Document {
    doc! {
        field::ID: { "$in": ids_bson(ids) },
        field::LEASE_TOKEN: token.bson(),
    }
}

impl OutboxStore {
    /// Claims up to `limit` due entries for `lease`.
    ///
    /// Reads as four steps: the cut-off (the `due_at` of the `limit`-th due entry); one
    /// conditional update taking every due entry before it; a top-up from the entries due
    /// exactly at the cut-off; and the read-back of what this claim now holds.
    ///
    /// A crash after this call leaves the entries claimed until the lease runs out; then any
    /// relay may claim them again. Nothing is lost.
    ///
    /// # Errors
    /// When the database fails; then nothing was claimed, or what was claimed frees itself
    /// when the lease runs out.
    #[tracing::instrument(skip_all, fields(limit))]
    pub async fn claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Claim, DbError> {
        let token = ClaimToken::new();
        let lease_until = after(now, lease);
        let held_until = bson_time(lease_until);
        let due = due_by(now);
        // Taking an entry moves its `due_at` to the end of the lease: it is no longer due, so
        // no other claim can take it until the lease runs out.
        let take = doc! {
            "$set": { field::DUE_AT: held_until, field::LEASE_TOKEN: token.bson() },
            "$inc": { field::CLAIMS: 1 },
        };
        let (cutoff, seen) = self.cutoff(&due, limit).await?;
        let mut taken = self.take_before(&due, cutoff, &take).await?;
        if let Some(cutoff) = cutoff
            && taken < u64::from(limit)
        {
            let want = u64::from(limit) - taken;
            taken += self.top_up_at(due, cutoff, want, take).await?;
        }
        // Every entry step 1 saw was due then; one this claim did not get was taken by another
        // claim in between (nothing else makes a due entry not due).
        let contended = seen.saturating_sub(usize::try_from(taken).unwrap_or(usize::MAX));
        if taken == 0 {
            return Ok(Claim {
                token,
                lease_until,
                entries: Vec::new(),
                contended,
                ranged: true,
            });
        }
        let entries = self.read_back(token, held_until).await?;
        tracing::debug!(
            claimed = entries.len(),
            contended,
            lease.token = %token,
            "Claimed outbox entries"
        );
        Ok(Claim {
            token,
            lease_until,
            entries,
            contended,
            ranged: true,
        })
    }

    /// Step 1: the `due_at` of the `limit`-th due entry (`None` when fewer are due), and how
    /// many due entries were seen (at most `limit`), read from the claim index alone: the
    /// `due_at` of the first `limit` due entries, a covered scan of `limit` index keys (the
    /// same keys a `skip` would walk), returning a few bytes each.
    async fn cutoff(
        &self,
        due: &Document,
        limit: u32,
    ) -> Result<(Option<bson::DateTime>, usize), DbError> {
        let limit = limit.max(1);
        let rows: Vec<Row<DueState>> = self
            .entries
            .clone_with_type::<Row<DueState>>()
            .find(due.clone())
            .sort(claim_order())
            .limit(i64::from(limit))
            .projection(doc! { field::ID: 0, field::STATUS: 1, field::DUE_AT: 1 })
            .await?
            .try_collect()
            .await?;
        let cutoff = if rows.len() >= limit as usize {
            rows.last().and_then(|r| r.state.due_at)
        } else {
            None
        };
        Ok((cutoff, rows.len()))
    }

    /// Step 2: takes every due entry before the cut-off (or all of them, if fewer are due)
    /// with one conditional update over an index range. Each entry is taken by one claim
    /// only: the server evaluates the condition per document, and a taken entry's `due_at`
    /// has moved to the end of its lease. Returns how many were taken.
    async fn take_before(
        &self,
        due: &Document,
        cutoff: Option<bson::DateTime>,
        take: &Document,
    ) -> Result<u64, DbError> {
        let mut filter = due.clone();
        if let Some(c) = cutoff {
            filter.insert(field::DUE_AT, doc! { "$lt": c });
        }
        self.fenced_update(filter, take.clone()).await
    }

    /// Step 3: tops up from the entries due exactly at the cut-off, by id, so a claim takes
    /// `limit` entries even when many share one millisecond. Returns how many were taken.
    async fn top_up_at(
        &self,
        due: Document,
        cutoff: bson::DateTime,
        want: u64,
        take: Document,
    ) -> Result<u64, DbError> {
        let mut at_cutoff = due;
        at_cutoff.insert(field::DUE_AT, cutoff);
        let ids: Vec<Bson> = self
            .entries
            .clone_with_type::<IdRow>()
            .find(at_cutoff.clone())
            .limit(i64::try_from(want).unwrap_or(i64::MAX))
            .projection(doc! { field::ID: 1 })
            .await?
            .map_ok(|r| r.id)
            .try_collect()
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        // Still due (the same condition as step 2): an entry another claim took meanwhile is
        // left to it.
        at_cutoff.insert(field::ID, doc! { "$in": &ids });
        self.fenced_update(at_cutoff, take).await
    }

    /// Step 4: what this claim holds: the entries whose `due_at` is exactly the end of this
    /// lease (an index range) and whose token is ours, in claim order.
    async fn read_back(
        &self,
        token: ClaimToken,
        held_until: bson::DateTime,
    ) -> Result<Vec<ClaimedEntry>, DbError> {
        let rows: Vec<Row<ClaimState>> = self
            .entries
            .clone_with_type::<Row<ClaimState>>()
            .find(held(token, held_until))
            .sort(claim_order())
            .projection(doc! { field::ID: 1, field::ATTEMPTS: 1, field::EVENT: 1 })
            .await?
            .try_collect()
            .await?;
        Ok(rows.into_iter().filter_map(Row::into_entry).collect())
    }

    /// Marks published every entry the claim still holds — for a claim whose entries were all
    /// published. One update over an index range instead of a list of ids (a delete where
    /// published entries are not kept, see [`keeping_published`](Self::keeping_published)).
    /// Returns how many.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn mark_claim_published(
        &self,
        token: ClaimToken,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.fenced_publish(held(token, bson_time(lease_until)), now)
            .await
    }

    /// Marks entries published; only those still held under `token` (deletes them where
    /// published entries are not kept). Returns how many.
    ///
    /// Called only after Event Grid answered 200 for the request that carried them. A crash
    /// before this call leaves them claimed: they are published again after the lease (a
    /// duplicate, never a loss).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mark_published(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.fenced_publish(fenced(token, ids), now).await
    }

    /// Records a failed publish and makes the entries due again at `next_attempt_at`.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn reschedule(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        next_attempt_at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let set = doc! { field::DUE_AT: bson_time(next_attempt_at) };
        self.record_failure(token, ids, set, error, 1, now).await
    }

    /// Dead-letters entries: kept with their last error, never claimed again until requeued.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn dead_letter(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        error: &LastError,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let set = doc! {
            field::STATUS: EntryStatus::Dead.as_str(),
            field::DEAD_AT: bson_time(now),
        };
        self.record_failure(token, ids, set, error, i32::from(count_attempt), now)
            .await
    }

    /// One fenced update that records a failure: `set` plus the last error, an attempt
    /// (`attempts_inc`), the lease given up, and the error appended to the history.
    async fn record_failure(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        mut set: Document,
        error: &LastError,
        attempts_inc: i32,
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let err = error_doc(error, now);
        set.insert(field::LEASE_TOKEN, Bson::Null);
        set.insert(field::LAST_ERROR, err.clone());
        let update = doc! {
            "$set": set,
            "$inc": { field::ATTEMPTS: attempts_inc },
            "$push": { field::HISTORY: { "$each": [err], "$slice": -HISTORY_LEN } },
        };
        self.fenced_update(fenced(token, ids), update).await
    }

    /// Gives entries back without counting an attempt (the run ran out of time, or stopped on
    /// a configuration error): they are due again at once.
    ///
    /// # Errors
    /// When the database fails; the entries then stay claimed until the lease runs out.
    pub async fn release(
        &self,
        token: ClaimToken,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.fenced_update(
            fenced(token, ids),
            doc! { "$set": { field::DUE_AT: bson_time(now), field::LEASE_TOKEN: Bson::Null } },
        )
        .await
    }
}

/// The change that marks entries published at `now`. It clears the lease token, as every
/// change that ends a hold does, so that the fenced filter by id stays on the `_id` index (see
/// [`fenced`]).
pub(super) fn published_at(now: DateTime<Utc>) -> Document {
    doc! { "$set": {
        field::STATUS: EntryStatus::Published.as_str(),
        field::PUBLISHED_AT: bson_time(now),
        field::LEASE_TOKEN: Bson::Null,
    } }
}

/// The cut-off read: only `due_at`, from the claim index.
#[derive(serde::Deserialize)]
struct DueState {
    /// Always there on a pending entry; were it missing, the claim would take every due
    /// entry, as with no cut-off.
    #[serde(default)]
    due_at: Option<bson::DateTime>,
}
