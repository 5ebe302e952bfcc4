//! The stored form of an entry: [`new_entry`] writes it, [`Row`] reads back what a query
//! projected ([`ClaimState`]: what a relay publishes; the other queries' parts sit beside
//! them); and the conversions between domain values and their stored forms.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::token::{Hold, uuid_bson};
use crate::domain::{EventId, OutboxEvent};
use crate::outbox::{ClaimedEntry, EntryStatus, LastError};

/// The outbox entry for `event`, to insert in the same transaction as the change it
/// announces. Its `_id` is the event id. With a `hold` (the push path) it is born claimed by
/// the writing process until the hold ends; without one it is due at once. `shard_key` (name and value) is copied from the
/// document onto the entry so both land in one partition of a sharded collection.
#[must_use]
pub fn new_entry(
    event: &OutboxEvent,
    collection: &str,
    document_id: &str,
    shard_key: Option<(&str, &Bson)>,
    hold: Option<Hold>,
) -> Document {
    let created = bson_time(event.event_time);
    let entry = NewEntry {
        id: id_bson(&event.id),
        state: NewState {
            status: EntryStatus::Pending.as_str(),
            due_at: hold.map_or(created, |h| bson_time(h.until)),
            lease_token: hold.map(|h| h.token.bson()),
            attempts: 0,
            claims: 0,
            created_at: created,
            document: DocumentRef {
                collection,
                id: document_id,
            },
            event: StoredEvent {
                subject: &event.subject,
                event_type: &event.event_type,
                time: created,
                data_version: &event.data_version,
                data: event.data.get(),
                sequence: event
                    .sequence
                    .map(|seq| i64::try_from(seq).unwrap_or(i64::MAX)),
                traceparent: event.traceparent.as_deref(),
            },
        },
    };
    let mut entry = bson::to_document(&entry)
        .expect("an entry holds strings, integers, dates and binary ids only");
    if let Some((name, value)) = shard_key {
        entry.insert(name, value.clone());
    }
    entry
}

/// An entry as inserted: pending, due at once, held by no claim. Field order is the stored order.
#[derive(Serialize)]
struct NewEntry<'a> {
    #[serde(rename = "_id")]
    id: Bson,
    #[serde(rename = "_outbox")]
    state: NewState<'a>,
}

/// The `_outbox` part of a new entry; the fields later changes add are listed in the store's
/// module doc.
#[derive(Serialize)]
struct NewState<'a> {
    status: &'static str,
    due_at: bson::DateTime,
    /// Null unless the write holds its entry for the push path.
    lease_token: Option<Bson>,
    attempts: i32,
    claims: i32,
    created_at: bson::DateTime,
    document: DocumentRef<'a>,
    event: StoredEvent<'a>,
}

/// Which document the entry announces a change of.
#[derive(Serialize)]
struct DocumentRef<'a> {
    collection: &'a str,
    id: &'a str,
}

/// The event, complete, as [`EventRow`] reads it back.
#[derive(Serialize)]
struct StoredEvent<'a> {
    subject: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: bson::DateTime,
    data_version: &'a str,
    /// The JSON text, stored as a string so that it comes back byte for byte.
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
}

/// A failure as stored in `last_error` and in the history.
#[derive(Serialize)]
struct ErrorRecord<'a> {
    at: bson::DateTime,
    kind: &'a str,
    status: Option<i32>,
    code: Option<&'a str>,
    message: &'a str,
    request_id: Option<&'a str>,
}

/// `e`, failed at `now`, in its stored form.
pub(super) fn error_doc(e: &LastError, now: DateTime<Utc>) -> Document {
    bson::to_document(&ErrorRecord {
        at: bson_time(now),
        kind: e.kind.as_str(),
        status: e.status.map(i32::from),
        code: e.code.as_deref(),
        message: &e.message,
        request_id: e.request_id.as_deref(),
    })
    .expect("an error record holds strings, integers and a date only")
}

/// An id read back, whatever its type (for ids passed on to another query).
#[derive(Deserialize)]
pub(super) struct IdRow {
    #[serde(rename = "_id")]
    pub(super) id: Bson,
}

