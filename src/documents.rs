//! Use case: change a document — create, replace, delete — and write the outbox entry that
//! announces the change, atomically.
//!
//! Each change runs in one MongoDB transaction through the driver's convenient transaction API
//! (which reruns it on transient errors and retries an unknown commit result): read the
//! current revision when needed, write the document, insert its outbox entry, and record the
//! answer under the `Idempotency-Key` if one was sent. Everything that can fail without the
//! database — parsing, validation, sizing the event — happens before; nothing but MongoDB is
//! called inside (Cosmos DB caps a transaction at 5 seconds).
//!
//! In every refused case (4xx) nothing is written: the transaction commits all of it or none.
//! When the database fails or times out around the commit, the outcome is unknown (see
//! [`WriteError::Unavailable`]); it is then all or nothing too.
//! Retries are safe: the event id is derived from the revision being written, a client-chosen
//! id cannot be created twice, and a replay under the same `Idempotency-Key` returns the first
//! answer without writing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt as _;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{Acknowledgment, TransactionOptions, WriteConcern};
use mongodb::{ClientSession, Collection};

use crate::db::{Db, DbError, Placement, error_code};
use crate::domain::change::{META_FIELD, change_data};
use crate::domain::{
    DocumentId, EventId, EventTypes, InputError, MAX_EVENT_BYTES, NewDocument, Operation,
    OutboxEvent, Revision,
};
use crate::outbox::idempotency::{self, IdempotencyKey, RecordedWrite};
use crate::outbox::store::{self, OutboxStore};

