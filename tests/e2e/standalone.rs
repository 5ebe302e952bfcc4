//! `handler serve`: its own HTTP front, its own schedule, graceful shutdown.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Handler, TestDb, app_settings, receiver};

#[tokio::test]
async fn the_schedule_drains_the_outbox_without_being_asked() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[("OUTBOX_SCHEDULE", "*/1 * * * * *")],
    ))
    .await;

    let res = handler
        .http()
        .post(handler.url("/api/documents"))
        .header("content-type", "application/json")
        .body(r#"{"_id":"sched-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();

    assert!(
        rx.handle()
            .wait_for_events(1, Duration::from_secs(15))
            .await,
        "the scheduled drain published the event:\n{}",
        handler.output()
    );
    assert_eq!(
        rx.handle().accepted_ids(),
        vec![body["eventId"].as_str().unwrap().to_owned()]
    );
    db.drop().await;
}

#[tokio::test]
async fn the_admin_endpoint_runs_one_drain_and_reports_it() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    // A schedule that will not fire during the test.
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[("OUTBOX_SCHEDULE", "0 0 0 1 1 *")],
    ))
    .await;
    for i in 0..3 {
        let res = handler
            .http()
            .post(handler.url("/api/documents"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"_id":"adm-{i}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    let res = handler
        .http()
        .post(handler.url("/admin/functions/OutboxTimer"))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["published"], 3, "{report}");
    assert_eq!(report["remaining"], 0, "{report}");
    assert_eq!(rx.handle().stats().accepted_events, 3);
    let envelope_route = handler
        .http()
        .post(handler.url("/OutboxTimer"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        envelope_route.status(),
        404,
        "envelope routes belong to functions mode"
    );
    db.drop().await;
}

#[tokio::test]
async fn sigterm_stops_it_gracefully() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let mut handler = Handler::standalone(&app_settings(&db, &rx, &[])).await;

    let status = handler.terminate().await;

    assert!(status.success(), "{status}:\n{}", handler.output());
    assert!(handler.output().contains("Stopped"), "{}", handler.output());
    db.drop().await;
}

#[tokio::test]
async fn a_bad_schedule_stops_start_up_naming_the_setting() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let mut settings = app_settings(&db, &rx, &[("OUTBOX_SCHEDULE", "every minute")]);
    settings.push(("PATH".into(), "/usr/bin:/bin".into()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["serve", "--port", "0"])
        .env_clear()
        .envs(settings)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTBOX_SCHEDULE"));
    db.drop().await;
}

#[tokio::test]
async fn a_configured_function_key_is_required_for_the_api_and_admin_routes() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[("STANDALONE_FUNCTION_KEY", "s3cret-key")],
    ))
    .await;
    let post = |key: Option<&'static str>, query: &'static str| {
        let mut r = handler
            .http()
            .post(handler.url(&format!("/api/documents{query}")))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(k) = key {
            r = r.header("x-functions-key", k);
        }
        r.send()
    };

    assert_eq!(post(None, "").await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong"), "").await.unwrap().status(), 401);
    assert_eq!(post(Some("s3cret-key"), "").await.unwrap().status(), 201);
    assert_eq!(post(None, "?code=s3cret-key").await.unwrap().status(), 201);
    let admin = handler
        .http()
        .post(handler.url("/admin/functions/OutboxTimer"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);
    let health = handler.http().get(handler.url("/")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the health probe needs no key");
    assert!(!handler.output().contains("s3cret-key"));
    assert_eq!(db.count_documents().await, 2);
    db.drop().await;
}

#[tokio::test]
async fn a_network_address_without_a_key_stops_start_up() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let mut settings = app_settings(&db, &rx, &[("STANDALONE_BIND", "0.0.0.0")]);
    settings.push(("PATH".into(), "/usr/bin:/bin".into()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["serve", "--port", "0"])
        .env_clear()
        .envs(settings)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STANDALONE_FUNCTION_KEY"), "{stderr}");
    db.drop().await;
}
