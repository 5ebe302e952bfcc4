//! Use case: change a document — create, replace, delete — and write the outbox entry that
//! announces the change, atomically.
//!
//! validate → plan → apply → result:
//! 1. Plan (`plan.rs`): parse and validate the request and size its event — everything that can fail
//!    without the database.
//! 2. A replay under the same `Idempotency-Key` returns the first answer without writing.
//! 3. The outbox storage applies the change in one transaction (wherever its placement keeps
//!    entries), asking `decide.rs` what to write once it has read the current document: the
//!    document, its outbox entry, and the answer under the `Idempotency-Key` if one was sent.
//!    Attempts follow the policy in `retry.rs`.
//! 4. The answer ([`Written`]) or why not ([`WriteError`]).
//!
//! In every refused case (4xx) nothing is written: the transaction commits all of it or none.
//! When the database fails or times out around the commit, the outcome is unknown (see
//! [`WriteError::Unavailable`]); it is then all or nothing too.
//! Retries are safe: the event id is derived from the revision being written, a client-chosen
//! id cannot be created twice, and a replay under the same `Idempotency-Key` returns the first
//! answer without writing.
//!
//! Reading a document back (`read.rs`: validate the id → read through the storage → the
//! document with its revision, or [`ReadError`]) writes nothing.

mod admission;
mod decide;
mod meta;
mod plan;
mod read;
mod retry;

pub use read::{Read, ReadError, ReadRequest};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{DbError, error_code};
use crate::domain::{DocumentId, EventId, EventTypes, InputError, Operation, Revision};
use crate::outbox::Storage;
use crate::outbox::idempotency::Recorded;
use crate::outbox::write::{Change, Committed, PlacementStore, Refusal, WriteFailure};
use crate::push::Handoff;
use admission::{Admission, Refused};
use decide::Planned;
use plan::Plan;
use retry::GaveUp;

/// Largest request body read, in bytes. Event Grid caps an event at 1 MiB, so a document is
/// necessarily smaller (and so within Cosmos DB's 2 MB document limit); the margin lets
/// whitespace-heavy bodies reach the exact event check.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `Retry-After` of a write refused because its document holds the most pending events it may.
const BACKLOG_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Version written into each event's `dataVersion`.
pub const DATA_VERSION: &str = "1.0";

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Create a document (POST).
    Create,
    /// Replace a document, or create it at that id (PUT).
    Replace,
    /// Delete a document (DELETE).
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "POST",
            Self::Replace => "PUT",
            Self::Delete => "DELETE",
        }
    }
}

/// A write request, independent of how it arrived.
#[derive(Debug, Clone, Copy)]
pub struct WriteRequest<'a> {
    /// What to do.
    pub method: Method,
    /// The id named by the URL (required for replace and delete).
    pub id: Option<&'a str>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The body (ignored for delete).
    pub body: &'a [u8],
    /// `If-Match`: only if the current revision is one of these (or exists, for `*`).
    pub if_match: Option<&'a str>,
    /// `If-None-Match`: `*` means create only.
    pub if_none_match: Option<&'a str>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<&'a str>,
    /// W3C `traceparent` of the request, carried into CloudEvents.
    pub traceparent: Option<&'a str>,
}

/// A write that committed (or the replay of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// What it did.
    pub operation: Operation,
    /// The document's id.
    pub document_id: DocumentId,
    /// The id of its event (and outbox entry).
    pub event_id: EventId,
    /// The document's revision after the write.
    pub revision: Revision,
    /// `true` when this is the recorded answer of an earlier request with the same
    /// `Idempotency-Key`; nothing was written this time.
    pub replayed: bool,
    /// With `OUTBOX_WRITE_WAIT_MS`: whether the event was published before the answer
    /// (`false`: not yet; the push path or the sweeper publishes it). `None`: not waited for.
    pub published: Option<bool>,
}

/// Why a write did not happen. In every case nothing was written, except that for
/// [`WriteError::Unavailable`] the outcome of the last attempt may be unknown (a timeout, or
/// Cosmos DB's error 50): a retry with the same `Idempotency-Key` (or a client-chosen id) is
/// then safe.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request is not acceptable.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A document with this id exists already.
    #[error("a document with _id {0} already exists")]
    Conflict(DocumentId),
    /// There is no document with this id.
    #[error("there is no document with _id {0}")]
    NotFound(DocumentId),
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed: {reason}")]
    PreconditionFailed {
        /// Which precondition, and why, in words for the client.
        reason: String,
        /// The document's current revision, when it exists and has one: a client can retry
        /// with it (a 412 carries it as the `ETag`).
        current: Option<Revision>,
    },
    /// The `Idempotency-Key` was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// As many writes run and wait as `MONGODB_MAX_CONCURRENT_WRITES` allows: this one was
    /// turned away before touching the database; try again after `retry_after`.
    #[error("too many writes at once; try again after the Retry-After delay")]
    Busy {
        /// When to try again.
        retry_after: Duration,
    },
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

