//! The `_meta` every write stores on its document (see [`crate::domain::change`]), read back:
//! by a write, to decide the next revision; by a read, for the document's `ETag`.

use mongodb::bson::Document;

use crate::domain::Revision;
use crate::domain::change::META_FIELD;

/// The revision recorded in a stored document's `_meta`, when it names a lineage: what an
/// `ETag` says and what `If-Match` is compared with. A document written by something else has
/// none, and no `ETag` could name it the same way twice.
pub(super) fn recorded_revision(stored: &Document) -> Option<Revision> {
    let lineage = stored
        .get_document(META_FIELD)
        .ok()?
        .get_str("lineage")
        .ok()?;
    Some(Revision {
        version: recorded_version(stored),
        lineage: lineage.to_owned(),
    })
}

/// The revision a write starts from: the recorded one or, for a document written by something
/// else (no `_meta`), version 0 of a lineage of its own, so the change gets version 1 and fresh
/// event ids.
pub(super) fn read_revision(stored: &Document, fallback_lineage: &str) -> Revision {
    recorded_revision(stored).unwrap_or_else(|| Revision {
        version: recorded_version(stored),
        lineage: fallback_lineage.to_owned(),
    })
}

fn recorded_version(stored: &Document) -> u64 {
    stored
        .get_document(META_FIELD)
        .ok()
        .and_then(|m| m.get_i64("version").ok())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn a_revision_is_recorded_only_with_a_lineage() {
        let stored = doc! { "_id": "a", "_meta": { "version": 3_i64, "lineage": "L" } };
        let r = recorded_revision(&stored).unwrap();
        assert_eq!((r.version, r.lineage.as_str()), (3, "L"));
        assert_eq!(read_revision(&stored, "F"), r);
        let foreign = doc! { "_id": "a", "v": 1 };
        assert_eq!(recorded_revision(&foreign), None);
        let fallback = read_revision(&foreign, "F");
        assert_eq!((fallback.version, fallback.lineage.as_str()), (0, "F"));
        let no_lineage = doc! { "_id": "a", "_meta": { "version": 2_i64 } };
        assert_eq!(recorded_revision(&no_lineage), None);
        assert_eq!(read_revision(&no_lineage, "F").version, 2);
    }
}
