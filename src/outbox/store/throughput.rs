//! Published entries per minute over the last minutes, for the status page's chart.

use chrono::{DateTime, Duration, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};

use super::OutboxStore;
use super::entry::bson_time;
use super::fields::field;
use crate::db::DbError;
use crate::outbox::EntryStatus;

impl OutboxStore {
    /// Entries published in each of the last `minutes` whole minutes before `now`, oldest
    /// first (minutes with none count 0). Reads published entries of that span only, through
    /// the claim index (status first).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn published_per_minute(
        &self,
        now: DateTime<Utc>,
        minutes: u32,
    ) -> Result<Vec<u64>, DbError> {
        let start = now - Duration::minutes(i64::from(minutes));
        let pipeline = [
            doc! { "$match": {
                field::STATUS: EntryStatus::Published.as_str(),
                field::PUBLISHED_AT: { "$gte": bson_time(start), "$lt": bson_time(now) },
            } },
            doc! { "$group": {
                "_id": { "$floor": { "$divide": [
                    { "$subtract": [format!("${}", field::PUBLISHED_AT), bson_time(start)] },
                    60_000_i64,
                ] } },
                "n": { "$sum": 1_i64 },
            } },
        ];
        let rows: Vec<Document> = self
            .entries
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        let mut out = vec![0_u64; usize::try_from(minutes).unwrap_or(0)];
        for row in rows {
            let minute = row
                .get("_id")
                .and_then(|b| b.as_f64().or_else(|| b.as_i64().map(|i| i as f64)));
            let n = row
                .get_i64("n")
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
            if let Some(slot) = minute
                .filter(|m| *m >= 0.0)
                .and_then(|m| out.get_mut(m as usize))
            {
                *slot += n;
            }
        }
        Ok(out)
    }
}
