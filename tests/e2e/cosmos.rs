//! The write side under Cosmos DB for MongoDB (RU) rules, imitated by the project's wire
//! proxy (`cosmos-ru-proxy`) in front of the real replica set: one collection per transaction,
//! throttling (16500 with `RetryAfterMs`), error 50 after the write was applied. Whatever
//! happens, the ledger stays exact: a document exists if and only if its entry does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use cosmos_ru_proxy::{Match, ProxyConfig, RunningProxy, TxnOutcome};
use mongodb::bson::{Document, doc};

use crate::support::mongo::uri;
use crate::support::{
    ClientRequest, Handler, TestDb, app_settings, drain, receiver, relay, settings,
};

/// The real mongod the proxy forwards to.
fn upstream() -> SocketAddr {
    crate::support::mongo::upstream(&uri())
}

pub async fn proxy() -> RunningProxy {
    cosmos_ru_proxy::start(
        // Fixed randomness: the throttle rate hits the same commands every run.
        ProxyConfig {
            seed: Some(7),
            ..ProxyConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        upstream(),
    )
    .await
    .expect("start the proxy")
}

/// App settings for a handler that reaches the database only through `proxy`.
pub fn through(proxy: &RunningProxy, mut settings: Vec<(String, String)>) -> Vec<(String, String)> {
    settings.retain(|(k, _)| k != "MONGODB_URI");
    settings.push(("MONGODB_URI".into(), proxy.uri("rs0")));
    settings
}

/// Every business document has its entry and every entry its document (or its deletion).
async fn assert_ledger_exact(db: &TestDb) {
    let docs: HashSet<String> = db
        .documents()
        .find(doc! { "_meta": { "$exists": true } })
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|d: Result<Document, _>| d.unwrap().get_str("_id").unwrap().to_owned())
        .collect();
    let entries: Vec<Document> = futures_util::TryStreamExt::try_collect(
        db.outbox()
            .find(doc! { "_outbox": { "$exists": true } })
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let mut created: HashSet<String> = HashSet::new();
    for e in &entries {
        let state = e.get_document("_outbox").unwrap();
        let id = state
            .get_document("document")
            .unwrap()
            .get_str("id")
            .unwrap()
            .to_owned();
        let data: serde_json::Value = serde_json::from_str(
            state
                .get_document("event")
                .unwrap()
                .get_str("data")
                .unwrap(),
        )
        .unwrap();
        if data["operation"] != "deleted" {
            created.insert(id);
        }
    }
    for d in &docs {
        assert!(
            created.contains(d),
            "document {d} has no outbox entry (half-write)"
        );
    }
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn colocated_writes_keep_every_transaction_in_one_collection() {
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(&proxy, app_settings(&db, &rx, &[]))).await;

    let mut event_ids = Vec::new();
    for i in 0..5 {
        let id = format!("ru-{i}");
        for request in [
            ClientRequest::post_json(format!(r#"{{"_id":"{id}","v":1}}"#))
                .header("Idempotency-Key", &format!("create-{i}")),
            ClientRequest::put_json(&id, r#"{"v":2}"#),
        ] {
            let res = handler.write(&request).await;
            assert!(res.status == 200 || res.status == 201, "{:?}", res.body);
            event_ids.push(res.body["eventId"].as_str().unwrap().to_owned());
        }
    }
    let res = handler.write(&ClientRequest::delete("ru-0")).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    event_ids.push(res.body["eventId"].as_str().unwrap().to_owned());

    let stats = proxy.handle().stats();
    assert_eq!(stats.cross_collection_refusals, 0, "{stats:?}");
    let txns = proxy.handle().transactions();
    let committed: Vec<_> = txns
        .iter()
        .filter(|t| t.outcome == TxnOutcome::Committed)
        .collect();
    assert_eq!(committed.len(), 11, "one transaction per write: {txns:?}");
    let collection = format!("{}.{}", db.name, db.settings.collection);
    for t in &committed {
        assert_eq!(t.namespaces, vec![collection.clone()], "{t:?}");
    }
    assert_ledger_exact(&db).await;
    let report = drain(&relay(&settings(&db, &rx, &[]))).await;
    assert_eq!(report.published, 11, "{report:?}");
    let accepted: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(accepted, event_ids.into_iter().collect());
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn separate_placement_fails_loudly_as_on_cosmos_ru_and_writes_nothing() {
    let proxy = proxy().await;
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(&proxy, app_settings(&db, &rx, &[]))).await;

    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"sep-1"}"#))
        .await;

    assert_eq!(
        (res.status, res.error_code()),
        (500, "InternalError"),
        "{:?}",
        res.body
    );
    assert!(proxy.handle().stats().cross_collection_refusals >= 1);
    assert!(
        handler.output().contains("OUTBOX_PLACEMENT=colocated"),
        "the log says what to change:\n{}",
        handler.output()
    );
    assert_eq!(db.count_documents().await, 0, "nothing committed");
    assert_eq!(db.count_entries().await, 0);
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn auto_placement_chooses_colocated_behind_cosmos_ru_rules() {
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(
        &proxy,
        app_settings(&db, &rx, &[("OUTBOX_PLACEMENT", "auto")]),
    ))
    .await;

    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"auto-ru"}"#))
        .await;

    assert_eq!(res.status, 201, "{:?}", res.body);
    assert!(
        handler.output().contains("chose colocated"),
        "{}",
        handler.output()
    );
    assert_eq!(
        db.count_entries().await,
        1,
        "the entry is beside the document"
    );
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn throttling_ends_in_success_or_503_with_retry_after_never_a_half_write() {
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(
        &proxy,
        app_settings(&db, &rx, &[("MONGODB_WRITE_TIMEOUT_MS", "400")]),
    ))
    .await;
    // A short burst: retried inside the request's budget, honouring RetryAfterMs.
    proxy.handle().set_retry_after_ms(20);
    proxy.handle().throttle_next(3);
    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"th-0"}"#))
        .await;
    assert_eq!(res.status, 201, "{:?}", res.body);
    assert!(proxy.handle().stats().throttled_commands >= 3);
    assert!(
        handler.output().contains("throttled a write"),
        "{}",
        handler.output()
    );

    // A storm: some writes run out of budget.
    proxy.handle().set_retry_after_ms(150);
    proxy.handle().set_throttle_rate(0.6);
    let mut statuses = Vec::new();
    for i in 1..30 {
        let res = handler
            .write(&ClientRequest::post_json(format!(r#"{{"_id":"th-{i}"}}"#)))
            .await;
        if res.status == 503 {
            let retry: u64 = res.header("Retry-After").unwrap().parse().unwrap();
            assert!(retry >= 1);
            assert_eq!(res.error_code(), "ServiceUnavailable");
        } else {
            assert_eq!(res.status, 201, "{:?}", res.body);
        }
        statuses.push(res.status);
    }
    proxy.handle().set_throttle_rate(0.0);

    assert!(
        statuses.contains(&503),
        "the storm exhausted some budgets: {statuses:?}"
    );
    assert!(statuses.contains(&201), "{statuses:?}");
    let created = statuses.iter().filter(|s| **s == 201).count() as u64 + 1;
    assert_eq!(db.count_documents().await, created, "a 503 wrote nothing");
    assert_eq!(db.count_entries().await, created);
    assert_ledger_exact(&db).await;
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn after_error_50_an_idempotent_retry_writes_exactly_once() {
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(&proxy, app_settings(&db, &rx, &[]))).await;

    // Error 50 on the commit (applied, then reported as timed out) and on an insert.
    for (case, rule) in [("commit", "commitTransaction"), ("insert", "insert")] {
        let m = if rule == "insert" {
            Match::writes()
        } else {
            Match::data()
        };
        proxy.handle().set_error50_match(m);
        proxy.handle().error50_next(1);
        let request = ClientRequest::post_json(format!(r#"{{"_id":"e50-{case}"}}"#))
            .header("Idempotency-Key", &format!("e50-{case}"));
        let first = handler.write(&request).await;
        assert!(
            first.status == 201 || first.status == 503,
            "{case}: {:?}",
            first.body
        );
        let retry = handler.write(&request).await;
        assert_eq!(retry.status, 201, "{case}: {:?}", retry.body);
        if first.status == 201 {
            assert_eq!(first.body, retry.body, "{case}");
        }
    }

    assert!(proxy.handle().stats().error50_commands >= 2);
    assert_eq!(db.count_documents().await, 2, "each write happened once");
    assert_eq!(db.count_entries().await, 2);
    assert_ledger_exact(&db).await;
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_transaction_past_the_time_limit_commits_nothing() {
    let proxy = proxy().await;
    proxy.handle().set_txn_limit(Duration::from_millis(1));
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(
        &proxy,
        app_settings(&db, &rx, &[("MONGODB_WRITE_TIMEOUT_MS", "1500")]),
    ))
    .await;

    let res = handler
        .write(&ClientRequest::put_json("slow-1", r#"{"v":1}"#))
        .await;

    assert!(res.status == 503 || res.status == 201, "{:?}", res.body);
    if res.status == 503 {
        assert!(proxy.handle().stats().expired_transactions >= 1);
        assert_eq!(db.count_documents().await, 0);
        assert_eq!(db.count_entries().await, 0);
    }
    assert_ledger_exact(&db).await;
    db.drop().await;
    proxy.shutdown().await;
}

/// Cosmos DB RU offers TTL on `_ts` only, so the proxy refuses the outbox's TTL indexes; the
/// relay then deletes published entries past the retention and expired idempotency records
/// itself, in batches, and nothing else: not documents, not pending or dead entries, not
/// records still in force.
#[tokio::test]
async fn without_ttl_indexes_the_relay_removes_expired_data_and_nothing_else() {
    use chrono::{Duration as Age, Utc};
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    // The test database got its TTL indexes straight from mongod; take them away so that
    // only the relay can delete anything.
    for index in ["outbox_published_ttl", "outbox_idempotency_expiry"] {
        db.outbox().drop_index(index).await.unwrap();
    }
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(&proxy, app_settings(&db, &rx, &[]))).await;
    for i in 0..6 {
        let res = handler
            .write(
                &ClientRequest::post_json(format!(r#"{{"_id":"ttl-{i}"}}"#))
                    .header("Idempotency-Key", &format!("key-{i}")),
            )
            .await;
        assert_eq!(res.status, 201, "{:?}", res.body);
    }
    let relay_settings = through(
        &proxy,
        app_settings(&db, &rx, &[("OUTBOX_BATCH_SIZE", "2")]),
    );
    let relay = relay(
        &outbox_relay::config::Settings::from_env(&outbox_relay::config::Env::from_map(
            relay_settings.into_iter().collect(),
        ))
        .unwrap(),
    );
    let first = drain(&relay).await;
    assert_eq!((first.published, first.purged), (6, 0), "{first:?}");
    assert!(proxy.handle().stats().refused_ttl_indexes >= 1);
    let indexes = db.outbox().list_index_names().await.unwrap();
    assert!(
        indexes
            .iter()
            .any(|i| i == "outbox_idempotency_expiry_plain"),
        "a plain index finds expired records: {indexes:?}"
    );

    // Age some of it: three published entries past the 168 h retention, one dead entry as
    // old, two idempotency records expired.
    let old =
        mongodb::bson::DateTime::from_millis((Utc::now() - Age::hours(200)).timestamp_millis());
    let entry_of = |i: usize| doc! { "_outbox.document.id": format!("ttl-{i}") };
    for i in 0..3 {
        db.outbox()
            .update_one(
                entry_of(i),
                doc! { "$set": { "_outbox.published_at": old, "_outbox.due_at": old } },
            )
            .await
            .unwrap();
    }
    db.outbox()
        .update_one(entry_of(3), doc! { "$set": { "_outbox.status": "dead", "_outbox.due_at": old }, "$unset": { "_outbox.published_at": "" } })
        .await
        .unwrap();
    for i in 0..2 {
        db.outbox()
            .update_one(
                doc! { "_id.idempotency_key": format!("key-{i}") },
                doc! { "$set": { "_idempotency.expires_at": old } },
            )
            .await
            .unwrap();
    }

    let second = drain(&relay).await;

    assert_eq!(second.purged, 5, "3 entries and 2 records: {second:?}");
    assert!(
        second.summary().contains("5 expired removed"),
        "{}",
        second.summary()
    );
    let remaining_entries: HashSet<String> = db
        .entries_data()
        .await
        .into_iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        remaining_entries,
        ["ttl-3", "ttl-4", "ttl-5"].map(str::to_owned).into(),
        "the recent and the dead entries stay"
    );
    assert_eq!(db.count_entries_with("dead").await, 1);
    let records = db
        .outbox()
        .count_documents(doc! { "_idempotency": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(records, 4, "records still in force stay");
    assert_eq!(db.count_documents().await, 6, "documents are never touched");
    let third = drain(&relay).await;
    assert_eq!(third.purged, 0, "{third:?}");
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn embedded_writes_open_no_transaction_and_survive_throttling_and_error_50() {
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "embedded")]).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&through(&proxy, app_settings(&db, &rx, &[]))).await;
    proxy.handle().set_throttle_match(Match::writes());
    proxy.handle().set_retry_after_ms(5);
    proxy.handle().throttle_next(3);

    let mut event_ids = Vec::new();
    for i in 0..5 {
        let id = format!("emb-{i}");
        for request in [
            ClientRequest::post_json(format!(r#"{{"_id":"{id}","v":1}}"#))
                .header("Idempotency-Key", &format!("emb-create-{i}")),
            ClientRequest::put_json(&id, r#"{"v":2}"#),
        ] {
            let res = handler.write(&request).await;
            assert!(res.status == 200 || res.status == 201, "{:?}", res.body);
            event_ids.push(res.body["eventId"].as_str().unwrap().to_owned());
        }
    }
    let res = handler.write(&ClientRequest::delete("emb-0")).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    event_ids.push(res.body["eventId"].as_str().unwrap().to_owned());
    // Error 50 after the insert was applied: the retry under the same key replays it.
    proxy.handle().set_error50_match(Match::writes());
    proxy.handle().error50_next(1);
    let request =
        ClientRequest::post_json(r#"{"_id":"emb-e50"}"#).header("Idempotency-Key", "emb-e50");
    let first = handler.write(&request).await;
    assert!(
        first.status == 201 || first.status == 503,
        "{:?}",
        first.body
    );
    let retry = handler.write(&request).await;
    assert_eq!(retry.status, 201, "{:?}", retry.body);
    event_ids.push(retry.body["eventId"].as_str().unwrap().to_owned());

    let stats = proxy.handle().stats();
    assert!(stats.throttled_commands >= 3, "{stats:?}");
    assert!(stats.error50_commands >= 1, "{stats:?}");
    assert!(
        proxy.handle().transactions().is_empty(),
        "no write opened a transaction: {:?}",
        proxy.handle().transactions()
    );
    assert_eq!(
        db.count_documents().await,
        5,
        "emb-1..4 and emb-e50, once each"
    );
    // The relay goes through the proxy too: RU's index rules, a throttled command.
    let through_proxy =
        outbox_relay::config::Settings::from_env(&outbox_relay::config::Env::from_map(
            through(&proxy, app_settings(&db, &rx, &[]))
                .into_iter()
                .collect(),
        ))
        .unwrap();
    proxy.handle().throttle_next(1);
    let mut report = drain(&relay(&through_proxy)).await;
    if report.stopped.is_some() {
        // A throttled claim stops a run; the next one goes on.
        let more = drain(&relay(&through_proxy)).await;
        report.published += more.published;
    }
    assert_eq!(report.published, 12, "{report:?}");
    let accepted: HashSet<String> = rx.handle().accepted_ids().into_iter().collect();
    assert_eq!(accepted, event_ids.into_iter().collect());
    db.drop().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn throttling_without_a_hint_is_retried_then_answered_503_when_it_persists() {
    for placement in ["colocated", "embedded"] {
        let proxy = proxy().await;
        let db = TestDb::with(&[("OUTBOX_PLACEMENT", placement)]).await;
        let rx = receiver::start().await;
        let budget = [("MONGODB_WRITE_TIMEOUT_MS", "1500")];
        let handler = Handler::functions(&through(&proxy, app_settings(&db, &rx, &budget))).await;
        proxy.handle().set_throttle_match(Match::writes());
        proxy.handle().set_throttle_hint(false);

        proxy.handle().throttle_next(2);
        let passes = handler
            .write(&ClientRequest::post_json(r#"{"_id":"nh-1"}"#))
            .await;
        assert_eq!(passes.status, 201, "{placement}: {:?}", passes.body);

        proxy.handle().set_throttle_rate(1.0);
        let steady = handler
            .write(&ClientRequest::post_json(r#"{"_id":"nh-2"}"#))
            .await;
        proxy.handle().set_throttle_rate(0.0);
        assert_eq!(
            (steady.status, steady.error_code()),
            (503, "ServiceUnavailable"),
            "{placement}: {:?}",
            steady.body
        );
        assert!(steady.header("Retry-After").is_some(), "{placement}");
        assert!(
            proxy.handle().stats().throttled_commands >= 4,
            "{placement}"
        );
        assert_eq!(
            db.count_documents().await,
            1,
            "{placement}: nh-2 not written"
        );
        assert_eq!(db.count_entries().await, 1, "{placement}");
        db.drop().await;
        proxy.shutdown().await;
    }
}
