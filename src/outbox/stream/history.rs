//! How far the saved position is from falling out of the server's change history: the
//! position's cluster time, and the oldest and newest entries of the oplog (`local.oplog.rs`)
//! where this user may read it. For `handler outbox doctor`; read-only, and it takes no lease.

use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, Document, Timestamp, doc};
use mongodb::change_stream::event::ResumeToken;

use super::checkpoint::checkpoint_of;
use super::{ChangeStore, Checkpoint};
use crate::db::{DbError, classify};

/// Where the saved position stands in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionTime {
    /// The position's own cluster time (a `start_at`, or a MongoDB resume token's).
    Exact(DateTime<Utc>),
    /// Only the last published change's time is known (a token the server does not describe,
    /// as DocumentDB's): the position is at least this recent.
    AtLeast(DateTime<Utc>),
}

impl PositionTime {
    /// The time itself.
    #[must_use]
    pub fn time(self) -> DateTime<Utc> {
        match self {
            Self::Exact(t) | Self::AtLeast(t) => t,
        }
    }
}

/// The span of the server's change history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// The oldest change the server still has.
    pub oldest: DateTime<Utc>,
    /// The newest.
    pub newest: DateTime<Utc>,
}

impl ChangeStore {
    /// The saved checkpoint, as a reader would resume from it; read without taking the lease.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn checkpoint(&self) -> Result<Checkpoint, DbError> {
        Ok(self
            .checkpoint_document()
            .await?
            .map(|d| checkpoint_of(&d))
            .unwrap_or_default())
    }

    /// The oplog's oldest and newest entries; `None` when there is none to read (not a replica
    /// set member).
    ///
    /// # Errors
    /// When the server refuses the read (no privilege on `local`, as on Atlas's lower tiers;
    /// no `local` database, as on Cosmos DB and DocumentDB) or fails.
    pub async fn history(&self) -> Result<Option<History>, DbError> {
        let oplog = self
            .documents
            .client()
            .database("local")
            .collection::<Document>("oplog.rs");
        let end = |order: i32| {
            let oplog = oplog.clone();
            async move {
                oplog
                    .find_one(doc! {})
                    .sort(doc! { "$natural": order })
                    .projection(doc! { "ts": 1, "_id": 0 })
                    .await
                    .map_err(classify)
                    .map(|d| {
                        d.and_then(|d| d.get_timestamp("ts").ok())
                            .and_then(timestamp_time)
                    })
            }
        };
        Ok(match (end(1).await?, end(-1).await?) {
            (Some(oldest), Some(newest)) => Some(History { oldest, newest }),
            _ => None,
        })
    }
}

impl Checkpoint {
    /// Where the position stands in time; `None` when no position was ever saved.
    #[must_use]
    pub fn time(&self) -> Option<PositionTime> {
        if let Some(at) = self.start_at.and_then(timestamp_time) {
            return Some(PositionTime::Exact(at));
        }
        if let Some(at) = self.token.as_ref().and_then(token_time) {
            return Some(PositionTime::Exact(at));
        }
        self.position_time.map(PositionTime::AtLeast)
    }
}

/// A cluster time as a time (its seconds).
fn timestamp_time(ts: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::from(ts.time), 0)
}

/// The cluster time inside a MongoDB resume token: `_data` is a hex key string that starts
/// with the cluster time (type byte `0x82`, then seconds and increment, 4 bytes each, big
/// endian). Other servers' tokens give `None`.
fn token_time(token: &ResumeToken) -> Option<DateTime<Utc>> {
    let Ok(Bson::Document(d)) = mongodb::bson::to_bson(token) else {
        return None;
    };
    let data = d.get_str("_data").ok()?;
    let seconds = data.strip_prefix("82")?.get(..8)?;
    let seconds = u32::from_str_radix(seconds, 16).ok()?;
    timestamp_time(Timestamp {
        time: seconds,
        increment: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mongodb_resume_token_tells_its_cluster_time() {
        // A token of MongoDB 7 (cluster time 1764943200 = 2025-12-05T14:00:00Z, increment 3).
        let token: ResumeToken = mongodb::bson::from_bson(Bson::Document(doc! {
            "_data": "826932E560000000032B042C0100296E5A10046C1A5B1D8A3E4B6E9F2F3C4D5E6F7081463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F6964002B020004"
        }))
        .unwrap();
        assert_eq!(
            token_time(&token),
            DateTime::from_timestamp(1_764_943_200, 0)
        );
        let other: ResumeToken =
            mongodb::bson::from_bson(Bson::Document(doc! { "_data": "not a key string" })).unwrap();
        assert_eq!(token_time(&other), None);
    }
}
