//! Throttling (Cosmos DB's 16500) is counted: a write through the RU proxy that throttles it.

use std::net::SocketAddr;

use cosmos_ru_proxy::{ProxyConfig, RunningProxy};

use super::{NEVER, sample, scrape_until};
use crate::support::mongo::uri;
use crate::support::{Handler, TestDb, app_settings, receiver};

async fn proxy() -> RunningProxy {
    let rest = uri().trim_start_matches("mongodb://").to_owned();
    let upstream: SocketAddr = rest
        .split(['/', '?', ','])
        .next()
        .unwrap()
        .parse()
        .expect("OUTBOX_TEST_MONGODB_URI names 127.0.0.1:PORT");
    cosmos_ru_proxy::start(
        ProxyConfig {
            seed: Some(7),
            ..ProxyConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        upstream,
    )
    .await
    .expect("start the proxy")
}

#[tokio::test]
async fn throttled_database_requests_are_counted() {
    let proxy = proxy().await;
    let db = TestDb::with(&[("OUTBOX_PLACEMENT", "colocated")]).await;
    let rx = receiver::start().await;
    let proxied = proxy.uri("rs0");
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("MONGODB_URI", &proxied),
            ("OUTBOX_SCHEDULE", NEVER),
            ("MONGODB_WRITE_TIMEOUT_MS", "2000"),
        ],
    ))
    .await;
    proxy.handle().set_retry_after_ms(20);
    proxy.handle().throttle_next(3);
    let res = handler
        .http()
        .post(handler.url("/api/documents"))
        .header("content-type", "application/json")
        .body(r#"{"_id":"throttled-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", handler.output());
    let throttled = proxy.handle().stats().throttled_commands;
    assert!(throttled >= 1, "the proxy throttled the write");
    let text = scrape_until(&handler, "", "a throttled request", |t| {
        sample(t, "outbox_db_throttled_total", &[]).is_some_and(|n| n >= 1.0)
    })
    .await;
    let counted = sample(&text, "outbox_db_throttled_total", &[]).unwrap();
    assert!(
        counted <= throttled as f64,
        "counted {counted}, the proxy throttled {throttled}"
    );
    db.drop().await;
    proxy.shutdown().await;
}
