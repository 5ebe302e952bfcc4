//! `OUTBOX_SOURCE=change-stream`, operated: `handler outbox status`/`requeue`/`skip` on the
//! stream's dead letters, and a `mongod` restart under the reader.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use serde_json::Value;

use crate::change_stream::{stream_settings, wait_for, wait_for_position, wait_for_subjects};
use crate::support::receiver;
use crate::support::{Handler, TestDb};

/// Runs `handler <args>` with `env`; its stdout, or its stderr when it failed.
async fn command(args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let out = crate::support::host::handler_command(args, env.iter().cloned())
        .output()
        .await
        .unwrap();
    let text = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(text).into_owned(),
    )
}

async fn stream_status(env: &[(String, String)]) -> Value {
    let (ok, text) = command(&["outbox", "status", "--json"], env).await;
    assert!(ok, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["change_stream"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_reader_and_dead_letters_and_requeue_and_skip_work_on_them() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let h = Handler::standalone(&stream_settings(&db, &rx, &[])).await;
    wait_for_position(&db, &h).await;
    // Event Grid refuses every event for a while: each change is dead-lettered on its own.
    rx.handle().reject_ids(Some(".")).unwrap();
    for i in 0..3 {
        db.documents()
            .insert_one(doc! { "_id": format!("d-{i}") })
            .await
            .unwrap();
    }
    let mut env = db.app_settings();
    env.push(("OUTBOX_SOURCE".into(), "change-stream".into()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = stream_status(&env).await;
        if s["dead"] == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", h.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    rx.handle().clear_faults();
    assert_eq!(status["lease_live"], true, "{status}");
    assert!(
        status["reader"].as_str().unwrap().starts_with("pid "),
        "{status}"
    );
    assert!(
        status["position_time"].is_string() && status["lag_seconds"].is_number(),
        "{status}"
    );
    let letters = status["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0]["status"], 400, "{status}");
    let (ok, text) = command(&["outbox", "status"], &env).await;
    assert!(
        ok && text.contains("change stream on") && text.contains("3 dead"),
        "{text}"
    );

    let skipped = letters[0]["id"].as_str().unwrap();
    let (ok, text) = command(&["outbox", "skip", "--id", skipped], &env).await;
    assert!(ok && text.contains("skipped 1"), "{text}");
    let (ok, text) = command(&["outbox", "requeue", "--all-dead"], &env).await;
    assert!(ok && text.contains("requeued 2"), "{text}");
    wait_for(&rx, 2, &h).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stream_status(&env).await;
        if s["requeued"] == 0 {
            assert_eq!(
                (s["dead"].clone(), s["skipped"].clone()),
                (0.into(), 1.into()),
                "{s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(ids.len(), 2);
    assert!(
        !ids.contains(skipped),
        "a skipped change is never published"
    );
    // The changes after them still flow.
    db.documents()
        .insert_one(doc! { "_id": "later" })
        .await
        .unwrap();
    wait_for(&rx, 3, &h).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_resumes_after_mongod_restarts_mid_stream_and_loses_nothing() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("stream-mongod-{}", uuid::Uuid::new_v4().simple()));
    let mut rs = devstack::ReplicaSet::start(devstack::ReplicaSetOptions::new(&dir))
        .await
        .expect("a replica set of this test's own");
    let uri = format!("{}&serverSelectionTimeoutMS=2000", rs.uri());
    let db = TestDb::on(&uri, &[]).await;
    let rx = receiver::start().await;
    // Answers take a moment, so the restart lands while batches are being published.
    rx.handle().set_latency(Some(Duration::from_millis(50)));
    let h = Handler::standalone(&stream_settings(&db, &rx, &[])).await;
    wait_for_position(&db, &h).await;
    for i in 0..30 {
        db.documents()
            .insert_one(doc! { "_id": format!("r-{i}") })
            .await
            .unwrap();
    }
    rx.handle()
        .wait_for_events(5, Duration::from_secs(15))
        .await;
    rs.kill().await.expect("SIGKILL mongod");
    tokio::time::sleep(Duration::from_secs(1)).await;
    rs.restart().await.expect("restart mongod");
    for i in 30..60 {
        db.documents()
            .insert_one(doc! { "_id": format!("r-{i}") })
            .await
            .unwrap();
    }
    wait_for_subjects(&rx, 60, &h).await;
    let subjects: HashSet<String> = rx
        .handle()
        .events()
        .into_iter()
        .map(|e| e.subject)
        .collect();
    for i in 0..60 {
        assert!(
            subjects.contains(&format!("{}/r-{i}", db.settings.collection)),
            "r-{i} lost"
        );
    }
    drop(h);
    db.drop().await;
    rs.stop().await.expect("stop mongod");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_position_resync_publishes_every_document_once_and_the_stream_goes_on() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let settings = stream_settings(&db, &rx, &[]);
    let mut h = Handler::standalone(&settings).await;
    wait_for_position(&db, &h).await;
    for id in ["a", "b"] {
        db.documents().insert_one(doc! { "_id": id }).await.unwrap();
    }
    wait_for(&rx, 2, &h).await;
    let admin = db.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": { "failCommands": ["aggregate", "getMore"], "errorCode": 286, "appName": db.app_name() },
        })
        .await
        .unwrap();
    // A change the stream can no longer deliver: only the snapshot can announce it.
    db.documents()
        .update_one(doc! { "_id": "a" }, doc! { "$set": { "n": 1 } })
        .await
        .unwrap();
    db.documents()
        .insert_one(doc! { "_id": "c" })
        .await
        .unwrap();
    h.wait_for_output("change stream position lost").await;
    admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .unwrap();
    h.kill().await;
    rx.handle().reset();

    let (ok, text) = command(&["outbox", "resync"], &settings).await;
    assert!(ok && text.contains("resynced 3 documents"), "{text}");
    let events = rx.handle().events();
    let c = &db.settings.collection;
    let mut subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        [format!("{c}/a"), format!("{c}/b"), format!("{c}/c")]
    );
    assert!(
        events
            .iter()
            .all(|e| e.event_type == "CosmosDB.DocumentSnapshot")
    );
    let a = events.iter().find(|e| e.subject.ends_with("/a")).unwrap();
    assert_eq!(
        a.to_value().unwrap()["data"]["document"]["n"],
        1,
        "the current state"
    );

    // The stream resumes from before the snapshot: later changes flow, nothing is lost.
    let h = Handler::standalone(&settings).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.documents()
        .insert_one(doc! { "_id": "d" })
        .await
        .unwrap();
    wait_for_subjects(&rx, 4, &h).await;
    assert!(!h.output().contains("position lost"), "{}", h.output());
    let created: Vec<String> = rx
        .handle()
        .events()
        .into_iter()
        .filter(|e| e.event_type == "CosmosDB.DocumentCreated")
        .map(|e| e.subject)
        .collect();
    assert_eq!(created, [format!("{c}/d")]);
    // A reader is active now: resync refuses rather than race it.
    let (ok, text) = command(&["outbox", "resync"], &settings).await;
    assert!(!ok && text.contains("a reader holds"), "{text}");
    db.drop().await;
}
