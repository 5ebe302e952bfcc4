//! The elements of `_outbox.events` as the relay reads them: the claimed entries they
//! hold, and how many of a set of events an update reached.

use mongodb::bson::{self, Bson, Document, doc};

use super::relay_state::Documents;
use crate::domain::EventId;
use crate::outbox::ClaimedEntry;
use crate::outbox::store::entry::{ClaimState, Row, id_bson};

/// How many of `ids` an update reached: all when every document matched; otherwise a share
/// (a document taken over by another claim; the caller only logs the difference).
pub(super) fn events_in(ids: &[EventId], docs: &Documents, matched: u64, expected: usize) -> u64 {
    let n = ids
        .iter()
        .filter(|id| docs.of_event.contains_key(id))
        .count() as u64;
    if matched >= expected as u64 {
        n
    } else {
        n * matched / (expected.max(1) as u64)
    }
}

pub(super) fn ids_bson(ids: &[EventId]) -> Vec<Bson> {
    ids.iter().map(id_bson).collect()
}

/// The elements of `_outbox.events`.
pub(super) fn event_elements(outbox: Option<&Document>) -> Vec<Document> {
    outbox
        .and_then(|o| o.get_array("events").ok())
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e.as_document().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// The pending events of a document's `_outbox`, in order, as the relay publishes them.
pub(super) fn events_of(outbox: Option<&Document>) -> Vec<ClaimedEntry> {
    event_elements(outbox)
        .iter()
        .filter_map(element_entry)
        .collect()
}

/// One element read as an entry would be (the element stores the entry's event).
pub(super) fn element_entry(element: &Document) -> Option<ClaimedEntry> {
    let row = doc! {
        "_id": element.get("id")?.clone(),
        "_outbox": {
            "attempts": element.get_i32("attempts").unwrap_or(0),
            "event": element.get_document("event").ok()?.clone(),
        },
    };
    bson::from_document::<Row<ClaimState>>(row)
        .ok()?
        .into_entry()
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::super::pending_event;
    use chrono::DateTime;

    use super::*;
    use crate::domain::OutboxEvent;

    #[test]
    fn a_pending_element_reads_back_as_the_entry_it_came_from() {
        let event = OutboxEvent::new(
            EventId::for_change("db", "documents", "d-1", "l", 1),
            "documents/d-1".into(),
            "CosmosDB.DocumentCreated".into(),
            "1.0".into(),
            RawValue::from_string(r#"{"_id":"d-1"}"#.into()).unwrap(),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        );
        let element = pending_event(&event);
        let entry = element_entry(&element).unwrap();
        assert_eq!(entry.event.id, event.id);
        assert_eq!(entry.event.subject, event.subject);
        assert_eq!(entry.event.data.get(), event.data.get());
        assert_eq!(entry.attempts, 0);
    }
}
