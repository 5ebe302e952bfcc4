//! The relay's guarantees against a real replica set and the receiver: every committed event
//! is published, failures are recorded on the entries, poison events are isolated, concurrent
//! drains do not publish twice, and stale claims cannot overwrite newer ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outbox_relay::domain::EventId;
use outbox_relay::outbox::store::OutboxStore;
use outbox_relay::relay::StopReason;
use tokio::sync::Barrier;

use crate::support::mongo::entry_state;
use crate::support::receiver::{self, FailRule, Fault};
use crate::support::seed::seed_entries;
use crate::support::{TestDb, drain, relay, settings, write_documents};

fn doc(i: usize) -> String {
    format!(r#"{{"_id":"d-{i}","n":{i},"text":"{}"}}"#, "x".repeat(200))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn every_committed_event_is_published_exactly_once_absent_faults() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[("OUTBOX_BATCH_SIZE", "40")]);
    let written = write_documents(&s, 250, doc).await;

    let report = drain(&relay(&s)).await;

    assert_eq!(report.published, 250, "{report:?}");
    assert_eq!(report.remaining, Some(0));
    assert!(report.stopped.is_none(), "{report:?}");
    assert_eq!(sorted(rx.handle().accepted_ids()), sorted(written));
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);
    assert_eq!(db.count_entries_with("published").await, 250);
    db.drop().await;
}

#[tokio::test]
async fn a_run_reports_the_longest_commit_to_publish_lag() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    write_documents(&s, 3, doc).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Utc::now();
    write_documents(&s, 3, |i| doc(i + 3)).await;
    let relay = relay(&s);

    let report = drain(&relay).await;
    let after = Utc::now();

    assert_eq!(report.published, 6, "{report:?}");
    let lag = report
        .max_lag_ms
        .expect("a lag when something was published");
    // The oldest change waited at least the pause, and never longer than the test ran.
    assert!(lag >= 400, "{report:?}");
    let bound = u64::try_from((after - started).num_milliseconds()).unwrap() + 400 + 2_000;
    assert!(lag <= bound, "{lag} ms > {bound} ms");
    assert!(
        report.summary().contains(&format!("lag {lag} ms")),
        "{}",
        report.summary()
    );
    let idle = drain(&relay).await;
    assert_eq!(idle.max_lag_ms, None, "nothing published, no lag: {idle:?}");
    db.drop().await;
}

#[tokio::test]
async fn an_outage_leaves_entries_pending_with_retry_state_then_all_are_published() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(
        &db,
        &rx,
        &[
            ("OUTBOX_BATCH_SIZE", "10"),
            ("OUTBOX_PUBLISH_CONCURRENCY", "1"),
        ],
    );
    let written = write_documents(&s, 30, doc).await;
    rx.handle()
        .push_fault(FailRule::new(10_000, 503).retry_after("0").into())
        .unwrap();
    let relay = relay(&s);
    let before = Utc::now().timestamp_millis();

    let down = drain(&relay).await;

    assert!(!down.made_progress(), "{down:?}");
    assert!(
        matches!(down.stopped, Some(StopReason::TopicUnavailable(_))),
        "{down:?}"
    );
    assert_eq!(down.published, 0);
    assert!(down.rescheduled >= 1);
    assert_eq!(down.remaining, Some(30), "nothing lost, nothing published");
    // The run stopped at the first failed batch: the other entries were not touched.
    assert_eq!(down.rescheduled, 10, "{down:?}");
    let failed = entry_state(&db, &written[0]).await;
    assert_eq!(failed.get_i32("attempts").unwrap(), 1);
    let last = failed.get_document("last_error").unwrap();
    assert_eq!(last.get_i32("status").unwrap(), 503);
    assert!(
        failed.get_datetime("due_at").unwrap().timestamp_millis() > before,
        "next attempt moved past the failure"
    );
    assert!(
        failed.get("lease_token").unwrap().as_null().is_some(),
        "lease given up after recording"
    );

    rx.handle().clear_faults();
    let mut published = 0;
    for _ in 0..50 {
        published += drain(&relay).await.published;
        if published == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(published, 30);
    assert_eq!(
        sorted(rx.handle().accepted_ids()),
        sorted(written),
        "none lost, none twice"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_while_the_rest_of_its_batch_is_delivered() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[("OUTBOX_BATCH_SIZE", "100")]);
    let written = write_documents(&s, 41, doc).await;
    let poison = written[17].clone();
    rx.handle()
        .reject_ids(Some(&format!("^{poison}$")))
        .unwrap();

    let report = drain(&relay(&s)).await;

    assert_eq!(report.published, 40, "{report:?}");
    assert_eq!(report.dead_lettered, 1);
    assert!(report.made_progress());
    let accepted: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert!(!accepted.contains(&poison));
    assert_eq!(accepted.len(), 40);
    let dead = entry_state(&db, &poison).await;
    assert_eq!(dead.get_str("status").unwrap(), "dead");
    assert_eq!(
        dead.get_document("last_error")
            .unwrap()
            .get_i32("status")
            .unwrap(),
        400
    );
    assert!(dead.get_datetime("dead_at").is_ok());
    // The next run leaves the dead letter alone.
    let again = drain(&relay(&s)).await;
    assert_eq!(again.claimed, 0);
    db.drop().await;
}

