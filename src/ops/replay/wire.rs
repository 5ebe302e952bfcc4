//! `--new-ids`: a replayed event with a derived id and a `replayof` naming the original — an
//! extension attribute in CloudEvents, a field of `data` in the Event Grid schema (which allows
//! no other top-level property).

use serde_json::Value;

use crate::config::EventSchema;
use crate::domain::EventId;

/// Namespace of derived replay ids (UUID v5 of the original id and the replay's key): the same
/// replay, resumed, derives the same ids; another window derives new ones.
const REPLAY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f0e_3b1c_7a52_4d8e_9c41_2b7d_5e90_a3f1);

/// The id a replay gives the event `original`.
#[must_use]
pub fn derived_id(original: &EventId, replay_key: &str) -> uuid::Uuid {
    let name = format!("{original} {replay_key}");
    uuid::Uuid::new_v5(&REPLAY_NAMESPACE, name.as_bytes())
}

/// `json` (one rendered event) with the derived id and `replayof`. An event that does not parse
/// back (it always does: the publisher rendered it) is returned unchanged.
pub(super) fn with_new_id(
    json: &[u8],
    original: &EventId,
    replay_key: &str,
    schema: EventSchema,
) -> Vec<u8> {
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(json) else {
        return json.to_vec();
    };
    let original_text = Value::String(original.to_string());
    event.insert(
        "id".into(),
        Value::String(derived_id(original, replay_key).to_string()),
    );
    match schema {
        EventSchema::CloudEvents => {
            event.insert("replayof".into(), original_text);
        }
        EventSchema::EventGrid => {
            if let Some(Value::Object(data)) = event.get_mut("data") {
                data.insert("replayof".into(), original_text);
            }
        }
    }
    serde_json::to_vec(&Value::Object(event)).unwrap_or_else(|_| json.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_derived_and_names_the_original_in_either_schema() {
        let id = EventId::from_uuid(uuid::Uuid::new_v4());
        let eg = br#"{"id":"x","subject":"s","data":{"a":1}}"#;
        let out: Value =
            serde_json::from_slice(&with_new_id(eg, &id, "k", EventSchema::EventGrid)).unwrap();
        assert_eq!(out["id"], derived_id(&id, "k").to_string());
        assert_eq!(out["data"]["replayof"], id.to_string());
        assert_eq!(out["data"]["a"], 1);
        assert!(out.get("replayof").is_none(), "no extra top-level property");
        let ce = br#"{"id":"x","specversion":"1.0","data":{"a":1}}"#;
        let out: Value =
            serde_json::from_slice(&with_new_id(ce, &id, "k", EventSchema::CloudEvents)).unwrap();
        assert_eq!(out["replayof"], id.to_string());
        assert_ne!(derived_id(&id, "k"), derived_id(&id, "other window"));
    }
}
