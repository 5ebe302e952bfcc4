//! `OUTBOX_RETENTION_HOURS=0`: published entries are deleted instead of kept. The guarantees
//! stay those of the default: every committed event delivered, once absent faults, a client's
//! retry answered without a second event — and no entry is left behind, published or not.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::host::{handler_command, output_of};
use crate::support::{ClientRequest, Handler, TestDb, app_settings, receiver};

const NO_RETENTION: (&str, &str) = ("OUTBOX_RETENTION_HOURS", "0");
/// The standalone handler's function key: the API and the status page ask for it.
const KEY: &str = "page-key-0";

/// Waits until no entry is left in the outbox (the deletes follow Event Grid's 200).
async fn wait_until_no_entries(db: &TestDb, handler: &Handler) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while db.count_entries().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} entries left ({} pending, {} published):\n{}",
            db.count_entries().await,
            db.count_entries_with("pending").await,
            db.count_entries_with("published").await,
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(handler: &Handler, id: &str, key: &str) -> (u16, Value) {
    let res = handler
        .http()
        .post(handler.url("/api/documents"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .header("x-functions-key", KEY)
        .body(format!(r#"{{"_id":"{id}","n":1}}"#))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn pushed_events_are_delivered_once_and_their_entries_deleted_and_a_retry_sends_nothing_new()
{
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            NO_RETENTION,
            ("OUTBOX_PUSH", "on"),
            ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
            ("STANDALONE_FUNCTION_KEY", KEY),
        ],
    ))
    .await;

    let mut written = BTreeSet::new();
    for i in 0..20 {
        let (status, body) = post(&handler, &format!("r-{i}"), &format!("key-{i}")).await;
        assert_eq!(status, 201, "{body}\n{}", handler.output());
        written.insert(body["eventId"].as_str().unwrap().to_owned());
    }
    assert!(
        rx.handle()
            .wait_for_events(20, Duration::from_secs(15))
            .await,
        "{}",
        handler.output()
    );
    wait_until_no_entries(&db, &handler).await;
    assert_eq!(db.count_documents().await, 20, "the documents stay");

    // A client's retry after its entry is gone: the same answer from the idempotency record,
    // no second entry, no second event.
    let (status, body) = post(&handler, "r-3", "key-3").await;
    assert_eq!(status, 201, "{body}");
    assert!(written.contains(body["eventId"].as_str().unwrap()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.count_entries().await, 0);

    let got: BTreeSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(got, written);
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);
    assert_eq!(rx.handle().stats().accepted_events, 20);

    // The status page says why it has no chart, rather than charting nothing.
    let res = handler
        .http()
        .get(handler.url(&format!("/admin/outbox?code={KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("id=\"not-kept\"") && !html.contains("<svg"),
        "{html}"
    );
    db.drop().await;
}

#[tokio::test]
async fn the_timer_relay_under_the_functions_host_deletes_what_it_published() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // Push and tail off (the test defaults): only the OutboxTimer invocation publishes.
    let handler = Handler::functions(&app_settings(&db, &rx, &[NO_RETENTION])).await;
    let mut written = BTreeSet::new();
    for i in 0..30 {
        let res = handler
            .write(&ClientRequest::post_json(format!(r#"{{"_id":"t-{i}"}}"#)))
            .await;
        assert_eq!(res.status, 201, "{:?}", res.body);
        written.insert(res.body["eventId"].as_str().unwrap().to_owned());
    }
    assert_eq!(db.count_entries_with("pending").await, 30);

    let tick = handler.tick().await;
    assert_eq!(tick.status, 200, "{:?}\n{}", tick.body, handler.output());
    assert_eq!(
        db.count_entries().await,
        0,
        "every published entry is deleted"
    );
    let again = handler.tick().await;
    assert_eq!(again.status, 200, "{:?}", again.body);

    let got: BTreeSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(got, written);
    assert_eq!(rx.handle().stats().accepted_events, 30, "each once");
    db.drop().await;
}

/// `handler outbox <args>` with `env`: whether it succeeded, and its stdout and stderr.
async fn outbox_command(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let args: Vec<&str> = std::iter::once("outbox")
        .chain(args.iter().copied())
        .collect();
    output_of(&mut handler_command(&args, env.iter().cloned())).await
}

#[tokio::test]
async fn the_operator_commands_say_that_nothing_is_kept_and_a_replay_is_refused() {
    // Indexes made as the handler makes them with this setting: the TTL index at 0 s.
    let db = TestDb::with(&[NO_RETENTION]).await;
    let rx = receiver::start().await;
    let env = app_settings(&db, &rx, &[NO_RETENTION]);

    let doctor = crate::doctor::doctor(&env).await;
    let ttl = doctor.check("database.ttl");
    assert_eq!(ttl["verdict"], "pass", "{ttl}");
    assert!(
        ttl["detail"]
            .as_str()
            .unwrap()
            .contains("deleted once published"),
        "{ttl}"
    );

    let (ok, out) = outbox_command(&env, &["status"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("OUTBOX_RETENTION_HOURS=0: none kept"), "{out}");

    // The doctor probes the topic; the replay must send nothing after it.
    let probes = rx.handle().stats().requests;
    let (ok, out) = outbox_command(&env, &["replay", "--since", "2026-01-01T00:00:00Z"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("OUTBOX_RETENTION_HOURS=0") && out.contains("nothing to replay"),
        "{out}"
    );
    assert_eq!(rx.handle().stats().requests, probes);
    db.drop().await;
}
