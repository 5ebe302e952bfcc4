//! MongoDB: the lazily connected client, and the one place where driver errors are classified
//! into what callers branch on.
//!
//! A leaf: nothing here knows outbox entries, placements or indexes (those are
//! [`crate::outbox`]'s); the outbox calls in, never the other way round.

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

use crate::config::MongoSettings;

/// Server selection timeout used when the connection string does not set one. The driver's
/// default (30 s) would hold an HTTP request far longer than a client waits.
const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout used when the connection string does not set one.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Cosmos DB closes idle connections after about 4 minutes; closing ours first avoids errors on
/// reuse.
const DEFAULT_MAX_IDLE_TIME: Duration = Duration::from_secs(120);

/// What a database failure means for the caller.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique index refused the write (duplicate key, 11000).
    #[error("duplicate key")]
    Conflict(#[source] mongodb::error::Error),
    /// Cosmos DB throttled the request (16500); retry after the hint.
    #[error("throttled by the database (retry after {retry_after:?})")]
    Throttled {
        /// The server's `RetryAfterMs` hint.
        retry_after: Option<Duration>,
        /// The driver error.
        #[source]
        source: mongodb::error::Error,
    },
    /// A transient failure (write conflict, aborted transaction): the operation can be rerun.
    #[error("transient database error")]
    Transient(#[source] mongodb::error::Error),
    /// The database cannot be reached, or did not answer in time. A write may or may not have
    /// been applied.
    #[error("database unavailable")]
    Unavailable(#[source] mongodb::error::Error),
    /// The connection string could not be resolved (e.g. an SRV lookup failed).
    #[error("cannot resolve the MongoDB connection string")]
    Resolve(#[source] mongodb::error::Error),
    /// Anything else: a bug or a setup problem.
    #[error("database error")]
    Other(#[source] mongodb::error::Error),
    /// The database cannot serve the configuration as it is (a placement the collection does
    /// not allow, a wrong shard key); the message names what to change. Never retryable: it
    /// stops start-up.
    #[error("{0}")]
    Misconfigured(String),
}

impl DbError {
    /// Is this worth retrying later (the database is busy, unreachable or in a transient
    /// state)?
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Transient(_) | Self::Unavailable(_) | Self::Resolve(_)
        )
    }

    /// Delay the server asked for, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<mongodb::error::Error> for DbError {
    fn from(e: mongodb::error::Error) -> Self {
        classify(e)
    }
}

/// Codes meaning "the server cannot serve this now": shutdown, step-down, not primary,
/// interrupted, exceeded time limit (Cosmos DB's server-side retry gave up; the write may
/// have happened).
const UNAVAILABLE_CODES: &[i32] = &[
    6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];
/// Codes meaning "rerun the operation".
const TRANSIENT_CODES: &[i32] = &[112, 251, 24, 246];

/// Classifies a driver error, counting throttling in the `outbox.db.throttled` metric.
#[must_use]
pub fn classify(e: mongodb::error::Error) -> DbError {
    let classified = classify_quietly(e);
    if matches!(classified, DbError::Throttled { .. }) {
        crate::metrics::global().db_throttled();
    }
    classified
}

/// [`classify`] without counting (it recurses into a transaction's cause).
fn classify_quietly(e: mongodb::error::Error) -> DbError {
    let code = error_code(&e);
    if matches!(code, Some(11000 | 11001)) {
        return DbError::Conflict(e);
    }
    if code == Some(16500) || message_of(&e).contains("TooManyRequests") {
        let retry_after = retry_after_ms(&message_of(&e));
        return DbError::Throttled {
            retry_after,
            source: e,
        };
    }
    if matches!(*e.kind, ErrorKind::DnsResolve { .. }) {
        return DbError::Resolve(e);
    }
    if matches!(
        *e.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::Shutdown
    ) || code.is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
    {
        return DbError::Unavailable(e);
    }
    // Cosmos DB reports an expired transaction as code 2 "Transaction isn't active" (or "is
    // not active"); code 2 alone means BadValue, so the text decides.
    if code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
        || is_transaction_not_active(&e)
        || e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
    {
        return DbError::Transient(e);
    }
    // The convenient transaction API ends with ErrorKind::Transaction when it gave up
    // retrying; the cause is kept as its source.
    if let ErrorKind::Transaction { .. } = *e.kind
        && let Some(source) =
            std::error::Error::source(&e).and_then(|s| s.downcast_ref::<mongodb::error::Error>())
    {
        return match classify_quietly(source.clone()) {
            DbError::Other(_) | DbError::Misconfigured(_) => DbError::Other(e),
            DbError::Conflict(_) => DbError::Conflict(e),
            DbError::Transient(_) => DbError::Transient(e),
            DbError::Unavailable(_) | DbError::Resolve(_) => DbError::Unavailable(e),
            DbError::Throttled { retry_after, .. } => DbError::Throttled {
                retry_after,
                source: e,
            },
        };
    }
    DbError::Other(e)
}

/// Is this Cosmos DB's "Transaction isn't active" (code 2)? It means the transaction passed
/// Cosmos DB's 5-second limit — or, on an RU account, that it touched a second collection.
#[must_use]
pub fn is_transaction_not_active(e: &mongodb::error::Error) -> bool {
    let message = message_of(e);
    error_code(e) == Some(2)
        && (message.contains("Transaction isn't active")
            || message.contains("Transaction is not active"))
}

/// The server's error code, from a command error or a write error.
#[must_use]
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errs| errs.first().map(|w| w.code))
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        ErrorKind::BulkWrite(b) => b.write_errors.values().next().map(|w| w.code),
        _ => None,
    }
}

