//! WriteDocumentHttp through the real handler: the document and its event commit together,
//! and every bad input gets its status with nothing written.

use mongodb::bson::doc;
use serde_json::{Value, json};

use crate::support::mongo::entry_state;
use crate::support::{ClientRequest, Handler, TestDb, app_settings, receiver};

async fn setup() -> (TestDb, eventgrid_receiver::RunningReceiver, Handler) {
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    (db, rx, handler)
}

#[tokio::test]
async fn a_document_and_its_outbox_entry_are_written_together() {
    let (db, _rx, handler) = setup().await;

    let res = handler
        .write(&ClientRequest::post_json(
            r#"{"_id":"report-7","title":"quarterly report","pages":7,"tags":["q3"]}"#,
        ))
        .await;

    assert_eq!(res.status, 201, "{:?}", res.body);
    assert_eq!(res.body["id"], "report-7");
    let event_id = res.body["eventId"].as_str().unwrap().to_owned();
    assert_eq!(res.header("Location"), Some("/api/documents/report-7"));
    // The ETag is "<lineage>.<version>"; the event names the same lineage.
    let etag = res
        .header("ETag")
        .expect("an ETag")
        .trim_matches('"')
        .to_owned();
    let lineage = etag.strip_suffix(".1").expect("version 1").to_owned();
    let stored = db
        .documents()
        .find_one(doc! { "_id": "report-7" })
        .await
        .unwrap()
        .expect("document stored");
    assert_eq!(stored.get_str("title").unwrap(), "quarterly report");
    assert_eq!(stored.get_i32("pages").unwrap(), 7);
    let state = entry_state(&db, &event_id).await;
    assert_eq!(state.get_str("status").unwrap(), "pending");
    assert_eq!(state.get_i32("attempts").unwrap(), 0);
    let event = state.get_document("event").unwrap();
    assert_eq!(event.get_str("subject").unwrap(), "documents/report-7");
    assert_eq!(event.get_str("type").unwrap(), "CosmosDB.DocumentCreated");
    assert_eq!(event.get_str("data_version").unwrap(), "1.0");
    let data: Value = serde_json::from_str(event.get_str("data").unwrap()).unwrap();
    assert_eq!(
        data,
        json!({
            "operation": "created",
            "id": "report-7",
            "version": 1,
            "lineage": lineage,
            "document": {"_id":"report-7","title":"quarterly report","pages":7,"tags":["q3"]}
        })
    );
    assert_eq!(db.count_documents().await, 1);
    assert_eq!(db.count_entries().await, 1);
    db.drop().await;
}

