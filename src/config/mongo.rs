//! Where the data lives: `MONGODB_*`, the outbox's collection, placement, retention,
//! idempotency and ordering.

use std::num::NonZeroUsize;
use std::time::Duration;

use secrecy::SecretString;

use super::embedded::EmbeddedSettings;
use super::{ConfigError, Env, EventSource, StreamTarget, ttl_hours, ttl_hours_or_zero};
use crate::domain::document::RESERVED_FIELDS;

/// Where outbox entries live, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementSetting {
    /// In `OUTBOX_COLLECTION`; needs transactions across collections (MongoDB, Cosmos DB vCore).
    Separate,
    /// In the documents' own collection, so a transaction touches one collection only (required
    /// on Cosmos DB for MongoDB RU).
    Colocated,
    /// In each document itself (`_outbox` array): every write is one single-document
    /// operation, no transaction (sharded Cosmos DB for MongoDB RU collections).
    Embedded,
    /// Probe the server at start-up and choose.
    Auto,
}

impl std::str::FromStr for PlacementSetting {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "separate" => Ok(Self::Separate),
            "colocated" | "co-located" => Ok(Self::Colocated),
            "embedded" => Ok(Self::Embedded),
            "auto" => Ok(Self::Auto),
            _ => Err(()),
        }
    }
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// Connection string; secret because it may carry credentials.
    pub uri: SecretString,
    /// Database of both collections.
    pub database: String,
    /// Collection of the business documents.
    pub collection: String,
    /// Collection of the outbox entries.
    pub outbox_collection: String,
    /// Budget of one document write, transaction retries included.
    pub write_timeout: Duration,
    /// Writes run against the database at once (`MONGODB_MAX_CONCURRENT_WRITES`); 16 times
    /// as many may wait, the rest are answered 503 at once.
    pub max_concurrent_writes: NonZeroUsize,
    /// How long published entries are kept before the TTL index (or the relay) removes them;
    /// zero: none is kept, an entry is deleted once Event Grid accepted it
    /// ([`keeps_published`](Self::keeps_published)).
    pub retention: Duration,
    /// Where entries live.
    pub placement: PlacementSetting,
    /// Shard key field of a sharded documents collection, copied onto entries so that a
    /// document and its entry share a partition.
    pub shard_key: Option<String>,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// `OUTBOX_ORDERING=subject`: never publish an entry before an older unpublished entry of
    /// the same subject (it needs an index on the subject, hence a database setting).
    pub ordered_by_subject: bool,
    /// `OUTBOX_SOURCE`: with a change stream, a write stores only the document, and the
    /// operator commands work on the change stream's dead letters.
    pub source: EventSource,
    /// `OUTBOX_CHANGE_STREAM_TARGET`: whose change-stream rules apply; `None` (`auto`) decides
    /// at start-up from the host name or the server.
    pub stream_target: Option<StreamTarget>,
    /// The `embedded` placement's bounds (`OUTBOX_EMBEDDED_*`).
    pub embedded: EmbeddedSettings,
}

impl MongoSettings {
    /// Whether published entries are kept (`OUTBOX_RETENTION_HOURS` above zero): for replay,
    /// the status page's chart and the consumers' dedup window. When not, the relay deletes an
    /// entry instead of marking it published, one state change instead of a mark and a later
    /// TTL delete.
    #[must_use]
    pub fn keeps_published(&self) -> bool {
        !self.retention.is_zero()
    }

    /// Reads `MONGODB_*`, `OUTBOX_COLLECTION` and `OUTBOX_RETENTION_HOURS`.
    ///
    /// # Errors
    /// A missing `MONGODB_URI`, a malformed connection string, a bad collection name or a bad
    /// number.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let uri = env.required("MONGODB_URI")?;
        // Syntax only: resolving `mongodb+srv://` needs DNS, which happens lazily on first use
        // so that the handler answers the host's readiness probe at once. The driver's error
        // text can echo the string (and its password), so it is not passed on.
        if mongodb::options::ConnectionString::parse(&uri).is_err() {
            return Err(ConfigError::new(
                "MONGODB_URI",
                "is not a valid MongoDB connection string (expected mongodb://… or mongodb+srv://…)",
            ));
        }
        let database = env.string_or("MONGODB_DATABASE", "outbox");
        check_name(
            "MONGODB_DATABASE",
            &database,
            &['/', '\\', '.', ' ', '"', '$'],
        )?;
        let collection = env.string_or("MONGODB_COLLECTION", "documents");
        check_name("MONGODB_COLLECTION", &collection, &['$'])?;
        let outbox_collection = env.string_or("OUTBOX_COLLECTION", "outbox");
        check_name("OUTBOX_COLLECTION", &outbox_collection, &['$'])?;
        if collection == outbox_collection {
            return Err(ConfigError::new(
                "OUTBOX_COLLECTION",
                "must differ from MONGODB_COLLECTION",
            ));
        }
        let retention = ttl_hours_or_zero(env, "OUTBOX_RETENTION_HOURS", 168)?;
        let placement = env.parse_or(
            "OUTBOX_PLACEMENT",
            PlacementSetting::Auto,
            "separate, colocated, embedded or auto",
        )?;
        let shard_key = shard_key_from_env(env)?;
        let idempotency_ttl = ttl_hours(env, "OUTBOX_IDEMPOTENCY_HOURS", 24)?;
        let ordered_by_subject = ordered_by_subject_from_env(env)?;
        let stream_target = super::source::target_from_env(env, &uri)?;
        Ok(Self {
            uri: SecretString::from(uri),
            database,
            collection,
            outbox_collection,
            placement,
            shard_key,
            idempotency_ttl,
            ordered_by_subject,
            source: super::source::from_env(env)?,
            stream_target,
            embedded: EmbeddedSettings::from_env(env)?,
            write_timeout: env.millis_or("MONGODB_WRITE_TIMEOUT_MS", 10_000)?,
            max_concurrent_writes: max_concurrent_writes_from_env(env)?,
            retention,
        })
    }
}

