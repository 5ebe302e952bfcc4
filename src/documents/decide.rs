//! Deciding a write from the current document, one function per method: the revision it
//! produces, the preconditions, the stored form of the document and the event announcing the
//! change. Pure: the outbox storage calls it inside its transaction, possibly more than once.

use chrono::Utc;
use mongodb::bson::{Bson, Document, doc};

use super::meta::{read_revision, recorded_revision};
use super::plan::Plan;
use super::{DATA_VERSION, Method};
use crate::config::MongoSettings;
use crate::domain::change::{META_FIELD, change_data, unquoted_tag};
use crate::domain::{EventId, EventTypes, NewDocument, Operation, OutboxEvent, Revision};
use crate::outbox::idempotency::IdempotencyKey;
use crate::outbox::store::Hold;
use crate::outbox::write::{Change, Decision, DocumentChange, Refusal};

/// A plan with what its events are named after: the [`Change`] the storage applies.
pub(super) struct Planned<'a> {
    pub(super) plan: &'a Plan,
    pub(super) settings: &'a MongoSettings,
    pub(super) event_types: &'a EventTypes,
    /// The hold on the new entry when the push path publishes it (the same on every rerun of
    /// the transaction).
    pub(super) hold: Option<Hold>,
}

impl Change for Planned<'_> {
    fn document_id(&self) -> &str {
        self.plan.id.as_str()
    }

    fn reads_current(&self) -> bool {
        self.plan.method != Method::Create
    }

    fn idempotency(&self) -> Option<(&IdempotencyKey, &str)> {
        self.plan
            .idempotency
            .as_ref()
            .map(|i| (&i.key, i.fingerprint.as_str()))
    }

    fn hold(&self) -> Option<Hold> {
        self.hold
    }

    fn decide(&self, current: Option<&Document>) -> Result<Decision, Refusal> {
        match (self.plan.method, current) {
            (Method::Create, _) => Ok(self.create()),
            (Method::Replace, None) => self.create_by_replace(),
            (Method::Replace, Some(current)) => self.replace(current),
            (Method::Delete, None) => Err(Refusal::NotFound),
            (Method::Delete, Some(current)) => self.delete(current),
        }
    }
}

