//! `openapi.yaml` describes the HTTP API as served: its paths and methods are the function's
//! route and methods, its error codes are the ones the code produces, its id and field-name
//! rules are the parsers', and what a live handler answers (status, headers) is documented.

use std::collections::BTreeSet;

use outbox_relay::domain::document::RESERVED_FIELDS;
use outbox_relay::domain::{DocumentId, InputError, NewDocument};
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

/// A schema of `components/schemas`.
fn schema<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec.pointer(&format!("/components/schemas/{name}"))
        .unwrap_or_else(|| panic!("no schema {name}"))
}

/// The schema's `pattern`, as a regex (ECMA 262 and regex-lite agree on what the file uses).
fn pattern(schema: &Value) -> regex_lite::Regex {
    regex_lite::Regex::new(schema["pattern"].as_str().expect("a pattern")).unwrap()
}

#[test]
fn the_id_rules_are_the_parsers() {
    let spec = spec();
    let id = schema(&spec, "DocumentId");
    let parameter = resolve(&spec, &spec["components"]["parameters"]["DocumentId"]);
    assert_eq!(resolve(&spec, &parameter["schema"]), id);
    let regex = pattern(id);
    let (min, max) = (
        id["minLength"].as_u64().unwrap(),
        id["maxLength"].as_u64().unwrap(),
    );
    let long = "x".repeat(255);
    let too_long = "x".repeat(256);
    for sample in [
        "a",
        "order-1",
        "A.b_c~d:e@f-9",
        &long,
        &too_long,
        "",
        "a b",
        "a/b",
        "a%20",
        "é",
        "a?b",
        "a#b",
        "a\u{0}",
        "a+b",
        "(a)",
    ] {
        let length = u64::try_from(sample.chars().count()).unwrap();
        let documented = regex.is_match(sample) && (min..=max).contains(&length);
        assert_eq!(
            documented,
            DocumentId::parse(sample).is_ok(),
            "openapi.yaml and DocumentId::parse disagree on {sample:?}"
        );
    }
}

#[test]
fn the_field_name_rules_are_the_parsers() {
    let spec = spec();
    let regex = pattern(schema(&spec, "FieldName"));
    let parses = |body: &Value| {
        let body = body.to_string();
        match NewDocument::parse(Some("application/json"), body.as_bytes(), 1 << 20, None) {
            Ok(_) => true,
            Err(InputError::InvalidKey { .. }) => false,
            Err(e) => panic!("{body}: {e}"),
        }
    };
    for name in [
        "a", "_id2", "a$", "é", "", " ", "$a", "$", "a.b", ".", "a\u{0}b", "_meta", "_outbox",
    ] {
        // Nested, where the reserved top-level names are ordinary.
        let nested = serde_json::json!({ "a": { name: 1 }, "b": [{ name: 2 }] });
        assert_eq!(
            regex.is_match(name),
            parses(&nested),
            "openapi.yaml and NewDocument::parse disagree on {name:?}"
        );
    }
    let reserved: BTreeSet<&str> = schema(&spec, "Document")["propertyNames"]["not"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(reserved, RESERVED_FIELDS.into_iter().collect());
    for name in RESERVED_FIELDS {
        assert!(!parses(&serde_json::json!({ name: 1 })), "{name}");
    }
    let then = &schema(&spec, "Value")["then"];
    let (min, max) = (
        then["minimum"].as_i64().unwrap(),
        then["maximum"].as_i64().unwrap(),
    );
    assert_eq!((min, max), (i64::MIN, i64::MAX));
    let integer = |n: &str| {
        NewDocument::parse(
            Some("application/json"),
            format!(r#"{{"n":{n}}}"#).as_bytes(),
            1 << 20,
            None,
        )
        .is_ok()
    };
    assert!(integer(&max.to_string()) && integer(&min.to_string()));
    assert!(!integer("9223372036854775808") && !integer("-9223372036854775809"));
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
    let to_read = send(
        M::POST,
        "/api/documents",
        Some(r#"{"_id":"api-3","n":1}"#),
        &[],
    )
    .await
    .unwrap();
    let read_etag = to_read.headers()["etag"].to_str().unwrap().to_owned();
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
        (
            "/api/documents/{id}",
            "get",
            send(M::GET, "/api/documents/api-3", None, &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "get",
            send(
                M::GET,
                "/api/documents/api-3",
                None,
                &[("If-None-Match", &read_etag)],
            )
            .await
            .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "get",
            send(M::GET, "/api/documents/nope", None, &[])
                .await
                .unwrap(),
        ),
        (
            "/api/documents/{id}",
            "get",
            send(M::GET, "/api/documents/bad%20id", None, &[])
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
        if documented.get("content").is_none() {
            let body = response.bytes().await.unwrap();
            assert!(
                body.is_empty(),
                "{method} {path} {status} has a body: {body:?}"
            );
            continue;
        }
        let body: Value = response.json().await.unwrap();
        if method == "get" && status == "200" {
            assert_eq!(body, serde_json::json!({ "_id": "api-3", "n": 1 }));
        } else if status.starts_with('2') {
            for field in ["id", "eventId", "version", "operation"] {
                assert!(body.get(field).is_some(), "{body}");
            }
        } else {
            assert!(body["error"]["code"].is_string(), "{body}");
        }
    }
    let expected: BTreeSet<String> = ["200", "201", "304", "400", "404", "405", "409", "412"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(statuses, expected, "the cases cover these answers");
    db.drop().await;
}

#[tokio::test]
async fn methods_the_file_does_not_list_get_405_with_the_listed_ones_in_allow() {
    let spec = spec();
    let db = TestDb::new().await;
    let rx = receiver::start().await;
    let handler = Handler::standalone(&app_settings(&db, &rx, &[])).await;
    for (path, url) in [
        ("/api/documents", "/api/documents"),
        ("/api/documents/{id}", "/api/documents/m-1"),
    ] {
        let listed = methods_of(&spec, path);
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if listed.contains(method) {
                continue;
            }
            let response = handler
                .http()
                .request(method.parse().unwrap(), handler.url(url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method} {url}");
            let allow: BTreeSet<String> = response.headers()["allow"]
                .to_str()
                .unwrap()
                .split(", ")
                .map(str::to_owned)
                .collect();
            assert_eq!(allow, listed, "{method} {url}");
        }
    }
    db.drop().await;
}