/// Largest request body read, in bytes. Event Grid caps an event at 1 MiB, so a document is
/// necessarily smaller (and so within Cosmos DB's 2 MB document limit); the margin lets
/// whitespace-heavy bodies reach the exact event check.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A transaction refused as "not active" sooner than this cannot have hit Cosmos DB's
/// 5-second limit.
const CROSS_COLLECTION_HINT_BEFORE: Duration = Duration::from_secs(4);

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
    #[error("precondition failed: {0}")]
    PreconditionFailed(&'static str),
    /// The `Idempotency-Key` was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
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

/// A reason to refuse, decided inside the transaction; travels as the driver's custom error.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NotFound,
    Precondition(&'static str),
    Conflict,
}

/// Writes documents with their events.
#[derive(Debug, Clone)]
pub struct DocumentService {
    db: Arc<Db>,
    event_types: EventTypes,
}

/// Everything decided before the transaction; the callback may run several times with it.
struct Plan {
    method: Method,
    id: DocumentId,
    document: Option<NewDocument>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    idempotency: Option<(IdempotencyKey, String)>,
    /// Lineage used if the write creates the document (fixed here so reruns agree).
    new_lineage: String,
    shard_key: Option<(String, Bson)>,
    traceparent: Option<String>,
}

/// What the transaction works on.
struct Txn {
    documents: Collection<Document>,
    entries: OutboxStore,
    records: Collection<Document>,
    database: String,
    collection: String,
    event_types: EventTypes,
    idempotency_ttl: Duration,
    shard_key: Option<String>,
    /// Entries live in the documents' collection.
    colocated: bool,
}

impl DocumentService {
    /// A service writing to `db`, typing events with `event_types`.
    #[must_use]
    pub fn new(db: Arc<Db>, event_types: EventTypes) -> Self {
        Self { db, event_types }
    }

    /// Validates a request and applies it with its outbox entry in one transaction.
    ///
    /// # Errors
    /// See [`WriteError`]; nothing is written in any error case.
    #[tracing::instrument(skip_all, fields(method = request.method.as_str(), document.id, event.id))]
    pub async fn write(&self, request: WriteRequest<'_>) -> Result<Written, WriteError> {
        let started = Instant::now();
        let settings = self.db.settings();
        let plan = self.plan(&request)?;
        tracing::Span::current().record("document.id", plan.id.as_str());
        let deadline = started + settings.write_timeout;
        let ready = tokio::time::timeout(settings.write_timeout, self.db.ready())
            .await
            .map_err(|_| unavailable(None))?
            .map_err(|e| self.write_error(e, &plan))?;
        let records = ready
            .database
            .collection::<Document>(&ready.entries_collection);
        if let Some((key, fp)) = &plan.idempotency
            && let Some(found) =
                idempotency::find(&records, &settings.collection, key, Utc::now(), None)
                    .await
                    .map_err(|e| self.write_error(e, &plan))?
        {
            return replay(&found, fp);
        }
        let txn = Txn {
            documents: ready.database.collection(&settings.collection),
            entries: OutboxStore::new(&ready.database, &ready.entries_collection),
            records: records.clone(),
            database: settings.database.clone(),
            collection: settings.collection.clone(),
            event_types: self.event_types.clone(),
            idempotency_ttl: settings.idempotency_ttl,
            shard_key: settings.shard_key.clone(),
            colocated: ready.placement == Placement::Colocated,
        };
        let client = ready.database.client().clone();
        let mut context = (txn, plan);
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_started = Instant::now();
            let attempt = tokio::time::timeout(remaining, run(&client, &mut context)).await;
            match attempt {
                Err(_elapsed) => break Err(unavailable(None)),
                Ok(Ok(written)) => break Ok(written),
                Ok(Err(e)) => {
                    if let Some(refusal) = e.get_custom::<Refusal>() {
                        break Err(refusal_error(*refusal, &context.1.id));
                    }
                    // "Transaction isn't active" long before Cosmos DB's 5-second limit, with
                    // the entry in another collection: this is a Cosmos DB RU account refusing
                    // a transaction across collections. A setup problem, not a transient one.
                    if ready.placement == Placement::Separate
                        && crate::db::is_transaction_not_active(&e)
                        && attempt_started.elapsed() < CROSS_COLLECTION_HINT_BEFORE
                    {
                        tracing::error!(
                            error = %crate::telemetry::chain(&e),
                            "The database refused a transaction across the documents' and the outbox collections: this looks like Azure Cosmos DB for MongoDB (RU), which allows transactions inside one collection only. Set OUTBOX_PLACEMENT=colocated (or auto)"
                        );
                        break Err(WriteError::Internal(DbError::Other(e)));
                    }
                    let e = crate::db::classify(e);
                    match e {
                        // Cosmos DB throttling: wait as told while the budget lasts, then rerun.
                        DbError::Throttled {
                            retry_after: Some(wait),
                            ref source,
                        } if Instant::now() + wait < deadline => {
                            tracing::warn!(
                                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                                error = %crate::telemetry::chain(source),
                                "The database throttled a write; retrying"
                            );
                            tokio::time::sleep(wait).await;
                        }
                        DbError::Conflict(_) => {
                            break self.resolve_conflict(&records, &context.1).await;
                        }
                        other => {
                            break Err(self.write_error_with(other, &context.1, ready.placement));
                        }
                    }
                }
            }
        };
        let written = outcome?;
        tracing::Span::current().record("event.id", tracing::field::display(written.event_id));
        tracing::debug!(
            operation = written.operation.as_str(),
            version = written.revision.version,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Document written with its outbox entry"
        );
        Ok(written)
    }

    fn plan(&self, request: &WriteRequest<'_>) -> Result<Plan, WriteError> {
        let settings = self.db.settings();
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
                }
                .into());
            }
        };
        if let Some(d) = &document {
            // The largest event this write can produce: the longest version number, and a
            // lineage as long as the ones this code mints (an ObjectId's hex digits).
            let lineage = "0".repeat(24);
            let data = change_data(Operation::Replaced, &id, u64::MAX, &lineage, Some(d.json()));
            let event = OutboxEvent::new(
                EventId::for_change("", "", "", "", 0),
                subject(&settings.collection, &id),
                self.event_types.for_operation(Operation::Replaced),
                DATA_VERSION.to_owned(),
                data,
                Utc::now(),
            );
            let size = event.to_event_grid_json().len() + 24;
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
        let idempotency = request
            .idempotency_key
            .map(|raw| {
                IdempotencyKey::parse(raw).map(|key| {
                    let fp = idempotency::fingerprint(
                        request.method.as_str(),
                        request.id,
                        request.content_type,
                        if request.method == Method::Delete {
                            &[]
                        } else {
                            request.body
                        },
                    );
                    (key, fp)
                })
            })
            .transpose()?;
        Ok(Plan {
            method: request.method,
            id,
            document,
            if_match: request.if_match.map(str::to_owned),
            if_none_match: request.if_none_match.map(str::to_owned),
            idempotency,
            new_lineage: Revision::first().lineage,
            shard_key,
            traceparent: request.traceparent.map(str::to_owned),
        })
    }

    /// A duplicate key: another request with the same `Idempotency-Key` won (its answer is
    /// returned), or the document exists.
    async fn resolve_conflict(
        &self,
        records: &Collection<Document>,
        plan: &Plan,
    ) -> Result<Written, WriteError> {
        if let Some((key, fp)) = &plan.idempotency {
            match idempotency::find(
                records,
                &self.db.settings().collection,
                key,
                Utc::now(),
                None,
            )
            .await
            {
                Ok(Some(found)) => return replay(&found, fp),
                Ok(None) => {}
                Err(db) => return Err(self.write_error(db, plan)),
            }
        }
        Err(WriteError::Conflict(plan.id.clone()))
    }

    fn write_error(&self, e: DbError, plan: &Plan) -> WriteError {
        self.write_error_with(e, plan, Placement::Separate)
    }

    fn write_error_with(&self, e: DbError, plan: &Plan, placement: Placement) -> WriteError {
        match e {
            DbError::Conflict(_) => WriteError::Conflict(plan.id.clone()),
            DbError::Throttled { retry_after, .. } => WriteError::Unavailable {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
                source: Some(e),
            },
            DbError::Transient(_) | DbError::Unavailable(_) | DbError::Resolve(_) => {
                if matches!(&e, DbError::Unavailable(inner) if error_code(inner) == Some(50)) {
                    tracing::warn!(
                        document.id = %plan.id,
                        "The database gave up on a write (error 50, ExceededTimeLimit); it may have been applied — a retry with the same Idempotency-Key or id is safe"
                    );
                }
                unavailable(Some(e))
            }
            DbError::Other(_) => {
                if placement == Placement::Separate {
                    tracing::error!(
                        error = %crate::telemetry::chain(&e),
                        "A document write failed. If the server is Azure Cosmos DB for MongoDB (RU), which allows transactions inside one collection only, set OUTBOX_PLACEMENT=colocated"
                    );
                }
                WriteError::Internal(e)
            }
        }
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
        Refusal::Precondition(why) => WriteError::PreconditionFailed(why),
        Refusal::Conflict => WriteError::Conflict(id.clone()),
    }
}

