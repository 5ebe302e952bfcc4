//! Real parts for the end-to-end tests: the replica set, the receiver, the handler binary.

#![allow(
    dead_code,
    reason = "each test file uses part of the support; unused parts are not an error"
)]

pub mod host;
pub mod mongo;
pub mod otlp;
pub mod prometheus;
pub mod receiver;
pub mod seed;

use std::collections::HashMap;
use std::sync::Arc;

use outbox_relay::config::{Env, Settings};
use outbox_relay::db::Db;
use outbox_relay::outbox::Storage;
use outbox_relay::publisher::Publisher;
use outbox_relay::relay::Relay;
use tokio_util::sync::CancellationToken;

pub use host::{ClientRequest, Handler};
pub use mongo::TestDb;

/// Settings for `db` and `receiver`, with test-friendly timings, then `extra` on top.
pub fn settings(
    db: &TestDb,
    receiver: &eventgrid_receiver::RunningReceiver,
    extra: &[(&str, &str)],
) -> Settings {
    Settings::from_env(&Env::from_map(
        app_settings(db, receiver, extra)
            .into_iter()
            .collect::<HashMap<_, _>>(),
    ))
    .expect("test settings")
}

/// App settings for a handler process: database, topic, quick test timings, `extra` last.
pub fn app_settings(
    db: &TestDb,
    receiver: &eventgrid_receiver::RunningReceiver,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut v = db.app_settings();
    v.extend(receiver::app_settings(receiver));
    for (k, val) in [
        ("OUTBOX_INITIAL_BACKOFF_MS", "50"),
        ("OUTBOX_MAX_BACKOFF_SECS", "1"),
        ("EVENTGRID_PUBLISH_RETRIES", "0"),
        ("EVENTGRID_PUBLISH_TIMEOUT_MS", "5000"),
        ("OUTBOX_LEASE_SECS", "30"),
        ("OUTBOX_TIME_BUDGET_SECS", "60"),
        // Most tests drive drains themselves and look at entries in between: the push path
        // and the tail (which would publish on their own) are switched on by the tests of them.
        ("OUTBOX_PUSH", "off"),
        ("OUTBOX_TAIL", "off"),
    ] {
        v.push((k.into(), val.into()));
    }
    for (k, val) in extra {
        v.retain(|(key, _)| key != k);
        v.push(((*k).into(), (*val).into()));
    }
    v
}

/// An in-process relay over the test database.
pub fn relay(settings: &Settings) -> Relay {
    let db = Arc::new(Storage::new(Db::new(settings.mongodb.clone())));
    let publisher = Publisher::new(&settings.eventgrid).expect("publisher");
    Relay::new(db, publisher, settings.relay.clone())
}

/// One drain with the settings' budget and no shutdown.
pub async fn drain(relay: &Relay) -> outbox_relay::relay::RelayReport {
    relay
        .drain_once(relay.settings().time_budget, &CancellationToken::new())
        .await
}

/// Writes `n` documents through the library (no HTTP) and returns their event ids.
pub async fn write_documents(
    settings: &Settings,
    n: usize,
    body: impl Fn(usize) -> String,
) -> Vec<String> {
    let db = Arc::new(Storage::new(Db::new(settings.mongodb.clone())));
    let service = outbox_relay::documents::DocumentService::new(db, settings.event_types.clone());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = body(i);
        let w = service
            .write(outbox_relay::documents::WriteRequest {
                method: outbox_relay::documents::Method::Create,
                id: None,
                content_type: Some("application/json"),
                body: body.as_bytes(),
                if_match: None,
                if_none_match: None,
                idempotency_key: None,
                traceparent: None,
            })
            .await
            .expect("write");
        ids.push(w.event_id.to_string());
    }
    ids
}
