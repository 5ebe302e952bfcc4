//! [`RelayStore`] for [`EmbeddedEvents`]: each call goes to the claim's documents, or to the
//! entries' collection for a claim made there (requeued events).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use mongodb::bson::doc;

use super::embedded_field as f;

use super::relay::EmbeddedEvents;
use super::relay_state::Held;
use crate::db::DbError;
use crate::domain::EventId;
use crate::outbox::store::claim::Claim;
use crate::outbox::store::token::ClaimToken;
use crate::outbox::store::{BacklogCounts, RelayStore};
use crate::outbox::{LastError, OutboxCounts};

impl RelayStore for EmbeddedEvents {
    fn claim(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> BoxFuture<'_, Result<Claim, DbError>> {
        Box::pin(self.claim_any(now, lease, limit))
    }

    fn defer_blocked<'a>(
        &'a self,
        claim: &'a mut Claim,
        now: DateTime<Utc>,
        parked_for: Duration,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(async move {
            match self.held(claim.token) {
                // A document's events are in order already and claimed together.
                Some(Held {
                    documents: Some(_), ..
                }) => Ok(0),
                _ => self.entries.defer_blocked(claim, now, parked_for).await,
            }
        })
    }

    fn mark_claim_published(
        &self,
        token: ClaimToken,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(async move {
            match self.held(token) {
                Some(Held {
                    documents: Some(docs),
                    ..
                }) => {
                    let ids: Vec<EventId> = docs.of_event.keys().copied().collect();
                    let held = Held {
                        lease_until,
                        documents: None,
                    };
                    self.remove_published(token, &held, &docs, &ids, now).await
                }
                _ => {
                    self.entries
                        .mark_claim_published(token, lease_until, now)
                        .await
                }
            }
        })
    }

    fn mark_published<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(async move {
            match self.held(token) {
                Some(held) => match &held.documents {
                    Some(docs) => self.remove_published(token, &held, docs, ids, now).await,
                    None => self.entries.mark_published(token, ids, now).await,
                },
                None => self.entries.mark_published(token, ids, now).await,
            }
        })
    }

    fn reschedule<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        next_attempt_at: DateTime<Utc>,
        error: &'a LastError,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(async move {
            match self.held(token).and_then(|h| h.documents) {
                Some(docs) => {
                    self.record_failure(token, &docs, ids, next_attempt_at, error, now)
                        .await
                }
                None => {
                    self.entries
                        .reschedule(token, ids, next_attempt_at, error, now)
                        .await
                }
            }
        })
    }

    fn dead_letter<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        error: &'a LastError,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(async move {
            match self.held(token).and_then(|h| h.documents) {
                Some(docs) => {
                    self.move_to_dead(token, &docs, ids, error, count_attempt, now)
                        .await
                }
                None => {
                    self.entries
                        .dead_letter(token, ids, error, count_attempt, now)
                        .await
                }
            }
        })
    }

    fn release<'a>(
        &'a self,
        token: ClaimToken,
        ids: &'a [EventId],
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<u64, DbError>> {
        Box::pin(async move {
            match self.held(token).and_then(|h| h.documents) {
                Some(docs) => self.give_back(token, &docs, ids, now).await,
                None => self.entries.release(token, ids, now).await,
            }
        })
    }

    fn purge_published(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(self.entries.purge_published(cutoff, limit))
    }

    fn purge_expired_records(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(async move {
            let records = self.entries.purge_expired_records(now, limit).await?;
            Ok(records + self.purge_keys(now).await?)
        })
    }

    fn count_pending(&self) -> BoxFuture<'_, Result<u64, DbError>> {
        Box::pin(async move {
            let entries = self.entries.count_pending().await?;
            let documents = self
                .documents
                .count_documents(doc! { f::DUE_AT: { "$exists": true } })
                .await?;
            Ok(entries + documents)
        })
    }

    fn backlog(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<BacklogCounts, DbError>> {
        Box::pin(async move {
            let entries = self.entries.backlog(now).await?;
            Ok(entries.with(self.pending_in_documents(now).await?))
        })
    }

    fn counts(&self, now: DateTime<Utc>) -> BoxFuture<'_, Result<OutboxCounts, DbError>> {
        Box::pin(async move {
            let entries = self.entries.counts(now).await?;
            Ok(entries.with(self.pending_in_documents(now).await?))
        })
    }
}
