//! The checkpoint document: the resume position and the fenced lease of the active reader.
//!
//! `{_id: <collection>, token: <resume token>, start_at: <cluster time>, position_time,
//! lease_token, lease_until, owner, saved_at}`. A reader takes the lease when there is none
//! or it ran out, with a fresh token; every later write is conditional on that token, so a
//! reader whose lease was taken over can no longer move the position (it learns so and
//! stops). `start_at` is a position given as a cluster time (a resync's starting point, or
//! one set by an operator); a saved token replaces it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{self, Binary, Bson, Document, Timestamp, doc};
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::ReturnDocument;
use uuid::Uuid;

use super::{ChangeStore, StreamError, bson_time, chrono_time};
use crate::db::{DbError, classify};

/// Where a reader resumes.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// The resume token after the last change everything before which was published.
    pub token: Option<ResumeToken>,
    /// A position given as a cluster time, used when there is no token.
    pub start_at: Option<Timestamp>,
    /// When the last published change was made.
    pub position_time: Option<DateTime<Utc>>,
}

impl Checkpoint {
    /// Has a position been saved at all? (The first reader ever starts from now.)
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.token.is_some() || self.start_at.is_some()
    }
}

/// The lease a reader holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    token: Uuid,
    /// When it runs out unless renewed.
    pub until: DateTime<Utc>,
}

impl ChangeStore {
    /// Takes the lease for `lease` when nobody holds it (or it ran out); `None` when another
    /// reader holds it. Returns the checkpoint with it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn acquire(
        &self,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<(Lease, Checkpoint)>, DbError> {
        let taken = Lease {
            token: Uuid::new_v4(),
            until: until(now, lease),
        };
        let found = self
            .checkpoints
            .find_one_and_update(
                doc! {
                    "_id": &self.collection,
                    "$or": [
                        { "lease_until": { "$lte": bson_time(now) } },
                        { "lease_until": { "$exists": false } },
                    ],
                },
                doc! { "$set": {
                    "lease_token": uuid_bson(&taken.token),
                    "lease_until": bson_time(taken.until),
                    "owner": owner,
                } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match found {
            Ok(Some(d)) => Ok(Some((taken, checkpoint_of(&d)))),
            Ok(None) => Ok(None),
            // The document exists and its lease is live: the upsert's insert met the `_id`.
            Err(e) => match classify(e) {
                DbError::Conflict(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Renews the lease and, when given, saves the position: everything before `token` was
    /// published. Fenced on the lease.
    ///
    /// # Errors
    /// [`StreamError::LeaseLost`] when another reader took the lease; the database's error.
    pub async fn save(
        &self,
        lease: &mut Lease,
        renew_for: Duration,
        position: Option<(&ResumeToken, Option<DateTime<Utc>>)>,
        now: DateTime<Utc>,
    ) -> Result<(), StreamError> {
        let next_until = until(now, renew_for);
        let mut set = doc! { "lease_until": bson_time(next_until), "saved_at": bson_time(now) };
        let mut unset = Document::new();
        if let Some((token, at)) = position {
            let token = bson::to_bson(token).map_err(|e| {
                DbError::Other(mongodb::error::Error::custom(format!(
                    "cannot store the resume token: {e}"
                )))
            })?;
            set.insert("token", token);
            unset.insert("start_at", "");
            if let Some(at) = at {
                set.insert("position_time", bson_time(at));
            }
        }
        let mut update = doc! { "$set": set };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        let r = self
            .checkpoints
            .update_one(
                doc! { "_id": &self.collection, "lease_token": uuid_bson(&lease.token) },
                update,
            )
            .await
            .map_err(classify)?;
        if r.matched_count == 0 {
            return Err(StreamError::LeaseLost {
                collection: self.collection.clone(),
            });
        }
        lease.until = next_until;
        Ok(())
    }

    /// Gives the lease back (at shutdown, or when the reader stops), so a standby reader takes
    /// over at once. Fenced: a lease already taken over is left alone.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn release(&self, lease: &Lease, now: DateTime<Utc>) -> Result<(), DbError> {
        self.checkpoints
            .update_one(
                doc! { "_id": &self.collection, "lease_token": uuid_bson(&lease.token) },
                doc! { "$set": { "lease_until": bson_time(now) } },
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The checkpoint document as stored, if any (for `status` and tests).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn checkpoint_document(&self) -> Result<Option<Document>, DbError> {
        self.checkpoints
            .find_one(doc! { "_id": &self.collection })
            .await
            .map_err(classify)
    }
}

/// `now + lease`, or far in the future when that cannot be added.
fn until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The position stored in a checkpoint document.
pub(super) fn checkpoint_of(d: &Document) -> Checkpoint {
    let token = d
        .get("token")
        .filter(|t| !matches!(t, Bson::Null))
        .and_then(|t| bson::from_bson::<ResumeToken>(t.clone()).ok());
    Checkpoint {
        token,
        start_at: d.get_timestamp("start_at").ok(),
        position_time: d
            .get_datetime("position_time")
            .ok()
            .map(|t| chrono_time(*t)),
    }
}

/// A lease token as BSON binary of the UUID subtype.
fn uuid_bson(u: &Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: u.as_bytes().to_vec(),
    })
}
