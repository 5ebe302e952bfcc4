//! The change-stream source on Cosmos DB for MongoDB (RU), imitated by `cosmos-ru-proxy` in
//! front of the real replica set: RU's mandatory pipeline, no `operationType`, no deletes,
//! throttled empty pages — with the real handler binary and the strict receiver.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cosmos_ru_proxy::Match;
use mongodb::bson::doc;
use serde_json::Value;

use crate::change_stream::{stream_settings, wait_for, wait_for_position, wait_for_subjects};
use crate::cosmos::{proxy, through};
use crate::support::receiver::{self, RunningReceiver};
use crate::support::{Handler, TestDb};

/// Subject → the ids of the events announcing it, in arrival order.
fn deliveries(rx: &RunningReceiver) -> HashMap<String, Vec<String>> {
    let mut by_subject: HashMap<String, Vec<String>> = HashMap::new();
    for e in rx.handle().events() {
        by_subject.entry(e.subject).or_default().push(e.id);
    }
    by_subject
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_change_stream_is_refused_by_the_proxy_and_stops_a_relay_set_to_mongodb() {
    let proxy = proxy().await;
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // The proxy's rule on its own: the driver's plain watch() is refused with RU's error.
    let client = mongodb::Client::with_uri_str(proxy.uri("rs0"))
        .await
        .unwrap();
    let coll = client
        .database(&db.name)
        .collection::<mongodb::bson::Document>(&db.settings.collection);
    let refused = coll.watch().await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("Change stream must be followed by a match and then a project stage"),
        "{refused}"
    );
    // A relay told the server is MongoDB opens that ordinary stream: it stops, saying what to
    // set, and publishes nothing.
    let h = Handler::standalone(&through(
        &proxy,
        stream_settings(&db, &rx, &[("OUTBOX_CHANGE_STREAM_TARGET", "mongodb")]),
    ))
    .await;
    h.wait_for_output("The change stream stopped").await;
    let out = h.output();
    assert!(
        out.contains("set it to cosmos-ru") && out.contains("Change stream target: mongodb"),
        "{out}"
    );
    db.documents()
        .insert_one(doc! { "_id": "x" })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.handle().stats().accepted_events, 0);
    assert!(proxy.handle().change_stream_stats().refused >= 2);
    assert_eq!(proxy.handle().change_stream_stats().opened, 0);
    drop(client);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cosmos_ru_each_insert_update_and_replace_gives_one_changed_event_and_deletes_none() {
    let proxy = proxy().await;
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // `auto`: the proxy answers RU's GetCollection, so the relay picks RU's rules.
    let h = Handler::standalone(&through(&proxy, stream_settings(&db, &rx, &[]))).await;
    wait_for_position(&db, &h).await;
    let out = h.output();
    assert!(out.contains("Change stream target: cosmos-ru"), "{out}");
    assert!(
        out.contains(
            "no delete events on Cosmos DB for MongoDB RU: use a soft-delete flag and a TTL"
        ),
        "{out}"
    );
    // Changes made with the driver straight to the server, not through the handler.
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
    docs.insert_one(doc! { "_id": "c", "n": 3 }).await.unwrap();
    wait_for(&rx, 5, &h).await;
    // A delete event would have come before c's.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let c = &db.settings.collection;
    let got: Vec<(String, String, Value)> = rx
        .handle()
        .events()
        .into_iter()
        .map(|e| {
            let v = e.to_value().unwrap();
            (e.event_type, e.subject, v["data"].clone())
        })
        .collect();
    let subjects: Vec<&str> = got.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("{c}/a"),
            format!("{c}/b"),
            format!("{c}/a"),
            format!("{c}/b"),
            format!("{c}/c")
        ],
        "one event per insert, update and replace, none for the delete: {got:#?}"
    );
    for (t, _, data) in &got {
        assert_eq!(t, "CosmosDB.DocumentChanged", "{got:#?}");
        assert_eq!(data["operation"], "changed", "{data}");
    }
    assert_eq!(
        got[1].2["document"],
        serde_json::json!({"_id": "b", "n": 1})
    );
    assert_eq!(
        got[3].2["document"],
        serde_json::json!({"_id": "b", "m": 9})
    );
    assert_eq!(
        got[4].2["document"],
        serde_json::json!({"_id": "c", "n": 3})
    );
    let ids: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(ids.len(), 5, "an id per change");
    // The relay read with RU's pipeline: the proxy accepted its stream and refused none.
    let stats = proxy.handle().change_stream_stats();
    assert!(stats.opened >= 1 && stats.refused == 0, "{stats:?}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_empty_pages_and_16500_errors_mid_stream_lose_and_repeat_nothing() {
    let proxy = proxy().await;
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::standalone(&through(
        &proxy,
        stream_settings(&db, &rx, &[("OUTBOX_CHANGE_STREAM_TARGET", "cosmos-ru")]),
    ))
    .await;
    wait_for_position(&db, &h).await;
    let docs = db.documents();
    let mut inserted = 0;
    let mut insert = async |n: usize| {
        for _ in 0..n {
            docs.insert_one(doc! { "_id": format!("t-{inserted}") })
                .await
                .unwrap();
            inserted += 1;
        }
    };
    insert(10).await;
    wait_for_subjects(&rx, 10, &h).await;
    // The stream is throttled: the next 12 pages come back empty, at once.
    let throttled_at = Instant::now();
    proxy.handle().throttle_change_stream_next(12);
    insert(15).await;
    wait_for_subjects(&rx, 25, &h).await;
    assert_eq!(proxy.handle().pending_change_stream_throttles(), 0);
    // The relay waited between them (50, 100, then 200 ms each: OUTBOX_POLL_MS) instead of
    // asking again at once.
    assert!(
        throttled_at.elapsed() >= Duration::from_secs(1),
        "12 throttled pages in {:?}",
        throttled_at.elapsed()
    );
    assert_eq!(proxy.handle().change_stream_stats().throttled_pages, 12);
    // Then RU answers three of the stream's commands with a 16500 error instead: the relay
    // opens the stream again. The `getMore` already waiting when the errors begin still
    // returns a page, so the error comes right after a page whose end no later page has
    // shown yet; the relay must save past that page before opening the stream again, or it
    // reads the page twice.
    insert(1).await;
    wait_for_subjects(&rx, 26, &h).await;
    let handle = proxy.handle();
    handle.set_throttle_match(Match::data().in_namespace(db.settings.collection.clone()));
    handle.throttle_next(3);
    insert(14).await;
    wait_for_subjects(&rx, 40, &h).await;
    assert_eq!(handle.pending_faults().0, 0, "{}", h.output());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Ledger: every document announced exactly once (no unknown outcomes here, so no repeats).
    let by_subject = deliveries(&rx);
    let c = &db.settings.collection;
    let lost: Vec<String> = (0..40)
        .map(|i| format!("{c}/t-{i}"))
        .filter(|s| !by_subject.contains_key(s))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}\n{}", h.output());
    let repeated: Vec<_> = by_subject.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(repeated.is_empty(), "repeated: {repeated:?}");
    assert_eq!(rx.handle().stats().accepted_events, 40);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cosmos_ru_a_reader_killed_mid_page_loses_nothing_and_repeats_with_the_same_ids() {
    let proxy = proxy().await;
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Answers take a moment, so kills land while a page is being published.
    rx.handle().set_latency(Some(Duration::from_millis(30)));
    // Every change of a page carries the page's token (on by default; said for the reader).
    proxy.handle().set_change_stream_page_tokens(true);
    let settings = through(
        &proxy,
        stream_settings(&db, &rx, &[("OUTBOX_CHANGE_STREAM_TARGET", "cosmos-ru")]),
    );
    let docs = db.documents();
    let mut inserted = 0_usize;
    for _ in 0..3 {
        let h = Handler::standalone(&settings).await;
        wait_for_position(&db, &h).await;
        // One write of 40 documents: pages of many changes, published 10 at a time
        // (OUTBOX_BATCH_SIZE), so the reader is killed with a page half published.
        let batch: Vec<_> = (inserted..inserted + 40)
            .map(|i| doc! { "_id": format!("p-{i}") })
            .collect();
        docs.insert_many(batch).await.unwrap();
        inserted += 40;
        let seen = rx.handle().stats().accepted_events;
        rx.handle()
            .wait_for_events(seen + rand::random_range(10..30), Duration::from_secs(10))
            .await;
        h.sigkill();
        let mut h = h;
        h.kill().await;
    }
    rx.handle().clear_faults();
    let last = Handler::standalone(&settings).await;
    wait_for_subjects(&rx, inserted, &last).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let by_subject = deliveries(&rx);
    let c = &db.settings.collection;
    let lost: Vec<String> = (0..inserted)
        .map(|i| format!("{c}/p-{i}"))
        .filter(|s| !by_subject.contains_key(s))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}\n{}", last.output());
    // A page read again after a kill gives its changes the ids they had: consumers drop the
    // repeats.
    let renamed: Vec<_> = by_subject
        .iter()
        .filter(|(_, ids)| ids.iter().any(|id| id != &ids[0]))
        .collect();
    assert!(renamed.is_empty(), "repeated with another id: {renamed:?}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_functions_host_on_cosmos_ru_each_invocation_goes_on_from_the_last_page_read() {
    let proxy = proxy().await;
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::functions(&through(
        &proxy,
        stream_settings(
            &db,
            &rx,
            &[
                ("OUTBOX_CHANGE_STREAM_TARGET", "cosmos-ru"),
                ("OUTBOX_TIME_BUDGET_SECS", "2"),
            ],
        ),
    ))
    .await;
    assert_eq!(h.tick().await.status, 200);
    wait_for_position(&db, &h).await;
    // A page of 25 changes made between invocations, published 10 at a time by the next one.
    let batch: Vec<_> = (0..25).map(|i| doc! { "_id": format!("f-{i}") }).collect();
    db.documents().insert_many(batch).await.unwrap();
    let r = h.tick().await;
    assert_eq!(r.status, 200, "{:?}", r.logs());
    assert_eq!(rx.handle().stats().accepted_events, 25, "{}", h.output());
    // The next invocation starts after that page: nothing is published twice.
    assert_eq!(h.tick().await.status, 200);
    assert_eq!(rx.handle().stats().accepted_events, 25, "{}", h.output());
    db.drop().await;
}