#[tokio::test]
async fn two_drains_at_once_publish_no_event_twice() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[("OUTBOX_BATCH_SIZE", "50")]);
    let written = seed_entries(&db, 3_000, 100).await;
    let barrier = Arc::new(Barrier::new(2));
    let run = |barrier: Arc<Barrier>| {
        let r = relay(&s);
        async move {
            barrier.wait().await;
            drain(&r).await
        }
    };

    let (a, b) = tokio::join!(run(Arc::clone(&barrier)), run(barrier));

    assert_eq!(a.published + b.published, 3_000, "{a:?} {b:?}");
    assert!(
        a.published > 0 && b.published > 0,
        "both took part: {a:?} {b:?}"
    );
    let stats = rx.handle().stats();
    assert_eq!(stats.duplicate_deliveries, 0, "{stats:?}");
    assert_eq!(sorted(rx.handle().accepted_ids()), sorted(written));
    db.drop().await;
}

#[tokio::test]
async fn entries_are_dead_lettered_after_max_attempts() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[("OUTBOX_MAX_ATTEMPTS", "2")]);
    let written = write_documents(&s, 3, doc).await;
    rx.handle().push_fault(Fault::fail(10_000, 500)).unwrap();
    let relay = relay(&s);

    let first = drain(&relay).await;
    assert_eq!(first.rescheduled, 3);
    tokio::time::sleep(Duration::from_millis(1_100)).await; // longest backoff is 1 s here
    let second = drain(&relay).await;

    assert_eq!(second.dead_lettered, 3, "{second:?}");
    let dead = entry_state(&db, &written[0]).await;
    assert_eq!(dead.get_str("status").unwrap(), "dead");
    assert_eq!(dead.get_i32("attempts").unwrap(), 2);
    assert_eq!(
        dead.get_document("last_error")
            .unwrap()
            .get_str("kind")
            .unwrap(),
        "max_attempts"
    );
    assert_eq!(
        dead.get_array("history").unwrap().len(),
        2,
        "every failure kept"
    );
    rx.handle().clear_faults();
    assert_eq!(
        drain(&relay).await.claimed,
        0,
        "dead letters are not claimed"
    );
    db.drop().await;
}

#[tokio::test]
async fn misconfiguration_halts_the_run_without_spending_attempts() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[("EVENTGRID_TOPIC_KEY", "wrong-key")]);
    let written = write_documents(&s, 5, doc).await;

    let report = drain(&relay(&s)).await;

    assert!(!report.made_progress());
    assert!(
        matches!(&report.stopped, Some(StopReason::Misconfigured(d)) if d.contains("401")),
        "{report:?}"
    );
    assert_eq!(report.released, 5);
    for id in &written {
        let e = entry_state(&db, id).await;
        assert_eq!(e.get_str("status").unwrap(), "pending");
        assert_eq!(e.get_i32("attempts").unwrap(), 0, "no attempt spent");
        assert!(e.get("lease_token").unwrap().as_null().is_some());
        assert!(
            e.get_datetime("due_at").unwrap().timestamp_millis() <= Utc::now().timestamp_millis()
        );
    }
    assert_eq!(
        rx.handle().stats().requests,
        1,
        "stopped at the first refusal"
    );
    db.drop().await;
}

#[tokio::test]
async fn retry_after_from_event_grid_postpones_the_next_attempt() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let written = write_documents(&s, 1, doc).await;
    rx.handle()
        .push_fault(FailRule::new(1, 429).retry_after("30").into())
        .unwrap();
    let before = Utc::now().timestamp_millis();

    let report = drain(&relay(&s)).await;

    assert_eq!(report.rescheduled, 1);
    let e = entry_state(&db, &written[0]).await;
    let due = e.get_datetime("due_at").unwrap().timestamp_millis();
    assert!(
        due >= before + 30_000,
        "Retry-After 30 s outranks the 1 s backoff cap: due in {} ms",
        due - before
    );
    assert_eq!(drain(&relay(&s)).await.claimed, 0, "not due yet");
    db.drop().await;
}

