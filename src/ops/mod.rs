//! Operator commands (`handler outbox …`): inspect the outbox, and change dead letters (requeue,
//! skip). They need only the `MONGODB_*` / `OUTBOX_*` placement settings; `doctor` checks
//! everything the relay depends on and needs every setting.

pub mod doctor;
pub mod replay;

use chrono::Utc;
use serde::Serialize;

use crate::config::{EventSource, MongoSettings};
use crate::db::{Db, DbError};
use crate::domain::EventId;
use crate::outbox::store::{DeadLetter, Expiry};
use crate::outbox::stream::{self, StreamStatus};
use crate::outbox::{OutboxCounts, Placement, Ready, Storage};

/// Dead letters listed by `status`.
const DEAD_LETTERS_SHOWN: i64 = 20;

/// What `handler outbox status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Where the entries live.
    pub placement: Placement,
    /// The collection holding them.
    pub entries_collection: String,
    /// Whether TTL indexes remove expired data, or the relay's runs do.
    pub expiry: Expiry,
    /// Counts by state.
    #[serde(flatten)]
    pub counts: OutboxCounts,
    /// The oldest dead letters (at most 20).
    pub dead_letters: Vec<DeadLetter>,
    /// With `OUTBOX_SOURCE=change-stream`: the stream's position, reader and dead letters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_stream: Option<StreamStatus>,
}

async fn storage_ready(settings: MongoSettings) -> Result<Ready, DbError> {
    Storage::new(Db::new(settings)).ready().await
}

/// Counts entries by state and lists the oldest dead letters.
///
/// # Errors
/// When the database cannot be reached.
pub async fn status(settings: MongoSettings) -> Result<Status, DbError> {
    let change_stream = match settings.source {
        EventSource::ChangeStream => Some(
            change_store(settings.clone())
                .await?
                .status(DEAD_LETTERS_SHOWN, Utc::now())
                .await?,
        ),
        EventSource::Outbox => None,
    };
    let ready = storage_ready(settings).await?;
    let counts = ready.store.counts(Utc::now()).await?;
    let dead_letters = ready.store.dead_letters(DEAD_LETTERS_SHOWN).await?;
    Ok(Status {
        placement: ready.placement,
        entries_collection: ready.entries_collection,
        expiry: ready.expiry,
        counts,
        dead_letters,
        change_stream,
    })
}

async fn change_store(settings: MongoSettings) -> Result<stream::ChangeStore, DbError> {
    Storage::new(Db::new(settings)).change_store().await
}

/// Makes dead-lettered entries pending again (all of them with `ids: None`). Returns how many.
///
/// # Errors
/// When the database cannot be reached.
pub async fn requeue(settings: MongoSettings, ids: Option<&[EventId]>) -> Result<u64, DbError> {
    if settings.source == EventSource::ChangeStream {
        return change_store(settings)
            .await?
            .requeue_dead(ids, Utc::now())
            .await;
    }
    let ready = storage_ready(settings).await?;
    ready.store.requeue_dead(ids, Utc::now()).await
}

/// Marks dead letters as skipped (never published; no longer holding back their subject
/// under `OUTBOX_ORDERING=subject`). Returns how many.
///
/// # Errors
/// When the database cannot be reached.
pub async fn skip(settings: MongoSettings, ids: &[EventId]) -> Result<u64, DbError> {
    if settings.source == EventSource::ChangeStream {
        return change_store(settings)
            .await?
            .skip_dead(ids, Utc::now())
            .await;
    }
    let ready = storage_ready(settings).await?;
    ready.store.skip_dead(ids, Utc::now()).await
}

/// The status as text for a terminal.
#[must_use]
pub fn render_status(s: &Status) -> String {
    let c = &s.counts;
    let lag = c.oldest_pending_created_at.map_or_else(
        || "none".to_owned(),
        |t| {
            let age = (Utc::now() - t).num_seconds().max(0);
            format!(
                "{} ({age} s ago)",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        },
    );
    let mut out = format!(
        "entries in {} ({:?} placement)\npending:      {}\n  due now:    {}\npublished:    {}\ndead:         {}\nskipped:      {}\noldest pending written: {lag}\n",
        s.entries_collection, s.placement, c.pending, c.due, c.published, c.dead, c.skipped
    );
    let by = |ttl: bool| {
        if ttl {
            "TTL index"
        } else {
            "the relay (TTL refused)"
        }
    };
    out.push_str(&format!(
        "expiry:       published entries by {}, idempotency records by {}\n",
        by(s.expiry.published_by_ttl),
        by(s.expiry.records_by_ttl)
    ));
    if !s.dead_letters.is_empty() {
        out.push_str("\ndead letters (oldest first):\n");
        for d in &s.dead_letters {
            out.push_str(&format!(
                "  {}  {}  attempts {}  {}{}\n",
                d.id,
                d.subject,
                d.attempts,
                d.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default(),
                d.reason
            ));
        }
        out.push_str("requeue with: handler outbox requeue --id <id> | --all-dead\n");
        out.push_str("or skip (never publish) with: handler outbox skip --id <id>\n");
    }
    if let Some(cs) = &s.change_stream {
        out.push_str(&stream::render_status(cs));
    }
    out
}
