//! Metrics (issue 12): the Prometheus text of `handler serve`, checked by Prometheus's own
//! `promtool` and scraped by a real Prometheus server; the OTLP/HTTP export, decoded with the
//! official proto definitions, after a known sequence of writes, drains and failures; the push
//! path's share; and no secret in any of them.

mod claim_conflicts;
mod throttling;

use std::time::Duration;

use eventgrid_receiver::{Fault, ReceiverConfig, RunningReceiver};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::otlp::OtlpSink;
use crate::support::prometheus::{Prometheus, promtool_check_metrics};
use crate::support::{Handler, TestDb, app_settings};

/// A schedule that never fires during a test: drains happen when the test asks.
const NEVER: &str = "0 0 0 1 1 *";

/// A receiver whose topic key is unique to the test, so that finding it anywhere is a leak.
async fn receiver_with_own_key() -> (RunningReceiver, String) {
    let key = format!("topic-key-{}", uuid::Uuid::new_v4().simple());
    let rx = eventgrid_receiver::start_local(ReceiverConfig {
        key: key.clone(),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap();
    (rx, key)
}

/// Writes a document; its event id.
async fn write(handler: &Handler, key: Option<&str>, id: &str) -> String {
    let mut req = handler
        .http()
        .post(handler.url("/api/documents"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"_id":"{id}"}}"#));
    if let Some(key) = key {
        req = req.header("x-functions-key", key);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 201, "{}", handler.output());
    let body: Value = res.json().await.unwrap();
    body["eventId"].as_str().unwrap().to_owned()
}

/// Runs one drain through the admin endpoint; its report.
async fn drain(handler: &Handler, key: Option<&str>) -> Value {
    let mut req = handler
        .http()
        .post(handler.url("/admin/functions/OutboxTimer"));
    if let Some(key) = key {
        req = req.header("x-functions-key", key);
    }
    req.send().await.unwrap().json().await.unwrap()
}

/// `GET /metrics` with the key; the exposition.
pub async fn scrape(handler: &Handler, key: &str) -> String {
    let res = handler
        .http()
        .get(handler.url("/metrics"))
        .header("x-functions-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        res.headers()
    );
    res.text().await.unwrap()
}

/// The value of the sample of `metric` whose labels include every one of `labels`.
pub fn sample(exposition: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Scrapes until `ready` holds (up to 60 s); the exposition.
async fn scrape_until(
    handler: &Handler,
    key: &str,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(handler, key).await;
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {what}:\n{text}\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_secret(what: &str, text: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(text);
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} contains a secret ({secret})"
        );
    }
}

#[tokio::test]
async fn promtool_accepts_the_exposition_and_a_real_prometheus_reads_the_backlog() {
    let db = TestDb::new().await;
    let (rx, topic_key) = receiver_with_own_key().await;
    let function_key = format!("function-key-{}", uuid::Uuid::new_v4().simple());
    let uri = db.uri_for_handler();
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("EVENTGRID_TOPIC_KEY", &topic_key),
            ("MONGODB_URI", &uri),
            ("STANDALONE_FUNCTION_KEY", &function_key),
            ("OUTBOX_SCHEDULE", NEVER),
            ("OUTBOX_METRICS_INTERVAL_SECS", "1"),
        ],
    ))
    .await;
    for i in 0..3 {
        write(&handler, Some(&function_key), &format!("prom-{i}")).await;
    }
    let anonymous = handler
        .http()
        .get(handler.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "/metrics is behind the key");

    let text = scrape_until(&handler, &function_key, "a backlog of 3", |t| {
        sample(t, "outbox_backlog", &[]) == Some(3.0)
    })
    .await;
    promtool_check_metrics(&text).await;
    assert_eq!(
        sample(&text, "outbox_backlog_due", &[]),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(&text, "outbox_oldest_pending_age_seconds", &[]).is_some_and(|age| age >= 0.0),
        "{text}"
    );

    let prometheus =
        Prometheus::scraping(&format!("127.0.0.1:{}", handler.port), Some(&function_key)).await;
    prometheus.wait_for("outbox_backlog", 3.0).await;
    let report = drain(&handler, Some(&function_key)).await;
    assert_eq!(report["published"], 3, "{report}");
    prometheus.wait_for("outbox_backlog", 0.0).await;
    prometheus
        .wait_for(
            r#"sum(outbox_events_published_total{outbox_path="sweep"})"#,
            3.0,
        )
        .await;
    prometheus
        .wait_for("outbox_oldest_pending_age_seconds", 0.0)
        .await;

    let text = scrape(&handler, &function_key).await;
    promtool_check_metrics(&text).await;
    assert_eq!(
        sample(
            &text,
            "outbox_eventgrid_requests_total",
            &[r#"eventgrid_status_class="2xx""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_no_secret(
        "/metrics",
        text.as_bytes(),
        &[&topic_key, &function_key, &uri, &db.app_name()],
    );
    db.drop().await;
}

#[tokio::test]
async fn otlp_export_carries_every_figure_of_writes_drains_and_failures() {
    let db = TestDb::new().await;
    let (rx, topic_key) = receiver_with_own_key().await;
    let sink = OtlpSink::start().await;
    let header_secret = format!("otlp-secret-{}", uuid::Uuid::new_v4().simple());
    let uri = db.uri_for_handler();
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("EVENTGRID_TOPIC_KEY", &topic_key),
            ("MONGODB_URI", &uri),
            ("OUTBOX_SCHEDULE", NEVER),
            ("OUTBOX_METRICS_INTERVAL_SECS", "1"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                &format!("x-api-key={header_secret}"),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_SERVICE_NAME", "outbox-relay-under-test"),
        ],
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(write(&handler, None, &format!("otlp-{i}")).await);
    }
    sink.wait_for("a backlog of 5", |e| {
        e.value("outbox.backlog", &[]) == Some(5.0)
    })
    .await;

    // The known sequence: the first request fails with 503 (all five rescheduled); after the
    // backoff Event Grid refuses one event for good (dead-lettered once the request is split
    // down to it) and accepts the other four.
    rx.handle().reject_ids(Some(&ids[4])).unwrap();
    rx.handle().push_fault(Fault::fail(1, 503)).unwrap();
    let first = drain(&handler, None).await;
    assert_eq!(first["rescheduled"], 5, "{first}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count_entries_with("pending").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox never drained:\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&handler, None).await;
    }
    let sweep = [("outbox.path", "sweep")];
    let export = sink
        .wait_for("the drains' outcomes and an empty backlog", |e| {
            e.value("outbox.events.published", &sweep) == Some(4.0)
                && e.value("outbox.dead_letters", &[]) == Some(1.0)
                && e.value("outbox.backlog", &[]) == Some(0.0)
        })
        .await;
    let summary = export.summary();
    assert_eq!(
        export.value("outbox.events.rescheduled", &sweep),
        Some(5.0),
        "{summary:#?}"
    );
    assert_eq!(
        export.value("outbox.events.dead_lettered", &sweep),
        Some(1.0),
        "{summary:#?}"
    );
    assert_eq!(
        export.value("outbox.backlog.due", &[]),
        Some(0.0),
        "{summary:#?}"
    );
    assert_eq!(
        export.value("outbox.oldest_pending.age", &[]),
        Some(0.0),
        "{summary:#?}"
    );
    assert_eq!(
        export.histogram_count("outbox.publish.lag", &[]),
        Some(4),
        "{summary:#?}"
    );
    assert_eq!(
        export.value("outbox.events.published", &[("outbox.path", "push")]),
        None
    );
    // Every request the receiver answered, counted by class, and timed.
    let by_status = rx.handle().stats().requests_by_status;
    for (class, range) in [("2xx", 200..300), ("4xx", 400..500), ("5xx", 500..600)] {
        let answered: u64 = by_status
            .iter()
            .filter(|(status, _)| range.contains(*status))
            .map(|(_, n)| *n)
            .sum();
        let at = [("eventgrid.status_class", class)];
        assert_eq!(
            export.value("outbox.eventgrid.requests", &at),
            Some(answered as f64),
            "{class}: {by_status:?} {summary:#?}"
        );
        assert_eq!(
            export.histogram_count("outbox.eventgrid.request.duration", &at),
            Some(answered),
            "{class}"
        );
    }
    assert_eq!(
        export.value(
            "outbox.eventgrid.requests",
            &[("eventgrid.status_class", "5xx")]
        ),
        Some(1.0)
    );
    for (name, unit) in [
        ("outbox.oldest_pending.age", "s"),
        ("outbox.publish.lag", "s"),
        ("outbox.eventgrid.request.duration", "s"),
        ("outbox.backlog", "{entry}"),
        ("outbox.events.published", "{event}"),
    ] {
        assert_eq!(
            export.metric(name).map(|m| m.unit.as_str()),
            Some(unit),
            "{name}"
        );
    }
    assert_eq!(
        export.service_name().as_deref(),
        Some("outbox-relay-under-test")
    );

    let received = sink.received();
    for r in &received {
        assert_eq!(r.headers["content-type"], "application/x-protobuf");
        assert_eq!(
            r.headers["x-api-key"],
            header_secret.as_str(),
            "OTEL_EXPORTER_OTLP_HEADERS is sent"
        );
        assert_no_secret(
            "an OTLP payload",
            &r.body,
            &[&topic_key, &uri, &db.app_name(), &header_secret],
        );
    }
    assert_no_secret(
        "the handler's output",
        handler.output().as_bytes(),
        &[&topic_key, &header_secret],
    );
    db.drop().await;
}

