//! `outbox.claim.conflicts`: two real handler processes draining the same due entries count the
//! candidates each claim saw due but another claim took first, and publish every event once;
//! one handler alone counts none.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{NEVER, drain, sample, scrape};
use crate::support::seed::seed_entries_at;
use crate::support::{Handler, TestDb, app_settings, receiver};

const KEY: &str = "claim-conflicts-key";
/// Entries to drain: enough small claims that two relays draining together meet.
const ENTRIES: usize = 2_000;

async fn handler(db: &TestDb, rx: &eventgrid_receiver::RunningReceiver) -> Handler {
    Handler::standalone(&app_settings(
        db,
        rx,
        &[
            ("STANDALONE_FUNCTION_KEY", KEY),
            ("OUTBOX_SCHEDULE", NEVER),
            // Small claims, many of them, all from the same head of the queue.
            ("OUTBOX_BATCH_SIZE", "10"),
        ],
    ))
    .await
}

/// Drains through `handler` until a run finds nothing pending; the entries its runs claimed.
async fn drain_all(handler: &Handler, db: &TestDb) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut claimed = 0;
    loop {
        let report: Value = drain(handler, Some(KEY)).await;
        claimed += report["claimed"].as_u64().unwrap_or(0);
        if report["remaining"] == 0 || db.count_entries_with("pending").await == 0 {
            return claimed;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox never drained: {report}\n{}",
            handler.output()
        );
    }
}

/// `outbox_claim_conflicts_total` of one handler (0 when never counted).
async fn conflicts(handler: &Handler) -> f64 {
    sample(
        &scrape(handler, KEY).await,
        "outbox_claim_conflicts_total",
        &[],
    )
    .unwrap_or(0.0)
}

/// Entries one millisecond apart, as real writes are: a claim then rarely shares its cut-off's
/// millisecond with another entry, so conflicts show in the cut-off and range steps.
async fn seed(db: &TestDb) -> Vec<String> {
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    seed_entries_at(db, ENTRIES, 0, |i| {
        start + chrono::Duration::milliseconds(i as i64)
    })
    .await
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn two_relays_on_the_same_entries_count_the_claims_they_lost_and_publish_each_event_once() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let written = seed(&db).await;
    let (a, b) = tokio::join!(handler(&db, &rx), handler(&db, &rx));

    let (claimed_a, claimed_b) = tokio::join!(drain_all(&a, &db), drain_all(&b, &db));

    // The ledger: every event published once, each entry claimed once.
    let accepted = rx.handle().accepted_ids();
    assert_eq!(
        accepted.iter().collect::<HashSet<_>>().len(),
        accepted.len(),
        "an event was published twice"
    );
    assert_eq!(sorted(accepted), sorted(written));
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);
    assert_eq!(
        claimed_a + claimed_b,
        ENTRIES as u64,
        "every entry claimed once"
    );
    assert!(
        claimed_a > 0 && claimed_b > 0,
        "both relays took part: {claimed_a} / {claimed_b}"
    );
    // Each relay's claims read the same head of the queue: whenever one read candidates the
    // other took before its update, the loser counted them.
    let (lost_a, lost_b) = (conflicts(&a).await, conflicts(&b).await);
    assert!(
        lost_a + lost_b > 0.0,
        "two relays draining {ENTRIES} entries in claims of 10 never lost a candidate?\n{}\n{}",
        a.output(),
        b.output()
    );
    db.drop().await;
}

#[tokio::test]
async fn one_relay_alone_counts_no_claim_conflict() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let written = seed(&db).await;
    let alone = handler(&db, &rx).await;

    let claimed = drain_all(&alone, &db).await;

    assert_eq!(claimed, ENTRIES as u64);
    assert_eq!(sorted(rx.handle().accepted_ids()), sorted(written));
    let text = scrape(&alone, KEY).await;
    assert_eq!(
        sample(&text, "outbox_claim_conflicts_total", &[]).unwrap_or(0.0),
        0.0,
        "{text}"
    );
    db.drop().await;
}
