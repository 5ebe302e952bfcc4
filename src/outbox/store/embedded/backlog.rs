//! The `embedded` placement's pending events, counted inside their documents for the backlog
//! metrics, `handler outbox status` and the status page.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

use super::embedded_field as f;
use super::relay::EmbeddedEvents;
use crate::db::DbError;
use crate::outbox::store::PendingEvents;
use crate::outbox::store::entry::{bson_time, chrono_time};

impl EmbeddedEvents {
    /// The events pending inside documents at `now`: how many, how many of them are due
    /// (their document's `_outbox.due_at` has passed: not claimed, not backing off), and when
    /// the oldest was written.
    ///
    /// One aggregation. Its `$match` is the due index's own filter (`_outbox.due_at` exists),
    /// so the planner can answer it from that partial (or sparse) index, which holds only the documents with
    /// pending events, never the collection. It then reads each of those documents once (the
    /// index holds the due time, not the events) to count its `_outbox.events` and take their
    /// oldest `created_at`: the cost grows with the documents waiting — a handful in steady
    /// state, every document written while the topic is down during an outage (on Cosmos DB RU,
    /// about one read per such document each time it runs). It runs on the metrics interval
    /// and when an operator asks, never per request or per claim; only three numbers come back.
    ///
    /// # Errors
    /// When the database fails.
    pub(super) async fn pending_in_documents(
        &self,
        now: DateTime<Utc>,
    ) -> Result<PendingEvents, DbError> {
        let events = format!("${}", f::EVENTS);
        let pipeline = [
            doc! { "$match": { f::DUE_AT: { "$exists": true } } },
            doc! { "$project": {
                "_id": 0,
                "n": { "$size": { "$ifNull": [&events, []] } },
                "due": { "$lte": [format!("${}", f::DUE_AT), bson_time(now)] },
                "oldest": { "$min": format!("{events}.created_at") },
            } },
            doc! { "$group": {
                "_id": Bson::Null,
                "pending": { "$sum": "$n" },
                "due": { "$sum": { "$cond": ["$due", "$n", 0] } },
                "oldest": { "$min": "$oldest" },
            } },
        ];
        let rows: Vec<Document> = self
            .documents
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        let Some(row) = rows.first() else {
            return Ok(PendingEvents::default());
        };
        let count = |k: &str| match row.get(k) {
            Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
            Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        Ok(PendingEvents {
            pending: count("pending"),
            due: count("due"),
            oldest_created_at: row.get_datetime("oldest").ok().map(|t| chrono_time(*t)),
        })
    }
}
