//! The outbox store's queries on a real replica set, called directly: the claim's cut-off and
//! top-up, and the subject-ordering deferral.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use outbox_relay::domain::{EventId, OutboxEvent};
use outbox_relay::outbox::LastError;
use outbox_relay::outbox::store::{self, Claim, OutboxStore, field};
use serde_json::value::RawValue;
use tokio::sync::Barrier;

use crate::support::TestDb;
use crate::support::mongo::entry_state;

const LEASE: Duration = Duration::from_secs(60);

/// A store over the test database's entries, and "now", to the millisecond.
fn store_of(db: &TestDb) -> (OutboxStore, DateTime<Utc>) {
    (
        OutboxStore::new(&db.db(), db.outbox().name()),
        Utc::now().trunc_subsecs(3),
    )
}

/// An entry for version `version` of document `subject`, written (and due) at `at`.
fn entry(db: &TestDb, subject: &str, version: u64, at: DateTime<Utc>) -> (EventId, Document) {
    let event = OutboxEvent::new(
        EventId::for_change(&db.name, "documents", subject, "l", version),
        subject.to_owned(),
        "CosmosDB.DocumentChanged".into(),
        "1.0".into(),
        RawValue::from_string(format!(r#"{{"v":{version}}}"#)).unwrap(),
        at,
    );
    (
        event.id,
        store::new_entry(&event, "documents", subject, None, None),
    )
}

/// Inserts `entries`; returns their ids in the same order.
async fn seed(db: &TestDb, entries: Vec<(EventId, Document)>) -> Vec<EventId> {
    let (ids, docs): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
    db.outbox().insert_many(docs).await.unwrap();
    ids
}

fn ids_of(claim: &Claim) -> Vec<EventId> {
    claim.entries.iter().map(|e| e.event.id).collect()
}

async fn due_at(db: &TestDb, id: EventId) -> DateTime<Utc> {
    let state = entry_state(db, &id.to_string()).await;
    let due = state.get_datetime("due_at").unwrap();
    DateTime::from_timestamp_millis(due.timestamp_millis()).unwrap()
}

fn failure() -> LastError {
    LastError {
        kind: outbox_relay::publisher::FailureKind::Status,
        status: Some(400),
        code: None,
        message: "rejected".into(),
        request_id: None,
    }
}

#[tokio::test]
async fn a_claim_takes_exactly_its_limit_when_many_entries_share_one_millisecond() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let at = now - chrono::Duration::minutes(1);
    let all = seed(
        &db,
        (0..25)
            .map(|i| entry(&db, &format!("d-{i}"), 1, at))
            .collect(),
    )
    .await;

    let mut sizes = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let claim = store.claim(now, LEASE, 10).await.unwrap();
        sizes.push(claim.entries.len());
        for id in ids_of(&claim) {
            assert!(seen.insert(id), "{id} claimed twice");
        }
    }

    assert_eq!(sizes, [10, 10, 5, 0]);
    assert_eq!(seen, all.into_iter().collect::<HashSet<_>>());
    db.drop().await;
}

