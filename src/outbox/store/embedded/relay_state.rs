//! What this process remembers of each live claim on documents: which document holds each
//! claimed event, so every fenced change addresses documents by `_id`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mongodb::bson::Bson;

use crate::domain::EventId;

/// One claim, as remembered until its outcomes are recorded.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) lease_until: DateTime<Utc>,
    /// `None`: the claim came from the entries' collection.
    pub(super) documents: Option<Documents>,
}

/// The documents a claim holds.
#[derive(Debug, Clone, Default)]
pub(super) struct Documents {
    /// Each claimed event's document `_id`.
    pub(super) of_event: HashMap<EventId, Bson>,
    /// Whether an outcome moved a document's `due_at` off the end of the lease (rescheduled
    /// or released), so marking it published must not make it due at once.
    pub(super) moved: bool,
    /// Whether a claimed document is a tombstone.
    pub(super) tombstones: bool,
    /// The claimed documents' shard key values (empty unless the collection is sharded).
    pub(super) shards: Vec<Bson>,
}

impl Documents {
    /// The distinct documents holding `ids`.
    pub(super) fn of(&self, ids: &[EventId]) -> Vec<Bson> {
        // A document's events sit next to each other in a claim: skipping repeats of the
        // last one seen leaves each document once.
        let mut docs: Vec<Bson> = ids
            .iter()
            .filter_map(|id| self.of_event.get(id).cloned())
            .collect();
        docs.dedup();
        let mut seen = std::collections::HashSet::with_capacity(docs.len());
        docs.retain(|d| seen.insert(d.to_string()));
        docs
    }
}
