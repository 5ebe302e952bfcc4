//! Planning a write: everything decided before the database is touched — parsing, validation,
//! sizing the event. A plan is fixed for the whole write, so reruns of its transaction agree.

use chrono::Utc;
use mongodb::bson::Bson;

use super::{DATA_VERSION, MAX_BODY_BYTES, Method, WriteError, WriteRequest};
use crate::config::MongoSettings;
use crate::domain::change::change_data;
use crate::domain::{
    DocumentId, EventId, EventTypes, InputError, MAX_EVENT_BYTES, NewDocument, Operation,
    OutboxEvent, Revision,
};
use crate::outbox::idempotency::{self, IdempotencyKey};

/// Bytes added to the measured size of the largest event: slack kept from the first release
/// (its reason was not recorded), so the check stays as strict as it was.
const EVENT_SIZE_SLACK: usize = 24;

/// A request's `Idempotency-Key` and what identifies the request under it.
pub(super) struct Idempotency {
    /// The key.
    pub(super) key: IdempotencyKey,
    /// Fingerprint of method, URL id, content type and body.
    pub(super) fingerprint: String,
}

/// Everything decided before the transaction; the transaction may run several times with it.
pub(super) struct Plan {
    pub(super) method: Method,
    pub(super) id: DocumentId,
    /// The new content (create and replace).
    pub(super) document: Option<NewDocument>,
    pub(super) if_match: Option<String>,
    pub(super) if_none_match: Option<String>,
    pub(super) idempotency: Option<Idempotency>,
    /// Lineage used if the write creates the document (fixed here so reruns agree).
    pub(super) new_lineage: String,
    /// Shard key name and value, from the new content.
    pub(super) shard_key: Option<(String, Bson)>,
    pub(super) traceparent: Option<String>,
}

impl Plan {
    /// Validates `request` and plans it.
    ///
    /// # Errors
    /// [`WriteError::Input`] when the request is not acceptable.
    pub(super) fn new(
        request: &WriteRequest<'_>,
        settings: &MongoSettings,
        event_types: &EventTypes,
        cloudevents_source: Option<&str>,
    ) -> Result<Self, WriteError> {
        let (id, document) = target(request)?;
        if let Some(d) = &document {
            let size = largest_event_bytes(
                &settings.collection,
                &id,
                d,
                event_types,
                cloudevents_source,
            );
            if size > MAX_EVENT_BYTES {
                return Err(InputError::TooLarge {
                    what: "event",
                    size,
                    limit: MAX_EVENT_BYTES,
                }
                .into());
            }
        }
        let shard_key = match (&settings.shard_key, &document) {
            (Some(name), Some(d)) => Some((
                name.clone(),
                d.bson()
                    .get(name)
                    .cloned()
                    .ok_or_else(|| InputError::MissingShardKey(name.clone()))?,
            )),
            _ => None,
        };
        Ok(Self {
            method: request.method,
            id,
            document,
            if_match: request.if_match.map(str::to_owned),
            if_none_match: request.if_none_match.map(str::to_owned),
            idempotency: idempotency_of(request)?,
            new_lineage: Revision::first().lineage,
            shard_key,
            traceparent: request.traceparent.map(str::to_owned),
        })
    }
}

/// The document's id and, for a create or replace, its validated content.
fn target(request: &WriteRequest<'_>) -> Result<(DocumentId, Option<NewDocument>), InputError> {
    let route_id = request.id.map(DocumentId::parse).transpose()?;
    let document = match request.method {
        Method::Delete => None,
        Method::Create | Method::Replace => Some(NewDocument::parse(
            request.content_type,
            request.body,
            MAX_BODY_BYTES,
            route_id.as_ref(),
        )?),
    };
    let id = match (&document, route_id) {
        (Some(d), _) => d.id().clone(),
        (None, Some(id)) => id,
        (None, None) => {
            return Err(InputError::InvalidId {
                reason: "the URL must name the document".into(),
            });
        }
    };
    Ok((id, document))
}

