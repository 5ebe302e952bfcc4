//! Bounded purges of expired outbox data, for servers that refused the TTL indexes (see
//! [`Expiry`](super::Expiry)): small deletes after each relay run, never inside a business
//! transaction.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

use super::OutboxStore;
use super::entry::{IdRow, bson_time};
use super::fields::{claim_order, field};
use crate::db::DbError;
use crate::outbox::EntryStatus;
use crate::outbox::idempotency::EXPIRES_AT;

impl OutboxStore {
    /// Deletes up to `limit` published entries published before `cutoff`, oldest first,
    /// through the claim index (a published entry's `due_at` is the end of the lease it was
    /// published under, so it bounds the search); returns how many went.
    ///
    /// # Errors
    /// When the database fails; nothing is lost, the next run goes on.
    pub async fn purge_published(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        let filter = doc! {
            field::STATUS: EntryStatus::Published.as_str(),
            field::DUE_AT: { "$lt": bson_time(cutoff) },
            field::PUBLISHED_AT: { "$lt": bson_time(cutoff) },
        };
        self.delete_first(filter, claim_order(), limit).await
    }

    /// Deletes up to `limit` idempotency records that expired before `now`; returns how many
    /// went.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_expired_records(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        let expired = doc! { EXPIRES_AT: { "$lte": bson_time(now) } };
        self.delete_first(expired, doc! { EXPIRES_AT: 1 }, limit)
            .await
    }

    /// Deletes the first `limit` documents matching `filter` in `sort` order (MongoDB's
    /// `deleteMany` has no limit): reads their ids, then deletes those still matching.
    async fn delete_first(
        &self,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<u64, DbError> {
        let ids: Vec<Bson> = self
            .entries
            .clone_with_type::<IdRow>()
            .find(filter.clone())
            .sort(sort)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! { field::ID: 1 })
            .await?
            .map_ok(|r| r.id)
            .try_collect()
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut still_matching = filter;
        still_matching.insert(field::ID, doc! { "$in": ids });
        Ok(self
            .entries
            .delete_many(still_matching)
            .await?
            .deleted_count)
    }
}