fn replay(found: &idempotency::Recorded, fingerprint: &str) -> Result<Written, WriteError> {
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
    })
}

fn subject(collection: &str, id: &DocumentId) -> String {
    format!("{collection}/{id}")
}

/// One transaction attempt (the driver reruns the callback inside on transient errors).
async fn run(
    client: &mongodb::Client,
    context: &mut (Txn, Plan),
) -> mongodb::error::Result<Written> {
    let mut session = client.start_session().await?;
    let options = TransactionOptions::builder()
        .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
        .build();
    // `and_run` with an explicit context rather than `and_run2`: the async-closure form trips
    // rust-lang/rust#96865 ("Send is not general enough") inside axum handlers, as the
    // driver's documentation warns. The behaviour is the same.
    session
        .start_transaction()
        .with_options(options)
        .and_run(context, |s, (txn, plan)| {
            async move { apply(s, txn, plan).await }.boxed()
        })
        .await
}

fn read_revision(current: &Document, fallback_lineage: &str) -> Revision {
    let meta = current.get_document(META_FIELD).ok();
    // A document written by something else has no `_meta`: treat it as version 0 of a
    // lineage of its own, so the change gets version 1 and fresh event ids.
    Revision {
        version: meta
            .and_then(|m| m.get_i64("version").ok())
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        lineage: meta
            .and_then(|m| m.get_str("lineage").ok())
            .map_or_else(|| fallback_lineage.to_owned(), str::to_owned),
    }
}

fn stored_document(plan: &Plan, rev: &Revision) -> Document {
    let mut d = plan
        .document
        .as_ref()
        .map(|d| d.bson().clone())
        .unwrap_or_default();
    d.insert(
        META_FIELD,
        doc! {
            "version": i64::try_from(rev.version).unwrap_or(i64::MAX),
            "lineage": &rev.lineage,
            "updated_at": mongodb::bson::DateTime::now(),
        },
    );
    d
}

fn refuse(r: Refusal) -> mongodb::error::Error {
    mongodb::error::Error::custom(r)
}

