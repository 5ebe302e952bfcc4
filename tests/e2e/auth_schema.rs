//! Microsoft Entra ID instead of the topic key, and CloudEvents topics, through the real
//! handler. The managed-identity endpoint protocol is plain HTTP (App Service's
//! `IDENTITY_ENDPOINT` / `IDENTITY_HEADER`), so a local token endpoint stands in for Azure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use eventgrid_receiver::{ReceiverConfig, Schema};
use serde_json::json;

use crate::support::{ClientRequest, Handler, TestDb, app_settings};

/// A managed-identity token endpoint handing out `tokens` in turn (the last one repeats).
struct TokenEndpoint {
    url: String,
    secret: String,
    calls: Arc<AtomicUsize>,
    resources: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct TokenState {
    tokens: Arc<Vec<String>>,
    secret: String,
    calls: Arc<AtomicUsize>,
    resources: Arc<Mutex<Vec<String>>>,
}

async fn token(
    State(s): State<TokenState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(s.secret.as_str())
    {
        return (StatusCode::UNAUTHORIZED, "bad identity header").into_response();
    }
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    s.resources
        .lock()
        .unwrap()
        .push(q.get("resource").cloned().unwrap_or_default());
    let token = s.tokens[n.min(s.tokens.len() - 1)].clone();
    let expires_on = (chrono::Utc::now().timestamp() + 3600).to_string();
    axum::Json(json!({
        "access_token": token,
        "expires_on": expires_on,
        "resource": "https://eventgrid.azure.net",
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn token_endpoint(tokens: &[&str]) -> TokenEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = TokenState {
        tokens: Arc::new(tokens.iter().map(|t| (*t).to_owned()).collect()),
        secret: "identity-secret".into(),
        calls: Arc::default(),
        resources: Arc::default(),
    };
    let (calls, resources) = (Arc::clone(&state.calls), Arc::clone(&state.resources));
    let app = axum::Router::new()
        .route("/msi/token", axum::routing::get(token))
        .with_state(state);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TokenEndpoint {
        url: format!("http://127.0.0.1:{port}/msi/token"),
        secret: "identity-secret".into(),
        calls,
        resources,
        server,
    }
}

/// Settings for a handler that authenticates with the managed identity at `endpoint`.
fn entra_settings(
    db: &TestDb,
    rx: &eventgrid_receiver::RunningReceiver,
    endpoint: &TokenEndpoint,
) -> Vec<(String, String)> {
    let mut s = app_settings(db, rx, &[]);
    s.retain(|(k, _)| k != "EVENTGRID_TOPIC_KEY");
    s.push(("IDENTITY_ENDPOINT".into(), endpoint.url.clone()));
    s.push(("IDENTITY_HEADER".into(), endpoint.secret.clone()));
    s
}

async fn receiver_with_token(token: &str) -> eventgrid_receiver::RunningReceiver {
    eventgrid_receiver::start_local(ReceiverConfig {
        // A key nobody sends: only the bearer token can get in.
        key: "unused-key-for-this-test".into(),
        bearer_token: Some(token.into()),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn entra_id_tokens_are_fetched_once_cached_and_used() {
    let db = TestDb::new().await;
    let rx = receiver_with_token("token-one").await;
    let endpoint = token_endpoint(&["token-one"]).await;
    let handler = Handler::functions(&entra_settings(&db, &rx, &endpoint)).await;
    for i in 0..3 {
        handler
            .write(&ClientRequest::post_json(format!(r#"{{"_id":"e-{i}"}}"#)))
            .await;
        let tick = handler.tick().await;
        assert_eq!(tick.status, 200, "{:?}\n{}", tick.body, handler.output());
    }

    assert_eq!(rx.handle().stats().accepted_events, 3);
    assert_eq!(
        endpoint.calls.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
    assert_eq!(
        endpoint.resources.lock().unwrap()[0],
        "https://eventgrid.azure.net"
    );
    assert!(
        !handler.output().contains("token-one"),
        "tokens are never logged"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_and_the_request_retried() {
    let db = TestDb::new().await;
    let rx = receiver_with_token("token-two").await;
    let endpoint = token_endpoint(&["revoked-token", "token-two"]).await;
    let handler = Handler::functions(&entra_settings(&db, &rx, &endpoint)).await;
    handler
        .write(&ClientRequest::post_json(r#"{"_id":"r-1"}"#))
        .await;

    let tick = handler.tick().await;

    assert_eq!(tick.status, 200, "{:?}\n{}", tick.body, handler.output());
    assert!(
        tick.logs()[0].starts_with("outbox drain: 1 published"),
        "{:?}",
        tick.logs()
    );
    assert_eq!(
        endpoint.calls.load(Ordering::SeqCst),
        2,
        "one refresh after the 401"
    );
    let statuses = rx.handle().stats().requests_by_status;
    assert_eq!(statuses.get(&401), Some(&1), "{statuses:?}");
    db.drop().await;
}

#[tokio::test]
async fn a_second_refusal_halts_the_run_without_spending_attempts() {
    let db = TestDb::new().await;
    let rx = receiver_with_token("the-right-token").await;
    let endpoint = token_endpoint(&["wrong-token"]).await;
    let handler = Handler::functions(&entra_settings(&db, &rx, &endpoint)).await;
    let res = handler
        .write(&ClientRequest::post_json(r#"{"_id":"h-1"}"#))
        .await;

    let tick = handler.tick().await;

    assert_eq!(tick.status, 500, "a misconfigured identity fails the run");
    assert!(
        handler.stderr_lines().join("\n").contains("401"),
        "{}",
        handler.output()
    );
    let entry =
        crate::support::mongo::entry_state(&db, res.body["eventId"].as_str().unwrap()).await;
    assert_eq!(entry.get_str("status").unwrap(), "pending");
    assert_eq!(entry.get_i32("attempts").unwrap(), 0);
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
    db.drop().await;
}

#[tokio::test]
async fn no_identity_endpoint_halts_the_run_and_says_why() {
    let db = TestDb::new().await;
    let rx = receiver_with_token("t").await;
    let endpoint = token_endpoint(&["t"]).await;
    let mut settings = entra_settings(&db, &rx, &endpoint);
    // The right endpoint, the wrong secret: the endpoint refuses to issue a token.
    settings.retain(|(k, _)| k != "IDENTITY_HEADER");
    settings.push(("IDENTITY_HEADER".into(), "not-the-secret".into()));
    let handler = Handler::functions(&settings).await;
    handler
        .write(&ClientRequest::post_json(r#"{"_id":"n-1"}"#))
        .await;

    let tick = handler.tick().await;

    assert_eq!(tick.status, 500);
    let stderr = handler.stderr_lines().join("\n");
    assert!(stderr.contains("Entra ID token"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
    assert_eq!(
        rx.handle().stats().requests,
        0,
        "nothing sent without a token"
    );
    db.drop().await;
}

#[tokio::test]
async fn cloudevents_topics_get_cloudevents_batches_with_sequence_and_traceparent() {
    let db = TestDb::new().await;
    let rx = eventgrid_receiver::start_local(ReceiverConfig {
        schema: Schema::CloudEvents,
        ..ReceiverConfig::default()
    })
    .await
    .unwrap();
    let handler = Handler::functions(&app_settings(
        &db,
        &rx,
        &[("EVENTGRID_SCHEMA", "cloudevents")],
    ))
    .await;
    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = handler
        .write(&ClientRequest::put_json("ce-1", r#"{"v":1}"#).header("traceparent", TRACE))
        .await;
    let second = handler
        .write(&ClientRequest::put_json("ce-1", r#"{"v":2}"#))
        .await;
    assert_eq!((first.status, second.status), (201, 200));

    let tick = handler.tick().await;

    assert_eq!(tick.status, 200, "{:?}\n{}", tick.body, handler.output());
    let mut events: Vec<serde_json::Value> = rx
        .handle()
        .events()
        .iter()
        .map(|e| e.to_value().unwrap())
        .collect();
    events.sort_by(|a, b| a["sequence"].as_str().cmp(&b["sequence"].as_str()));
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["id"], first.body["eventId"]);
    assert_eq!(e["source"], "/outbox-relay/documents");
    assert_eq!(e["type"], "CosmosDB.DocumentCreated");
    assert_eq!(e["subject"], "documents/ce-1");
    assert_eq!(e["sequence"], "00000000000000000001");
    assert_eq!(e["traceparent"], TRACE);
    assert_eq!(e["data"]["document"]["v"], 1);
    assert_eq!(events[1]["sequence"], "00000000000000000002");
    assert!(events[1].get("traceparent").is_none());
    db.drop().await;
}