#[tokio::test]
async fn a_claim_takes_every_entry_before_its_cut_off_then_tops_up_at_it() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    let ms = chrono::Duration::milliseconds;
    // Five entries one millisecond apart, then ten sharing the cut-off's millisecond, then one
    // not due yet.
    let before = seed(
        &db,
        (0..5)
            .map(|i| entry(&db, &format!("b-{i}"), 1, t0 + ms(i)))
            .collect(),
    )
    .await;
    let at_cutoff = seed(
        &db,
        (0..10)
            .map(|i| entry(&db, &format!("c-{i}"), 1, t0 + ms(10)))
            .collect(),
    )
    .await;
    let later = seed(&db, vec![entry(&db, "later", 1, now + ms(1))]).await;

    let claim = store.claim(now, LEASE, 8).await.unwrap();

    let taken: HashSet<EventId> = ids_of(&claim).into_iter().collect();
    assert_eq!(taken.len(), 8, "{taken:?}");
    assert!(
        before.iter().all(|id| taken.contains(id)),
        "all five before the cut-off"
    );
    assert_eq!(at_cutoff.iter().filter(|id| taken.contains(id)).count(), 3);
    assert!(!taken.contains(&later[0]), "not due yet");
    assert_eq!(claim.contended, 0);
    // What the claim returned is what it holds in the database.
    let held = db
        .outbox()
        .count_documents(doc! {
            field::LEASE_TOKEN: { "$ne": bson::Bson::Null },
            field::DUE_AT: bson::DateTime::from_millis(claim.lease_until.timestamp_millis()),
        })
        .await
        .unwrap();
    assert_eq!(held, 8);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_claims_never_take_the_same_entry() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    // 200 entries on four milliseconds, so that every claim tops up at its cut-off.
    let all = seed(
        &db,
        (0..200)
            .map(|i| {
                let at = t0 + chrono::Duration::milliseconds(i / 50);
                entry(&db, &format!("d-{i}"), 1, at)
            })
            .collect(),
    )
    .await;
    let barrier = Arc::new(Barrier::new(4));

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, barrier) = (store.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut taken = Vec::new();
            loop {
                let claim = store.claim(now, LEASE, 7).await.unwrap();
                if claim.entries.is_empty() && claim.contended == 0 {
                    return taken;
                }
                taken.extend(ids_of(&claim));
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "{id} claimed by two claims");
        }
    }

    assert_eq!(seen, all.into_iter().collect::<HashSet<_>>());
    let claimed_twice = db
        .outbox()
        .count_documents(doc! { field::CLAIMS: { "$ne": 1 } })
        .await
        .unwrap();
    assert_eq!(
        claimed_twice, 0,
        "every entry was taken by exactly one claim"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_claim_counts_every_due_candidate_another_claim_took_first() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    const LIMIT: usize = 10;
    const AT_ONCE: usize = 6;
    const ROUNDS: usize = 15;
    // One millisecond apart, as real writes are, and enough that every claim of every round
    // finds at least LIMIT due entries: each one sees LIMIT candidates.
    seed(
        &db,
        (0..LIMIT * AT_ONCE * ROUNDS + LIMIT)
            .map(|i| {
                entry(
                    &db,
                    &format!("e-{i}"),
                    1,
                    t0 + chrono::Duration::milliseconds(i as i64),
                )
            })
            .collect(),
    )
    .await;

    let mut lost_rounds = 0;
    for _ in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(AT_ONCE));
        let claims = (0..AT_ONCE).map(|_| {
            let (store, barrier) = (store.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let claim = store.claim(now, LEASE, LIMIT as u32).await.unwrap();
                (claim.entries.len(), claim.contended)
            })
        });
        let results: Vec<(usize, usize)> =
            futures_util::future::try_join_all(claims).await.unwrap();
        // Each claim saw LIMIT due candidates: it either holds each one or counted it lost.
        for &(taken, contended) in &results {
            assert_eq!(taken + contended, LIMIT, "{results:?}");
        }
        if results.iter().any(|&(taken, _)| taken < LIMIT) {
            lost_rounds += 1;
        }
    }
    assert!(
        lost_rounds > 0,
        "{AT_ONCE} claims at once never lost a candidate in {ROUNDS} rounds"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_later_entry_waits_for_an_older_pending_entry_of_its_subject() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    let ms = chrono::Duration::milliseconds;
    let ids = seed(
        &db,
        vec![
            entry(&db, "a", 1, t0),
            entry(&db, "a", 2, t0 + ms(1)),
            entry(&db, "b", 1, t0 + ms(2)),
        ],
    )
    .await;
    let (a1, a2, b1) = (ids[0], ids[1], ids[2]);
    let first = store.claim(now, LEASE, 1).await.unwrap();
    assert_eq!(ids_of(&first), [a1]);
    let mut second = store.claim(now, LEASE, 10).await.unwrap();

    let deferred = store
        .defer_blocked(&mut second, now, Duration::from_secs(3600))
        .await
        .unwrap();

    assert_eq!(deferred, 1);
    assert_eq!(
        ids_of(&second),
        [b1],
        "b has nothing older; a2 waits for a1"
    );
    // a1 is being published by the first claim: a2 is looked at again in a second, unleased.
    assert_eq!(due_at(&db, a2).await, now + chrono::Duration::seconds(1));
    let a2_state = entry_state(&db, &a2.to_string()).await;
    assert_eq!(a2_state.get("lease_token"), Some(&bson::Bson::Null));

    // Once a1 is published, a2 goes.
    store.mark_published(first.token, &[a1], now).await.unwrap();
    let later = now + chrono::Duration::seconds(2);
    let mut third = store.claim(later, LEASE, 10).await.unwrap();
    let deferred = store
        .defer_blocked(&mut third, later, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((deferred, ids_of(&third)), (0, vec![a2]));
    db.drop().await;
}

#[tokio::test]
async fn entries_of_one_subject_in_one_claim_go_together() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    let ids = seed(
        &db,
        (1..=3)
            .map(|v| entry(&db, "a", v, t0 + chrono::Duration::milliseconds(v as i64)))
            .collect(),
    )
    .await;
    let mut claim = store.claim(now, LEASE, 10).await.unwrap();

    let deferred = store
        .defer_blocked(&mut claim, now, Duration::from_secs(3600))
        .await
        .unwrap();

    assert_eq!(deferred, 0);
    assert_eq!(ids_of(&claim), ids);
    db.drop().await;
}