/// The size of the largest event this document's writes can produce, as it goes on the wire:
/// Event Grid JSON, or CloudEvents JSON with this topic's `source` (`cloudevents_source`), with
/// the longest version, sequence and `traceparent` an event can carry.
fn largest_event_bytes(
    collection: &str,
    id: &DocumentId,
    document: &NewDocument,
    event_types: &EventTypes,
    cloudevents_source: Option<&str>,
) -> usize {
    let lineage = "0".repeat(24);
    let data = change_data(
        Operation::Replaced,
        id,
        u64::MAX,
        &lineage,
        Some(document.json()),
    );
    let largest = OutboxEvent::new(
        EventId::for_change("", "", "", "", 0),
        super::subject(collection, id),
        event_types.for_operation(Operation::Replaced),
        DATA_VERSION.to_owned(),
        data,
        Utc::now(),
    )
    .with_sequence(u64::MAX)
    .with_traceparent(Some(LONGEST_TRACEPARENT));
    let wire = match cloudevents_source {
        None => largest.to_event_grid_json().len(),
        Some(prefix) => {
            let mut out = Vec::new();
            largest.write_cloudevents_json(&format!("{prefix}/{collection}"), &mut out);
            out.len()
        }
    };
    wire + EVENT_SIZE_SLACK
}

/// A W3C `traceparent` (they all have this length).
const LONGEST_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The request's `Idempotency-Key`, parsed, with the request's fingerprint.
fn idempotency_of(request: &WriteRequest<'_>) -> Result<Option<Idempotency>, InputError> {
    let Some(raw) = request.idempotency_key else {
        return Ok(None);
    };
    let key = IdempotencyKey::parse(raw)?;
    let body = if request.method == Method::Delete {
        &[][..]
    } else {
        request.body
    };
    let fingerprint = idempotency::fingerprint(
        request.method.as_str(),
        request.id,
        request.content_type,
        body,
    );
    Ok(Some(Idempotency { key, fingerprint }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn settings() -> MongoSettings {
        let map = [("MONGODB_URI", "mongodb://127.0.0.1:27017")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        MongoSettings::from_env(&Env::from_map(map)).expect("test settings")
    }

    fn plan(body: &str, cloudevents_source: Option<&str>) -> Result<Plan, WriteError> {
        let request = WriteRequest {
            method: Method::Create,
            id: None,
            content_type: Some("application/json"),
            body: body.as_bytes(),
            if_match: None,
            if_none_match: None,
            idempotency_key: None,
            traceparent: None,
        };
        let types = EventTypes::Fixed("T".into());
        Plan::new(&request, &settings(), &types, cloudevents_source)
    }

    fn body(pad: usize) -> String {
        format!(r#"{{"_id":"d-1","pad":"{}"}}"#, "a".repeat(pad))
    }

    #[test]
    fn an_event_that_fits_event_grid_json_but_not_cloudevents_is_refused_for_cloudevents() {
        // Grow the document until its Event Grid rendering is 50 bytes under the limit.
        let types = EventTypes::Fixed("T".into());
        let id = DocumentId::parse("d-1").expect("a valid id");
        let size = |pad: usize| {
            let doc = NewDocument::parse(
                Some("application/json"),
                body(pad).as_bytes(),
                usize::MAX,
                None,
            )
            .expect("a valid document");
            largest_event_bytes("documents", &id, &doc, &types, None)
        };
        let pad = MAX_EVENT_BYTES - 50 - size(0);
        assert_eq!(size(pad), MAX_EVENT_BYTES - 50);

        assert!(plan(&body(pad), None).is_ok(), "fits as Event Grid JSON");
        let refused = plan(&body(pad), Some("/outbox-relay"));
        assert!(
            matches!(
                refused,
                Err(WriteError::Input(InputError::TooLarge {
                    what: "event",
                    ..
                }))
            ),
            "the CloudEvents envelope (source, specversion, sequence, traceparent) is larger: {:?}",
            refused.map(|_| ())
        );
    }
}
