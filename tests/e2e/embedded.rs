//! `OUTBOX_PLACEMENT=embedded`: what only this placement promises — no transaction on the
//! write path, tombstones, the pending bound, the size limit, and a hot document whose
//! events are removed while it is written. (The shared suites run in it too, with
//! `OUTBOX_TEST_PLACEMENT=embedded`.)

use std::collections::BTreeMap;

use futures_util::TryStreamExt as _;
use mongodb::bson::{Document, doc};

use crate::support::{
    ClientRequest, Handler, TestDb, app_settings, drain, receiver, relay, settings,
};

const EMBEDDED: [(&str, &str); 1] = [("OUTBOX_PLACEMENT", "embedded")];

async fn raw(db: &TestDb, id: &str) -> Option<Document> {
    db.documents().find_one(doc! { "_id": id }).await.unwrap()
}

fn pending_of(d: &Document) -> usize {
    d.get_document("_outbox")
        .and_then(|o| o.get_array("events"))
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn embedded_writes_leave_no_transaction_in_the_oplog() {
    let db = TestDb::with(&EMBEDDED).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    for i in 0..10 {
        let id = format!("nt-{i}");
        let put = handler
            .write(&ClientRequest::put_json(&id, r#"{"n":1}"#).header("Idempotency-Key", &id))
            .await;
        assert_eq!(put.status, 201, "{:?}", put.body);
        let replace = handler
            .write(&ClientRequest::put_json(&id, r#"{"n":2}"#))
            .await;
        assert_eq!(replace.status, 200, "{:?}", replace.body);
        let delete = handler.write(&ClientRequest::delete(&id)).await;
        assert_eq!(delete.status, 200, "{:?}", delete.body);
    }
    let oplog = db
        .client
        .database("local")
        .collection::<Document>("oplog.rs");
    let ns = format!("{}.{}", db.name, db.settings.collection);
    let writes = oplog
        .count_documents(doc! { "ns": &ns, "op": { "$in": ["i", "u"] } })
        .await
        .unwrap();
    assert!(writes >= 30, "the writes are in the oplog: {writes}");
    // A multi-document transaction commits as one `applyOps` command entry.
    let transactions: Vec<Document> = oplog
        .find(doc! {
            "op": "c",
            "o.applyOps": { "$elemMatch": { "ns": &ns } },
        })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(transactions.is_empty(), "{transactions:?}");
    db.drop().await;
}

#[tokio::test]
async fn a_delete_leaves_a_tombstone_until_its_event_is_published() {
    let db = TestDb::with(&EMBEDDED).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    let created = handler
        .write(&ClientRequest::put_json("t-1", r#"{"a":1}"#))
        .await;
    let deleted = handler.write(&ClientRequest::delete("t-1")).await;
    assert_eq!((created.status, deleted.status), (201, 200));

    let tomb = raw(&db, "t-1").await.expect("a tombstone");
    assert_eq!(
        tomb.get_document("_meta").unwrap().get_bool("deleted"),
        Ok(true)
    );
    assert!(
        tomb.get("a").is_none(),
        "a tombstone keeps no data: {tomb:?}"
    );
    assert_eq!(pending_of(&tomb), 2, "{tomb:?}");
    let got = handler
        .http()
        .get(handler.url("/api/documents/t-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 404, "reads never see a tombstone");
    assert_eq!(db.count_documents().await, 0);
    let again = handler.write(&ClientRequest::delete("t-1")).await;
    assert_eq!(again.status, 404, "{:?}", again.body);

    let report = drain(&relay(&settings(&db, &rx, &[]))).await;
    assert_eq!(report.published, 2, "{report:?}");
    assert!(
        raw(&db, "t-1").await.is_none(),
        "the tombstone is removed once published"
    );
    let ids = rx.handle().accepted_ids();
    assert!(ids.contains(&deleted.body["eventId"].as_str().unwrap().to_owned()));

    // Created again over a tombstone that still waits: both events stay, in order.
    handler
        .write(&ClientRequest::put_json("t-2", r#"{"a":1}"#))
        .await;
    handler.write(&ClientRequest::delete("t-2")).await;
    let reborn = handler
        .write(&ClientRequest::post_json(r#"{"_id":"t-2","a":2}"#))
        .await;
    assert_eq!(reborn.status, 201, "{:?}", reborn.body);
    assert_eq!(reborn.body["version"], 1, "a new lineage");
    let d = raw(&db, "t-2").await.unwrap();
    assert_eq!(pending_of(&d), 3);
    assert_eq!(d.get_i32("a"), Ok(2));
    let report = drain(&relay(&settings(&db, &rx, &[]))).await;
    assert_eq!(report.published, 3, "{report:?}");
    let d = raw(&db, "t-2").await.unwrap();
    assert!(d.get("_outbox").is_none(), "nothing pending: {d:?}");
    db.drop().await;
}

#[tokio::test]
async fn a_document_at_its_pending_bound_refuses_writes_with_503_until_the_relay_catches_up() {
    let db = TestDb::with(&EMBEDDED).await;
    let rx = receiver::start().await;
    let bound = [("OUTBOX_EMBEDDED_MAX_PENDING", "3")];
    let handler = Handler::functions(&app_settings(&db, &rx, &bound)).await;
    for n in 1..=3 {
        let w = handler
            .write(&ClientRequest::put_json("hot-1", format!(r#"{{"n":{n}}}"#)))
            .await;
        assert!(w.status == 200 || w.status == 201, "{:?}", w.body);
    }
    let refused = handler
        .write(&ClientRequest::put_json("hot-1", r#"{"n":4}"#))
        .await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.header("Retry-After").is_some());
    let d = raw(&db, "hot-1").await.unwrap();
    assert_eq!(
        (d.get_i32("n"), pending_of(&d)),
        (Ok(3), 3),
        "nothing written"
    );

    let report = drain(&relay(&settings(&db, &rx, &bound))).await;
    assert_eq!(report.published, 3, "{report:?}");
    let accepted = handler
        .write(&ClientRequest::put_json("hot-1", r#"{"n":4}"#))
        .await;
    assert_eq!(accepted.status, 200, "{:?}", accepted.body);
    db.drop().await;
}

#[tokio::test]
async fn a_document_whose_pending_events_pass_the_size_limit_gets_413_and_nothing_is_written() {
    let db = TestDb::with(&EMBEDDED).await;
    let rx = receiver::start().await;
    let limit = [("OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES", "300000")];
    let handler = Handler::functions(&app_settings(&db, &rx, &limit)).await;
    let body = |n: u32| format!(r#"{{"n":{n},"blob":"{}"}}"#, "x".repeat(100_000));
    let first = handler
        .write(&ClientRequest::put_json("big-1", body(1)))
        .await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    // Data, the first event and the second event's copy of the data: over 300,000 bytes.
    let second = handler
        .write(&ClientRequest::put_json("big-1", body(2)))
        .await;
    assert_eq!(
        (second.status, second.error_code()),
        (413, "PayloadTooLarge"),
        "{:?}",
        second.body
    );
    let d = raw(&db, "big-1").await.unwrap();
    assert_eq!(
        (d.get_i32("n"), pending_of(&d)),
        (Ok(1), 1),
        "nothing written"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_hot_document_written_while_the_relay_removes_its_events_publishes_each_once() {
    let db = TestDb::with(&EMBEDDED).await;
    let rx = receiver::start().await;
    let extra = [
        ("OUTBOX_EMBEDDED_MAX_PENDING", "10000"),
        ("OUTBOX_BATCH_SIZE", "1"),
    ];
    let handler = Handler::functions(&app_settings(&db, &rx, &extra)).await;
    let s = settings(&db, &rx, &extra);
    let stop = tokio_util::sync::CancellationToken::new();
    let relay_loop = {
        let (relay, stop) = (relay(&s), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                drain(&relay).await;
            }
        })
    };
    let writers = (0..4).map(|w| {
        let handler = &handler;
        async move {
            let mut ids = Vec::new();
            for n in 0..20 {
                let doc_id = if n % 2 == 0 { "hot-a" } else { "hot-b" };
                let r = handler
                    .write(&ClientRequest::put_json(
                        doc_id,
                        format!(r#"{{"w":{w},"n":{n}}}"#),
                    ))
                    .await;
                assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
                ids.push(r.body["eventId"].as_str().unwrap().to_owned());
            }
            ids
        }
    });
    let written: Vec<String> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    stop.cancel();
    relay_loop.await.unwrap();
    let report = drain(&relay(&s)).await;
    assert_eq!(report.remaining, Some(0), "{report:?}");

    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    for id in rx.handle().accepted_ids() {
        *received.entry(id).or_default() += 1;
    }
    assert_eq!(written.len(), 80);
    for id in &written {
        assert_eq!(
            received.get(id),
            Some(&1),
            "event {id} published exactly once"
        );
    }
    assert_eq!(
        received.len(),
        written.len(),
        "nothing published that was not written"
    );
    for id in ["hot-a", "hot-b"] {
        let d = raw(&db, id).await.unwrap();
        assert!(d.get("_outbox").is_none(), "{d:?}");
    }
    db.drop().await;
}

#[tokio::test]
async fn a_sharded_collection_keeps_its_shard_key_on_documents_tombstones_and_dead_letters() {
    let shard = [
        ("OUTBOX_PLACEMENT", "embedded"),
        ("MONGODB_SHARD_KEY", "tenant"),
    ];
    let db = TestDb::with(&shard).await;
    let rx = receiver::start().await;
    let extra = [("MONGODB_SHARD_KEY", "tenant")];
    let handler = Handler::functions(&app_settings(&db, &rx, &extra)).await;
    for i in 0..3 {
        let id = format!("sk-{i}");
        let body = format!(r#"{{"tenant":"t{i}","v":1}}"#);
        assert_eq!(
            handler
                .write(&ClientRequest::put_json(&id, body))
                .await
                .status,
            201
        );
        let body = format!(r#"{{"tenant":"t{i}","v":2}}"#);
        assert_eq!(
            handler
                .write(&ClientRequest::put_json(&id, body))
                .await
                .status,
            200
        );
    }
    let deleted = handler.write(&ClientRequest::delete("sk-0")).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let tomb = raw(&db, "sk-0").await.unwrap();
    assert_eq!(
        tomb.get_str("tenant"),
        Ok("t0"),
        "the tombstone keeps the shard key"
    );
    // One event of sk-1 is refused by the topic: it moves out as a dead letter.
    let poison = raw(&db, "sk-1").await.unwrap();
    let poison_id = crate::support::mongo::pending_event_ids(&poison)[0].clone();
    rx.handle().reject_ids(Some(&poison_id)).unwrap();

    let report = drain(&relay(&settings(&db, &rx, &extra))).await;
    assert_eq!(
        (report.published, report.dead_lettered),
        (6, 1),
        "{report:?}"
    );
    assert!(raw(&db, "sk-0").await.is_none(), "tombstone removed");
    let dead = db
        .outbox()
        .find_one(doc! { "_outbox.status": "dead" })
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(dead.get_str("tenant"), Ok("t1"), "{dead:?}");
    for i in 1..3 {
        let d = raw(&db, &format!("sk-{i}")).await.unwrap();
        assert!(d.get("_outbox").is_none(), "{d:?}");
    }
    db.drop().await;
}

/// `handler outbox status --json` over `env`.
async fn status_json(env: &[(String, String)]) -> serde_json::Value {
    let out =
        crate::support::host::handler_command(&["outbox", "status", "--json"], env.iter().cloned())
            .output()
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_inside_documents_count_in_status_metrics_and_the_page() {
    use std::time::{Duration, Instant};

    const KEY: &str = "embedded-backlog-key";
    let db = TestDb::with(&EMBEDDED).await;
    let rx = receiver::start().await;
    let env = app_settings(
        &db,
        &rx,
        &[
            ("STANDALONE_FUNCTION_KEY", KEY),
            ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
            ("OUTBOX_METRICS_INTERVAL_SECS", "1"),
            // A failed publish backs off for a minute: pending, but not due.
            ("OUTBOX_INITIAL_BACKOFF_MS", "60000"),
            ("OUTBOX_MAX_BACKOFF_SECS", "120"),
        ],
    );
    let handler = Handler::standalone(&env).await;
    let http = handler.http();
    // Two events in one document (created, then replaced), one in another.
    for (id, body, status) in [
        ("b-1", r#"{"n":1}"#, 201),
        ("b-1", r#"{"n":2}"#, 200),
        ("b-2", r#"{"n":1}"#, 201),
    ] {
        let res = http
            .put(handler.url(&format!("/api/documents/{id}")))
            .header("x-functions-key", KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{}", handler.output());
    }
    let metric = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let scrape_until = |want: [f64; 2]| {
        let handler = &handler;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = handler
                    .http()
                    .get(handler.url("/metrics"))
                    .header("x-functions-key", KEY)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let got = [
                    metric(&text, "outbox_backlog"),
                    metric(&text, "outbox_backlog_due"),
                ];
                if got == want.map(Some) {
                    return text;
                }
                assert!(Instant::now() < deadline, "wanted {want:?}:\n{text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let page = || async {
        http.get(handler.url(&format!("/admin/outbox?code={KEY}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let card = |html: &str, label: &str| {
        let at = html
            .find(&format!("{label}<b>"))
            .unwrap_or_else(|| panic!("no {label}: {html}"));
        let rest = &html[at + label.len() + 3..];
        rest[..rest.find("</b>").unwrap()].to_owned()
    };

    // Written, nothing published: three pending, all due.
    let status = status_json(&env).await;
    assert_eq!(
        (status["pending"].clone(), status["due"].clone()),
        (3.into(), 3.into()),
        "{status}"
    );
    assert!(status["oldest_pending_created_at"].is_string(), "{status}");
    let text = scrape_until([3.0, 3.0]).await;
    assert!(
        metric(&text, "outbox_oldest_pending_age_seconds").is_some_and(|age| age >= 0.0),
        "{text}"
    );
    let html = page().await;
    assert_eq!(
        (card(&html, "pending"), card(&html, "due now")),
        ("3".into(), "3".into())
    );
    assert_ne!(card(&html, "oldest pending"), "none");

    // The topic fails: every event backs off, still pending, none due.
    rx.handle()
        .push_fault(receiver::Fault::fail(10, 503))
        .unwrap();
    let report: serde_json::Value = http
        .post(handler.url("/admin/functions/OutboxTimer"))
        .header("x-functions-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["rescheduled"], 3, "{report}");
    let status = status_json(&env).await;
    assert_eq!(
        (status["pending"].clone(), status["due"].clone()),
        (3.into(), 0.into()),
        "{status}"
    );
    scrape_until([3.0, 0.0]).await;
    let html = page().await;
    assert_eq!(
        (card(&html, "pending"), card(&html, "due now")),
        ("3".into(), "0".into())
    );

    // The topic recovers and the backoff is over (moved to now rather than waited out).
    rx.handle().clear_faults();
    db.documents()
        .update_many(
            doc! { "_outbox": { "$exists": true } },
            doc! { "$set": { "_outbox.due_at": mongodb::bson::DateTime::now() } },
        )
        .await
        .unwrap();
    let report: serde_json::Value = http
        .post(handler.url("/admin/functions/OutboxTimer"))
        .header("x-functions-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["published"], 3, "{report}");
    let status = status_json(&env).await;
    assert_eq!(
        (status["pending"].clone(), status["due"].clone()),
        (0.into(), 0.into()),
        "{status}"
    );
    assert!(status["oldest_pending_created_at"].is_null(), "{status}");
    let text = scrape_until([0.0, 0.0]).await;
    assert_eq!(
        metric(&text, "outbox_oldest_pending_age_seconds"),
        Some(0.0),
        "{text}"
    );
    let html = page().await;
    assert_eq!(
        (card(&html, "pending"), card(&html, "oldest pending")),
        ("0".into(), "none".into())
    );
    db.drop().await;
}