#[tokio::test]
async fn a_document_without_id_gets_a_generated_one() {
    let (db, _rx, handler) = setup().await;

    let res = handler.write(&ClientRequest::post_json(r#"{"a":1}"#)).await;

    assert_eq!(res.status, 201);
    let id = res.body["id"].as_str().unwrap();
    assert_eq!(id.len(), 24, "an ObjectId's hex digits: {id}");
    assert!(
        db.documents()
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .is_some()
    );
    db.drop().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_writes_nothing() {
    let (db, _rx, handler) = setup().await;
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    let huge = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1_048_576));
    let cases: Vec<(ClientRequest, u16, &str)> = vec![
        (ClientRequest::post_json(r#"{"a":"#), 400, "MalformedJson"),
        (ClientRequest::post_json("[1,2]"), 400, "NotAnObject"),
        (ClientRequest::post_json("\"text\""), 400, "NotAnObject"),
        (ClientRequest::post_json(""), 400, "EmptyBody"),
        (
            ClientRequest::post_json(r#"{"$set":{"a":1}}"#),
            400,
            "InvalidFieldName",
        ),
        (
            ClientRequest::post_json(r#"{"a":{"b.c":1}}"#),
            400,
            "InvalidFieldName",
        ),
        (
            ClientRequest::post_json(r#"{"a":[{"$gt":1}]}"#),
            400,
            "InvalidFieldName",
        ),
        (ClientRequest::post_json(r#"{"_id":42}"#), 400, "InvalidId"),
        (
            ClientRequest::post_json(r#"{"_id":{"$oid":"65f2c0a1e4b0a1b2c3d4e5f6"}}"#),
            400,
            "InvalidId",
        ),
        (
            ClientRequest::post_json(r#"{"_id":"has space"}"#),
            400,
            "InvalidId",
        ),
        (
            ClientRequest::post_json(format!(r#"{{"a":{deep}}}"#)),
            400,
            "TooDeep",
        ),
        (
            ClientRequest::post_json(r#"{"n":18446744073709551615}"#),
            400,
            "NumberOutOfRange",
        ),
        (ClientRequest::post_json(huge), 413, "PayloadTooLarge"),
        (
            ClientRequest {
                content_type: Some("text/plain".into()),
                ..ClientRequest::post_json(r#"{"a":1}"#)
            },
            415,
            "UnsupportedMediaType",
        ),
        (
            ClientRequest {
                content_type: None,
                ..ClientRequest::post_json(r#"{"a":1}"#)
            },
            415,
            "UnsupportedMediaType",
        ),
        (
            ClientRequest {
                method: "PUT".into(),
                ..ClientRequest::post_json(r#"{"a":1}"#)
            },
            405,
            "MethodNotAllowed",
        ),
        (
            ClientRequest {
                method: "PATCH".into(),
                ..ClientRequest::put_json("x", r#"{"a":1}"#)
            },
            405,
            "MethodNotAllowed",
        ),
        (
            ClientRequest::put_json("x", r#"{"_id":"y"}"#),
            400,
            "InvalidId",
        ),
        (ClientRequest::put_json("bad id", r#"{}"#), 400, "InvalidId"),
        (ClientRequest::delete("missing"), 404, "NotFound"),
        (
            ClientRequest::post_json(r#"{"a":1}"#).header("Idempotency-Key", ""),
            400,
            "InvalidHeader",
        ),
    ];
    for (request, status, code) in cases {
        let res = handler.write(&request).await;
        assert_eq!(
            (res.status, res.error_code()),
            (status, code),
            "{:?} → {:?}",
            request.body.as_deref().map(|b| &b[..b.len().min(80)]),
            res.body
        );
        assert!(
            res.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{:?}",
            res.body
        );
    }
    assert_eq!(db.count_documents().await, 0, "nothing written");
    assert_eq!(
        db.count_entries().await,
        0,
        "no event for a rejected request"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_method_that_needs_an_id_says_which_route_to_use() {
    let (db, _rx, handler) = setup().await;
    let without_id = |method: &str| ClientRequest {
        method: method.into(),
        id: None,
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        body: Some("{}".into()),
    };

    for method in ["PUT", "DELETE", "GET"] {
        let res = handler.write(&without_id(method)).await;
        let raw = handler
            .http()
            .request(method.parse().unwrap(), handler.url("/api/documents"))
            .send()
            .await
            .unwrap();

        assert_eq!(
            (res.status, res.error_code()),
            (405, "MethodNotAllowed"),
            "{method}"
        );
        assert_eq!(res.header("Allow"), Some("POST"), "{method}");
        assert_eq!(
            res.body["error"]["message"],
            format!("{method} needs a document id: use /api/documents/{{id}}")
        );
        assert_eq!(raw.status(), 405, "{method}");
        assert_eq!(raw.headers()["allow"], "POST");
        let body: Value = raw.json().await.unwrap();
        assert_eq!(body["error"]["message"], res.body["error"]["message"]);
    }
    let patch = handler.write(&without_id("PATCH")).await;
    assert_eq!(
        patch.body["error"]["message"],
        "method PATCH is not allowed; use POST"
    );
    assert_eq!(db.count_documents().await, 0);
    db.drop().await;
}

#[tokio::test]
async fn a_duplicate_id_gets_409_and_leaves_one_document_and_one_event() {
    let (db, _rx, handler) = setup().await;
    let first = handler
        .write(&ClientRequest::post_json(r#"{"_id":"dup","v":1}"#))
        .await;
    assert_eq!(first.status, 201);

    let second = handler
        .write(&ClientRequest::post_json(r#"{"_id":"dup","v":2}"#))
        .await;

    assert_eq!((second.status, second.error_code()), (409, "Conflict"));
    assert_eq!(db.count_documents().await, 1);
    assert_eq!(db.count_entries().await, 1);
    let stored = db
        .documents()
        .find_one(doc! {"_id":"dup"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_i32("v").unwrap(), 1, "the first write stands");
    db.drop().await;
}

#[tokio::test]
async fn a_failure_forced_after_the_document_insert_leaves_neither_document_nor_entry() {
    let (db, _rx, handler) = setup().await;
    // Make the outbox refuse every insert: the document insert (first in the transaction)
    // succeeds, then the entry insert fails.
    db.db()
        .run_command(doc! {
            "collMod": &db.settings.outbox_collection,
            "validator": { "_outbox.status": "never-valid" },
            "validationLevel": "strict",
            "validationAction": "error",
        })
        .await
        .unwrap();

    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"atomic-1","v":1}"#))
        .await;

    assert_eq!(
        (res.status, res.error_code()),
        (500, "InternalError"),
        "{:?}",
        res.body
    );
    assert_eq!(
        res.body["error"]["message"], "internal error",
        "no driver text leaks"
    );
    assert_eq!(
        db.count_documents().await,
        0,
        "the document insert was rolled back"
    );
    assert_eq!(db.count_entries().await, 0);
    db.drop().await;
}

#[tokio::test]
async fn an_unreachable_database_gets_503_with_retry_after_and_health_still_answers() {
    let rx = receiver::start().await;
    let port = devstack::pick_free_port().unwrap();
    let settings = vec![
        (
            "MONGODB_URI".to_owned(),
            format!("mongodb://127.0.0.1:{port}/?replicaSet=rs0&serverSelectionTimeoutMS=500"),
        ),
        ("MONGODB_WRITE_TIMEOUT_MS".into(), "3000".into()),
        ("EVENTGRID_TOPIC_ENDPOINT".into(), rx.endpoint()),
        ("EVENTGRID_TOPIC_KEY".into(), receiver::KEY.into()),
    ];
    let handler = Handler::functions(&settings).await;

    let request = ClientRequest::post_json(r#"{"a":1}"#);
    let write = handler.write(&request);
    let health = async {
        let r = handler.http().get(handler.url("/")).send().await.unwrap();
        r.status().as_u16()
    };
    let (res, health) = tokio::join!(write, health);

    assert_eq!(
        health, 200,
        "GET / answers while the database is unreachable"
    );
    assert_eq!((res.status, res.error_code()), (503, "ServiceUnavailable"));
    let retry_after: u64 = res.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert!(
        !res.body.to_string().contains("127.0.0.1"),
        "{:?}",
        res.body
    );
}

#[tokio::test]
async fn forwarded_raw_requests_get_the_same_answers() {
    let (db, _rx, handler) = setup().await;
    let url = handler.url("/api/documents");

    let created = handler
        .http()
        .post(&url)
        .header("content-type", "application/json")
        .header(
            "X-Azure-Functions-InvocationId",
            uuid::Uuid::new_v4().to_string(),
        )
        .body(r#"{"_id":"raw-1","x":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.headers()["location"].to_str().unwrap(),
        "/api/documents/raw-1"
    );
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["id"], "raw-1");

    let wrong_method = handler.http().get(&url).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");

    // An announced oversize body is refused before it is read: send the headers and a few
    // bytes only, and the answer comes anyway.
    let too_big = raw_exchange(
        handler.port,
        "POST /api/documents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5242880\r\n\r\n{\"a\":",
    )
    .await;
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    assert!(too_big.contains("PayloadTooLarge"), "{too_big}");

    let malformed = handler
        .http()
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.headers()["content-type"], "application/json");

    assert_eq!(db.count_documents().await, 1);
    assert_eq!(db.count_entries().await, 1);
    db.drop().await;
}

/// Writes `request` on a fresh connection and reads until the server closes it or 5 s pass.
async fn raw_exchange(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if String::from_utf8_lossy(&buf).contains("\r\n\r\n{") && buf.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn secrets_never_appear_in_logs_or_answers() {
    const PASSWORD: &str = "pw-do-not-log-7781";
    const KEY: &str = "key-do-not-log-5519";
    let rx = receiver::start().await;
    let port = devstack::pick_free_port().unwrap();
    let settings = vec![
        (
            "MONGODB_URI".to_owned(),
            format!(
                "mongodb://admin:{PASSWORD}@127.0.0.1:{port}/?replicaSet=rs0&serverSelectionTimeoutMS=300"
            ),
        ),
        ("MONGODB_WRITE_TIMEOUT_MS".into(), "2000".into()),
        ("EVENTGRID_TOPIC_ENDPOINT".into(), rx.endpoint()),
        ("EVENTGRID_TOPIC_KEY".into(), KEY.into()),
        // One drain per tick: a tailing invocation would retry the database for its budget.
        ("OUTBOX_TAIL".into(), "off".into()),
    ];
    let handler = Handler::functions(&settings).await;

    let write = handler.write(&ClientRequest::post_json(r#"{"a":1}"#)).await;
    let tick = handler.tick().await;

    assert_eq!(write.status, 503);
    assert_eq!(
        tick.status, 500,
        "a run that cannot reach the database fails"
    );
    let everything = format!("{}\n{:?}\n{:?}", handler.output(), write.body, tick.body);
    assert!(
        !everything.contains(PASSWORD),
        "password leaked:\n{everything}"
    );
    assert!(!everything.contains(KEY), "key leaked:\n{everything}");
}