impl Planned<'_> {
    /// POST: a new document; a unique `_id` refuses an existing one.
    fn create(&self) -> Decision {
        let revision = self.first_revision();
        let document = DocumentChange::Insert(self.stored_document(&revision));
        self.decision(
            document,
            Operation::Created,
            revision,
            self.plan.shard_key.clone(),
        )
    }

    /// PUT of a missing id: creates it, unless `If-Match` expected it to exist.
    fn create_by_replace(&self) -> Result<Decision, Refusal> {
        if self.plan.if_match.is_some() {
            return Err(Refusal::PreconditionFailed {
                reason: "If-Match was sent but the document does not exist".to_owned(),
                current: None,
            });
        }
        Ok(self.create())
    }

    /// PUT of an existing document: the next revision, if the preconditions hold.
    fn replace(&self, current: &Document) -> Result<Decision, Refusal> {
        let revision = read_revision(current, &self.plan.new_lineage);
        if self
            .plan
            .if_none_match
            .as_deref()
            .is_some_and(|h| revision.matches(h))
        {
            return Err(Refusal::PreconditionFailed {
                reason: "If-None-Match: the document exists".to_owned(),
                current: recorded_revision(current),
            });
        }
        self.check_if_match(&revision, current)?;
        let next = revision.next();
        let document = DocumentChange::Replace(self.stored_document(&next));
        Ok(self.decision(
            document,
            Operation::Replaced,
            next,
            self.plan.shard_key.clone(),
        ))
    }

    /// DELETE of an existing document, if `If-Match` holds. The shard key comes from the
    /// deleted document, since the request has no body.
    fn delete(&self, current: &Document) -> Result<Decision, Refusal> {
        let revision = read_revision(current, &self.plan.new_lineage);
        self.check_if_match(&revision, current)?;
        let shard_key = self
            .settings
            .shard_key
            .as_deref()
            .and_then(|n| current.get(n).map(|v| (n.to_owned(), v.clone())));
        Ok(self.decision(
            DocumentChange::Delete,
            Operation::Deleted,
            revision.next(),
            shard_key,
        ))
    }

    /// `If-Match` must name `revision`, the revision of `current`. A refusal carries the
    /// current revision, so the client can retry with it.
    fn check_if_match(&self, revision: &Revision, current: &Document) -> Result<(), Refusal> {
        let Some(header) = self.plan.if_match.as_deref() else {
            return Ok(());
        };
        if revision.matches_strongly(header) {
            return Ok(());
        }
        // RFC 9110 §13.1.1: an If-Match that is neither `*` nor a list of entity tags makes
        // the condition false, so the answer stays 412 (not 400); since a missing pair of
        // quotes is the usual cause, the message says how to write the tag.
        let reason = match unquoted_tag(header) {
            Some(tag) => {
                let tag: String = tag.chars().filter(|c| *c != '"').take(100).collect();
                format!(
                    "If-Match: entity tags are quoted, as the ETag header gives them: send If-Match: \"{tag}\""
                )
            }
            None if revision.matches(header) => {
                "If-Match compares entity tags strongly (RFC 9110): send the ETag without W/"
                    .to_owned()
            }
            None => "If-Match does not name the current revision".to_owned(),
        };
        Err(Refusal::PreconditionFailed {
            reason,
            current: recorded_revision(current),
        })
    }

    fn first_revision(&self) -> Revision {
        Revision {
            version: 1,
            lineage: self.plan.new_lineage.clone(),
        }
    }

    /// The new content as stored, with its revision in `_meta`.
    fn stored_document(&self, revision: &Revision) -> Document {
        let mut d = self
            .plan
            .document
            .as_ref()
            .map(|d| d.bson().clone())
            .unwrap_or_default();
        d.insert(
            META_FIELD,
            doc! {
                "version": i64::try_from(revision.version).unwrap_or(i64::MAX),
                "lineage": &revision.lineage,
                "updated_at": mongodb::bson::DateTime::now(),
            },
        );
        d
    }

    /// The decision, with the event announcing it.
    fn decision(
        &self,
        document: DocumentChange,
        operation: Operation,
        revision: Revision,
        shard_key: Option<(String, Bson)>,
    ) -> Decision {
        let plan = self.plan;
        let collection = &self.settings.collection;
        let event = OutboxEvent::new(
            EventId::for_change(
                &self.settings.database,
                collection,
                plan.id.as_str(),
                &revision.lineage,
                revision.version,
            ),
            super::subject(collection, &plan.id),
            self.event_types.for_operation(operation),
            DATA_VERSION.to_owned(),
            change_data(
                operation,
                &plan.id,
                revision.version,
                &revision.lineage,
                plan.document
                    .as_ref()
                    .filter(|_| operation != Operation::Deleted)
                    .map(NewDocument::json),
            ),
            Utc::now(),
        )
        .with_sequence(revision.version)
        .with_traceparent(plan.traceparent.as_deref());
        Decision {
            document,
            operation,
            revision,
            event,
            shard_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use crate::documents::WriteRequest;

    fn settings() -> MongoSettings {
        let map = [
            ("MONGODB_URI", "mongodb://127.0.0.1:27017"),
            ("MONGODB_SHARD_KEY", "tenant"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        MongoSettings::from_env(&Env::from_map(map)).unwrap()
    }

    fn plan(method: Method, body: &str, if_match: Option<&str>, if_none: Option<&str>) -> Plan {
        let request = WriteRequest {
            method,
            id: Some("d-1"),
            content_type: Some("application/json"),
            body: body.as_bytes(),
            if_match,
            if_none_match: if_none,
            idempotency_key: None,
            traceparent: None,
        };
        Plan::new(&request, &settings(), &types(), None).unwrap()
    }

    fn types() -> EventTypes {
        EventTypes::Fixed("T".into())
    }

    fn decide(plan: &Plan, current: Option<&Document>) -> Result<Decision, Refusal> {
        let settings = settings();
        let types = types();
        let planned = Planned {
            plan,
            settings: &settings,
            event_types: &types,
            hold: None,
        };
        planned.decide(current)
    }

    fn stored(version: i64) -> Document {
        doc! { "_id": "d-1", "tenant": "old", "_meta": { "version": version, "lineage": "L" } }
    }

    const BODY: &str = r#"{"tenant":"acme","v":1}"#;

    #[test]
    fn a_create_inserts_version_one_announced_by_its_event() {
        let plan = plan(Method::Create, BODY, None, None);
        let d = decide(&plan, None).unwrap();
        let DocumentChange::Insert(stored) = &d.document else {
            panic!("{:?}", d.document)
        };
        assert_eq!(
            stored.get_document(META_FIELD).unwrap().get_i64("version"),
            Ok(1)
        );
        assert_eq!(stored.get_str("tenant"), Ok("acme"));
        assert_eq!((d.operation, d.revision.version), (Operation::Created, 1));
        assert_eq!(d.event.sequence, Some(1));
        assert_eq!(d.shard_key, Some(("tenant".into(), Bson::from("acme"))));
    }

    #[test]
    fn a_replace_of_a_missing_document_creates_it_unless_if_match_was_sent() {
        let plain = plan(Method::Replace, BODY, None, None);
        assert!(matches!(
            decide(&plain, None).unwrap().document,
            DocumentChange::Insert(_)
        ));
        let conditional = plan(Method::Replace, BODY, Some("*"), None);
        assert!(matches!(
            decide(&conditional, None),
            Err(Refusal::PreconditionFailed { .. })
        ));
    }

    #[test]
    fn a_replace_bumps_the_version_when_the_preconditions_hold() {
        let current = stored(4);
        let d = decide(
            &plan(Method::Replace, BODY, Some("\"L.4\""), None),
            Some(&current),
        );
        let d = d.unwrap();
        assert!(matches!(d.document, DocumentChange::Replace(_)));
        assert_eq!((d.revision.version, d.revision.lineage.as_str()), (5, "L"));
        for (if_match, if_none) in [(Some("\"L.3\""), None), (None, Some("*"))] {
            let refused = decide(
                &plan(Method::Replace, BODY, if_match, if_none),
                Some(&current),
            );
            assert!(matches!(refused, Err(Refusal::PreconditionFailed { .. })));
        }
    }

    #[test]
    fn a_refused_precondition_names_the_current_revision_and_how_to_quote_a_tag() {
        let current = stored(4);
        let refusal = |if_match| {
            decide(
                &plan(Method::Delete, "", Some(if_match), None),
                Some(&current),
            )
            .unwrap_err()
        };
        let Refusal::PreconditionFailed { reason, current: r } = refusal("L.4") else {
            panic!("not a precondition failure")
        };
        assert_eq!(
            reason,
            r#"If-Match: entity tags are quoted, as the ETag header gives them: send If-Match: "L.4""#
        );
        assert_eq!(r.map(|r| r.etag()).as_deref(), Some("\"L.4\""));
        let Refusal::PreconditionFailed { reason, .. } = refusal("\"L.3\"") else {
            panic!("not a precondition failure")
        };
        assert_eq!(reason, "If-Match does not name the current revision");
        let Refusal::PreconditionFailed { reason, .. } = refusal("W/\"L.4\"") else {
            panic!("a weak tag must not satisfy If-Match")
        };
        assert!(reason.contains("strongly"), "{reason}");
        let foreign = doc! { "_id": "d-1", "tenant": "old" };
        let refused = decide(
            &plan(Method::Delete, "", Some("\"L.4\""), None),
            Some(&foreign),
        );
        assert!(
            matches!(
                refused,
                Err(Refusal::PreconditionFailed { current: None, .. })
            ),
            "no revision to name without _meta: {refused:?}"
        );
    }

    #[test]
    fn a_delete_needs_the_document_and_takes_its_shard_key_from_it() {
        let plan = plan(Method::Delete, "", None, None);
        assert!(matches!(decide(&plan, None), Err(Refusal::NotFound)));
        let d = decide(&plan, Some(&stored(2))).unwrap();
        assert_eq!(d.document, DocumentChange::Delete);
        assert_eq!((d.operation, d.revision.version), (Operation::Deleted, 3));
        assert_eq!(d.shard_key, Some(("tenant".into(), Bson::from("old"))));
    }
}
