//! `openapi.yaml` describes the HTTP API as served: its paths and methods are the function's
//! route and methods, its error codes are the ones the code produces, and what a live handler
//! answers (status, headers) is documented.

use std::collections::BTreeSet;

use outbox_relay::functions::binding::HttpFunction;
use outbox_relay::functions::error::ApiError;
use serde_json::Value;

use crate::support::host::app_root;
use crate::support::{Handler, TestDb, app_settings, receiver};

fn spec() -> Value {
    let text = std::fs::read_to_string(app_root().join("openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is valid YAML")
}

fn methods_of(spec: &Value, path: &str) -> BTreeSet<String> {
    spec["paths"][path]
        .as_object()
        .unwrap_or_else(|| panic!("{path} is not documented"))
        .keys()
        .filter(|k| *k != "parameters")
        .map(|k| k.to_ascii_uppercase())
        .collect()
}

/// Resolves a `$ref` within the document.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling {r}")),
        None => v,
    }
}

#[test]
fn paths_and_methods_match_the_function_route() {
    let spec = spec();
    let function = HttpFunction::load(&app_root()).unwrap();
    let (collection, item) = function.raw_routes();
    let documented: BTreeSet<&String> = spec["paths"].as_object().unwrap().keys().collect();
    let served: BTreeSet<String> = [collection.clone(), item.clone()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(documented, served.iter().collect(), "paths");
    let split =
        |allow: String| -> BTreeSet<String> { allow.split(", ").map(str::to_owned).collect() };
    if let Some(c) = collection {
        assert_eq!(methods_of(&spec, &c), split(function.allow(false)), "{c}");
    }
    if let Some(i) = item {
        assert_eq!(methods_of(&spec, &i), split(function.allow(true)), "{i}");
    }
}

#[test]
fn error_codes_are_the_ones_the_code_produces() {
    let spec = spec();
    let documented: BTreeSet<&str> = spec
        .pointer("/components/schemas/Error/properties/error/properties/code/enum")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let produced: BTreeSet<&str> = ApiError::CODES.iter().map(|(c, _)| *c).collect();
    assert_eq!(documented, produced);
    // Every status an error can have is documented on some operation.
    let mut statuses = BTreeSet::new();
    for item in spec["paths"].as_object().unwrap().values() {
        for (method, op) in item.as_object().unwrap() {
            if method != "parameters" {
                for code in op["responses"].as_object().unwrap().keys() {
                    statuses.insert(code.parse::<u16>().unwrap());
                }
            }
        }
    }
    for (code, status) in ApiError::CODES {
        assert!(
            statuses.contains(status),
            "{code} → {status} is documented nowhere"
        );
    }
}

#[tokio::test]
async fn live_answers_are_documented_with_their_headers() {
    let spec = spec();
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(&db, &rx, &[])).await;
    let http = handler.http();
    let send =
        |method: reqwest::Method, path: &str, body: Option<&str>, headers: &[(&str, &str)]| {
            let mut r = http.request(method, handler.url(path));
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            if let Some(b) = body {
                r = r
                    .header("content-type", "application/json")
                    .body(b.to_owned());
            }
            r.send()
        };
    use reqwest::Method as M;
    let created = send(M::POST, "/api/documents", Some(r#"{"_id":"api-1"}"#), &[])
        .await
        .unwrap();
    let etag = created.headers()["etag"].to_str().unwrap().to_owned();
    let cases = vec![
        ("/api/documents", "post", created),
        (
            "/api/documents/{id}",
            "put",
            send(M::PUT, "/api/documents/api-1", Some("{}"), &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "put",
            send(
                M::PUT,
                "/api/documents/api-2",
                Some("{}"),
                &[("Idempotency-Key", "k")],
            )
            .await
            .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "put",
            send(
                M::PUT,
                "/api/documents/api-2",
                Some("{}"),
                &[("Idempotency-Key", "k")],
            )
            .await
            .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "put",
            send(
                M::PUT,
                "/api/documents/api-1",
                Some("{}"),
                &[("If-Match", &etag)],
            )
            .await
            .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "delete",
            send(M::DELETE, "/api/documents/nope", None, &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "delete",
            send(M::DELETE, "/api/documents/api-1", None, &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents",
            "post",
            send(M::POST, "/api/documents", Some("[1]"), &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents",
            "post",
            send(M::POST, "/api/documents", Some(r#"{"_id":"api-2"}"#), &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents",
            "post",
            send(M::PUT, "/api/documents", Some("{}"), &[])
                .await
                .unwrap(),
        ),
    ];
    let mut statuses = BTreeSet::new();
    for (path, method, response) in cases {
        let status = response.status().as_u16().to_string();
        statuses.insert(status.clone());
        let documented = spec["paths"][path][method]["responses"]
            .get(&status)
            .unwrap_or_else(|| {
                panic!("{method} {path} answered {status}, which openapi.yaml does not document")
            });
        let documented = resolve(&spec, documented);
        if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
            for name in headers.keys() {
                let optional = name == "Idempotent-Replayed";
                assert!(
                    optional || response.headers().contains_key(name.as_str()),
                    "{method} {path} {status} lacks documented header {name}"
                );
            }
        }
        let body: Value = response.json().await.unwrap();
        if status.starts_with('2') {
            for field in ["id", "eventId", "version", "operation"] {
                assert!(body.get(field).is_some(), "{body}");
            }
        } else {
            assert!(body["error"]["code"].is_string(), "{body}");
        }
    }
    let expected: BTreeSet<String> = ["200", "201", "400", "404", "405", "409", "412"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(statuses, expected, "the cases cover these answers");
    db.drop().await;
}
