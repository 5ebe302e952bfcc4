//! The change-stream source's storage (`OUTBOX_SOURCE=change-stream`): the stream on the
//! documents' collection, the checkpoint document holding the resume position and the fenced
//! lease of the one active reader, and the dead letters of changes Event Grid refused.
//!
//! - `checkpoint.rs`: take, renew, save and give back the lease; the position is saved only
//!   under the lease (fenced on its token), so a reader that lost its lease cannot move the
//!   position;
//! - `read.rs`: open the stream from the checkpoint, turn raw changes into
//!   [`StreamChange`](crate::domain::stream_change::StreamChange)s, recognise a lost position;
//! - `dead_letter.rs`: a refused change, with the change and the reason;
//! - `target.rs`: whose rules apply (`OUTBOX_CHANGE_STREAM_TARGET`): the pipeline, what the
//!   target cannot deliver, and the probe of `auto`.
//! - `status.rs`: what operators see (`handler outbox status`, the status page);
//! - `history.rs`: the saved position against the server's history (`handler outbox doctor`).
//!
//! The checkpoints and dead letters live in `<OUTBOX_COLLECTION>_checkpoints` and
//! `<OUTBOX_COLLECTION>_dead_letters`, one checkpoint document per watched collection.

mod checkpoint;
mod dead_letter;
mod history;
mod read;
mod snapshot;
mod status;
pub mod target;

use mongodb::bson::Document;
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
use mongodb::{Collection, Database};

pub use self::checkpoint::{Checkpoint, Lease};
pub use self::dead_letter::ChangeDeadLetter;
pub use self::history::{History, PositionTime};
pub use self::read::{Changes, Read};
pub use self::snapshot::Snapshot;
pub use self::status::{StreamStatus, render as render_status};
use crate::config::{MongoSettings, StreamTarget};
use crate::db::DbError;

/// Why the change-stream source cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The database failed; reading again later may work.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Another reader holds the lease now: this one must stop publishing.
    #[error("the change-stream lease of {collection} was taken over by another reader")]
    LeaseLost {
        /// The watched collection.
        collection: String,
    },
    /// The saved position is no longer in the server's history, or the stream was
    /// invalidated: reading on would skip changes, so the reader stops.
    #[error("{0}")]
    PositionLost(String),
    /// The server refused the stream as this target's rules open it: another target's rules
    /// apply, and reading again would be refused again.
    #[error("{0}")]
    Refused(String),
}

/// The change stream's collections for one watched collection.
#[derive(Debug, Clone)]
pub struct ChangeStore {
    database: String,
    collection: String,
    documents: Collection<Document>,
    checkpoints: Collection<Document>,
    dead_letters: Collection<Document>,
    /// Whose rules the stream follows.
    target: StreamTarget,
}

impl ChangeStore {
    /// The store for `settings.collection` in `database`, read by `target`'s rules.
    #[must_use]
    pub fn new(database: &Database, settings: &MongoSettings, target: StreamTarget) -> Self {
        let majority = CollectionOptions::builder()
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .build();
        Self {
            database: database.name().to_owned(),
            collection: settings.collection.clone(),
            documents: database.collection(&settings.collection),
            checkpoints: database.collection_with_options(
                &checkpoints_collection(&settings.outbox_collection),
                majority.clone(),
            ),
            dead_letters: database.collection_with_options(
                &dead_letters_collection(&settings.outbox_collection),
                majority,
            ),
            target,
        }
    }

    /// Whose rules the stream follows.
    #[must_use]
    pub fn target(&self) -> StreamTarget {
        self.target
    }

    /// The watched collection.
    #[must_use]
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The database of the watched collection.
    #[must_use]
    pub fn database(&self) -> &str {
        &self.database
    }
}

/// Where the checkpoints of the collections watched beside `outbox_collection` live.
#[must_use]
pub fn checkpoints_collection(outbox_collection: &str) -> String {
    format!("{outbox_collection}_checkpoints")
}

/// Where the dead letters of the change-stream source live.
#[must_use]
pub fn dead_letters_collection(outbox_collection: &str) -> String {
    format!("{outbox_collection}_dead_letters")
}

/// A time as BSON.
fn bson_time(t: chrono::DateTime<chrono::Utc>) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(t.timestamp_millis())
}

/// A BSON time as a `chrono` time (out of range: the epoch).
fn chrono_time(t: mongodb::bson::DateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
}