/// An entry read back: its id, when the query projected it, and the part of `_outbox` it
/// projected (`S`, a struct per query, beside the query).
#[derive(Deserialize)]
pub(super) struct Row<S> {
    #[serde(rename = "_id", default)]
    pub(super) id: Option<Bson>,
    #[serde(rename = "_outbox")]
    pub(super) state: S,
}

impl<S> Row<S> {
    /// The entry's id as an event id; `None` when it is not a binary UUID (not an entry's).
    pub(super) fn event_id(&self) -> Option<EventId> {
        match &self.id {
            Some(Bson::Binary(b)) => Uuid::from_slice(&b.bytes).ok().map(EventId::from_uuid),
            _ => None,
        }
    }
}

/// What the relay needs of a claimed entry: its attempts and event.
#[derive(Deserialize)]
pub(super) struct ClaimState {
    attempts: i32,
    event: EventRow,
}

/// The event as [`StoredEvent`] wrote it.
#[derive(Deserialize)]
struct EventRow {
    subject: String,
    #[serde(rename = "type")]
    event_type: String,
    time: bson::DateTime,
    data_version: String,
    data: String,
    #[serde(default)]
    sequence: Option<i64>,
    #[serde(default)]
    traceparent: Option<String>,
}

impl Row<ClaimState> {
    /// The entry to publish; `None` for a row that is not an entry's (an id that is not a
    /// UUID, data that is not JSON), which is then left alone.
    pub(super) fn into_entry(self) -> Option<ClaimedEntry> {
        let id = self.event_id()?;
        let e = self.state.event;
        let data = RawValue::from_string(e.data).ok()?;
        Some(ClaimedEntry {
            event: OutboxEvent {
                id,
                subject: e.subject,
                event_type: e.event_type,
                event_time: chrono_time(e.time),
                data_version: e.data_version,
                data,
                sequence: e.sequence.and_then(|s| u64::try_from(s).ok()),
                traceparent: e.traceparent,
            },
            attempts: u32::try_from(self.state.attempts).unwrap_or(0),
        })
    }
}

/// An event id as the entry's `_id`.
pub(super) fn id_bson(id: &EventId) -> Bson {
    uuid_bson(id.as_uuid())
}

/// Event ids as entry `_id`s, for an `$in`.
pub(super) fn ids_bson(ids: &[EventId]) -> Vec<Bson> {
    ids.iter().map(id_bson).collect()
}

/// A time as stored (milliseconds).
pub(super) fn bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

/// A stored time read back.
pub(super) fn chrono_time(t: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
}

