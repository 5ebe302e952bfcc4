//! Operator commands (`handler outbox …`): read the outbox state from the database.

use chrono::Utc;

use crate::config::MongoSettings;
use crate::db::{Db, DbError};
use crate::outbox::OutboxCounts;
use crate::outbox::store::OutboxStore;

/// Counts entries by state.
///
/// # Errors
/// When the database cannot be reached.
pub async fn status(settings: MongoSettings) -> Result<OutboxCounts, DbError> {
    let collection = settings.outbox_collection.clone();
    let db = Db::new(settings);
    let database = db.client().await?.database(&db.settings().database);
    OutboxStore::new(&database, &collection)
        .counts(Utc::now())
        .await
}

/// The counts as text for a terminal.
#[must_use]
pub fn render_status(c: &OutboxCounts) -> String {
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
    format!(
        "pending:      {}\n  due now:    {}\npublished:    {}\ndead:         {}\noldest pending written: {lag}\n",
        c.pending, c.due, c.published, c.dead
    )
}