#[tokio::test]
async fn a_later_entry_waits_until_a_backing_off_entry_of_its_subject_is_due() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    let ids = seed(
        &db,
        vec![
            entry(&db, "a", 1, t0),
            entry(&db, "a", 2, t0 + chrono::Duration::milliseconds(1)),
        ],
    )
    .await;
    let (a1, a2) = (ids[0], ids[1]);
    let first = store.claim(now, LEASE, 1).await.unwrap();
    let retry_at = now + chrono::Duration::hours(1);
    store
        .reschedule(first.token, &[a1], retry_at, &failure(), now)
        .await
        .unwrap();
    let mut second = store.claim(now, LEASE, 10).await.unwrap();
    assert_eq!(ids_of(&second), [a2]);

    let deferred = store
        .defer_blocked(&mut second, now, Duration::from_secs(60))
        .await
        .unwrap();

    assert_eq!(deferred, 1);
    assert!(second.entries.is_empty());
    assert_eq!(
        due_at(&db, a2).await,
        retry_at,
        "due with its blocker, not sooner"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_dead_entry_parks_its_subject_and_a_skipped_one_no_longer_blocks() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    let ids = seed(
        &db,
        vec![
            entry(&db, "a", 1, t0),
            entry(&db, "a", 2, t0 + chrono::Duration::milliseconds(1)),
        ],
    )
    .await;
    let (a1, a2) = (ids[0], ids[1]);
    let first = store.claim(now, LEASE, 1).await.unwrap();
    store
        .dead_letter(first.token, &[a1], &failure(), true, now)
        .await
        .unwrap();
    let parked_for = Duration::from_secs(600);
    let mut second = store.claim(now, LEASE, 10).await.unwrap();

    let deferred = store
        .defer_blocked(&mut second, now, parked_for)
        .await
        .unwrap();

    assert_eq!(deferred, 1);
    assert_eq!(
        due_at(&db, a2).await,
        now + chrono::Duration::seconds(600),
        "parked"
    );

    assert_eq!(store.skip_dead(&[a1], now).await.unwrap(), 1);
    let later = now + chrono::Duration::seconds(601);
    let mut third = store.claim(later, LEASE, 10).await.unwrap();
    let deferred = store
        .defer_blocked(&mut third, later, parked_for)
        .await
        .unwrap();

    assert_eq!(
        (deferred, ids_of(&third)),
        (0, vec![a2]),
        "a skipped entry does not block"
    );
    db.drop().await;
}

/// A relay whose claim was taken over changes nothing: every state change is fenced on its
/// token.
#[tokio::test]
async fn a_claim_that_was_taken_over_changes_nothing() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let ids = seed(
        &db,
        vec![entry(&db, "a", 1, now - chrono::Duration::minutes(1))],
    )
    .await;
    let stale = store.claim(now, LEASE, 1).await.unwrap();
    let after_lease = now + chrono::Duration::seconds(61);
    let current = store.claim(after_lease, LEASE, 1).await.unwrap();
    assert_eq!(ids_of(&current), ids, "the lease ran out: taken over");

    let changed = [
        store.mark_published(stale.token, &ids, now).await.unwrap(),
        store
            .reschedule(stale.token, &ids, now, &failure(), now)
            .await
            .unwrap(),
        store
            .dead_letter(stale.token, &ids, &failure(), true, now)
            .await
            .unwrap(),
        store.release(stale.token, &ids, now).await.unwrap(),
        store
            .mark_claim_published(stale.token, stale.lease_until, now)
            .await
            .unwrap(),
    ];

    assert_eq!(changed, [0; 5]);
    assert_eq!(
        store
            .mark_claim_published(current.token, current.lease_until, after_lease)
            .await
            .unwrap(),
        1
    );
    let state = entry_state(&db, &ids[0].to_string()).await;
    assert_eq!(state.get_str("status").unwrap(), "published");
    assert_eq!(
        state.get_i32("attempts").unwrap(),
        0,
        "no failure was recorded"
    );
    db.drop().await;
}

/// A change by id reads its own entries only, however large the backlog, and leaves them held
/// by no one — so the same token cannot move a published entry back.
///
/// `mongod`'s planner once chose the claim index (status first) for a filter that named the
/// status, and a mark of 300 ids read every pending entry of the backlog: the profiler of the
/// test's own database shows what the update examined.
#[tokio::test]
async fn a_change_by_id_examines_its_own_entries_however_large_the_backlog() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let backlog = 3_000;
    let entries = (0..backlog)
        .map(|n| entry(&db, &format!("s{n}"), 1, now - chrono::Duration::minutes(1)))
        .collect();
    seed(&db, entries).await;
    let claim = store.claim(now, LEASE, backlog).await.unwrap();
    assert_eq!(claim.entries.len(), backlog as usize);
    let ids: Vec<EventId> = ids_of(&claim).into_iter().take(300).collect();

    db.db().run_command(doc! { "profile": 2 }).await.unwrap();
    let marked = store.mark_published(claim.token, &ids, now).await.unwrap();
    db.db().run_command(doc! { "profile": 0 }).await.unwrap();
    assert_eq!(marked, 300);

    assert_eq!(
        docs_examined(&db, &["update"]).await,
        300,
        "the mark read only its own entries, not the backlog of {backlog}"
    );

    let state = entry_state(&db, &ids[0].to_string()).await;
    assert_eq!(state.get_str("status").unwrap(), "published");
    assert_eq!(state.get("lease_token"), Some(&bson::Bson::Null));
    assert_eq!(
        store.release(claim.token, &ids, now).await.unwrap(),
        0,
        "a published entry is no longer held by the token that published it"
    );
    db.drop().await;
}