/// `d` after `t`. A span so long that it leaves the calendar means "never": the latest time
/// there is, not a panic.
pub(super) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{Binary, doc};

    use super::super::{ROOT, field};
    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent::new(
            EventId::for_change("db", "documents", "d-1", "l", 1),
            "documents/d-1".into(),
            "CosmosDB.DocumentChanged".into(),
            "1.0".into(),
            RawValue::from_string(r#"{"_id":"d-1"}"#.into()).unwrap(),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        )
    }

    #[test]
    fn a_new_entry_has_the_stored_shape() {
        let e = event().with_sequence(7).with_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let shard = Bson::String("tenant-1".into());

        let entry = new_entry(&e, "documents", "d-1", Some(("tenant", &shard)), None);

        let t = bson::DateTime::from_millis(1_700_000_000_123);
        let expected = doc! {
            "_id": Binary { subtype: BinarySubtype::Uuid, bytes: e.id.as_uuid().as_bytes().to_vec() },
            "_outbox": {
                "status": "pending",
                "due_at": t,
                "lease_token": Bson::Null,
                "attempts": 0_i32,
                "claims": 0_i32,
                "created_at": t,
                "document": { "collection": "documents", "id": "d-1" },
                "event": {
                    "subject": "documents/d-1",
                    "type": "CosmosDB.DocumentChanged",
                    "time": t,
                    "data_version": "1.0",
                    "data": r#"{"_id":"d-1"}"#,
                    "sequence": 7_i64,
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
            },
            "tenant": "tenant-1",
        };
        // `Document`'s equality ignores order; the stored order is part of the shape.
        assert_eq!(format!("{entry:?}"), format!("{expected:?}"));
        assert_eq!(entry, expected);
    }

    #[test]
    fn a_new_entry_without_sequence_or_traceparent_stores_neither() {
        let entry = new_entry(&event(), "documents", "d-1", None, None);

        let ev = entry
            .get_document(ROOT)
            .unwrap()
            .get_document("event")
            .unwrap();
        assert!(!ev.contains_key("sequence"));
        assert!(!ev.contains_key("traceparent"));
        assert_eq!(entry.keys().collect::<Vec<_>>(), ["_id", ROOT]);
    }

    #[test]
    fn a_held_new_entry_is_due_when_its_hold_ends_and_carries_the_token() {
        let e = event();
        let token = super::super::ClaimToken::new();
        let until = e.event_time + chrono::Duration::seconds(60);
        let entry = new_entry(&e, "documents", "d-1", None, Some(Hold { token, until }));
        let state = entry.get_document(ROOT).unwrap();
        assert_eq!(state.get_str("status").unwrap(), "pending");
        assert_eq!(state.get_datetime("due_at").unwrap(), &bson_time(until));
        assert_eq!(state.get("lease_token"), Some(&token.bson()));
        assert_eq!(
            state.get_datetime("created_at").unwrap(),
            &bson_time(e.event_time),
            "the hold does not change when the change was written"
        );
    }

    /// The paths queries use name fields `new_entry` writes.
    #[test]
    fn query_paths_name_fields_of_a_new_entry() {
        let entry = new_entry(&event().with_sequence(1), "documents", "d-1", None, None);
        for path in [
            field::ID,
            field::STATUS,
            field::DUE_AT,
            field::LEASE_TOKEN,
            field::ATTEMPTS,
            field::CLAIMS,
            field::CREATED_AT,
            field::EVENT,
            field::SUBJECT,
            field::SEQUENCE,
        ] {
            let mut at = Some(&entry);
            let mut parts = path.split('.').peekable();
            while let Some(part) = parts.next() {
                let doc = at.unwrap_or_else(|| panic!("{path}: not a document above {part}"));
                assert!(doc.contains_key(part), "{path}: no {part}");
                at = parts.peek().and(doc.get_document(part).ok());
            }
        }
        for path in [
            field::PUBLISHED_AT,
            field::DEAD_AT,
            field::SKIPPED_AT,
            field::REQUEUED_AT,
            field::LAST_ERROR,
            field::HISTORY,
        ] {
            assert!(path.starts_with(&format!("{ROOT}.")), "{path}");
        }
    }

    #[test]
    fn the_claimed_row_reads_back_what_new_entry_wrote() {
        let e = event().with_sequence(3);
        let entry = new_entry(&e, "documents", "d-1", None, None);

        let row: Row<ClaimState> = bson::from_document(entry).unwrap();
        let claimed = row.into_entry().unwrap();

        assert_eq!(claimed.event.id, e.id);
        assert_eq!(claimed.event.subject, e.subject);
        assert_eq!(claimed.event.event_time, e.event_time);
        assert_eq!(claimed.event.data.get(), e.data.get());
        assert_eq!(claimed.event.sequence, Some(3));
        assert_eq!(claimed.attempts, 0);
    }

    #[test]
    fn an_error_record_keeps_nulls_for_what_is_missing() {
        let e = LastError {
            kind: crate::publisher::FailureKind::Status,
            status: Some(400),
            code: None,
            message: "bad".into(),
            request_id: None,
        };
        let now = DateTime::from_timestamp_millis(5).unwrap();

        assert_eq!(
            format!("{:?}", error_doc(&e, now)),
            format!(
                "{:?}",
                doc! {
                    "at": bson::DateTime::from_millis(5), "kind": "status", "status": 400_i32,
                    "code": Bson::Null, "message": "bad", "request_id": Bson::Null,
                }
            )
        );
    }

    #[test]
    fn a_span_past_the_calendar_saturates() {
        let now = Utc::now();

        assert_eq!(after(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after(now, Duration::from_secs(30)),
            now + chrono::Duration::seconds(30)
        );
    }
}
