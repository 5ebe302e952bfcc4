//! `handler outbox replay` through the real binary: exactly the retained events of a window are
//! published again (the receiver's ledger), the rate limit holds, and a replay interrupted by
//! Ctrl-C resumes without sending anything twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::host::{handler_command, output_of};
use crate::support::{TestDb, app_settings, drain, receiver, relay, settings, write_documents};

fn command(env: &[(String, String)], args: &[&str]) -> tokio::process::Command {
    let mut c = handler_command(&["outbox", "replay"], env.iter().cloned());
    c.args(args);
    c
}

async fn replay(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    output_of(&mut command(env, args)).await
}

fn t(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now, with a few milliseconds on each side, so that no entry shares its millisecond.
async fn boundary() -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    now
}

fn counts(ids: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.as_str()).or_insert(0) += 1;
    }
    m
}

#[tokio::test]
async fn a_window_replays_exactly_its_retained_events_with_original_or_new_ids() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let before = write_documents(&s, 2, |i| format!(r#"{{"_id":"before-{i}"}}"#)).await;
    let since = boundary().await;
    let inside = write_documents(&s, 3, |i| format!(r#"{{"_id":"in-{i}"}}"#)).await;
    let until = boundary().await;
    let after = write_documents(&s, 2, |i| format!(r#"{{"_id":"after-{i}"}}"#)).await;
    assert_eq!(drain(&relay(&s)).await.published, 7);
    let env = app_settings(&db, &rx, &[]);
    let window = ["--since", &t(since), "--until", &t(until)];

    let (ok, text) = replay(&env, &[&window[..], &["--dry-run"]].concat()).await;
    assert!(ok && text.contains("3 events"), "{text}");
    assert_eq!(
        rx.handle().accepted_ids().len(),
        7,
        "a dry run sends nothing"
    );

    let (ok, text) = replay(&env, &window).await;
    assert!(ok && text.contains("replayed 3 events"), "{text}");
    let ledger = rx.handle().accepted_ids();
    let seen = counts(&ledger);
    for id in &inside {
        assert_eq!(seen[id.as_str()], 2, "{id} replayed once with its id");
    }
    for id in before.iter().chain(&after) {
        assert_eq!(seen[id.as_str()], 1, "{id} is outside the window");
    }
    let (ok, text) = replay(&env, &window).await;
    assert!(ok && text.contains("finished before"), "{text}");
    assert_eq!(
        rx.handle().accepted_ids().len(),
        10,
        "a finished replay sends nothing again"
    );

    let subject = format!("{}/in-1", db.settings.collection);
    let (ok, text) = replay(
        &env,
        &[&window[..], &["--subject", &subject, "--new-ids"]].concat(),
    )
    .await;
    assert!(ok && text.contains("replayed 1 events"), "{text}");
    let events = rx.handle().events();
    let last = events.last().unwrap();
    let raw: Value = serde_json::from_str(&last.raw).unwrap();
    assert_eq!(raw["data"]["replayof"], inside[1], "{raw}");
    assert!(!ledger.contains(&last.id), "a new id: {raw}");
    db.drop().await;
}

#[tokio::test]
async fn a_replay_keeps_to_the_rate_limit() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let since = boundary().await;
    write_documents(&s, 12, |i| format!(r#"{{"_id":"rate-{i}"}}"#)).await;
    assert_eq!(drain(&relay(&s)).await.published, 12);
    let env = app_settings(
        &db,
        &rx,
        &[
            ("EVENTGRID_MAX_EVENTS_PER_SEC", "4"),
            ("OUTBOX_BATCH_SIZE", "2"),
        ],
    );
    let started = Instant::now();
    let (ok, text) = replay(&env, &["--since", &t(since)]).await;
    let took = started.elapsed();
    assert!(
        ok && text.contains("replayed 12 events") && text.contains("in 6 requests"),
        "{text}"
    );
    // A full bucket holds 4 events; the other 8 need at least 8 / 4 = 2 s of refill.
    assert!(
        took >= Duration::from_secs(2),
        "12 events at 4/s took {took:?}"
    );
    let replayed: Vec<_> = rx.handle().requests().into_iter().skip(1).collect();
    assert!(
        replayed.iter().all(|r| r.event_count == Some(2)),
        "{replayed:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn an_interrupted_replay_resumes_without_sending_twice() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let s = settings(&db, &rx, &[]);
    let since = boundary().await;
    let ids = write_documents(&s, 15, |i| format!(r#"{{"_id":"resume-{i}"}}"#)).await;
    assert_eq!(drain(&relay(&s)).await.published, 15);
    let env = app_settings(
        &db,
        &rx,
        &[
            ("EVENTGRID_MAX_EVENTS_PER_SEC", "3"),
            ("OUTBOX_BATCH_SIZE", "1"),
        ],
    );
    let until = boundary().await;
    let window = ["--since", &t(since), "--until", &t(until)];
    let child = command(&env, &window)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        rx.handle()
            .wait_for_events(15 + 4, Duration::from_secs(30))
            .await
    );
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // 15 events at 3/s take over 3 s: the signal came long before the end.
    assert!(
        !out.status.success() && text.contains("interrupted"),
        "{text}"
    );

    let (ok, text) = replay(&env, &window).await;
    assert!(ok && text.contains("resumed after"), "{text}");
    let seen = counts(&rx.handle().accepted_ids())
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<HashMap<_, _>>();
    for id in &ids {
        assert_eq!(seen[id], 2, "{id}: published once, replayed once: {seen:?}");
    }
    db.drop().await;
}
