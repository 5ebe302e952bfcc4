//! A change to a document — created, replaced or deleted — and what its event says about it.
//!
//! Every stored document carries its metadata in the reserved field `_meta`:
//! `{ version: <1, 2, …>, lineage: "<id of this life of the document>" }`. The version grows
//! by one with every change; the lineage is fixed when the document is created, so a document
//! deleted and created again starts a new lineage and its events can never take the ids of the
//! old life's events. The event id is derived from (database, collection, document id,
//! lineage, version): a write that is run again (a transaction retry, a replayed request) can
//! only ever produce the same id.

use serde::Serialize;
use serde_json::value::RawValue;

use super::DocumentId;

/// Reserved top-level field holding a document's metadata (named with the other reserved
/// fields, in [`crate::domain::document::RESERVED_FIELDS`]).
pub use super::document::META_FIELD;

/// What happened to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A new document (POST, or PUT of a missing id).
    Created,
    /// A document replaced by PUT.
    Replaced,
    /// A document removed by DELETE.
    Deleted,
}

impl Operation {
    /// The stored and published form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Replaced => "replaced",
            Self::Deleted => "deleted",
        }
    }

    /// The last part of the event type: `DocumentCreated`, …
    #[must_use]
    pub const fn event_suffix(self) -> &'static str {
        match self {
            Self::Created => "DocumentCreated",
            Self::Replaced => "DocumentReplaced",
            Self::Deleted => "DocumentDeleted",
        }
    }

    /// Parses the stored form.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Self::Created),
            "replaced" => Some(Self::Replaced),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// How event types are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTypes {
    /// `<prefix>.DocumentCreated` / `.DocumentReplaced` / `.DocumentDeleted`.
    PerOperation {
        /// e.g. `CosmosDB` or `Contoso.Orders`.
        prefix: String,
    },
    /// One type for every change, e.g. `CosmosDB.DocumentChanged` (the first release's type).
    Fixed(String),
}

impl EventTypes {
    /// The `eventType` of an event for `op`.
    #[must_use]
    pub fn for_operation(&self, op: Operation) -> String {
        match self {
            Self::PerOperation { prefix } => format!("{prefix}.{}", op.event_suffix()),
            Self::Fixed(t) => t.clone(),
        }
    }
}

/// The version and lineage of a stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// 1 when created, then +1 per change.
    pub version: u64,
    /// Fixed for the life of the document.
    pub lineage: String,
}

impl Revision {
    /// The first revision of a new document, with a fresh lineage.
    #[must_use]
    pub fn first() -> Self {
        Self {
            version: 1,
            lineage: mongodb::bson::oid::ObjectId::new().to_hex(),
        }
    }

    /// The revision after this one.
    #[must_use]
    pub fn next(&self) -> Self {
        Self {
            version: self.version + 1,
            lineage: self.lineage.clone(),
        }
    }

    /// The strong `ETag` of this revision, quoted: `"<lineage>.<version>"`.
    #[must_use]
    pub fn etag(&self) -> String {
        format!("\"{}.{}\"", self.lineage, self.version)
    }

    /// Does an `If-None-Match` list (`"a", "b"`, `W/"c"` or `*`) name this revision? RFC 9110
    /// §13.1.2 compares weakly: `W/"c"` names the revision whose tag is `"c"`.
    #[must_use]
    pub fn matches(&self, header: &str) -> bool {
        let etag = self.etag();
        header
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == etag || t.strip_prefix("W/").is_some_and(|w| w == etag))
    }

    /// Does an `If-Match` list name this revision? RFC 9110 §13.1.1 compares strongly: a weak
    /// tag (`W/"c"`) never matches, since it cannot promise the very bytes a write builds on.
    #[must_use]
    pub fn matches_strongly(&self, header: &str) -> bool {
        let etag = self.etag();
        header
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == etag)
    }
}

/// The first member of an `If-Match` / `If-None-Match` list that is neither `*` nor an entity
/// tag (`"…"` or `W/"…"`), such as the `abc.1` of `If-Match: abc.1`: the quotes belong to the
/// tag, so such a member can never name a revision.
#[must_use]
pub fn unquoted_tag(header: &str) -> Option<&str> {
    let is_quoted = |t: &str| t.len() >= 2 && t.starts_with('"') && t.ends_with('"');
    header
        .split(',')
        .map(str::trim)
        .find(|t| !t.is_empty() && *t != "*" && !is_quoted(t.strip_prefix("W/").unwrap_or(t)))
}