fn message_of(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        ErrorKind::Command(c) => c.message.clone(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => w.message.clone(),
        _ => String::new(),
    }
}

/// Extracts Cosmos DB's `RetryAfterMs=<n>` hint from an error message.
#[must_use]
pub fn retry_after_ms(message: &str) -> Option<Duration> {
    let rest = &message[message.find("RetryAfterMs=")? + "RetryAfterMs=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Duration::from_millis)
}

/// The database, connected on first use.
///
/// Creating the client resolves the connection string (DNS for `mongodb+srv://`), so it
/// happens on first use rather than at start-up: the handler must answer the host's readiness
/// probe before any slow work. Collections, indexes and the placement are settled by
/// [`crate::outbox::Storage`], which wraps this handle.
pub struct Db {
    settings: MongoSettings,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("database", &self.settings.database)
            .field("connected", &self.client.initialized())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// A database handle that connects on first use.
    #[must_use]
    pub fn new(settings: MongoSettings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
        }
    }

    /// The settings it was built from.
    #[must_use]
    pub fn settings(&self) -> &MongoSettings {
        &self.settings
    }

    /// The client, created on first call.
    ///
    /// # Errors
    /// [`DbError::Resolve`] when the connection string cannot be resolved; other errors when
    /// the options are unusable.
    pub async fn client(&self) -> Result<&Client, DbError> {
        self.client
            .get_or_try_init(|| async {
                let mut options = ClientOptions::parse(self.settings.uri.expose_secret())
                    .await
                    .map_err(classify)?;
                options
                    .app_name
                    .get_or_insert_with(|| "outbox-relay".into());
                options
                    .server_selection_timeout
                    .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
                options
                    .connect_timeout
                    .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
                options.max_idle_time.get_or_insert(DEFAULT_MAX_IDLE_TIME);
                Client::with_options(options).map_err(classify)
            })
            .await
    }

    /// The database named by the settings, on the client created on first call.
    ///
    /// # Errors
    /// As [`Db::client`].
    pub async fn database(&self) -> Result<Database, DbError> {
        Ok(self.client().await?.database(&self.settings.database))
    }
}

