//! Entries written straight into the outbox (fast), for tests that need many of them.

use chrono::{DateTime, Utc};
use mongodb::bson::Document;
use outbox_relay::domain::{EventId, OutboxEvent};
use outbox_relay::outbox::store;
use serde_json::value::RawValue;

use super::TestDb;

/// Inserts `n` pending entries directly, each with `data_bytes` of payload; their event ids.
pub async fn seed_entries(db: &TestDb, n: usize, data_bytes: usize) -> Vec<String> {
    seed_entries_at(db, n, data_bytes, |_| Utc::now()).await
}

/// As [`seed_entries`], the `i`-th entry written (and due) at `written_at(i)`.
pub async fn seed_entries_at(
    db: &TestDb,
    n: usize,
    data_bytes: usize,
    written_at: impl Fn(usize) -> DateTime<Utc>,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut batch: Vec<Document> = Vec::new();
    for i in 0..n {
        let id = format!("s-{i}");
        let data = if data_bytes == 0 {
            format!(r#"{{"_id":"{id}"}}"#)
        } else {
            format!(r#"{{"_id":"{id}","pad":"{}"}}"#, "p".repeat(data_bytes))
        };
        let event = OutboxEvent::new(
            EventId::for_change(&db.name, "documents", &id, "seed", 1),
            format!("documents/{id}"),
            "CosmosDB.DocumentChanged".into(),
            "1.0".into(),
            RawValue::from_string(data).unwrap(),
            written_at(i),
        );
        ids.push(event.id.to_string());
        batch.push(store::new_entry(&event, "documents", &id, None, None));
        if batch.len() == 1000 {
            db.outbox()
                .insert_many(std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        db.outbox().insert_many(batch).await.unwrap();
    }
    ids
}