/// Writes documents with their events.
#[derive(Debug, Clone)]
pub struct DocumentService {
    storage: Arc<Storage>,
    event_types: EventTypes,
    /// The push path: when set, each write holds its entry for this process and hands the
    /// event to the publisher right after the commit.
    push: Option<Handoff>,
    /// The topic's CloudEvents `source` prefix when it takes CloudEvents, whose envelope is
    /// larger: a write whose event would not fit on the wire is refused before it is written.
    cloudevents_source: Option<String>,
    /// Bounds the writes running against the database at once.
    admission: Arc<Admission>,
}

impl DocumentService {
    /// A service writing through `storage`, typing events with `event_types`; its events wait
    /// for a drain.
    #[must_use]
    pub fn new(storage: Arc<Storage>, event_types: EventTypes) -> Self {
        let admission = Arc::new(Admission::new(
            storage.settings().max_concurrent_writes.get(),
        ));
        Self {
            admission,
            storage,
            event_types,
            push: None,
            cloudevents_source: None,
        }
    }

    /// The same service, for a topic taking CloudEvents with this `source` prefix
    /// (`EVENTGRID_SOURCE`): event sizes are checked against that envelope.
    #[must_use]
    pub fn with_cloudevents_source(self, source: String) -> Self {
        Self {
            cloudevents_source: Some(source),
            ..self
        }
    }

    /// The same service, handing each committed event to `push` (see [`crate::push`]).
    #[must_use]
    pub fn with_push(self, push: Handoff) -> Self {
        Self {
            push: Some(push),
            ..self
        }
    }

    /// Validates a request and applies it with its outbox entry in one transaction.
    ///
    /// # Errors
    /// See [`WriteError`]; nothing is written in any error case.
    #[tracing::instrument(skip_all, fields(method = request.method.as_str(), document.id, event.id))]
    pub async fn write(&self, request: WriteRequest<'_>) -> Result<Written, WriteError> {
        let started = Instant::now();
        let settings = self.storage.settings();
        let plan = Plan::new(
            &request,
            settings,
            &self.event_types,
            self.cloudevents_source.as_deref(),
        )?;
        tracing::Span::current().record("document.id", plan.id.as_str());
        let deadline = started + settings.write_timeout;
        let turn = self.admission.admit(deadline).await.map_err(|refused| {
            crate::metrics::global().write_refused_busy();
            match refused {
                Refused::Busy => WriteError::Busy {
                    retry_after: Duration::from_secs(1),
                },
                Refused::TimedOut => unavailable(None),
            }
        })?;
        let ready = tokio::time::timeout(settings.write_timeout, self.storage.ready())
            .await
            .map_err(|_| unavailable(None))?
            .map_err(|e| db_error(e, &plan.id))?;
        let writer = ready.writer.as_ref();
        if let Some(replayed) = recorded_answer(writer, &plan).await? {
            return Ok(replayed);
        }
        let planned = Planned {
            plan: &plan,
            settings,
            event_types: &self.event_types,
            hold: self.push.as_ref().map(Handoff::hold),
        };
        let change: &dyn Change = &planned;
        let attempted = retry::until_deadline(deadline, || writer.write(change)).await;
        // The database's part is done: waiting for the publish takes no turn.
        drop(turn);
        let written = match attempted {
            Ok(committed) => {
                let kicked = (self.push.as_ref())
                    .zip(planned.hold)
                    .map(|(push, hold)| (push, push.kick(committed.decision.event.clone(), hold)));
                let mut written = written(&plan, committed);
                if let Some((push, receipt)) = kicked {
                    written.published = push.wait(receipt).await;
                }
                Ok(written)
            }
            Err(GaveUp::TimedOut) => Err(unavailable(None)),
            Err(GaveUp::Failed(failure)) => refused(writer, &plan, failure).await,
        }?;
        tracing::Span::current().record("event.id", tracing::field::display(written.event_id));
        tracing::debug!(
            operation = written.operation.as_str(),
            version = written.revision.version,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Document written with its outbox entry"
        );
        Ok(written)
    }
}

