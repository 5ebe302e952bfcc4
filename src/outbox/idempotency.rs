//! Idempotency records: what a write answered, kept under its `Idempotency-Key`.
//!
//! A record is written in the same transaction as the change it describes, beside the outbox
//! entries (so in `colocated` placement it sits in the documents' own collection and the
//! transaction still touches one collection). Its `_id` is a subdocument
//! `{idempotency_key, collection}`: documents have string ids and entries binary ones, so the
//! three kinds never collide. A record expires after `OUTBOX_IDEMPOTENCY_HOURS`; the TTL index
//! removes it, and an expired record that is still there is ignored and replaced.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::{ClientSession, Collection};

use crate::db::DbError;
use crate::domain::{InputError, Operation};

/// The field holding a record's content; also what tells a record from a document (which is
/// why documents may not use it).
pub const ROOT: &str = crate::domain::document::IDEMPOTENCY_FIELD;
/// When the record expires (the TTL index counts from here with no delay).
pub const EXPIRES_AT: &str = "_idempotency.expires_at";
/// Name of the TTL index.
pub const EXPIRY_INDEX: &str = "outbox_idempotency_expiry";

/// A client's `Idempotency-Key`: 1–255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts the header value.
    ///
    /// # Errors
    /// [`InputError::InvalidHeader`] when empty, too long or not printable ASCII.
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let invalid = |reason| InputError::InvalidHeader {
            name: "Idempotency-Key",
            reason,
        };
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if raw.len() > 255 {
            return Err(invalid("must be at most 255 characters"));
        }
        if !raw.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(invalid("must be printable ASCII"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as sent.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies "the same request": method, URL id, content type and body.
#[must_use]
pub fn fingerprint(
    method: &str,
    id: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x1d2b_63f0_7a1e_4c55_9e0f_3b8c_2a71_d604);
    let mut input = Vec::with_capacity(body.len() + 64);
    for part in [
        method.as_bytes(),
        id.unwrap_or("").as_bytes(),
        content_type.unwrap_or("").as_bytes(),
    ] {
        input.extend_from_slice(part);
        input.push(0);
    }
    input.extend_from_slice(body);
    uuid::Uuid::new_v5(&NAMESPACE, &input).simple().to_string()
}

/// What a write answered, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedWrite {
    /// What the write did.
    pub operation: Operation,
    /// The document's id.
    pub document_id: String,
    /// The event's id.
    pub event_id: String,
    /// The document's version after the write.
    pub version: u64,
    /// The document's lineage.
    pub lineage: String,
}

/// A record found under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Fingerprint of the request that wrote it.
    pub fingerprint: String,
    /// Its answer.
    pub write: RecordedWrite,
}

fn record_id(collection: &str, key: &IdempotencyKey) -> Document {
    doc! { "idempotency_key": key.as_str(), "collection": collection }
}

fn bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

/// When a record written at `now` expires: `ttl` later, or never for a `ttl` too long to add.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The record to insert with a write.
#[must_use]
pub fn new_record(
    collection: &str,
    key: &IdempotencyKey,
    fingerprint: &str,
    write: &RecordedWrite,
    now: DateTime<Utc>,
    ttl: Duration,
    shard_key: Option<(&str, &Bson)>,
) -> Document {
    let expires = expiry(now, ttl);
    let mut record = doc! {
        "_id": record_id(collection, key),
        ROOT: {
            "fingerprint": fingerprint,
            "operation": write.operation.as_str(),
            "document_id": &write.document_id,
            "event_id": &write.event_id,
            "version": i64::try_from(write.version).unwrap_or(i64::MAX),
            "lineage": &write.lineage,
            "created_at": bson_time(now),
            "expires_at": bson_time(expires),
        },
    };
    if let Some((name, value)) = shard_key {
        record.insert(name, value.clone());
    }
    record
}

/// The unexpired record under `key`, if any.
///
/// # Errors
/// When the database fails.
pub async fn find(
    records: &Collection<Document>,
    collection: &str,
    key: &IdempotencyKey,
    now: DateTime<Utc>,
    session: Option<&mut ClientSession>,
) -> Result<Option<Recorded>, DbError> {
    let filter = doc! { "_id": record_id(collection, key), EXPIRES_AT: { "$gt": bson_time(now) } };
    let found = match session {
        Some(s) => records.find_one(filter).session(s).await?,
        None => records.find_one(filter).await?,
    };
    Ok(found.as_ref().and_then(parse_record))
}

pub(crate) fn parse_record(d: &Document) -> Option<Recorded> {
    let r = d.get_document(ROOT).ok()?;
    Some(Recorded {
        fingerprint: r.get_str("fingerprint").ok()?.to_owned(),
        write: RecordedWrite {
            operation: Operation::parse(r.get_str("operation").ok()?)?,
            document_id: r.get_str("document_id").ok()?.to_owned(),
            event_id: r.get_str("event_id").ok()?.to_owned(),
            version: u64::try_from(r.get_i64("version").ok()?).ok()?,
            lineage: r.get_str("lineage").ok()?.to_owned(),
        },
    })
}

/// Inside the write's transaction: removes an expired record under `key` (the TTL monitor may
/// not have got to it), then inserts `record`. A live record under the same key makes the
/// insert fail with a duplicate key, which aborts the whole write.
///
/// # Errors
/// The driver's error, unclassified (the transaction callback returns it as is).
pub async fn insert(
    records: &Collection<Document>,
    collection: &str,
    key: &IdempotencyKey,
    record: &Document,
    now: DateTime<Utc>,
    session: &mut ClientSession,
) -> mongodb::error::Result<()> {
    records
        .delete_one(
            doc! { "_id": record_id(collection, key), EXPIRES_AT: { "$lte": bson_time(now) } },
        )
        .session(&mut *session)
        .await?;
    records.insert_one(record).session(session).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_of_bounded_length() {
        assert!(IdempotencyKey::parse("abc-123_X:/=+").is_ok());
        assert_eq!(IdempotencyKey::parse("  k  ").unwrap().as_str(), "k");
        for bad in ["", "   ", "ключ", "a\tb"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
    }

    #[test]
    fn a_ttl_too_long_to_add_never_expires_instead_of_overflowing() {
        let now = Utc::now();
        assert_eq!(
            expiry(now, Duration::from_secs(3600)),
            now + chrono::Duration::hours(1)
        );
        assert_eq!(expiry(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            expiry(now, Duration::from_secs(1_000_000_000_000_000)),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = fingerprint("PUT", Some("x"), Some("application/json"), b"{}");
        assert_eq!(
            a,
            fingerprint("PUT", Some("x"), Some("application/json"), b"{}")
        );
        assert_ne!(
            a,
            fingerprint("POST", Some("x"), Some("application/json"), b"{}")
        );
        assert_ne!(
            a,
            fingerprint("PUT", Some("y"), Some("application/json"), b"{}")
        );
        assert_ne!(
            a,
            fingerprint("PUT", Some("x"), Some("application/json"), b"{ }")
        );
        assert_ne!(
            fingerprint("PUT", Some("ab"), None, b"c"),
            fingerprint("PUT", Some("a"), None, b"bc")
        );
    }
}
