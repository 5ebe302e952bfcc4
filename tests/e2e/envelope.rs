//! The custom-handler protocol, as the Functions host exercises it: process start-up rules,
//! envelopes in and out, the timer function, and SIGKILL.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::host::app_root;
use crate::support::receiver::{self, Fault};
use crate::support::{ClientRequest, Handler, TestDb, app_settings};

async fn run_to_exit(settings: &[(&str, &str)]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(settings.iter().copied())
        .current_dir(app_root())
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("exits on its own")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn a_missing_or_bad_port_exits_non_zero_naming_the_variable() {
    let base = [
        ("MONGODB_URI", "mongodb://127.0.0.1:1/?replicaSet=rs0"),
        ("EVENTGRID_TOPIC_ENDPOINT", "http://127.0.0.1:1/api/events"),
        ("EVENTGRID_TOPIC_KEY", "k"),
    ];
    let (code, text) = run_to_exit(&base).await;
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("FUNCTIONS_CUSTOMHANDLER_PORT"), "{text}");

    let mut with_bad_port = base.to_vec();
    with_bad_port.push(("FUNCTIONS_CUSTOMHANDLER_PORT", "eighty"));
    let (code, text) = run_to_exit(&with_bad_port).await;
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("FUNCTIONS_CUSTOMHANDLER_PORT"), "{text}");
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_naming_it_and_never_exits_zero() {
    let port = devstack::pick_free_port().unwrap().to_string();
    for (name, value) in [
        ("OUTBOX_BATCH_SIZE", "0"),
        ("OUTBOX_LEASE_SECS", "soon"),
        (
            "EVENTGRID_TOPIC_ENDPOINT",
            "http://topic.example.com/api/events",
        ),
        ("MONGODB_URI", "postgres://nope"),
    ] {
        let mut settings = vec![
            ("FUNCTIONS_CUSTOMHANDLER_PORT", port.as_str()),
            ("MONGODB_URI", "mongodb://127.0.0.1:1/?replicaSet=rs0"),
            ("EVENTGRID_TOPIC_ENDPOINT", "http://127.0.0.1:1/api/events"),
            ("EVENTGRID_TOPIC_KEY", "k"),
        ];
        settings.retain(|(k, _)| *k != name);
        settings.push((name, value));
        let (code, text) = run_to_exit(&settings).await;
        assert_ne!(code, 0, "{name}={value}: {text}");
        assert!(text.contains(name), "{name}: {text}");
    }
}

#[tokio::test]
async fn a_start_without_its_required_settings_names_them_all_at_once() {
    let port = devstack::pick_free_port().unwrap().to_string();

    let (code, text) = run_to_exit(&[
        ("FUNCTIONS_CUSTOMHANDLER_PORT", port.as_str()),
        ("EVENTGRID_TOPIC_KEY", "k"),
    ])
    .await;

    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("required settings are not set: MONGODB_URI, EVENTGRID_TOPIC_ENDPOINT"),
        "{text}"
    );
}

#[tokio::test]
async fn timer_invocations_tolerate_null_status_and_odd_timestamps() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    for timer in [
        json!({ "Schedule": { "AdjustForDST": true }, "ScheduleStatus": null, "IsPastDue": false }),
        json!({
            "Schedule": { "AdjustForDST": true },
            "ScheduleStatus": {
                "Last": "0001-01-01T00:00:00",
                "Next": "2025-06-02T08:15:00.00417331+00:00",
                "LastUpdated": "06/02/2025 08:14:00 +00:00"
            },
            "IsPastDue": true
        }),
        json!({ "IsPastDue": "yes" }),
        json!(null),
    ] {
        let answer = handler.timer(timer.clone()).await;
        assert_eq!(answer.status, 200, "{timer}: {:?}", answer.body);
        assert!(
            answer
                .logs()
                .iter()
                .any(|l| l.starts_with("outbox drain: ")),
            "{:?}",
            answer.body
        );
        assert_eq!(answer.body["Outputs"], json!({}));
        assert_eq!(answer.body["ReturnValue"], json!(null));
    }
    db.drop().await;
}

