//! The indexes on the entries' collection: the claim index, the subject index
//! (`OUTBOX_ORDERING=subject`), and the TTL indexes that remove published entries and expired
//! idempotency records — or, where the server refuses TTL indexes, a note for the relay to
//! delete that data itself.

use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use super::fields::{
    CLAIM_INDEX, EXPIRY_PLAIN_INDEX, RETENTION_INDEX, SUBJECT_INDEX, claim_order, field,
};
use crate::db::{DbError, classify, error_code};
use crate::outbox::idempotency::{EXPIRES_AT, EXPIRY_INDEX};

/// MongoDB's `IndexOptionsConflict`: an index on these keys or of this name exists with other
/// options.
const INDEX_OPTIONS_CONFLICT: i32 = 85;
/// MongoDB's `IndexKeySpecsConflict`: an index of this name exists with other keys or options.
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// How expired outbox data goes away: by the server's TTL indexes, or, where the server
/// refused them (Cosmos DB for MongoDB RU offers TTL on `_ts` only), by the relay's bounded
/// deletes after each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Expiry {
    /// Published entries are removed by the TTL index after the retention.
    pub published_by_ttl: bool,
    /// Expired idempotency records are removed by the TTL index.
    pub records_by_ttl: bool,
}

/// Creates the claim index, the retention (TTL) index of published entries and the expiry
/// index of idempotency records on the entries' collection; with `ordered_by_subject`, the
/// subject index too.
///
/// In the documents' own collection (`colocated`) the claim index is partial, covering entries
/// only; a server that refuses partial indexes gets a plain one (documents then sit in it
/// under a null key, which costs space, not correctness). A server that refuses a TTL index
/// (Cosmos DB for MongoDB RU offers TTL on `_ts` only) is logged, not fatal: the returned
/// [`Expiry`] tells the relay to delete that data itself in small batches (expired records are
/// ignored when read meanwhile), and expired records get a plain index to be found by.
///
/// # Errors
/// When the claim index cannot be created: without it the claim query would scan (and fail on
/// Cosmos DB, which refuses to sort on unindexed fields); when the subject index, the plain
/// expiry index or a change of a TTL index's expiry fails; when the server is unavailable.
pub async fn ensure_indexes(
    db: &Database,
    collection: &str,
    retention: Duration,
    colocated: bool,
    ordered_by_subject: bool,
) -> Result<Expiry, DbError> {
    let entries: Collection<Document> = db.collection(collection);
    if ordered_by_subject {
        ensure_subject_index(&entries).await?;
    }
    ensure_claim_index(&entries, colocated).await?;
    ensure_expiry(db, &entries, retention).await
}

/// The index the ordering check finds older entries of a subject by. Sparse: documents beside
/// the entries have no `_outbox` and stay out of it.
async fn ensure_subject_index(entries: &Collection<Document>) -> Result<(), DbError> {
    let options = IndexOptions::builder()
        .name(SUBJECT_INDEX.to_owned())
        .sparse(true)
        .build();
    entries
        .create_index(
            IndexModel::builder()
                .keys(doc! { field::SUBJECT: 1, field::STATUS: 1 })
                .options(options)
                .build(),
        )
        .await?;
    Ok(())
}

/// The claim index: partial (entries only) when `colocated`, plain where the server refuses
/// partial indexes or the collection holds entries only.
async fn ensure_claim_index(
    entries: &Collection<Document>,
    colocated: bool,
) -> Result<(), DbError> {
    let plain = IndexOptions::builder().name(CLAIM_INDEX.to_owned()).build();
    let options = if colocated {
        IndexOptions::builder()
            .name(CLAIM_INDEX.to_owned())
            .partial_filter_expression(doc! { field::STATUS: { "$exists": true } })
            .build()
    } else {
        plain.clone()
    };
    let index = |options| {
        IndexModel::builder()
            .keys(claim_order())
            .options(options)
            .build()
    };
    match entries.create_index(index(options)).await {
        Ok(_) => Ok(()),
        Err(e) if colocated && !is_retryable(&e) => {
            tracing::warn!(
                error = %crate::telemetry::chain(&e),
                "The database refused a partial claim index; using a plain one"
            );
            entries.create_index(index(plain)).await?;
            Ok(())
        }
        Err(e) => Err(classify(e)),
    }
}