/// The ordering check of a claim of many subjects reads their entries only, through the subject
/// index: left to itself, `mongod`'s planner chose the claim index for 1,000 subjects and read
/// every pending entry of the backlog.
#[tokio::test]
async fn the_ordering_check_of_a_large_claim_examines_its_subjects_only() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let (store, now) = store_of(&db);
    let t0 = now - chrono::Duration::minutes(1);
    let ms = chrono::Duration::milliseconds;
    // Two changes of each of 1,000 subjects, and a backlog of 2,000 other subjects after them.
    let entries = (0..1_000)
        .flat_map(|n| [(n, 1, t0), (n, 2, t0 + ms(1))])
        .chain((1_000..3_000).map(|n| (n, 1, t0 + ms(2))))
        .map(|(n, version, at)| entry(&db, &format!("s{n}"), version, at))
        .collect();
    seed(&db, entries).await;
    let mut claim = store.claim(now, LEASE, 1_000).await.unwrap();

    db.db().run_command(doc! { "profile": 2 }).await.unwrap();
    let deferred = store
        .defer_blocked(&mut claim, now, Duration::from_secs(3600))
        .await
        .unwrap();
    db.db().run_command(doc! { "profile": 0 }).await.unwrap();
    assert_eq!(
        (deferred, claim.entries.len()),
        (0, 1_000),
        "the claim took the first change of each subject; the second waits for it"
    );
    assert_eq!(
        docs_examined(&db, &["query", "getmore"]).await,
        2_000,
        "both changes of the claim's subjects, not the backlog of 4,000"
    );
    db.drop().await;
}

/// The documents examined by the operations of the kinds `ops` ("update"; "query" and its
/// "getmore"s) on the entries that the test database's profiler recorded.
async fn docs_examined(db: &TestDb, ops: &[&str]) -> i64 {
    let profiled: Vec<Document> = db
        .db()
        .collection::<Document>("system.profile")
        .find(doc! { "op": { "$in": ops }, "ns": db.outbox().namespace().to_string() })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(!profiled.is_empty(), "the profiler recorded no {ops:?}");
    profiled
        .iter()
        .map(|op| {
            op.get_i64("docsExamined")
                .or_else(|_| op.get_i32("docsExamined").map(i64::from))
                .unwrap()
        })
        .sum()
}

#[tokio::test]
async fn without_retention_a_publish_deletes_only_the_entries_its_claim_still_holds() {
    let db = TestDb::new().await;
    let (store, now) = store_of(&db);
    let store = store.keeping_published(false);
    let ms = chrono::Duration::milliseconds;
    let t0 = now - chrono::Duration::minutes(1);
    let ids = seed(
        &db,
        (1..=6)
            .map(|v| entry(&db, &format!("s{v}"), 1, t0 + ms(v)))
            .collect(),
    )
    .await;
    // A claim whose lease runs out, then another relay's claim of every entry, its three too.
    let stale = store.claim(now, Duration::from_secs(1), 3).await.unwrap();
    let later = now + chrono::Duration::seconds(2);
    let current = store.claim(later, LEASE, 10).await.unwrap();
    let taken = ids_of(&stale);
    assert_eq!(taken, ids[..3]);
    assert_eq!(
        ids_of(&current).into_iter().collect::<HashSet<_>>(),
        ids.iter().copied().collect::<HashSet<_>>()
    );

    // The stale claim's publish deletes nothing: the entries belong to the current claim.
    assert_eq!(
        store
            .mark_published(stale.token, &taken, later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .mark_claim_published(stale.token, stale.lease_until, later)
            .await
            .unwrap(),
        0
    );
    assert_eq!(db.count_entries_with("pending").await, 6);

    // The current claim's publish deletes its own entries, by id and by index range.
    assert_eq!(
        store
            .mark_published(current.token, &taken[..1], later)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .mark_claim_published(current.token, current.lease_until, later)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        db.count_entries().await,
        0,
        "none is kept, published or not"
    );
    db.drop().await;
}
