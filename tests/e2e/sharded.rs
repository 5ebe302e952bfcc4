//! A collection sharded on Cosmos DB for MongoDB RU, imitated by cosmos-ru-proxy in front of
//! the real replica set: the handler asks how the collection is sharded when it prepares the
//! database (RU's `customAction: "GetCollection"`), refuses `colocated` and `separate` there
//! at start-up naming `OUTBOX_PLACEMENT=embedded`, lets `auto` choose `embedded`, and wants
//! `MONGODB_SHARD_KEY` to be the collection's real shard key.

use std::collections::HashSet;
use std::time::Duration;

use mongodb::bson::doc;

use crate::support::host::handler_command;
use crate::support::{ClientRequest, Handler, TestDb, app_settings, drain, receiver, relay};

const KEY: &str = "tenant";

/// Runs `handler serve` until it stops by itself (at most 60 s); its exit status and output.
async fn serve_until_it_stops(settings: &[(String, String)]) -> (bool, String) {
    let run = handler_command(&["serve", "--port", "0"], settings.iter().cloned())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the handler stops by itself when the placement cannot work")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn colocated_and_separate_on_a_sharded_collection_are_refused_at_start_up_naming_embedded() {
    for placement in ["colocated", "separate"] {
        let db = TestDb::sharded(&[("OUTBOX_PLACEMENT", placement)], KEY).await;
        let rx = receiver::start().await;

        let (ok, output) = serve_until_it_stops(&app_settings(&db, &rx, &[])).await;

        assert!(!ok, "{placement}: start-up refused:\n{output}");
        for needle in [
            format!("OUTBOX_PLACEMENT={placement} cannot work"),
            "sharded on Cosmos DB for MongoDB RU (shard key tenant)".to_owned(),
            "set OUTBOX_PLACEMENT=embedded".to_owned(),
            "MONGODB_SHARD_KEY=tenant".to_owned(),
        ] {
            assert!(output.contains(&needle), "{placement}: {needle}:\n{output}");
        }
        assert_eq!(
            db.count_documents().await,
            0,
            "{placement}: nothing written"
        );
        assert_eq!(db.count_entries().await, 0, "{placement}");
        assert_eq!(
            db.proxy().stats().transactions_seen,
            0,
            "{placement}: not even tried"
        );
        db.drop().await;
    }
}

#[tokio::test]
async fn embedded_without_the_collections_shard_key_is_refused_naming_both() {
    for (setting, says) in [
        (None, "MONGODB_SHARD_KEY is unset"),
        (Some("region"), "MONGODB_SHARD_KEY is region"),
    ] {
        let db = TestDb::sharded(&[("OUTBOX_PLACEMENT", "embedded")], KEY).await;
        let rx = receiver::start().await;
        let mut settings = app_settings(&db, &rx, &[]);
        settings.retain(|(k, _)| k != "MONGODB_SHARD_KEY");
        if let Some(key) = setting {
            settings.push(("MONGODB_SHARD_KEY".into(), key.into()));
        }

        let (ok, output) = serve_until_it_stops(&settings).await;

        assert!(!ok, "{output}");
        assert!(output.contains(says), "{output}");
        assert!(output.contains("with the shard key tenant"), "{output}");
        assert!(output.contains("set MONGODB_SHARD_KEY=tenant"), "{output}");
        db.drop().await;
    }
}

#[tokio::test]
async fn auto_on_a_sharded_collection_chooses_embedded_and_keeps_rus_rules() {
    let db = TestDb::sharded(&[("OUTBOX_PLACEMENT", "embedded")], KEY).await;
    let rx = receiver::start().await;
    let settings = app_settings(&db, &rx, &[("OUTBOX_PLACEMENT", "auto")]);
    let handler = Handler::functions(&settings).await;

    let mut event_ids = Vec::new();
    for request in [
        ClientRequest::post_json(r#"{"_id":"sh-1","tenant":"t1","v":1}"#)
            .header("Idempotency-Key", "sh-create"),
        ClientRequest::put_json("sh-1", r#"{"tenant":"t1","v":2}"#),
        ClientRequest::post_json(r#"{"_id":"sh-2","tenant":"t2"}"#),
        ClientRequest::delete("sh-2"),
    ] {
        let res = handler.write(&request).await;
        assert!(
            res.status == 200 || res.status == 201,
            "{:?}\n{}",
            res.body,
            handler.output()
        );
        event_ids.push(res.body["eventId"].as_str().unwrap().to_owned());
    }
    let keyless = handler
        .write(&ClientRequest::post_json(r#"{"_id":"sh-3"}"#))
        .await;
    assert_eq!(
        keyless.status, 400,
        "the shard key is required: {:?}",
        keyless.body
    );

    assert!(
        handler
            .output()
            .contains("OUTBOX_PLACEMENT=auto chose embedded"),
        "{}",
        handler.output()
    );
    let stored = db
        .documents()
        .find_one(doc! { "_id": "sh-1" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored
            .get_document("_outbox")
            .unwrap()
            .get_array("events")
            .unwrap()
            .len(),
        2,
        "the events wait inside the document: {stored}"
    );
    let relay_settings = outbox_relay::config::Settings::from_env(
        &outbox_relay::config::Env::from_map(settings.into_iter().collect()),
    )
    .unwrap();
    let report = drain(&relay(&relay_settings)).await;
    assert_eq!(report.published, 4, "{report:?}");
    let accepted: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(accepted, event_ids.into_iter().collect());
    assert!(
        db.documents()
            .find_one(doc! { "_id": "sh-2" })
            .await
            .unwrap()
            .is_none(),
        "the tombstone went once its event was published"
    );
    let stats = db.proxy().stats();
    assert_eq!(
        (
            stats.transactions_seen,
            stats.shard_key_refusals,
            stats.sharded_transaction_refusals
        ),
        (0, 0, 0),
        "no transaction, every filter named the shard key: {stats:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_document_over_the_collections_limit_gets_413_before_anything_is_written() {
    // The handler takes the limit from RU's GetCollection (`maxContentLength`, 2 MB here):
    // without it the write would reach the server and come back as error 16 (a 500). Each
    // write stays under Event Grid's 1 MiB per event; the document with two pending events
    // does not fit.
    let db = TestDb::sharded(&[("OUTBOX_PLACEMENT", "embedded")], KEY).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    let pad = "x".repeat(700_000);

    let first = handler
        .write(&ClientRequest::post_json(format!(
            r#"{{"_id":"big-1","tenant":"t1","pad":"{pad}"}}"#
        )))
        .await;
    let second = handler
        .write(&ClientRequest::put_json(
            "big-1",
            format!(r#"{{"tenant":"t1","pad":"{pad}y"}}"#),
        ))
        .await;

    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(
        second.status,
        413,
        "{:?}\n{}",
        second.body,
        handler.output()
    );
    let stored = db
        .documents()
        .find_one(doc! { "_id": "big-1" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored
            .get_document("_meta")
            .unwrap()
            .get_i64("version")
            .unwrap(),
        1,
        "the refused write changed nothing"
    );
    assert_eq!(
        db.proxy().stats().oversized_documents,
        0,
        "refused before the server saw it"
    );
    db.drop().await;
}