/// The answer of a committed write.
fn written(plan: &Plan, committed: Committed) -> Written {
    let decision = committed.decision;
    Written {
        operation: decision.operation,
        document_id: plan.id.clone(),
        event_id: decision.event.id,
        revision: decision.revision,
        replayed: false,
        published: None,
    }
}

/// What a failed write answers. A duplicate key means another request with the same
/// `Idempotency-Key` won (its answer is returned), or the document exists.
async fn refused(
    writer: &dyn PlacementStore,
    plan: &Plan,
    failure: WriteFailure,
) -> Result<Written, WriteError> {
    match failure {
        WriteFailure::Refused(refusal) => Err(refusal_error(refusal, &plan.id)),
        WriteFailure::Db(DbError::Conflict(_)) => recorded_answer(writer, plan)
            .await?
            .ok_or_else(|| WriteError::Conflict(plan.id.clone())),
        WriteFailure::Db(e) => Err(db_error(e, &plan.id)),
    }
}

/// The answer recorded under the request's `Idempotency-Key`, if it has one and it is
/// recorded.
async fn recorded_answer(
    writer: &dyn PlacementStore,
    plan: &Plan,
) -> Result<Option<Written>, WriteError> {
    let Some(idempotency) = &plan.idempotency else {
        return Ok(None);
    };
    match writer.recorded(&idempotency.key).await {
        Ok(Some(found)) => replay(&found, &idempotency.fingerprint).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(db_error(e, &plan.id)),
    }
}

fn db_error(e: DbError, id: &DocumentId) -> WriteError {
    match e {
        DbError::Conflict(_) => WriteError::Conflict(id.clone()),
        DbError::Throttled { retry_after, .. } => WriteError::Unavailable {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            source: Some(e),
        },
        DbError::Transient(_) | DbError::Unavailable(_) | DbError::Resolve(_) => {
            if matches!(&e, DbError::Unavailable(inner) if error_code(inner) == Some(50)) {
                tracing::warn!(
                    document.id = %id,
                    "The database gave up on a write (error 50, ExceededTimeLimit); it may have been applied — a retry with the same Idempotency-Key or id is safe"
                );
            }
            unavailable(Some(e))
        }
        DbError::Other(_) | DbError::Misconfigured(_) => WriteError::Internal(e),
    }
}

fn unavailable(source: Option<DbError>) -> WriteError {
    WriteError::Unavailable {
        retry_after: Duration::from_secs(1),
        source,
    }
}

fn refusal_error(r: Refusal, id: &DocumentId) -> WriteError {
    match r {
        Refusal::NotFound => WriteError::NotFound(id.clone()),
        Refusal::PreconditionFailed { reason, current } => {
            WriteError::PreconditionFailed { reason, current }
        }
        Refusal::Conflict => WriteError::Conflict(id.clone()),
        // The topic is behind on this document: nothing was written; by the time the client
        // tries again the relay has likely caught up.
        Refusal::Backlogged { pending } => {
            tracing::warn!(document.id = %id, pending, "A write was refused: its document holds the most unpublished events it may");
            WriteError::Unavailable {
                retry_after: BACKLOG_RETRY_AFTER,
                source: None,
            }
        }
        Refusal::TooLarge { size, limit } => WriteError::Input(InputError::TooLarge {
            what: "document with its pending events",
            size,
            limit,
        }),
    }
}

fn replay(found: &Recorded, fingerprint: &str) -> Result<Written, WriteError> {
    if found.fingerprint != fingerprint {
        return Err(WriteError::IdempotencyKeyReused);
    }
    let w = &found.write;
    let corrupt = || {
        WriteError::Internal(DbError::Other(mongodb::error::Error::custom(
            "unreadable idempotency record",
        )))
    };
    Ok(Written {
        operation: w.operation,
        document_id: DocumentId::parse(&w.document_id).map_err(|_| corrupt())?,
        event_id: EventId::from_uuid(uuid::Uuid::parse_str(&w.event_id).map_err(|_| corrupt())?),
        revision: Revision {
            version: w.version,
            lineage: w.lineage.clone(),
        },
        replayed: true,
        published: None,
    })
}

/// An event's subject: `<collection>/<document id>`.
fn subject(collection: &str, id: &DocumentId) -> String {
    format!("{collection}/{id}")
}
