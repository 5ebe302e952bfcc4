//! The event announced for a change, exactly as it will be published.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Largest event Event Grid accepts, as compact JSON.
pub const MAX_EVENT_BYTES: usize = 1_048_576;

/// Namespace of the name-based (v5) event ids; fixed forever, or ids would change.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_4e0a_9a57_4d39_b1b4_2e6c_8d0f_5a11);

/// Identifies one event, and the outbox entry that carries it.
///
/// Derived from (database, collection, document id, lineage, version) at write time, so a
/// replayed write can only ever produce the same id, and apps sharing a database or a topic
/// cannot collide. It never changes afterwards: consumers de-duplicate on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// The id of the event announcing `version` of a document in its `lineage` (see
    /// [`crate::domain::change`]).
    #[must_use]
    pub fn for_change(
        database: &str,
        collection: &str,
        document_id: &str,
        lineage: &str,
        version: u64,
    ) -> Self {
        let name = format!("{database}\0{collection}\0{document_id}\0{lineage}\0{version}");
        Self(Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()))
    }

    /// Wraps an id read back from the store.
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The id as a UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The event to publish, whatever the topic's schema: it goes on the wire as Event Grid JSON
/// ([`Self::write_event_grid_json`]) or as CloudEvents 1.0 JSON
/// ([`Self::write_cloudevents_json`]).
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Stable id; equals the outbox entry's id.
    pub id: EventId,
    /// `<collection>/<document id>`.
    pub subject: String,
    /// e.g. `CosmosDB.DocumentChanged`.
    pub event_type: String,
    /// When the change was written, to the millisecond (what the store keeps).
    pub event_time: DateTime<Utc>,
    /// Version of the payload schema.
    pub data_version: String,
    /// The payload: a JSON object.
    pub data: Box<RawValue>,
    /// Order of this change among the changes of its subject (the document's version), so
    /// consumers can reorder what Event Grid delivers out of order.
    pub sequence: Option<u64>,
    /// W3C trace context of the request that wrote the change, when it had one.
    pub traceparent: Option<String>,
}

/// Wire form of one Event Grid event: exactly the six properties, in this order.
#[derive(Serialize)]
struct EventGridWire<'a> {
    id: String,
    subject: &'a str,
    #[serde(rename = "eventType")]
    event_type: &'a str,
    #[serde(rename = "eventTime")]
    event_time: String,
    #[serde(rename = "dataVersion")]
    data_version: &'a str,
    data: &'a RawValue,
}

/// Wire form of one CloudEvents 1.0 event.
#[derive(Serialize)]
struct CloudEventWire<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: String,
    subject: &'a str,
    datacontenttype: &'static str,
    /// The payload schema version, as an extension (CloudEvents has no `dataVersion`).
    #[serde(rename = "dataversion")]
    dataschema_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    data: &'a RawValue,
}

fn is_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