#[tokio::test]
async fn a_quick_retry_inside_the_run_recovers_from_one_failure() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[("EVENTGRID_PUBLISH_RETRIES", "1")]);
    let written = write_documents(&s, 4, doc).await;
    rx.handle().push_fault(Fault::fail(1, 503)).unwrap();

    let report = drain(&relay(&s)).await;

    assert_eq!(report.published, 4, "{report:?}");
    assert_eq!(report.requests, 2);
    assert_eq!(
        entry_state(&db, &written[0])
            .await
            .get_i32("attempts")
            .unwrap(),
        0
    );
    db.drop().await;
}

#[tokio::test]
async fn requests_stay_within_event_grids_limits() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // 6,000 small events with the largest batch: at most 5,000 per request.
    let s = settings(&db, &rx, &[("OUTBOX_BATCH_SIZE", "5000")]);
    seed_entries(&db, 6_000, 0).await;
    // 25 events of ~200 KB: at most 1 MiB per request.
    let big = TestDb::new().await;
    let sb = settings(&big, &rx, &[("OUTBOX_BATCH_SIZE", "100")]);
    seed_entries(&big, 25, 200_000).await;

    let small = drain(&relay(&s)).await;
    let large = drain(&relay(&sb)).await;

    assert_eq!(small.published, 6_000, "{small:?}");
    assert_eq!(large.published, 25, "{large:?}");
    let requests = rx.handle().requests();
    assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");
    assert!(requests.iter().all(|r| r.event_count.unwrap() <= 5_000));
    assert!(requests.iter().all(|r| r.body_bytes <= 1_048_576));
    assert!(
        requests.iter().any(|r| r.event_count == Some(5_000)),
        "batches are packed full"
    );
    db.drop().await;
    big.drop().await;
}

#[tokio::test]
async fn an_unknown_outcome_is_retried_with_the_same_ids_and_only_those_are_duplicated() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(
        &db,
        &rx,
        &[
            ("OUTBOX_BATCH_SIZE", "5"),
            ("OUTBOX_PUBLISH_CONCURRENCY", "1"),
        ],
    );
    let written = write_documents(&s, 15, doc).await;
    rx.handle()
        .push_fault(Fault::DropAfterAccept { count: 1 })
        .unwrap();
    let relay = relay(&s);

    let mut published = 0;
    for _ in 0..50 {
        published += drain(&relay).await.published;
        if published == 15 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(published, 15);
    let accepted = rx.handle().accepted_ids();
    let distinct: HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        sorted(distinct.into_iter().cloned().collect()),
        sorted(written),
        "all delivered"
    );
    let stats = rx.handle().stats();
    assert_eq!(stats.dropped_responses, 1);
    assert_eq!(
        stats.duplicate_deliveries, 5,
        "only the dropped request's 5 events repeat"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_stale_claim_cannot_overwrite_the_claim_that_replaced_it() {
    let db = TestDb::new().await;
    let ids = seed_entries(&db, 5, 10).await;
    let store = OutboxStore::new(&db.db(), &db.settings.outbox_collection);
    let lease = Duration::from_secs(30);
    let now = Utc::now();

    let old = store.claim(now, lease, 100).await.unwrap();
    assert_eq!(old.entries.len(), 5);
    assert_eq!(
        store.claim(now, lease, 100).await.unwrap().entries.len(),
        0,
        "held by the lease"
    );
    // Later than the lease: the entries are claimable again (a killed or stalled relay).
    let later = now + chrono::Duration::seconds(31);
    let new = store.claim(later, lease, 100).await.unwrap();
    assert_eq!(new.entries.len(), 5, "an expired lease frees its entries");
    let event_ids: Vec<EventId> = old.entries.iter().map(|e| e.event.id).collect();

    // The zombie (old claim) can change nothing.
    assert_eq!(
        store
            .mark_published(old.token, &event_ids, later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.release(old.token, &event_ids, later).await.unwrap(),
        0
    );
    let err = outbox_relay::outbox::LastError {
        kind: outbox_relay::publisher::FailureKind::Status,
        status: Some(503),
        code: None,
        message: "x".into(),
        request_id: None,
    };
    assert_eq!(
        store
            .reschedule(old.token, &event_ids, later, &err, later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .dead_letter(old.token, &event_ids, &err, true, later)
            .await
            .unwrap(),
        0
    );
    // The current claim can.
    assert_eq!(
        store
            .mark_published(new.token, &event_ids, later)
            .await
            .unwrap(),
        5
    );
    for id in &ids {
        assert_eq!(
            entry_state(&db, id).await.get_str("status").unwrap(),
            "published"
        );
    }
    db.drop().await;
}