/// The TTL indexes of published entries (after `retention`) and of idempotency records (at
/// their expiry); where the records' one is refused, the plain index the relay's deletes use.
async fn ensure_expiry(
    db: &Database,
    entries: &Collection<Document>,
    retention: Duration,
) -> Result<Expiry, DbError> {
    let published_by_ttl = ensure_ttl(
        db,
        entries,
        RETENTION_INDEX,
        field::PUBLISHED_AT,
        retention,
        "published outbox entries",
    )
    .await?;
    let records_by_ttl = ensure_ttl(
        db,
        entries,
        EXPIRY_INDEX,
        EXPIRES_AT,
        Duration::ZERO,
        "expired idempotency records",
    )
    .await?;
    if !records_by_ttl {
        // The relay deletes expired records itself; this index finds them.
        match field_index(entries, EXPIRY_PLAIN_INDEX, EXPIRES_AT, None).await {
            // An index on that field exists already (made some other way): it serves.
            Err(e) if error_code(&e) == Some(INDEX_OPTIONS_CONFLICT) => {}
            made => made.map_err(classify)?,
        }
    }
    Ok(Expiry {
        published_by_ttl,
        records_by_ttl,
    })
}

fn is_retryable(e: &mongodb::error::Error) -> bool {
    classify(e.clone()).is_retryable()
}

fn is_conflict(e: &mongodb::error::Error) -> bool {
    matches!(
        error_code(e),
        Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT)
    )
}

/// Creates the index `{path: 1}` named `name`, a TTL index when `expire_after` is set.
/// Sparse, so only documents that have the field (published entries, idempotency records) are
/// in it and writing a pending entry or a document costs it nothing; a server without sparse
/// indexes gets a plain one. An index of that name with other options (85, 86) or a
/// transient failure is returned as is.
async fn field_index(
    entries: &Collection<Document>,
    name: &str,
    path: &str,
    expire_after: Option<Duration>,
) -> Result<(), mongodb::error::Error> {
    let model = |sparse: bool| {
        IndexModel::builder()
            .keys(doc! { path: 1 })
            .options(
                IndexOptions::builder()
                    .name(name.to_owned())
                    .expire_after(expire_after)
                    .sparse(sparse)
                    .build(),
            )
            .build()
    };
    match entries.create_index(model(true)).await {
        Err(e) if !is_conflict(&e) && !is_retryable(&e) => {
            entries.create_index(model(false)).await.map(drop)
        }
        made => made.map(drop),
    }
}

/// The TTL index `name` on `path`, expiring `after`; `false` when the server refused it (the
/// relay then deletes `what` itself). An existing one with another expiry is changed in place.
async fn ensure_ttl(
    db: &Database,
    entries: &Collection<Document>,
    name: &str,
    path: &str,
    after: Duration,
    what: &str,
) -> Result<bool, DbError> {
    match field_index(entries, name, path, Some(after)).await {
        Ok(()) => Ok(true),
        Err(e) if is_conflict(&e) => {
            let secs = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
            db.run_command(doc! {
                "collMod": entries.name(),
                "index": { "name": name, "expireAfterSeconds": secs },
            })
            .await?;
            tracing::info!(
                index = name,
                expire_after_secs = secs,
                "Changed the expiry of {what}"
            );
            Ok(true)
        }
        Err(e) => {
            let e = classify(e);
            if e.is_retryable() {
                return Err(e);
            }
            tracing::warn!(
                error = %crate::telemetry::chain(&e),
                index = name,
                "The database refused the TTL index for {what}; the relay deletes them in small batches after each run instead"
            );
            Ok(false)
        }
    }
}
