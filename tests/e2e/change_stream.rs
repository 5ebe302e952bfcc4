//! `OUTBOX_SOURCE=change-stream`: one event per change to the documents' collection by anyone,
//! from a checkpointed, leased change stream — with the real handler binary, a real replica
//! set and the strict receiver.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use serde_json::Value;

use crate::support::receiver::{self, RunningReceiver};
use crate::support::{Handler, TestDb, app_settings};

/// Handler settings for the change-stream source: short lease (2 s ≥ 2 × the 1 s publish
/// timeout) so a standby takes over quickly; `extra` last.
pub fn stream_settings(
    db: &TestDb,
    rx: &RunningReceiver,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut base: Vec<(&str, &str)> = vec![
        ("OUTBOX_SOURCE", "change-stream"),
        ("OUTBOX_TAIL", "on"),
        ("OUTBOX_LEASE_SECS", "2"),
        ("EVENTGRID_PUBLISH_TIMEOUT_MS", "1000"),
        ("OUTBOX_TIME_BUDGET_SECS", "20"),
        ("OUTBOX_POLL_MS", "200"),
        ("OUTBOX_BATCH_SIZE", "10"),
    ];
    // The handlers connect with this test's `appName`, which failpoints can single out.
    let uri = db.uri_for_handler();
    base.push(("MONGODB_URI", &uri));
    base.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    base.extend_from_slice(extra);
    app_settings(db, rx, &base)
}

/// Waits until `n` distinct subjects were announced.
pub async fn wait_for_subjects(rx: &RunningReceiver, n: usize, h: &Handler) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let subjects: HashSet<String> = rx
            .handle()
            .events()
            .into_iter()
            .map(|e| e.subject)
            .collect();
        if subjects.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} subjects:\n{}",
            subjects.len(),
            h.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn checkpoints(db: &TestDb) -> mongodb::Collection<Document> {
    db.db()
        .collection(&outbox_relay::outbox::stream::checkpoints_collection(
            &db.settings.outbox_collection,
        ))
}

pub fn dead_letters(db: &TestDb) -> mongodb::Collection<Document> {
    db.db()
        .collection(&outbox_relay::outbox::stream::dead_letters_collection(
            &db.settings.outbox_collection,
        ))
}

/// Waits until a reader saved a position (the first reader ever starts at the present: changes
/// before that are not announced).
pub async fn wait_for_position(db: &TestDb, h: &Handler) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let filter = doc! { "_id": &db.settings.collection, "token": { "$exists": true } };
    while checkpoints(db)
        .find_one(filter.clone())
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "no position saved:\n{}",
            h.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_for(rx: &RunningReceiver, n: u64, h: &Handler) {
    assert!(
        rx.handle()
            .wait_for_events(n, Duration::from_secs(60))
            .await,
        "expected {n} events, got {}:\n{}",
        rx.handle().stats().accepted_events,
        h.output()
    );
}

