//! Use case: write a document and its outbox entry, atomically.
//!
//! The document and the entry that carries its event are inserted in one MongoDB transaction,
//! through the driver's convenient transaction API (which reruns the transaction on transient
//! errors and retries an unknown commit result). Everything that can fail without the database
//! — parsing, validation, building and sizing the event — happens before the transaction, and
//! nothing but MongoDB is called inside it (Cosmos DB caps a transaction at 5 seconds).
//!
//! In every error case nothing is written: the transaction commits both inserts or neither.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt as _;
use mongodb::bson::Document;
use mongodb::options::{Acknowledgment, TransactionOptions, WriteConcern};

use crate::db::{Db, DbError};
use crate::domain::{DocumentId, EventId, InputError, MAX_EVENT_BYTES, NewDocument, OutboxEvent};
use crate::outbox::store::{self, OutboxStore};

/// Largest request body read, in bytes. Event Grid caps an event at 1 MiB, so a document is
/// necessarily smaller; the margin lets whitespace-heavy bodies reach the exact event check.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Version written into each event's `dataVersion`.
pub const DATA_VERSION: &str = "1.0";

/// A write that committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The document's id.
    pub document_id: DocumentId,
    /// The id of its event (and outbox entry).
    pub event_id: EventId,
}

/// Why a write did not happen. In every case nothing was written, except that for
/// [`WriteError::Unavailable`] after a timeout the outcome may be unknown to us (the commit may
/// have reached the server); a retry then gets [`WriteError::Conflict`] for a client-chosen id.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request is not an acceptable document.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A document with this id exists already.
    #[error("a document with _id {0} already exists")]
    Conflict(DocumentId),
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
    db: Arc<Db>,
    event_type: Arc<str>,
}

impl DocumentService {
    /// A service writing to `db`, announcing changes as `event_type`.
    #[must_use]
    pub fn new(db: Arc<Db>, event_type: &str) -> Self {
        Self {
            db,
            event_type: event_type.into(),
        }
    }

    /// Validates a request body and writes the document and its outbox entry in one
    /// transaction.
    ///
    /// # Errors
    /// See [`WriteError`]; nothing is written in any error case.
    #[tracing::instrument(skip_all, fields(document.id, event.id))]
    pub async fn create(
        &self,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Written, WriteError> {
        let started = Instant::now();
        let settings = self.db.settings();
        let document = NewDocument::parse(content_type, body, MAX_BODY_BYTES)?;
        let event = OutboxEvent::new(
            EventId::for_change(
                &settings.database,
                &settings.collection,
                document.id().as_str(),
                1,
            ),
            format!("{}/{}", settings.collection, document.id()),
            self.event_type.to_string(),
            DATA_VERSION.to_owned(),
            document.json().to_owned(),
            Utc::now(),
        );
        let size = event.to_event_grid_json().len();
        if size > MAX_EVENT_BYTES {
            return Err(InputError::TooLarge {
                what: "event",
                size,
                limit: MAX_EVENT_BYTES,
            }
            .into());
        }
        let span = tracing::Span::current();
        span.record("document.id", document.id().as_str());
        span.record("event.id", tracing::field::display(event.id));
        let entry = store::new_entry(&event, &settings.collection, document.id().as_str());

        let deadline = started + settings.write_timeout;
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(remaining, self.insert_both(document.bson(), &entry)).await;
            match attempt {
                Err(_elapsed) => {
                    break Err(WriteError::Unavailable {
                        retry_after: Duration::from_secs(1),
                        source: None,
                    });
                }
                Ok(Ok(())) => break Ok(()),
                // Cosmos DB throttling: wait as told while the budget lasts, then rerun.
                Ok(Err(DbError::Throttled {
                    retry_after,
                    source,
                })) if retry_after.is_some_and(|d| Instant::now() + d < deadline) => {
                    let wait = retry_after.unwrap_or_default();
                    tracing::warn!(
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        error = %crate::telemetry::chain(&source),
                        "The database throttled a document write; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Ok(Err(e)) => break Err(self.write_error(e, document.id())),
            }
        };
        outcome?;
        tracing::debug!(
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Document written with its outbox entry"
        );
        Ok(Written {
            document_id: document.id().clone(),
            event_id: event.id,
        })
    }

    async fn insert_both(&self, document: &Document, entry: &Document) -> Result<(), DbError> {
        let db = self.db.ready().await?;
        let settings = self.db.settings();
        let documents = db.collection::<Document>(&settings.collection);
        let outbox = OutboxStore::new(&db, &settings.outbox_collection);
        let mut session = db.client().start_session().await?;
        let options = TransactionOptions::builder()
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .build();
        // `and_run` with an explicit context rather than `and_run2`: the async-closure form
        // trips rust-lang/rust#96865 ("Send is not general enough") inside axum handlers, as
        // the driver's documentation warns. The behaviour is the same: the driver reruns the
        // callback on TransientTransactionError and retries an unknown commit result.
        let context = (documents, outbox, document, entry);
        session
            .start_transaction()
            .with_options(options)
            .and_run(context, |s, (documents, outbox, document, entry)| {
                async move {
                    documents.insert_one(*document).session(&mut *s).await?;
                    outbox.insert(entry, s).await
                }
                .boxed()
            })
            .await?;
        Ok(())
    }

    fn write_error(&self, e: DbError, id: &DocumentId) -> WriteError {
        match e {
            DbError::Conflict(_) => WriteError::Conflict(id.clone()),
            DbError::Throttled { retry_after, .. } => WriteError::Unavailable {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
                source: Some(e),
            },
            DbError::Transient(_) | DbError::Unavailable(_) | DbError::Resolve(_) => {
                WriteError::Unavailable {
                    retry_after: Duration::from_secs(1),
                    source: Some(e),
                }
            }
            DbError::Other(_) => WriteError::Internal(e),
        }
    }
}