/// The transaction body: only MongoDB calls, and every error returned as is.
async fn apply(s: &mut ClientSession, txn: &Txn, plan: &Plan) -> mongodb::error::Result<Written> {
    let id = plan.id.as_str();
    let current = match plan.method {
        Method::Create => None,
        Method::Replace | Method::Delete => {
            txn.documents
                .find_one(doc! { "_id": id })
                .session(&mut *s)
                .await?
        }
    };
    // A created document beside its entry (colocated placement) goes in with the entry, in
    // one insert command: one round trip less inside the transaction.
    let mut with_entry = None;
    let (operation, revision, shard_key) = match (plan.method, current) {
        (Method::Create, _) => {
            let rev = Revision {
                version: 1,
                lineage: plan.new_lineage.clone(),
            };
            if txn.colocated {
                with_entry = Some(stored_document(plan, &rev));
            } else {
                txn.documents
                    .insert_one(stored_document(plan, &rev))
                    .session(&mut *s)
                    .await?;
            }
            (Operation::Created, rev, plan.shard_key.clone())
        }
        (Method::Replace, None) => {
            if plan.if_match.is_some() {
                return Err(refuse(Refusal::Precondition(
                    "If-Match was sent but the document does not exist",
                )));
            }
            let rev = Revision {
                version: 1,
                lineage: plan.new_lineage.clone(),
            };
            txn.documents
                .insert_one(stored_document(plan, &rev))
                .session(&mut *s)
                .await?;
            (Operation::Created, rev, plan.shard_key.clone())
        }
        (Method::Replace, Some(cur)) => {
            let rev = read_revision(&cur, &plan.new_lineage);
            if plan
                .if_none_match
                .as_deref()
                .is_some_and(|h| rev.matches(h))
            {
                return Err(refuse(Refusal::Precondition(
                    "If-None-Match: the document exists",
                )));
            }
            if plan.if_match.as_deref().is_some_and(|h| !rev.matches(h)) {
                return Err(refuse(Refusal::Precondition(
                    "If-Match does not name the current revision",
                )));
            }
            let next = rev.next();
            let replaced = txn
                .documents
                .replace_one(doc! { "_id": id }, stored_document(plan, &next))
                .session(&mut *s)
                .await?;
            if replaced.matched_count == 0 {
                return Err(refuse(Refusal::Conflict));
            }
            (Operation::Replaced, next, plan.shard_key.clone())
        }
        (Method::Delete, None) => return Err(refuse(Refusal::NotFound)),
        (Method::Delete, Some(cur)) => {
            let rev = read_revision(&cur, &plan.new_lineage);
            if plan.if_match.as_deref().is_some_and(|h| !rev.matches(h)) {
                return Err(refuse(Refusal::Precondition(
                    "If-Match does not name the current revision",
                )));
            }
            let key = txn
                .shard_key
                .as_deref()
                .and_then(|n| cur.get(n).map(|v| (n.to_owned(), v.clone())));
            txn.documents
                .delete_one(doc! { "_id": id })
                .session(&mut *s)
                .await?;
            (Operation::Deleted, rev.next(), key)
        }
    };
    let event = OutboxEvent::new(
        EventId::for_change(
            &txn.database,
            &txn.collection,
            id,
            &revision.lineage,
            revision.version,
        ),
        subject(&txn.collection, &plan.id),
        txn.event_types.for_operation(operation),
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
    let shard = shard_key.as_ref().map(|(n, v)| (n.as_str(), v));
    let entry = store::new_entry(&event, &txn.collection, id, shard);
    match with_entry {
        Some(document) => {
            txn.documents
                .insert_many([document, entry])
                .session(&mut *s)
                .await?;
        }
        None => txn.entries.insert(&entry, s).await?,
    }
    if let Some((key, fp)) = &plan.idempotency {
        let now = Utc::now();
        let record = idempotency::new_record(
            &txn.collection,
            key,
            fp,
            &RecordedWrite {
                operation,
                document_id: id.to_owned(),
                event_id: event.id.to_string(),
                version: revision.version,
                lineage: revision.lineage.clone(),
            },
            now,
            txn.idempotency_ttl,
            shard,
        );
        idempotency::insert(&txn.records, &txn.collection, key, &record, now, s).await?;
    }
    Ok(Written {
        operation,
        document_id: plan.id.clone(),
        event_id: event.id,
        revision,
        replayed: false,
    })
}
