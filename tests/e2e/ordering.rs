//! `OUTBOX_ORDERING=subject`: an entry is never published before an older unpublished entry of
//! its subject; a dead entry parks only its own subject until it is requeued or skipped.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Barrier;

use crate::support::host::app_root;
use crate::support::{
    ClientRequest, Handler, TestDb, app_settings, drain, receiver, relay, settings,
};

/// Per subject, the `data.version`s in the order Event Grid accepted them (by request; the
/// events of one request are accepted together).
fn accepted_versions(rx: &eventgrid_receiver::RunningReceiver) -> HashMap<String, Vec<(u64, u64)>> {
    let mut by_subject: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for e in rx.handle().events() {
        let v = e.to_value().unwrap();
        by_subject
            .entry(e.subject.clone())
            .or_default()
            .push((e.request, v["data"]["version"].as_u64().unwrap()));
    }
    by_subject
}

fn assert_in_order(by_subject: &HashMap<String, Vec<(u64, u64)>>) -> usize {
    let mut out_of_order = 0;
    for (subject, seen) in by_subject {
        for pair in seen.windows(2) {
            let ((r1, v1), (r2, v2)) = (pair[0], pair[1]);
            // A later request must not carry an older version (duplicates aside).
            if r2 > r1 && v2 < v1 {
                out_of_order += 1;
                eprintln!("{subject}: version {v2} (request {r2}) after {v1} (request {r1})");
            }
        }
    }
    out_of_order
}

#[tokio::test]
async fn a_dead_entry_parks_only_its_subject_until_skipped() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let rx = receiver::start().await;
    let handler =
        Handler::functions(&app_settings(&db, &rx, &[("OUTBOX_ORDERING", "subject")])).await;
    let mut a = Vec::new();
    for v in 1..=3 {
        let res = handler
            .write(&ClientRequest::put_json("a", format!(r#"{{"v":{v}}}"#)))
            .await;
        a.push(res.body["eventId"].as_str().unwrap().to_owned());
    }
    let b = handler
        .write(&ClientRequest::put_json("b", r#"{"v":1}"#))
        .await;
    rx.handle()
        .reject_ids(Some(&format!("^{}$", a[0])))
        .unwrap();
    let s = settings(
        &db,
        &rx,
        &[("OUTBOX_ORDERING", "subject"), ("OUTBOX_BATCH_SIZE", "1")],
    );

    let first = drain(&relay(&s)).await;

    assert_eq!(first.dead_lettered, 1, "{first:?}");
    let accepted = rx.handle().accepted_ids();
    assert_eq!(
        accepted,
        vec![b.body["eventId"].as_str().unwrap().to_owned()],
        "only b went: {first:?}"
    );
    assert!(
        first.deferred >= 2,
        "a's later versions wait behind the dead one: {first:?}"
    );
    assert!(first.summary().contains("deferred"), "{}", first.summary());

    // An operator skips the dead entry; a's later versions follow, in order.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["outbox", "skip", "--id", &a[0]])
        .env_clear()
        .envs(db.app_settings())
        .current_dir(app_root())
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("skipped 1"),
        "{out:?}"
    );
    rx.handle().reject_ids(None).unwrap();
    // The parked entries come due again after their deferral.
    for _ in 0..40 {
        if drain(&relay(&s)).await.published > 0 && db.count_entries_with("published").await == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    assert_eq!(db.count_entries_with("published").await, 3);
    assert_eq!(db.count_entries_with("skipped").await, 1);
    let order = accepted_versions(&rx);
    let a_versions: Vec<u64> = order["documents/a"].iter().map(|(_, v)| *v).collect();
    assert_eq!(a_versions, vec![2, 3]);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_relays_keep_per_subject_order() {
    let db = TestDb::with(&[("OUTBOX_ORDERING", "subject")]).await;
    let rx = receiver::start().await;
    let handler =
        Handler::functions(&app_settings(&db, &rx, &[("OUTBOX_ORDERING", "subject")])).await;
    // 8 documents, 6 versions each, written interleaved.
    for v in 1..=6 {
        for d in 0..8 {
            let res = handler
                .write(&ClientRequest::put_json(
                    &format!("o-{d}"),
                    format!(r#"{{"v":{v}}}"#),
                ))
                .await;
            assert!(res.status == 200 || res.status == 201);
        }
    }
    let s = settings(
        &db,
        &rx,
        &[
            ("OUTBOX_ORDERING", "subject"),
            ("OUTBOX_BATCH_SIZE", "5"),
            ("OUTBOX_PUBLISH_CONCURRENCY", "2"),
        ],
    );
    let barrier = Arc::new(Barrier::new(3));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (r, barrier) = (relay(&s), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut published = 0;
            for _ in 0..60 {
                published += drain(&r).await.published;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            published
        }));
    }
    let mut published = 0;
    for t in tasks {
        published += t.await.unwrap();
    }

    assert_eq!(published, 48, "every version of every document");
    assert_eq!(rx.handle().stats().duplicate_deliveries, 0);
    assert_eq!(
        assert_in_order(&accepted_versions(&rx)),
        0,
        "per-subject order kept"
    );
    db.drop().await;
}