#[tokio::test]
async fn the_push_path_and_the_sweeper_are_counted_apart() {
    let db = TestDb::new().await;
    let rx = crate::support::receiver::start().await;
    let key = "metrics-push-key";
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("OUTBOX_PUSH", "on"),
            ("OUTBOX_SCHEDULE", NEVER),
            ("STANDALONE_FUNCTION_KEY", key),
        ],
    ))
    .await;
    write(&handler, Some(key), "push-1").await;
    write(&handler, Some(key), "push-2").await;
    let text = scrape_until(
        &handler,
        key,
        "two events published by the push path",
        |t| {
            sample(
                t,
                "outbox_events_published_total",
                &[r#"outbox_path="push""#],
            ) == Some(2.0)
        },
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "outbox_events_published_total",
            &[r#"outbox_path="sweep""#]
        ),
        None,
        "{text}"
    );
    promtool_check_metrics(&text).await;
    db.drop().await;
}

#[tokio::test]
async fn application_insights_gets_the_metrics_from_the_connection_string() {
    let db = TestDb::new().await;
    let (rx, topic_key) = receiver_with_own_key().await;
    let ingestion = OtlpSink::start_tls().await;
    let ca_file = ingestion.ca_file().unwrap().display().to_string();
    let instrumentation_key = uuid::Uuid::new_v4().to_string();
    let connection = format!(
        "InstrumentationKey={instrumentation_key};IngestionEndpoint={}/",
        ingestion.endpoint()
    );
    let handler = Handler::standalone(&app_settings(
        &db,
        &rx,
        &[
            ("EVENTGRID_TOPIC_KEY", &topic_key),
            ("OUTBOX_SCHEDULE", NEVER),
            ("OUTBOX_METRICS_INTERVAL_SECS", "1"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", &connection),
            ("SSL_CERT_FILE", &ca_file),
        ],
    ))
    .await;
    write(&handler, None, "ai-1").await;
    write(&handler, None, "ai-2").await;
    let metric = |envelopes: &[Value], name: &str| -> Vec<f64> {
        envelopes
            .iter()
            .flat_map(|e| {
                e["data"]["baseData"]["metrics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|m| m["name"] == name)
            .filter_map(|m| m["value"].as_f64())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !metric(&ingestion.track_envelopes(), "outbox.backlog").contains(&2.0) {
        assert!(
            Instant::now() < deadline,
            "no backlog of 2 reached Application Insights:\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = drain(&handler, None).await;
    assert_eq!(report["published"], 2, "{report}");
    // Counters go out as deltas: their sum over every envelope is the total.
    while metric(&ingestion.track_envelopes(), "outbox.events.published")
        .iter()
        .sum::<f64>()
        < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "the published count never reached Application Insights"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let envelopes = ingestion.track_envelopes();
    assert_eq!(
        metric(&envelopes, "outbox.events.published")
            .iter()
            .sum::<f64>(),
        2.0
    );
    assert!(
        envelopes
            .iter()
            .all(|e| e["iKey"] == instrumentation_key.as_str())
    );
    for r in ingestion.received() {
        assert_no_secret(
            "an Application Insights upload",
            &r.body,
            &[&topic_key, &db.uri_for_handler()],
        );
    }
    assert_no_secret(
        "the handler's output",
        handler.output().as_bytes(),
        &[&topic_key, &instrumentation_key],
    );
    db.drop().await;
}
