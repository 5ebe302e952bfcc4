//! A change read from a change stream on the documents' collection, and the event announcing
//! it (`OUTBOX_SOURCE=change-stream`).
//!
//! The envelope is the outbox's (`data.operation`, `data.id`, `data.document`), so consumers
//! cannot tell the sources apart; there is no `version`/`lineage`, since documents written by
//! other applications have none. The event id is derived from the change's position in the
//! stream (its resume token), so re-reading a change after a crash gives the same id and
//! consumers de-duplicate on it.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{EventId, EventTypes, OutboxEvent};

/// Namespace of the ids of change-stream events; fixed forever, or ids would change. Not the
/// outbox's namespace, so the two sources can never produce the same id.
const STREAM_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x2b9e_71c4_5d03_4f6a_8e12_c7a4_90d1_3b58);

/// What the stream says happened to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// `insert`.
    Created,
    /// `replace`.
    Replaced,
    /// `update`.
    Updated,
    /// `delete`.
    Deleted,
    /// A change whose kind the server does not say (Cosmos DB RU's stream has no
    /// `operationType`): an insert, an update or a replace.
    Changed,
    /// The document as it is, published by `handler outbox resync`.
    Snapshot,
}

impl ChangeKind {
    /// The stream's `operationType`, if it names a change to a document.
    #[must_use]
    pub fn from_operation_type(op: &str) -> Option<Self> {
        match op {
            "insert" => Some(Self::Created),
            "replace" => Some(Self::Replaced),
            "update" => Some(Self::Updated),
            "delete" => Some(Self::Deleted),
            _ => None,
        }
    }

    /// `data.operation`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Changed => "changed",
            Self::Snapshot => "snapshot",
        }
    }

    /// The last part of the event type.
    #[must_use]
    pub const fn event_suffix(self) -> &'static str {
        match self {
            Self::Created => "DocumentCreated",
            Self::Replaced => "DocumentReplaced",
            Self::Updated => "DocumentUpdated",
            Self::Deleted => "DocumentDeleted",
            Self::Changed => "DocumentChanged",
            Self::Snapshot => "DocumentSnapshot",
        }
    }

    /// The `eventType` for this kind under `types`.
    #[must_use]
    pub fn event_type(self, types: &EventTypes) -> String {
        match types {
            EventTypes::PerOperation { prefix } => format!("{prefix}.{}", self.event_suffix()),
            EventTypes::Fixed(t) => t.clone(),
        }
    }
}

/// One change to a document, as read from the stream.
#[derive(Debug, Clone)]
pub struct StreamChange {
    /// What happened.
    pub kind: ChangeKind,
    /// The document's `_id` as text (a string as is, an `ObjectId` in hex, anything else as
    /// relaxed extended JSON).
    pub document_id: String,
    /// The document after the change, where the server gives it, as JSON.
    pub document: Option<serde_json::Value>,
    /// What the event id is derived from: the change's resume token (`_id._data`, or the
    /// token as JSON where it has no `_data`); on Cosmos DB RU, whose pages share one token,
    /// where the page started, the document key, the document's content and its occurrence in
    /// the page (`outbox/stream/read.rs`).
    pub position: String,
    /// The change's cluster time as `seconds << 32 | increment`, where the server gives it:
    /// orders the changes of the collection (the CloudEvents `sequence`).
    pub sequence: Option<u64>,
    /// When the change was made (`wallTime`, else the cluster time's second), else when it was
    /// read.
    pub at: DateTime<Utc>,
}

/// The event's `data`.
#[derive(Serialize)]
struct StreamData<'a> {
    operation: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a serde_json::Value>,
}

impl StreamChange {
    /// The id of the event for this change in `database`.`collection`: the same for every
    /// reading of the change.
    #[must_use]
    pub fn event_id(&self, database: &str, collection: &str) -> EventId {
        let name = format!("{database}\0{collection}\0{}", self.position);
        EventId::from_uuid(Uuid::new_v5(&STREAM_EVENT_NAMESPACE, name.as_bytes()))
    }

    /// The event announcing the change, in the outbox's envelope.
    #[must_use]
    pub fn event(&self, database: &str, collection: &str, types: &EventTypes) -> OutboxEvent {
        let data = StreamData {
            operation: self.kind.as_str(),
            id: &self.document_id,
            document: self.document.as_ref(),
        };
        let data: Box<RawValue> = serde_json::value::to_raw_value(&data)
            .expect("strings and JSON values always serialize");
        let mut event = OutboxEvent::new(
            self.event_id(database, collection),
            format!("{collection}/{}", self.document_id),
            self.kind.event_type(types),
            "1.0".to_owned(),
            data,
            self.at.trunc_subsecs(3),
        );
        event.sequence = self.sequence;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, position: &str) -> StreamChange {
        StreamChange {
            kind,
            document_id: "o-1".into(),
            document: (kind != ChangeKind::Deleted)
                .then(|| serde_json::json!({"_id": "o-1", "a": 1})),
            position: position.into(),
            sequence: Some(7),
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn the_id_depends_on_the_position_and_the_collection_only() {
        let a = change(ChangeKind::Updated, "8265A1");
        assert_eq!(
            a.event_id("db", "c"),
            change(ChangeKind::Updated, "8265A1").event_id("db", "c")
        );
        assert_ne!(
            a.event_id("db", "c"),
            change(ChangeKind::Updated, "8265A2").event_id("db", "c")
        );
        assert_ne!(a.event_id("db", "c"), a.event_id("db", "d"));
        assert_ne!(a.event_id("db", "c"), a.event_id("db2", "c"));
    }

    #[test]
    fn the_event_has_the_outbox_envelope() {
        let types = EventTypes::PerOperation {
            prefix: "CosmosDB".into(),
        };
        let e = change(ChangeKind::Updated, "p").event("db", "orders", &types);
        assert_eq!(e.event_type, "CosmosDB.DocumentUpdated");
        assert_eq!(e.subject, "orders/o-1");
        assert_eq!(e.sequence, Some(7));
        assert_eq!(
            e.data.get(),
            r#"{"operation":"updated","id":"o-1","document":{"_id":"o-1","a":1}}"#
        );
        let d = change(ChangeKind::Deleted, "q").event("db", "orders", &types);
        assert_eq!(d.event_type, "CosmosDB.DocumentDeleted");
        assert_eq!(d.data.get(), r#"{"operation":"deleted","id":"o-1"}"#);
        let fixed = EventTypes::Fixed("X.Changed".into());
        assert_eq!(
            change(ChangeKind::Created, "r")
                .event("db", "o", &fixed)
                .event_type,
            "X.Changed"
        );
    }

    #[test]
    fn operation_types_map_to_kinds() {
        assert_eq!(
            ChangeKind::from_operation_type("insert"),
            Some(ChangeKind::Created)
        );
        assert_eq!(
            ChangeKind::from_operation_type("replace"),
            Some(ChangeKind::Replaced)
        );
        assert_eq!(
            ChangeKind::from_operation_type("update"),
            Some(ChangeKind::Updated)
        );
        assert_eq!(
            ChangeKind::from_operation_type("delete"),
            Some(ChangeKind::Deleted)
        );
        assert_eq!(ChangeKind::from_operation_type("drop"), None);
    }
}