#[tokio::test]
async fn written_documents_are_published_by_the_timer_with_their_event_ids() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[("OUTBOX_BATCH_SIZE", "7")])).await;
    let mut event_ids = Vec::new();
    for i in 0..20 {
        let res = handler
            .write(&ClientRequest::post_json(format!(
                r#"{{"_id":"doc-{i}","n":{i}}}"#
            )))
            .await;
        assert_eq!(res.status, 201);
        assert!(
            res.logs.iter().any(|l| l.contains("doc-")),
            "{:?}",
            res.logs
        );
        event_ids.push(res.body["eventId"].as_str().unwrap().to_owned());
    }

    let answer = handler.tick().await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(
        answer.logs()[0].starts_with("outbox drain: 20 published, 0 rescheduled, 0 dead-lettered"),
        "{:?}",
        answer.logs()
    );
    let mut got = rx.handle().accepted_ids();
    got.sort();
    event_ids.sort();
    assert_eq!(
        got, event_ids,
        "every 201 produced exactly one published event"
    );
    for e in rx.handle().events() {
        let v = e.to_value().unwrap();
        let doc_id = v["data"]["id"].as_str().unwrap();
        assert_eq!(v["subject"], format!("documents/{doc_id}"));
        assert_eq!(v["eventType"], "CosmosDB.DocumentCreated");
        assert_eq!(v["data"]["operation"], "created");
        assert_eq!(v["data"]["document"]["_id"], doc_id);
    }
    assert_eq!(db.count_entries_with("published").await, 20);
    let second = handler.tick().await;
    assert!(
        second.logs()[0].starts_with("outbox drain: 0 published"),
        "{:?}",
        second.logs()
    );
    assert_eq!(
        rx.handle().stats().accepted_events,
        20,
        "nothing published twice"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_run_that_cannot_reach_the_topic_fails_the_invocation_and_says_why() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    rx.handle().push_fault(Fault::fail(1_000, 503)).unwrap();
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"x"}"#))
        .await;
    assert_eq!(res.status, 201);

    let answer = handler.tick().await;

    assert_eq!(
        answer.status, 500,
        "a run without progress is a failed invocation"
    );
    let stderr = handler.stderr_lines().join("\n");
    assert!(
        stderr.contains("Event Grid unavailable"),
        "reason logged to stderr: {stderr}"
    );
    assert!(stderr.contains("503"), "{stderr}");
    assert_eq!(db.count_entries_with("pending").await, 1);
    db.drop().await;
}

#[tokio::test]
async fn an_unreadable_envelope_fails_the_invocation_with_a_json_answer() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;

    let answer = handler
        .invoke("WriteDocumentHttp", &json!({ "Data": "oops" }))
        .await;

    assert!(answer.status >= 400, "{:?}", answer.body);
    assert_eq!(db.count_documents().await, 0);
    db.drop().await;
}

#[tokio::test]
async fn a_handler_killed_mid_drain_loses_nothing() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_BATCH_SIZE", "10"),
            ("OUTBOX_PUBLISH_CONCURRENCY", "1"),
            ("OUTBOX_LEASE_SECS", "2"),
            ("EVENTGRID_PUBLISH_TIMEOUT_MS", "1000"),
        ],
    );
    let mut first = Handler::functions(&settings).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let res = first
            .write(&ClientRequest::post_json(format!(r#"{{"_id":"k-{i}"}}"#)))
            .await;
        ids.push(res.body["eventId"].as_str().unwrap().to_owned());
    }
    // Slow responses, so the kill lands while batches are claimed and in flight.
    rx.handle()
        .push_fault(Fault::Latency {
            delay: Duration::from_millis(300),
            count: None,
        })
        .unwrap();
    let tick = first.tick();
    let kill_soon = async {
        rx.handle()
            .wait_for_events(10, Duration::from_secs(20))
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    tokio::select! {
        _ = tick => panic!("the drain should still be running when it is killed"),
        () = kill_soon => {}
    }
    first.kill().await;
    rx.handle().clear_faults();

    // The host starts a new process; entries claimed by the dead one free themselves when
    // their lease runs out, and the next runs publish everything.
    let second = Handler::functions(&settings).await;
    for _ in 0..20 {
        let answer = second.tick().await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        if db.count_entries_with("published").await == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let accepted = rx.handle().accepted_ids();
    for id in &ids {
        assert!(accepted.contains(id), "event {id} was lost");
    }
    assert_eq!(db.count_entries_with("published").await, 40);
    db.drop().await;
}
