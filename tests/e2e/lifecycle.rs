//! The document lifecycle (POST / PUT / DELETE with versions and ETags), idempotent retries,
//! and both outbox placements, through the real handler.

use std::collections::HashSet;

use mongodb::bson::doc;
use serde_json::Value;

use crate::support::{
    ClientRequest, Handler, TestDb, app_settings, drain, receiver, relay, settings,
};

async fn setup_with(
    extra_db: &[(&str, &str)],
) -> (TestDb, eventgrid_receiver::RunningReceiver, Handler) {
    let db = TestDb::with(extra_db).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    (db, rx, handler)
}

async fn setup() -> (TestDb, eventgrid_receiver::RunningReceiver, Handler) {
    setup_with(&[]).await
}

#[tokio::test]
async fn put_creates_then_replaces_and_delete_removes_each_with_its_own_event() {
    let (db, rx, handler) = setup().await;

    let created = handler
        .write(&ClientRequest::put_json("inv-1", r#"{"total":10}"#))
        .await;
    let replaced = handler
        .write(&ClientRequest::put_json("inv-1", r#"{"total":12}"#))
        .await;
    let deleted = handler.write(&ClientRequest::delete("inv-1")).await;

    assert_eq!(
        (created.status, created.body["operation"].as_str()),
        (201, Some("created"))
    );
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.header("Location"), Some("/api/documents/inv-1"));
    assert_eq!(
        (replaced.status, replaced.body["operation"].as_str()),
        (200, Some("replaced"))
    );
    assert_eq!(replaced.body["version"], 2);
    assert_ne!(created.header("ETag"), replaced.header("ETag"));
    assert_eq!(
        (deleted.status, deleted.body["operation"].as_str()),
        (200, Some("deleted"))
    );
    assert_eq!(deleted.body["version"], 3);
    assert_eq!(db.count_documents().await, 0);
    assert_eq!(db.count_entries().await, 3);

    let report = drain(&relay(&settings(&db, &rx, &[]))).await;
    assert_eq!(report.published, 3);
    let mut events: Vec<Value> = rx
        .handle()
        .events()
        .iter()
        .map(|e| e.to_value().unwrap())
        .collect();
    events.sort_by_key(|e| e["data"]["version"].as_u64());
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "CosmosDB.DocumentCreated",
            "CosmosDB.DocumentReplaced",
            "CosmosDB.DocumentDeleted"
        ]
    );
    assert_eq!(events[1]["data"]["document"]["total"], 12);
    assert!(
        events[2]["data"].get("document").is_none(),
        "a deletion carries the id only"
    );
    assert_eq!(events[2]["data"]["id"], "inv-1");
    let ids: Vec<&str> = [&created, &replaced, &deleted]
        .iter()
        .map(|r| r.body["eventId"].as_str().unwrap())
        .collect();
    for (e, id) in events.iter().zip(&ids) {
        assert_eq!(e["id"], *id);
    }
    db.drop().await;
}

#[tokio::test]
async fn conditional_requests_are_refused_with_412_and_write_nothing() {
    let (db, _rx, handler) = setup().await;
    let v1 = handler
        .write(&ClientRequest::put_json("c-1", r#"{"n":1}"#))
        .await;
    let etag1 = v1.header("ETag").unwrap().to_owned();
    let v2 = handler
        .write(&ClientRequest::put_json("c-1", r#"{"n":2}"#).header("If-Match", &etag1))
        .await;
    assert_eq!(v2.status, 200, "{:?}", v2.body);

    let stale_put = handler
        .write(&ClientRequest::put_json("c-1", r#"{"n":3}"#).header("If-Match", &etag1))
        .await;
    let stale_delete = handler
        .write(&ClientRequest::delete("c-1").header("If-Match", &etag1))
        .await;
    let create_only = handler
        .write(&ClientRequest::put_json("c-1", r#"{"n":4}"#).header("If-None-Match", "*"))
        .await;
    let if_match_missing = handler
        .write(&ClientRequest::put_json("c-2", r#"{"n":1}"#).header("If-Match", &etag1))
        .await;

    for r in [&stale_put, &stale_delete, &create_only, &if_match_missing] {
        assert_eq!(
            (r.status, r.error_code()),
            (412, "PreconditionFailed"),
            "{:?}",
            r.body
        );
    }
    let stored = db
        .documents()
        .find_one(doc! {"_id": "c-1"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.get_i32("n").unwrap(),
        2,
        "the refused writes changed nothing"
    );
    assert_eq!(
        stored
            .get_document("_meta")
            .unwrap()
            .get_i64("version")
            .unwrap(),
        2
    );
    assert_eq!(db.count_entries().await, 2, "no event for a refused write");
    let fresh = handler
        .write(&ClientRequest::put_json("c-3", r#"{"n":1}"#).header("If-None-Match", "*"))
        .await;
    assert_eq!(fresh.status, 201);
    let current = handler
        .write(&ClientRequest::delete("c-1").header("If-Match", v2.header("ETag").unwrap()))
        .await;
    assert_eq!(current.status, 200);
    db.drop().await;
}

#[tokio::test]
async fn a_412_carries_the_current_etag_so_the_client_can_retry_with_it() {
    let (db, _rx, handler) = setup().await;
    let v1 = handler
        .write(&ClientRequest::put_json("r-1", r#"{"n":1}"#))
        .await;
    let v2 = handler
        .write(&ClientRequest::put_json("r-1", r#"{"n":2}"#))
        .await;
    let stale = v1.header("ETag").unwrap();

    let refused = handler
        .write(&ClientRequest::put_json("r-1", r#"{"n":3}"#).header("If-Match", stale))
        .await;
    let refused_delete = handler
        .write(&ClientRequest::delete("r-1").header("If-Match", stale))
        .await;
    let exists = handler
        .write(&ClientRequest::put_json("r-1", r#"{"n":3}"#).header("If-None-Match", "*"))
        .await;
    let missing = handler
        .write(&ClientRequest::put_json("r-2", r#"{"n":1}"#).header("If-Match", stale))
        .await;

    for r in [&refused, &refused_delete, &exists] {
        assert_eq!(r.status, 412, "{:?}", r.body);
        assert_eq!(r.header("ETag"), v2.header("ETag"), "{:?}", r.headers);
    }
    assert_eq!(missing.status, 412);
    assert_eq!(
        missing.header("ETag"),
        None,
        "no document, no current revision"
    );
    let retried = handler
        .write(
            &ClientRequest::put_json("r-1", r#"{"n":3}"#)
                .header("If-Match", refused.header("ETag").unwrap()),
        )
        .await;
    assert_eq!(
        (retried.status, retried.body["version"].as_u64()),
        (200, Some(3))
    );
    db.drop().await;
}

#[tokio::test]
async fn an_unquoted_if_match_is_refused_with_a_message_that_shows_the_quotes() {
    let (db, _rx, handler) = setup().await;
    let v1 = handler
        .write(&ClientRequest::put_json("u-1", r#"{"n":1}"#))
        .await;
    let unquoted = v1.header("ETag").unwrap().trim_matches('"').to_owned();

    let res = handler
        .write(&ClientRequest::put_json("u-1", r#"{"n":2}"#).header("If-Match", &unquoted))
        .await;

    // RFC 9110 §13.1.1: a field value that is not a list of entity tags is a false condition.
    assert_eq!(
        (res.status, res.error_code()),
        (412, "PreconditionFailed"),
        "{:?}",
        res.body
    );
    let message = res.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("If-Match: \"{unquoted}\"")),
        "{message}"
    );
    assert_eq!(res.header("ETag"), v1.header("ETag"));
    let stored = db
        .documents()
        .find_one(doc! {"_id": "u-1"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_i32("n").unwrap(), 1, "nothing written");
    db.drop().await;
}

#[tokio::test]
async fn a_document_created_again_after_delete_gets_new_event_ids() {
    let (db, _rx, handler) = setup().await;
    let first = handler
        .write(&ClientRequest::post_json(r#"{"_id":"re-1"}"#))
        .await;
    assert_eq!(
        handler.write(&ClientRequest::delete("re-1")).await.status,
        200
    );

    let again = handler
        .write(&ClientRequest::post_json(r#"{"_id":"re-1"}"#))
        .await;

    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.body["version"], 1);
    assert_ne!(
        again.body["eventId"], first.body["eventId"],
        "a new life, new event ids"
    );
    assert_ne!(again.header("ETag"), first.header("ETag"));
    assert_eq!(db.count_entries().await, 3);
    // Each lifetime's events name their own lineage, so a consumer can tell the new
    // version 1 from the old one.
    let lineage_of = |r: &crate::support::host::CallerResponse| {
        let etag = r.header("ETag").unwrap().trim_matches('"').to_owned();
        etag.rsplit_once('.').unwrap().0.to_owned()
    };
    let mut lineages: Vec<(String, String)> = db
        .entries_data()
        .await
        .into_iter()
        .map(|d| {
            (
                d["lineage"].as_str().unwrap().to_owned(),
                d["operation"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    lineages.sort();
    let mut expected = vec![
        (lineage_of(&first), "created".to_owned()),
        (lineage_of(&first), "deleted".to_owned()),
        (lineage_of(&again), "created".to_owned()),
    ];
    expected.sort();
    assert_eq!(lineages, expected);
    db.drop().await;
}

#[tokio::test]
async fn a_replayed_idempotency_key_returns_the_first_answer_and_writes_nothing() {
    let (db, _rx, handler) = setup().await;
    let request = ClientRequest::post_json(r#"{"amount":5}"#).header("Idempotency-Key", "pay-42");

    let first = handler.write(&request).await;
    let second = handler.write(&request).await;

    assert_eq!(first.status, 201);
    assert_eq!(second.status, 201);
    assert_eq!(
        second.body, first.body,
        "same id (even generated), same event id"
    );
    assert_eq!(second.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(second.header("ETag"), first.header("ETag"));
    assert_eq!(db.count_documents().await, 1);
    assert_eq!(db.count_entries().await, 1);

    let different = handler
        .write(&ClientRequest::post_json(r#"{"amount":6}"#).header("Idempotency-Key", "pay-42"))
        .await;
    assert_eq!(
        (different.status, different.error_code()),
        (422, "IdempotencyKeyReused")
    );
    let delete_same_key = handler
        .write(&ClientRequest::delete("x").header("Idempotency-Key", "pay-42"))
        .await;
    assert_eq!(delete_same_key.status, 422);
    assert_eq!(db.count_documents().await, 1);
    assert_eq!(db.count_entries().await, 1);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_write_once() {
    let (db, _rx, handler) = setup().await;
    let request =
        ClientRequest::post_json(r#"{"order":"o-9"}"#).header("Idempotency-Key", "race-1");

    let answers = futures_util::future::join_all((0..8).map(|_| handler.write(&request))).await;

    let winners: HashSet<String> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.body["eventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(winners.len(), 1, "every 201 is the same write: {answers:?}");
    for a in &answers {
        assert!(a.status == 201 || a.status == 409, "{a:?}");
    }
    assert_eq!(db.count_documents().await, 1);
    assert_eq!(db.count_entries().await, 1);
    db.drop().await;
}

#[tokio::test]
async fn colocated_placement_keeps_entries_beside_documents_and_drains_them() {
    let (db, rx, handler) = setup_with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let res = handler
            .write(
                &ClientRequest::put_json(&format!("co-{i}"), r#"{"v":1}"#)
                    .header("Idempotency-Key", &format!("k-{i}")),
            )
            .await;
        assert_eq!(res.status, 201, "{:?}", res.body);
        ids.push(res.body["eventId"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        handler.write(&ClientRequest::delete("co-0")).await.status,
        200
    );

    let outbox_collection = db
        .db()
        .collection::<mongodb::bson::Document>(&db.settings.outbox_collection);
    assert_eq!(
        outbox_collection.count_documents(doc! {}).await.unwrap(),
        0,
        "nothing in OUTBOX_COLLECTION"
    );
    assert_eq!(db.count_documents().await, 4);
    assert_eq!(
        db.count_entries().await,
        6,
        "entries live in the documents' collection"
    );
    let with_meta = db
        .documents()
        .count_documents(doc! { "_meta": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(
        with_meta, 4,
        "`_meta` tells documents from entries and records"
    );

    let report = drain(&relay(&settings(
        &db,
        &rx,
        &[("OUTBOX_PLACEMENT", "colocated")],
    )))
    .await;

    assert_eq!(report.published, 6, "{report:?}");
    let accepted: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    for id in &ids {
        assert!(accepted.contains(id));
    }
    db.drop().await;
}

#[tokio::test]
async fn auto_placement_chooses_separate_on_a_mongodb_replica_set() {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler =
        Handler::functions(&app_settings(&db, &rx, &[("OUTBOX_PLACEMENT", "auto")])).await;

    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"auto-1"}"#))
        .await;

    assert_eq!(res.status, 201);
    assert_eq!(db.count_entries().await, 1, "in OUTBOX_COLLECTION");
    assert!(
        handler.output().contains("chose separate"),
        "{}",
        handler.output()
    );
    db.drop().await;
}

#[tokio::test]
async fn the_shard_key_travels_onto_entries_and_records_so_a_transaction_stays_in_one_partition() {
    let (db, _rx, handler) = {
        let db = TestDb::with(&[
            ("OUTBOX_PLACEMENT", "colocated"),
            ("MONGODB_SHARD_KEY", "tenant"),
        ])
        .await;
        let rx = receiver::start().await;
        let handler =
            Handler::functions(&app_settings(&db, &rx, &[("MONGODB_SHARD_KEY", "tenant")])).await;
        (db, rx, handler)
    };

    let created = handler
        .write(
            &ClientRequest::put_json("sk-1", r#"{"tenant":"acme","v":1}"#)
                .header("Idempotency-Key", "sk"),
        )
        .await;
    let deleted = handler.write(&ClientRequest::delete("sk-1")).await;
    let missing = handler.write(&ClientRequest::post_json(r#"{"v":1}"#)).await;

    assert_eq!(
        (created.status, deleted.status),
        (201, 200),
        "{:?} {:?}",
        created.body,
        deleted.body
    );
    assert_eq!(
        (missing.status, missing.error_code()),
        (400, "MissingShardKey")
    );
    let with_key = db
        .documents()
        .count_documents(doc! { "tenant": "acme", "_outbox": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(
        with_key, 2,
        "both entries (create and delete) carry the shard key value"
    );
    let record = db
        .documents()
        .count_documents(doc! { "tenant": "acme", "_idempotency": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(record, 1, "the idempotency record carries it too");
    db.drop().await;
}
