//! Operator commands (`handler outbox …`): inspect the outbox, and change dead letters (requeue,
//! skip). They need only the `MONGODB_*` / `OUTBOX_*` placement settings; `doctor` checks
//! everything the relay depends on and needs every setting.

pub mod doctor;
pub mod replay;
pub mod terminal;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{EventSource, MongoSettings};
use crate::db::{Db, DbError};
use crate::domain::EventId;
use crate::outbox::store::{DeadLetter, Expiry};
use crate::outbox::stream::{self, StreamStatus};
use crate::outbox::{OutboxCounts, Placement, Storage};

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
    /// Whether published entries are kept (`OUTBOX_RETENTION_HOURS` above zero) or deleted
    /// once published, so that `published` counts nothing.
    pub published_kept: bool,
    /// Counts by state.
    #[serde(flatten)]
    pub counts: OutboxCounts,
    /// The oldest dead letters (at most 20).
    pub dead_letters: Vec<DeadLetter>,
    /// With `OUTBOX_SOURCE=change-stream`: the stream's position, reader and dead letters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_stream: Option<StreamStatus>,
}

/// Whose dead letters an operator decides on: the outbox's entries, or the change-stream
/// source's dead-lettered changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetters {
    /// Dead-lettered entries (every placement; `embedded` moves its dead events there).
    Entries,
    /// Changes the change-stream source dead-lettered.
    Stream,
}

impl DeadLetters {
    /// The ones the configured source produces.
    #[must_use]
    pub fn of_source(source: EventSource) -> Self {
        match source {
            EventSource::Outbox => Self::Entries,
            EventSource::ChangeStream => Self::Stream,
        }
    }
}

fn storage_of(settings: MongoSettings) -> Storage {
    Storage::new(Db::new(settings))
}

/// Counts entries by state and lists the oldest dead letters.
///
/// # Errors
/// When the database cannot be reached.
pub async fn status(settings: MongoSettings) -> Result<Status, DbError> {
    status_of(&storage_of(settings), DEAD_LETTERS_SHOWN, Utc::now()).await
}

/// The status of `storage` at `now`, with at most `shown` dead letters of each kind: what
/// `handler outbox status` prints and the status page shows. Pending and due count every
/// pending event of the placement (under `embedded`, the events inside documents too); with
/// `OUTBOX_SOURCE=change-stream` the stream's position, reader and dead letters are added.
///
/// # Errors
/// When the database cannot be reached.
pub async fn status_of(
    storage: &Storage,
    shown: i64,
    now: DateTime<Utc>,
) -> Result<Status, DbError> {
    let ready = storage.ready().await?;
    let change_stream = match storage.settings().source {
        EventSource::ChangeStream => Some(storage.change_store().await?.status(shown, now).await?),
        EventSource::Outbox => None,
    };
    let counts = ready.relay.counts(now).await?;
    let dead_letters = ready.store.dead_letters(shown).await?;
    Ok(Status {
        placement: ready.placement,
        entries_collection: ready.entries_collection,
        expiry: ready.expiry,
        published_kept: storage.settings().keeps_published(),
        counts,
        dead_letters,
        change_stream,
    })
}

/// Makes dead-lettered entries pending again (all of them with `ids: None`). Returns how many.
///
/// # Errors
/// When the database cannot be reached.
pub async fn requeue(settings: MongoSettings, ids: Option<&[EventId]>) -> Result<u64, DbError> {
    let which = DeadLetters::of_source(settings.source);
    requeue_in(&storage_of(settings), which, ids).await
}

/// Marks dead letters as skipped (never published; no longer holding back their subject
/// under `OUTBOX_ORDERING=subject`). Returns how many.
///
/// # Errors
/// When the database cannot be reached.
pub async fn skip(settings: MongoSettings, ids: &[EventId]) -> Result<u64, DbError> {
    let which = DeadLetters::of_source(settings.source);
    skip_in(&storage_of(settings), which, ids).await
}

/// Gives `which` dead letters of `storage` another chance (every one with `ids: None`):
/// entries become pending again; the change-stream reader publishes requeued changes before
/// reading on. Returns how many.
///
/// # Errors
/// When the database cannot be reached.
pub async fn requeue_in(
    storage: &Storage,
    which: DeadLetters,
    ids: Option<&[EventId]>,
) -> Result<u64, DbError> {
    let now = Utc::now();
    match which {
        DeadLetters::Entries => storage.ready().await?.store.requeue_dead(ids, now).await,
        DeadLetters::Stream => storage.change_store().await?.requeue_dead(ids, now).await,
    }
}

/// Marks `which` dead letters of `storage` never to be published. Returns how many.
///
/// # Errors
/// When the database cannot be reached.
pub async fn skip_in(
    storage: &Storage,
    which: DeadLetters,
    ids: &[EventId],
) -> Result<u64, DbError> {
    let now = Utc::now();
    match which {
        DeadLetters::Entries => storage.ready().await?.store.skip_dead(ids, now).await,
        DeadLetters::Stream => storage.change_store().await?.skip_dead(ids, now).await,
    }
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
    let published = if s.published_kept {
        by(s.expiry.published_by_ttl)
    } else {
        "the relay once published (OUTBOX_RETENTION_HOURS=0: none kept)"
    };
    out.push_str(&format!(
        "expiry:       published entries by {published}, idempotency records by {}\n",
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