/// Creates the collection `name` unless it exists (another instance, or an earlier start, may
/// have made it).
///
/// # Errors
/// When the database cannot be reached or refuses.
pub async fn create_collection(db: &Database, name: &str) -> Result<(), DbError> {
    match db.create_collection(name).await {
        Ok(()) => Ok(()),
        // NamespaceExists: another instance (or an earlier start) made it.
        Err(e) if error_code(&e) == Some(48) => Ok(()),
        Err(e) => Err(classify(e)),
    }
}

/// What a server says to Cosmos DB for MongoDB RU's extension command `{customAction:
/// "GetCollection", collection}` (Microsoft Learn, "MongoDB extension commands"), which only RU
/// has. Asked where the handler must know whether the server is RU: how the documents'
/// collection is sharded (`outbox::placement`), whose change-stream rules apply
/// (`outbox::stream::target`).
#[derive(Debug, Clone, PartialEq)]
pub enum RuCollection {
    /// RU described the collection (shard key, throughput, limits).
    Described(mongodb::bson::Document),
    /// RU, and the collection does not exist yet (26 `NamespaceNotFound`).
    Missing,
    /// Not RU: the server has no such command (MongoDB 59 `CommandNotFound`, Azure DocumentDB
    /// 115 `CommandNotSupported`).
    NotRu,
}

/// Asks `GetCollection` of `collection`.
///
/// # Errors
/// Any other error the server or the connection gave.
pub async fn get_collection(
    database: &Database,
    collection: &str,
) -> mongodb::error::Result<RuCollection> {
    read_get_collection(
        database
            .run_command(doc! { "customAction": "GetCollection", "collection": collection })
            .await,
    )
}

/// Reads the answer to `GetCollection`.
///
/// # Errors
/// Any error but the three [`RuCollection`] names.
pub fn read_get_collection(
    asked: mongodb::error::Result<mongodb::bson::Document>,
) -> mongodb::error::Result<RuCollection> {
    match asked {
        Ok(answer) => Ok(RuCollection::Described(answer)),
        Err(e) => match error_code(&e) {
            Some(26) => Ok(RuCollection::Missing),
            Some(59 | 115) => Ok(RuCollection::NotRu),
            _ => Err(e),
        },
    }
}

/// Cosmos DB for MongoDB RU's mandatory stages after `$changeStream`, which it must be opened
/// with `fullDocument: "updateLookup"`: Microsoft Learn, "Change streams in Azure Cosmos DB's
/// API for MongoDB". Its changes carry no `operationType`.
#[must_use]
pub fn ru_change_stream_pipeline() -> Vec<mongodb::bson::Document> {
    vec![
        doc! { "$match": { "operationType": { "$in": ["insert", "update", "replace"] } } },
        doc! { "$project": { "_id": 1, "fullDocument": 1, "ns": 1, "documentKey": 1 } },
    ]
}

/// RU's answer to a change stream not of its mandatory shape: 2 `BadValue` "Change stream
/// must be followed by a match and then a project stage" (as users of third-party tools
/// report it; see `cosmos-proxy/src/change_stream.rs`).
#[must_use]
pub fn is_ru_pipeline_refusal(e: &mongodb::error::Error) -> bool {
    error_code(e) == Some(2) && e.to_string().contains("must be followed by a match")
}

/// Runs `ping` against the database: is it reachable now?
///
/// # Errors
/// When it is not.
pub async fn ping(db: &Database) -> Result<(), DbError> {
    db.run_command(doc! { "ping": 1 }).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosmos_retry_hints_are_read_from_the_message() {
        assert_eq!(
            retry_after_ms(
                "Error=16500, RetryAfterMs=12, Details='Response status code does not indicate success: TooManyRequests (429)"
            ),
            Some(Duration::from_millis(12))
        );
        assert_eq!(
            retry_after_ms("RetryAfterMs=1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after_ms("no hint"), None);
        assert_eq!(retry_after_ms("RetryAfterMs=x"), None);
    }
}
