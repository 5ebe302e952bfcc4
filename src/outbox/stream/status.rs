//! What `handler outbox status` shows of the change-stream source: the position as a time,
//! the lag, the active reader and its lease, the dead letters.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{ChangeDeadLetter, ChangeStore, chrono_time};
use crate::db::DbError;

/// The change-stream source's state.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// The watched collection.
    pub collection: String,
    /// Whether a position was ever saved.
    pub has_position: bool,
    /// When the last published change was made.
    pub position_time: Option<DateTime<Utc>>,
    /// Seconds from `position_time` to now.
    pub lag_seconds: Option<i64>,
    /// When a reader last saved the position or renewed its lease.
    pub saved_at: Option<DateTime<Utc>>,
    /// The reader holding (or last holding) the lease.
    pub reader: Option<String>,
    /// When its lease runs (or ran) out.
    pub lease_until: Option<DateTime<Utc>>,
    /// Whether that lease is live now.
    pub lease_live: bool,
    /// Dead letters waiting for an operator.
    pub dead: u64,
    /// Dead letters requeued, waiting for the reader.
    pub requeued: u64,
    /// Dead letters skipped.
    pub skipped: u64,
    /// The oldest dead and requeued letters.
    pub dead_letters: Vec<ChangeDeadLetter>,
}

impl ChangeStore {
    /// The source's state, with at most `shown` dead letters.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn status(&self, shown: i64, now: DateTime<Utc>) -> Result<StreamStatus, DbError> {
        let cp = self.checkpoint_document().await?.unwrap_or_default();
        let time = |k: &str| cp.get_datetime(k).ok().map(|t| chrono_time(*t));
        let position_time = time("position_time");
        let lease_until = time("lease_until");
        Ok(StreamStatus {
            collection: self.collection.clone(),
            has_position: cp.contains_key("token") || cp.contains_key("start_at"),
            position_time,
            lag_seconds: position_time.map(|t| (now - t).num_seconds().max(0)),
            saved_at: time("saved_at"),
            reader: cp.get_str("owner").ok().map(str::to_owned),
            lease_until,
            lease_live: lease_until.is_some_and(|t| t > now),
            dead: self.count_dead_letters("dead").await?,
            requeued: self.count_dead_letters("requeued").await?,
            skipped: self.count_dead_letters("skipped").await?,
            dead_letters: self.dead_letters(shown).await?,
        })
    }
}

/// The state as text for a terminal.
#[must_use]
pub fn render(s: &StreamStatus) -> String {
    let at = |t: Option<DateTime<Utc>>| {
        t.map_or_else(
            || "none".to_owned(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    let mut out = format!(
        "\nchange stream on {}\nposition:     {}\nlast published change: {}{}\nreader:       {} (lease {} until {})\ndead letters: {} dead, {} requeued, {} skipped\n",
        s.collection,
        if s.has_position {
            "saved"
        } else {
            "none yet (the first reader starts at the present)"
        },
        at(s.position_time),
        s.lag_seconds
            .map(|l| format!(" ({l} s ago)"))
            .unwrap_or_default(),
        s.reader.as_deref().unwrap_or("none"),
        if s.lease_live { "live" } else { "expired" },
        at(s.lease_until),
        s.dead,
        s.requeued,
        s.skipped,
    );
    for d in &s.dead_letters {
        out.push_str(&format!(
            "  {}  {}  {}  {}{}\n",
            d.id,
            d.subject,
            d.state,
            d.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default(),
            d.reason
        ));
    }
    if s.dead > 0 {
        out.push_str("publish again with: handler outbox requeue --id <id> | --all-dead (the reader does it before reading on)\nor skip (never publish) with: handler outbox skip --id <id>\n");
    }
    out
}
