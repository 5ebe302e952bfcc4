//! Reading a document back: validate the id → read it through the storage (whose placement
//! leaves out whatever it keeps beside documents) → the document as the client wrote it, with
//! its revision. Writes nothing.
//!
//! The body answered is the client's fields and `_id`, without the reserved top-level fields:
//! `_meta`'s revision travels as the `ETag` instead, so a document read back can be sent again
//! as it is (a write refuses `_meta`).

use std::time::{Duration, Instant};

use mongodb::bson::Bson;

use super::DocumentService;
use super::meta::recorded_revision;
use crate::db::DbError;
use crate::domain::document::RESERVED_FIELDS;
use crate::domain::{DocumentId, InputError, Revision};

/// A read request, independent of how it arrived.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// The id named by the URL.
    pub id: &'a str,
    /// `If-None-Match`: when it names the current revision (or is `*`), the answer is
    /// [`Read::NotModified`].
    pub if_none_match: Option<&'a str>,
}

/// A document that exists.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// The document.
    Found {
        /// Its fields as the client wrote them, `_id` first, without the reserved fields.
        document: serde_json::Value,
        /// Its revision (the `ETag`); `None` for a document written by something else, which
        /// has no `_meta`.
        revision: Option<Revision>,
    },
    /// `If-None-Match` names the current revision: the client's copy is current.
    NotModified {
        /// The current revision, as for [`Read::Found`].
        revision: Option<Revision>,
    },
}

/// Why a document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The id is not a valid document id.
    #[error(transparent)]
    Input(#[from] InputError),
    /// There is no document with this id.
    #[error("there is no document with _id {0}")]
    NotFound(DocumentId),
    /// The database is unreachable, throttling, or too slow; try again after `retry_after`.
    #[error("the database is unavailable")]
    Unavailable {
        /// When to try again.
        retry_after: Duration,
        /// What happened.
        #[source]
        source: Option<DbError>,
    },
    /// A bug or a setup problem; details are logged, never returned to the client.
    #[error("internal error")]
    Internal(#[source] DbError),
}

impl DocumentService {
    /// Reads the document named by `request`.
    ///
    /// # Errors
    /// See [`ReadError`].
    #[tracing::instrument(skip_all, fields(document.id))]
    pub async fn read(&self, request: ReadRequest<'_>) -> Result<Read, ReadError> {
        let started = Instant::now();
        let id = DocumentId::parse(request.id)?;
        tracing::Span::current().record("document.id", id.as_str());
        // A read gets the budget of a write (`MONGODB_WRITE_TIMEOUT_MS`): the one bound on a
        // request's time with the database.
        let budget = self.storage.settings().write_timeout;
        let stored = tokio::time::timeout(budget, async {
            let ready = self.storage.ready().await?;
            ready.writer.read(id.as_str()).await
        })
        .await
        .map_err(|_| unavailable(None))?
        .map_err(db_error)?;
        let Some(mut stored) = stored else {
            return Err(ReadError::NotFound(id));
        };
        let revision = recorded_revision(&stored);
        let is_current = request
            .if_none_match
            .is_some_and(|header| names(revision.as_ref(), header));
        tracing::debug!(
            not_modified = is_current,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Document read"
        );
        if is_current {
            return Ok(Read::NotModified { revision });
        }
        for field in RESERVED_FIELDS {
            stored.remove(field);
        }
        Ok(Read::Found {
            document: Bson::Document(stored).into_relaxed_extjson(),
            revision,
        })
    }
}

/// Does an `If-None-Match` list name `revision`? `*` names any document, even one without a
/// revision (RFC 9110 §13.1.2: weak comparison, which [`Revision::matches`] does).
fn names(revision: Option<&Revision>, header: &str) -> bool {
    match revision {
        Some(r) => r.matches(header),
        None => header.split(',').any(|t| t.trim() == "*"),
    }
}

fn db_error(e: DbError) -> ReadError {
    match e {
        DbError::Throttled { retry_after, .. } => ReadError::Unavailable {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            source: Some(e),
        },
        DbError::Transient(_) | DbError::Unavailable(_) | DbError::Resolve(_) => {
            unavailable(Some(e))
        }
        // A read cannot hit a unique index: a duplicate key here is a bug.
        DbError::Conflict(_) | DbError::Other(_) | DbError::Misconfigured(_) => {
            ReadError::Internal(e)
        }
    }
}

fn unavailable(source: Option<DbError>) -> ReadError {
    ReadError::Unavailable {
        retry_after: Duration::from_secs(1),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_the_revision_or_any_document_with_a_star() {
        let r = Revision {
            version: 2,
            lineage: "L".into(),
        };
        assert!(names(Some(&r), "\"L.2\""));
        assert!(names(Some(&r), "W/\"L.2\""));
        assert!(names(Some(&r), "*"));
        assert!(!names(Some(&r), "\"L.1\""));
        assert!(!names(Some(&r), "L.2"), "unquoted: never a match");
        assert!(names(None, "*"));
        assert!(!names(None, "\"L.2\""));
    }
}