/// `(type, subject, data)` of every accepted event, in arrival order.
fn received(rx: &RunningReceiver) -> Vec<(String, String, Value)> {
    rx.handle()
        .events()
        .into_iter()
        .map(|e| {
            let v = e.to_value().unwrap();
            (e.event_type, e.subject, v["data"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_with_the_driver_each_give_one_event_of_the_right_type_in_order() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::standalone(&stream_settings(&db, &rx, &[])).await;
    wait_for_position(&db, &h).await;
    let docs = db.documents();
    docs.insert_one(doc! { "_id": "a", "n": 1 }).await.unwrap();
    docs.insert_one(doc! { "_id": "b", "n": 1 }).await.unwrap();
    docs.update_one(doc! { "_id": "a" }, doc! { "$set": { "n": 2 } })
        .await
        .unwrap();
    docs.replace_one(doc! { "_id": "b" }, doc! { "m": 9 })
        .await
        .unwrap();
    docs.delete_one(doc! { "_id": "a" }).await.unwrap();
    let oid = mongodb::bson::oid::ObjectId::new();
    docs.insert_one(doc! { "_id": oid, "n": 3 }).await.unwrap();
    wait_for(&rx, 6, &h).await;
    // Through the HTTP function: the document only, the event from the stream.
    let w = h
        .http()
        .post(h.url("/api/documents"))
        .header("content-type", "application/json")
        .body(r#"{"_id":"c","n":4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), 201);
    wait_for(&rx, 7, &h).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let got = received(&rx);
    let c = &db.settings.collection;
    let expect = [
        (
            "CosmosDB.DocumentCreated",
            format!("{c}/a"),
            Some(serde_json::json!({"_id": "a", "n": 1})),
        ),
        (
            "CosmosDB.DocumentCreated",
            format!("{c}/b"),
            Some(serde_json::json!({"_id": "b", "n": 1})),
        ),
        ("CosmosDB.DocumentUpdated", format!("{c}/a"), None),
        (
            "CosmosDB.DocumentReplaced",
            format!("{c}/b"),
            Some(serde_json::json!({"_id": "b", "m": 9})),
        ),
        ("CosmosDB.DocumentDeleted", format!("{c}/a"), None),
        (
            "CosmosDB.DocumentCreated",
            format!("{c}/{}", oid.to_hex()),
            None,
        ),
        ("CosmosDB.DocumentCreated", format!("{c}/c"), None),
    ];
    assert_eq!(got.len(), expect.len(), "one event per change: {got:#?}");
    for ((t, s, data), (et, es, edoc)) in got.iter().zip(&expect) {
        assert_eq!((t.as_str(), s.as_str()), (*et, es.as_str()), "{got:#?}");
        let op = et.trim_start_matches("CosmosDB.Document").to_lowercase();
        assert_eq!(data["operation"], Value::from(op), "{data}");
        if let Some(edoc) = edoc {
            assert_eq!(&data["document"], edoc, "{data}");
        }
    }
    // The update's document is the post-image (the lookup may see a later state: here the
    // document was deleted right after, so it may be missing, never the old one).
    assert_ne!(got[2].2["document"]["n"], Value::from(1));
    assert!(
        got[4].2.get("document").is_none(),
        "a deletion has no document"
    );
    assert_eq!(got[6].2["document"]["n"], Value::from(4));
    // No outbox entry was written by the HTTP function.
    assert_eq!(db.count_entries().await, 0);
    // Ids are unique per change.
    let ids: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(ids.len(), 7);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_killed_mid_batch_loses_nothing_and_repeats_only_its_batches_in_flight() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Answers take a moment, so kills land while requests are in flight.
    rx.handle().set_latency(Some(Duration::from_millis(30)));
    let settings = stream_settings(&db, &rx, &[]);
    let docs = db.documents();
    // Receiver request seq ranges decided while a killed reader lived.
    let mut killed_epochs = Vec::new();
    let mut inserted = 0_usize;
    for round in 0..4 {
        let h = Handler::standalone(&settings).await;
        wait_for_position(&db, &h).await;
        let lo = rx.handle().stats().requests;
        for _ in 0..40 {
            docs.insert_one(doc! { "_id": format!("k-{inserted}"), "round": round })
                .await
                .unwrap();
            inserted += 1;
        }
        let seen = rx.handle().stats().accepted_events;
        rx.handle()
            .wait_for_events(seen + rand::random_range(1..20), Duration::from_secs(10))
            .await;
        h.sigkill();
        let mut h = h;
        h.kill().await;
        killed_epochs.push(lo..=rx.handle().stats().requests);
    }
    rx.handle().clear_faults();
    let last = Handler::standalone(&settings).await;
    wait_for(&rx, inserted as u64, &last).await;
    // Let the last reader settle: anything it would repeat would show now.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut deliveries: HashMap<String, Vec<u64>> = HashMap::new();
    let mut subjects: HashMap<String, String> = HashMap::new();
    for e in rx.handle().events() {
        deliveries.entry(e.id.clone()).or_default().push(e.request);
        subjects.insert(e.id, e.subject);
    }
    let announced: HashSet<&str> = subjects.values().map(String::as_str).collect();
    let lost: Vec<String> = (0..inserted)
        .map(|i| format!("{}/k-{i}", db.settings.collection))
        .filter(|s| !announced.contains(s.as_str()))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}\n{}", last.output());
    assert_eq!(deliveries.len(), inserted, "one id per change");
    let mut duplicated = 0;
    for (id, requests) in &deliveries {
        for r in &requests[..requests.len() - 1] {
            duplicated += 1;
            assert!(
                killed_epochs.iter().any(|epoch| epoch.contains(r)),
                "{id} delivered again although its earlier delivery (request {r}) was not cut short by a kill: {requests:?}"
            );
        }
    }
    // At most the batches in flight at each kill (10 changes each) are repeated.
    assert!(
        duplicated <= 10 * killed_epochs.len(),
        "{duplicated} duplicates"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_one_active_and_the_other_takes_over_when_it_is_killed() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = stream_settings(&db, &rx, &[]);
    let first = Handler::standalone(&settings).await;
    wait_for_position(&db, &first).await;
    let second = Handler::standalone(&settings).await;
    let docs = db.documents();
    for i in 0..20 {
        docs.insert_one(doc! { "_id": format!("t-{i}") })
            .await
            .unwrap();
    }
    wait_for(&rx, 20, &first).await;
    let reading = |h: &Handler| h.output().contains("Reading the change stream");
    assert!(reading(&first), "{}", first.output());
    assert!(
        !reading(&second),
        "only one reader is active:\n{}",
        second.output()
    );
    assert!(
        second.output().contains("standing by"),
        "{}",
        second.output()
    );
    let mut first = first;
    first.kill().await;
    for i in 20..40 {
        docs.insert_one(doc! { "_id": format!("t-{i}") })
            .await
            .unwrap();
    }
    wait_for_subjects(&rx, 40, &second).await;
    assert!(reading(&second), "{}", second.output());
    // The killed reader's last batch may not have been checkpointed: at most that batch (10
    // changes) is published again.
    let events = rx.handle().stats().accepted_events;
    assert!(events <= 50, "{events} events for 40 changes");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_server_no_longer_has_stops_the_reader_with_the_gap_and_the_fix() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::standalone(&stream_settings(&db, &rx, &[])).await;
    wait_for_position(&db, &h).await;
    db.documents()
        .insert_one(doc! { "_id": "x" })
        .await
        .unwrap();
    wait_for(&rx, 1, &h).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // From now on the server answers this handler's stream as it does once the position has
    // rolled out of the oplog: ChangeStreamHistoryLost (286), not resumable.
    let admin = db.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": { "failCommands": ["aggregate", "getMore"], "errorCode": 286, "appName": db.app_name() },
        })
        .await
        .unwrap();
    // The `getMore` already waiting may still return this change; a change read before the
    // error is published (the gap begins after it), one the server refused is not.
    db.documents()
        .insert_one(doc! { "_id": "y" })
        .await
        .unwrap();
    h.wait_for_output("change stream position lost").await;
    let at_stop = checkpoints(&db).find_one(doc! {}).await.unwrap().unwrap();
    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .unwrap();
    let out = h.output();
    assert!(out.contains("no longer in the server's history"), "{out}");
    assert!(
        out.contains("handler outbox resync") && out.contains("delete the checkpoint"),
        "{out}"
    );
    // The reader stopped for good: it does not go on "from now" once the server would let it.
    let before_z = rx.handle().stats().accepted_events;
    db.documents()
        .insert_one(doc! { "_id": "z" })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subjects: Vec<String> = received(&rx).into_iter().map(|(_, s, _)| s).collect();
    let c = &db.settings.collection;
    assert_eq!(subjects[0], format!("{c}/x"));
    assert!(
        !subjects.contains(&format!("{c}/z")) && rx.handle().stats().accepted_events == before_z,
        "nothing is published after the stop: {subjects:?}\n{}",
        h.output()
    );
    let now = checkpoints(&db).find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(
        now.get("token"),
        at_stop.get("token"),
        "the position is left where the reader stopped"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_too_large_to_publish_is_dead_lettered_and_the_changes_after_it_are_delivered() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::standalone(&stream_settings(&db, &rx, &[])).await;
    wait_for_position(&db, &h).await;
    let docs = db.documents();
    docs.insert_one(doc! { "_id": "before" }).await.unwrap();
    docs.insert_one(doc! { "_id": "huge", "pad": "x".repeat(1_200_000) })
        .await
        .unwrap();
    docs.insert_one(doc! { "_id": "after" }).await.unwrap();
    wait_for(&rx, 2, &h).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let letter = loop {
        if let Some(d) = dead_letters(&db).find_one(doc! {}).await.unwrap() {
            break d;
        }
        assert!(Instant::now() < deadline, "{}", h.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = &db.settings.collection;
    let subjects: Vec<String> = rx
        .handle()
        .events()
        .into_iter()
        .map(|e| e.subject)
        .collect();
    assert_eq!(subjects, [format!("{c}/before"), format!("{c}/after")]);
    assert_eq!(letter.get_str("subject").unwrap(), format!("{c}/huge"));
    assert_eq!(
        letter
            .get_document("reason")
            .unwrap()
            .get_str("kind")
            .unwrap(),
        "too_large"
    );
    assert_eq!(
        letter
            .get_document("change")
            .unwrap()
            .get_document("documentKey")
            .unwrap()
            .get_str("_id")
            .unwrap(),
        "huge"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_functions_host_each_timer_invocation_reads_from_the_checkpoint_for_its_budget() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::functions(&stream_settings(
        &db,
        &rx,
        &[("OUTBOX_TIME_BUDGET_SECS", "2")],
    ))
    .await;
    // The first invocation starts the stream at the present and saves that position.
    assert_eq!(h.tick().await.status, 200);
    wait_for_position(&db, &h).await;
    // Changes made between invocations are read by the next one, from the checkpoint.
    for i in 0..5 {
        db.documents()
            .insert_one(doc! { "_id": format!("f-{i}") })
            .await
            .unwrap();
    }
    assert_eq!(rx.handle().stats().accepted_events, 0);
    let r = h.tick().await;
    assert_eq!(r.status, 200, "{:?}", r.logs());
    assert_eq!(rx.handle().stats().accepted_events, 5, "{}", h.output());
    db.drop().await;
}