/// The event's `data`: `{"operation", "id", "version", "lineage", "document"}`; a deletion
/// has no `document`. `version` orders the changes of one lifetime of the document, `lineage`
/// names that lifetime (a document deleted and created again starts a new one at version 1).
#[derive(Serialize)]
struct ChangeData<'a> {
    operation: &'static str,
    id: &'a str,
    version: u64,
    lineage: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a RawValue>,
}

/// Renders the event payload for a change.
#[must_use]
pub fn change_data(
    op: Operation,
    id: &DocumentId,
    version: u64,
    lineage: &str,
    document: Option<&RawValue>,
) -> Box<RawValue> {
    let data = ChangeData {
        operation: op.as_str(),
        id: id.as_str(),
        version,
        lineage,
        document,
    };
    // Strings, a number and an already-valid RawValue always serialize.
    serde_json::value::to_raw_value(&data)
        .expect("strings, a number and a valid RawValue always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_follow_the_operation_or_stay_fixed() {
        let per = EventTypes::PerOperation {
            prefix: "Contoso.Orders".into(),
        };
        assert_eq!(
            per.for_operation(Operation::Created),
            "Contoso.Orders.DocumentCreated"
        );
        assert_eq!(
            per.for_operation(Operation::Replaced),
            "Contoso.Orders.DocumentReplaced"
        );
        assert_eq!(
            per.for_operation(Operation::Deleted),
            "Contoso.Orders.DocumentDeleted"
        );
        let fixed = EventTypes::Fixed("CosmosDB.DocumentChanged".into());
        assert_eq!(
            fixed.for_operation(Operation::Deleted),
            "CosmosDB.DocumentChanged"
        );
    }

    #[test]
    fn etags_match_their_revision_only() {
        let r = Revision {
            version: 3,
            lineage: "abc".into(),
        };
        assert_eq!(r.etag(), "\"abc.3\"");
        assert!(r.matches("\"abc.3\""));
        assert!(r.matches("W/\"abc.3\""));
        assert!(
            !r.matches_strongly("W/\"abc.3\""),
            "If-Match compares strongly"
        );
        assert!(r.matches_strongly("W/\"abc.3\", \"abc.3\""));
        assert!(r.matches_strongly("*"));
        assert!(!r.matches_strongly("\"abc.2\""));
        assert!(r.matches("\"x.1\", \"abc.3\""));
        assert!(r.matches("*"));
        assert!(!r.matches("\"abc.2\""));
        assert!(!r.matches("\"other.3\""));
        assert!(!r.matches("abc.3"));
        assert_eq!(r.next().version, 4);
        assert_eq!(r.next().lineage, "abc");
        assert_ne!(Revision::first().lineage, Revision::first().lineage);
    }

    #[test]
    fn members_without_quotes_are_found() {
        assert_eq!(unquoted_tag("abc.3"), Some("abc.3"));
        assert_eq!(unquoted_tag("\"x.1\", abc.3"), Some("abc.3"));
        assert_eq!(unquoted_tag("W/abc.3"), Some("W/abc.3"));
        assert_eq!(unquoted_tag("\"abc.3"), Some("\"abc.3"));
        for fine in ["\"abc.3\"", "W/\"abc.3\"", "*", "\"a.1\", W/\"b.2\"", ""] {
            assert_eq!(unquoted_tag(fine), None, "{fine}");
        }
    }

    #[test]
    fn change_data_carries_operation_id_version_lineage_and_document() {
        let id = DocumentId::parse("o-1").unwrap();
        let doc = RawValue::from_string(r#"{"_id":"o-1","a":1}"#.into()).unwrap();
        assert_eq!(
            change_data(Operation::Replaced, &id, 2, "L1", Some(&doc)).get(),
            r#"{"operation":"replaced","id":"o-1","version":2,"lineage":"L1","document":{"_id":"o-1","a":1}}"#
        );
        assert_eq!(
            change_data(Operation::Deleted, &id, 3, "L1", None).get(),
            r#"{"operation":"deleted","id":"o-1","version":3,"lineage":"L1"}"#
        );
    }
}
