//! Overload: writes beyond `MONGODB_MAX_CONCURRENT_WRITES` and its queue are answered 503 with
//! `Retry-After` at once, having written nothing; the writes admitted all commit and are
//! published, and the refusals are counted in the metrics.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::support::{Handler, TestDb, app_settings, receiver};

/// Each insert of this test's handler takes this long (a `mongod` failpoint): writes pile up.
const SLOW_INSERT_MS: i32 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_limit_and_its_queue_get_503_at_once_and_write_nothing() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let uri = db.uri_for_handler();
    // One write at a time, so 16 may wait; the push path publishes what commits.
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("MONGODB_URI", &uri),
            ("MONGODB_MAX_CONCURRENT_WRITES", "1"),
            ("OUTBOX_PUSH", "on"),
            ("OUTBOX_TAIL", "on"),
        ],
    ))
    .await;
    // A first write, before the failpoint: the handler has connected and prepared.
    let first = post(&handler, "before".to_owned()).await;
    assert_eq!(first.0, 201, "{}", handler.output());
    let admin = db.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {
                "failCommands": ["insert"],
                "blockConnection": true,
                "blockTimeMS": SLOW_INSERT_MS,
                "appName": db.app_name(),
            },
        })
        .await
        .unwrap();

    // 40 writes at once: 1 runs, 16 wait their turn, 23 are turned away.
    let answers =
        futures_util::future::join_all((0..40).map(|i| post(&handler, format!("burst-{i}")))).await;
    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .unwrap();

    let created: HashSet<String> = answers
        .iter()
        .filter(|a| a.0 == 201)
        .map(|a| a.1.clone())
        .collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(
        created.len() + refused.len(),
        40,
        "only 201 and 503: {answers:?}"
    );
    assert!(
        created.len() >= 17,
        "the running write and the 16 waiting ones commit: {answers:?}"
    );
    assert!(!refused.is_empty(), "the rest are refused: {answers:?}");
    for (_, id, retry_after, took, body) in &refused {
        assert_eq!(retry_after.as_deref(), Some("1"), "{id}: {body}");
        assert!(body.contains("ServiceUnavailable"), "{body}");
        // At once: well before the writes it would have waited for (17 × 60 ms at least).
        assert!(
            *took < Duration::from_millis(17 * SLOW_INSERT_MS as u64 / 2),
            "{id} refused after {took:?}"
        );
    }

    // Ledger: exactly the created documents exist, each with its event published once;
    // nothing of a refused write is anywhere.
    created_documents_are_exactly(&db, &created, "before").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let subjects = loop {
        let subjects: Vec<String> = rx
            .handle()
            .events()
            .into_iter()
            .map(|e| e.subject)
            .collect();
        if subjects.len() > created.len() || Instant::now() > deadline {
            break subjects;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = &db.settings.collection;
    let mut expected: Vec<String> = created
        .iter()
        .chain(std::iter::once(&"before".to_owned()))
        .map(|id| format!("{c}/{id}"))
        .collect();
    expected.sort();
    let mut got = subjects.clone();
    got.sort();
    assert_eq!(got, expected, "each admitted write published once");
    assert_eq!(db.count_entries().await, created.len() as u64 + 1);

    // Counted for operators (a log line per refusal would flood the log under load).
    let metrics = crate::metrics::scrape(&handler, "").await;
    let counted = crate::metrics::sample(&metrics, "outbox_writes_refused_busy_total", &[]);
    assert_eq!(counted, Some(refused.len() as f64), "{metrics}");
    db.drop().await;
}

/// `(status, id, Retry-After, how long the answer took, body)` of a POST of document `id`.
async fn post(handler: &Handler, id: String) -> (u16, String, Option<String>, Duration, String) {
    let started = Instant::now();
    let r = handler
        .http()
        .post(handler.url("/api/documents"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"_id":"{id}"}}"#))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.text().await.unwrap();
    (status, id, retry_after, started.elapsed(), body)
}

async fn created_documents_are_exactly(db: &TestDb, created: &HashSet<String>, also: &str) {
    let mut ids: Vec<String> = db
        .documents()
        .distinct("_id", doc! {})
        .await
        .unwrap()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ids.sort();
    let mut expected: Vec<String> = created
        .iter()
        .cloned()
        .chain(std::iter::once(also.to_owned()))
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "no document of a refused write");
}