impl OutboxEvent {
    /// The event for a change written now.
    #[must_use]
    pub fn new(
        id: EventId,
        subject: String,
        event_type: String,
        data_version: String,
        data: Box<RawValue>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            subject,
            event_type,
            event_time: now.trunc_subsecs(3),
            data_version,
            data,
            sequence: None,
            traceparent: None,
        }
    }

    /// With the subject-wide order of this change.
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = Some(sequence);
        self
    }

    /// With the W3C `traceparent` of the writing request; anything not of the form
    /// `00-<32 hex>-<16 hex>-<2 hex>` is dropped.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> Self {
        self.traceparent = traceparent.filter(|t| is_traceparent(t)).map(str::to_owned);
        self
    }

    /// Appends the event as compact CloudEvents 1.0 JSON to `out`, with `source`
    /// (a URI reference such as `/outbox/documents`). `sequence` and `traceparent` travel as
    /// extension attributes; `sequence` is zero-padded so that it also orders as a string, as
    /// the CloudEvents sequence extension compares.
    pub fn write_cloudevents_json(&self, source: &str, out: &mut Vec<u8>) {
        let wire = CloudEventWire {
            specversion: "1.0",
            id: self.id.to_string(),
            source,
            event_type: &self.event_type,
            time: self.event_time_rfc3339(),
            subject: &self.subject,
            datacontenttype: "application/json",
            dataschema_version: &self.data_version,
            sequence: self.sequence.map(|s| format!("{s:020}")),
            traceparent: self.traceparent.as_deref(),
            data: &self.data,
        };
        serde_json::to_writer(out, &wire).unwrap_or_default();
    }

    /// `eventTime` as Event Grid wants it: RFC 3339, UTC, milliseconds, `Z`.
    #[must_use]
    pub fn event_time_rfc3339(&self) -> String {
        self.event_time
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Appends the event as compact Event Grid JSON to `out`.
    pub fn write_event_grid_json(&self, out: &mut Vec<u8>) {
        let wire = EventGridWire {
            id: self.id.to_string(),
            subject: &self.subject,
            event_type: &self.event_type,
            event_time: self.event_time_rfc3339(),
            data_version: &self.data_version,
            data: &self.data,
        };
        // Serializing strings and an already-valid RawValue into a Vec cannot fail.
        serde_json::to_writer(out, &wire).unwrap_or_default();
    }

    /// The event as compact Event Grid JSON.
    #[must_use]
    pub fn to_event_grid_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.get().len() + 256);
        self.write_event_grid_json(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OutboxEvent {
        let now = DateTime::parse_from_rfc3339("2025-03-14T09:26:53.589731Z")
            .unwrap()
            .with_timezone(&Utc);
        OutboxEvent::new(
            EventId::for_change("db", "orders", "o-1", "L", 1),
            "orders/o-1".into(),
            "CosmosDB.DocumentChanged".into(),
            "1.0".into(),
            RawValue::from_string(r#"{"_id":"o-1","total":129.5}"#.into()).unwrap(),
            now,
        )
    }

    #[test]
    fn event_ids_are_deterministic_and_scoped() {
        let a = EventId::for_change("db", "orders", "o-1", "L", 1);
        assert_eq!(a, EventId::for_change("db", "orders", "o-1", "L", 1));
        assert_ne!(a, EventId::for_change("db", "orders", "o-1", "L", 2));
        assert_ne!(a, EventId::for_change("db", "orders", "o-1", "M", 1));
        assert_ne!(a, EventId::for_change("db", "invoices", "o-1", "L", 1));
        assert_ne!(a, EventId::for_change("other", "orders", "o-1", "L", 1));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(
            EventId::for_change("d", "a", "bc", "L", 1),
            EventId::for_change("d", "ab", "c", "L", 1)
        );
        assert_eq!(a.as_uuid().get_version_num(), 5);
    }

    #[test]
    fn the_cloudevents_form_carries_the_extensions() {
        let e = sample().with_sequence(3).with_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let mut out = Vec::new();
        e.write_cloudevents_json("/db/orders", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], e.id.to_string());
        assert_eq!(v["source"], "/db/orders");
        assert_eq!(v["type"], "CosmosDB.DocumentChanged");
        assert_eq!(v["time"], "2025-03-14T09:26:53.589Z");
        assert_eq!(v["subject"], "orders/o-1");
        assert_eq!(v["sequence"], "00000000000000000003");
        assert_eq!(
            v["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(v["data"]["total"], 129.5);
        let plain = sample().with_traceparent(Some("garbage"));
        let mut out = Vec::new();
        plain.write_cloudevents_json("/x", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(
            v.get("traceparent").is_none() && v.get("sequence").is_none(),
            "{v}"
        );
    }

    #[test]
    fn the_wire_form_has_exactly_the_six_properties() {
        let e = sample();
        let json: serde_json::Value = serde_json::from_slice(&e.to_event_grid_json()).unwrap();
        let obj = json.as_object().unwrap();
        let keys: Vec<_> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "id",
                "subject",
                "eventType",
                "eventTime",
                "dataVersion",
                "data"
            ]
        );
        assert_eq!(obj["id"], e.id.to_string());
        assert_eq!(obj["eventTime"], "2025-03-14T09:26:53.589Z");
        assert_eq!(obj["dataVersion"], "1.0");
        assert_eq!(obj["data"]["total"], 129.5);
    }
}
