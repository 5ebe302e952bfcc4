//! GET /api/documents/{id} through the real handler, by both doors (the host's envelope and the
//! raw route): the document as written with its ETag, 304 for the current ETag, 404 for a
//! missing id, and never an outbox entry or an idempotency record.

use mongodb::bson::doc;
use serde_json::{Value, json};

use crate::support::{ClientRequest, Handler, TestDb, app_settings, receiver};

async fn setup_with(
    extra_db: &[(&str, &str)],
) -> (TestDb, eventgrid_receiver::RunningReceiver, Handler) {
    let db = TestDb::with(extra_db).await;
    let rx = receiver::start().await;
    let handler = Handler::functions(&app_settings(&db, &rx, &[])).await;
    (db, rx, handler)
}

fn get(id: &str) -> ClientRequest {
    ClientRequest {
        method: "GET".into(),
        id: Some(id.into()),
        content_type: None,
        headers: Vec::new(),
        body: None,
    }
}

/// `Outputs.res` of a GET sent through the host's envelope, as the host sends it; unlike
/// `Handler::write`, it does not expect a JSON body (a 304 has none).
async fn envelope_get(handler: &Handler, id: &str, if_none_match: Option<&str>) -> Value {
    let mut headers = json!({ "Accept": ["*/*"], "Host": ["contoso-outbox.azurewebsites.net"] });
    if let Some(tag) = if_none_match {
        headers["If-None-Match"] = json!([tag]);
    }
    let envelope = json!({
        "Data": { "req": {
            "Url": format!("https://contoso-outbox.azurewebsites.net/api/documents/{id}"),
            "Method": "GET",
            "Query": {},
            "Headers": headers,
            "Params": { "id": id },
            "Identities": [],
        } },
        "Metadata": { "sys": { "MethodName": "WriteDocumentHttp" } },
    });
    let answer = handler.invoke("WriteDocumentHttp", &envelope).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["Outputs"]["res"].clone()
}

#[tokio::test]
async fn a_document_reads_back_as_written_with_the_etag_of_its_last_write() {
    let (db, _rx, handler) = setup_with(&[]).await;
    let created = handler
        .write(&ClientRequest::post_json(
            r#"{"_id":"rd-1","title":"q3","n":7,"f":2.5,"tags":["a",{"b":null}]}"#,
        ))
        .await;
    assert_eq!(created.status, 201);

    let read = handler.write(&get("rd-1")).await;

    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(
        read.body,
        json!({"_id":"rd-1","title":"q3","n":7,"f":2.5,"tags":["a",{"b":null}]}),
        "the client's fields and _id, in order, without _meta"
    );
    assert_eq!(read.header("ETag"), created.header("ETag"));
    assert!(
        read.logs.iter().all(|l| !l.contains("q3")),
        "a read's body is never logged: {:?}",
        read.logs
    );

    let replaced = handler
        .write(&ClientRequest::put_json("rd-1", r#"{"title":"q4"}"#))
        .await;
    let again = handler.write(&get("rd-1")).await;
    assert_eq!(again.body, json!({"_id":"rd-1","title":"q4"}));
    assert_eq!(again.header("ETag"), replaced.header("ETag"));
    assert_ne!(again.header("ETag"), created.header("ETag"));
    db.drop().await;
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_gets_304_without_a_body() {
    let (db, _rx, handler) = setup_with(&[]).await;
    let v1 = handler
        .write(&ClientRequest::put_json("rd-2", r#"{"n":1}"#))
        .await;
    let etag1 = v1.header("ETag").unwrap().to_owned();

    let current = envelope_get(&handler, "rd-2", Some(&etag1)).await;
    let star = envelope_get(&handler, "rd-2", Some("*")).await;

    for res in [&current, &star] {
        assert_eq!(res["statusCode"], 304, "{res}");
        assert_eq!(res["body"], "", "{res}");
        assert_eq!(res["headers"]["Etag"], etag1.as_str(), "{res}");
        assert!(res["headers"].get("Content-Type").is_none(), "{res}");
    }
    handler
        .write(&ClientRequest::put_json("rd-2", r#"{"n":2}"#))
        .await;
    let stale = envelope_get(&handler, "rd-2", Some(&etag1)).await;
    assert_eq!(stale["statusCode"], 200, "{stale}");
    assert_eq!(stale["body"], r#"{"_id":"rd-2","n":2}"#);
    assert_ne!(stale["headers"]["Etag"], etag1.as_str());
    db.drop().await;
}

#[tokio::test]
async fn a_missing_or_deleted_document_gets_404() {
    let (db, _rx, handler) = setup_with(&[]).await;
    handler
        .write(&ClientRequest::put_json("rd-3", r#"{"n":1}"#))
        .await;
    handler.write(&ClientRequest::delete("rd-3")).await;

    for id in ["rd-3", "never"] {
        let res = handler.write(&get(id)).await;
        assert_eq!((res.status, res.error_code()), (404, "NotFound"), "{id}");
        assert_eq!(
            res.body["error"]["message"],
            format!("there is no document with _id {id}")
        );
        assert!(res.header("ETag").is_none());
    }
    let bad = handler.write(&get("bad id")).await;
    assert_eq!((bad.status, bad.error_code()), (400, "InvalidId"));
    db.drop().await;
}

#[tokio::test]
async fn reads_never_return_an_outbox_entry_or_an_idempotency_record_beside_documents() {
    let (db, _rx, handler) = setup_with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let written = handler
        .write(&ClientRequest::put_json("rd-4", r#"{"n":1}"#).header("Idempotency-Key", "key-rd-4"))
        .await;
    assert_eq!(written.status, 201);
    // Entries and records with string ids, as a document has: a read by id alone would
    // return them.
    db.documents()
        .insert_many([
            doc! { "_id": "ghost-entry", "_outbox": { "status": "pending" } },
            doc! { "_id": "ghost-record", "_idempotency": { "key": "k" } },
        ])
        .await
        .unwrap();

    let document = handler.write(&get("rd-4")).await;
    let entry = handler.write(&get("ghost-entry")).await;
    let record = handler.write(&get("ghost-record")).await;

    assert_eq!(document.status, 200);
    assert_eq!(document.body, json!({"_id":"rd-4","n":1}));
    assert_eq!(db.count_entries().await, 2, "the real entry and the ghost");
    for res in [&entry, &record] {
        assert_eq!((res.status, res.error_code()), (404, "NotFound"), "{res:?}");
    }
    db.drop().await;
}

#[tokio::test]
async fn the_raw_route_reads_the_same() {
    let (db, _rx, handler) = setup_with(&[]).await;
    let created = handler
        .write(&ClientRequest::post_json(r#"{"_id":"rd-5","a":true}"#))
        .await;
    let etag = created.header("ETag").unwrap();
    let http = handler.http();
    let url = handler.url("/api/documents/rd-5");

    let found = http.get(&url).send().await.unwrap();
    let not_modified = http
        .get(&url)
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    let missing = http
        .get(handler.url("/api/documents/rd-6"))
        .send()
        .await
        .unwrap();

    assert_eq!(found.status(), 200);
    assert_eq!(found.headers()["etag"], etag);
    assert_eq!(found.headers()["content-type"], "application/json");
    assert_eq!(
        found.json::<Value>().await.unwrap(),
        json!({"_id":"rd-5","a":true})
    );
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"], etag);
    assert!(not_modified.headers().get("content-type").is_none());
    assert!(not_modified.bytes().await.unwrap().is_empty());
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NotFound");
    db.drop().await;
}