/// `MONGODB_SHARD_KEY`: a top-level field name the entries can carry. Never a reserved one:
/// the value is copied onto entries and idempotency records, whose roots those names are, and
/// documents may not have them.
fn shard_key_from_env(env: &Env) -> Result<Option<String>, ConfigError> {
    let shard_key = env.get("MONGODB_SHARD_KEY");
    if let Some(key) = &shard_key
        && (key.starts_with('$')
            || key.contains('.')
            || key == "_id"
            || RESERVED_FIELDS.contains(&key.as_str())
            || key.chars().any(char::is_control))
    {
        return Err(ConfigError::new(
            "MONGODB_SHARD_KEY",
            format!(
                "must be a top-level field name other than _id (no '$', no '.', not {})",
                RESERVED_FIELDS.join("/")
            ),
        ));
    }
    Ok(shard_key)
}

/// `MONGODB_MAX_CONCURRENT_WRITES`: 1 to 10,000, default 16 (the bench machine's best
/// throughput; see `documents/admission.rs`).
fn max_concurrent_writes_from_env(env: &Env) -> Result<NonZeroUsize, ConfigError> {
    const WHAT: &str = "a whole number from 1 to 10000";
    let n: NonZeroUsize = env.parse_or(
        "MONGODB_MAX_CONCURRENT_WRITES",
        NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN),
        WHAT,
    )?;
    if n.get() > 10_000 {
        return Err(ConfigError::new(
            "MONGODB_MAX_CONCURRENT_WRITES",
            format!("must be {WHAT}, got {n}"),
        ));
    }
    Ok(n)
}

/// `OUTBOX_ORDERING`: `none` or `subject`.
fn ordered_by_subject_from_env(env: &Env) -> Result<bool, ConfigError> {
    match env
        .string_or("OUTBOX_ORDERING", "none")
        .to_ascii_lowercase()
        .as_str()
    {
        "none" => Ok(false),
        "subject" => Ok(true),
        other => Err(ConfigError::new(
            "OUTBOX_ORDERING",
            format!("must be none or subject, got {other:?}"),
        )),
    }
}

fn check_name(setting: &'static str, name: &str, forbidden: &[char]) -> Result<(), ConfigError> {
    if name.len() > 120 {
        return Err(ConfigError::new(setting, "must be at most 120 bytes long"));
    }
    if name.starts_with("system.") {
        return Err(ConfigError::new(setting, "must not start with \"system.\""));
    }
    if let Some(c) = name
        .chars()
        .find(|c| forbidden.contains(c) || *c == '\0' || c.is_control())
    {
        return Err(ConfigError::new(
            setting,
            format!("must not contain {c:?}, got {name:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_key(value: &str) -> Result<Option<String>, ConfigError> {
        shard_key_from_env(&Env::from_map(
            [("MONGODB_SHARD_KEY".to_owned(), value.to_owned())].into(),
        ))
    }

    #[test]
    fn the_shard_key_is_never_a_reserved_field() {
        for reserved in RESERVED_FIELDS {
            let e = shard_key(reserved).unwrap_err();
            assert_eq!(e.setting, "MONGODB_SHARD_KEY", "{reserved}");
            assert!(e.reason.contains(reserved), "{e}");
        }
        for bad in ["_id", "$tenant", "a.b", "a\u{1}"] {
            assert!(shard_key(bad).is_err(), "{bad}");
        }
        assert_eq!(shard_key("tenant").unwrap().as_deref(), Some("tenant"));
    }
}
