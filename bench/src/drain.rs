//! The drain scenario: a backlog of pending outbox entries, seeded straight into MongoDB with
//! the product's own entry builder, drained by a fresh handler through its admin endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mongodb::bson::{Document, doc};
use outbox_relay::config::{Env, MongoSettings};
use outbox_relay::domain::change::{Revision, change_data};
use outbox_relay::domain::{DocumentId, EventId, EventTypes, Operation, OutboxEvent};
use outbox_relay::outbox::Placement;
use outbox_relay::outbox::store;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::procs::{self, CpuMeter, Proc};
use crate::round;
use crate::writes::document;

/// Entries per `insert_many`.
const SEED_CHUNK: usize = 1000;
/// Admin runs after which a drain that has not finished counts as broken.
const MAX_RUNS: usize = 1000;

/// Everything the drain needs from the rest of the benchmark.
pub(crate) struct Setup<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) bins: &'a std::path::Path,
    pub(crate) client: &'a mongodb::Client,
    pub(crate) mongod_pid: u32,
    pub(crate) receiver: &'a Proc,
    pub(crate) receiver_root: &'a reqwest::Url,
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) events: usize,
    pub(crate) profile: bool,
}

/// The figures, and what broke (if anything).
pub(crate) struct Drained {
    pub(crate) json: Value,
    pub(crate) failures: Vec<String>,
}

/// Creates the collections and indexes exactly as the handler does, then inserts `n` pending
/// entries for ~1 KB documents (oldest first, a millisecond apart). Returns the seconds taken.
pub(crate) async fn seed(
    client: &mongodb::Client,
    env: &BTreeMap<String, String>,
    n: usize,
) -> anyhow::Result<f64> {
    Ok(seed_held(client, env, n, None).await?.0)
}

/// [`seed`], the entries held by `hold` as the push path's writes hold theirs; with a hold,
/// also the events, for the push loop.
pub(crate) async fn seed_held(
    client: &mongodb::Client,
    env: &BTreeMap<String, String>,
    n: usize,
    hold: Option<store::Hold>,
) -> anyhow::Result<(f64, Vec<OutboxEvent>)> {
    let mut kept = Vec::new();
    let (settings, entries) = prepare(client, env).await?;
    let started = Instant::now();
    let first_time = chrono::Utc::now() - chrono::Duration::milliseconds(i64::try_from(n)?);
    let mut chunk = Vec::with_capacity(SEED_CHUNK);
    let mut inserting: Option<tokio::task::JoinHandle<mongodb::error::Result<()>>> = None;
    for i in 0..n {
        let (entry, event) = entry(&settings, i, first_time, hold)?;
        chunk.push(entry);
        if hold.is_some() {
            kept.push(event);
        }
        if chunk.len() == SEED_CHUNK || i + 1 == n {
            // One chunk in flight while the next is built.
            if let Some(previous) = inserting.take() {
                previous.await??;
            }
            let (entries, docs) = (entries.clone(), std::mem::take(&mut chunk));
            inserting = Some(tokio::spawn(async move {
                entries.insert_many(docs).ordered(false).await.map(|_| ())
            }));
        }
    }
    if let Some(previous) = inserting {
        previous.await??;
    }
    Ok((started.elapsed().as_secs_f64(), kept))
}

/// Reads the MongoDB settings of `env` and creates the collections and indexes exactly as the
/// handler does (separate placement); returns the settings and the entries' collection.
pub(crate) async fn prepare(
    client: &mongodb::Client,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<(MongoSettings, mongodb::Collection<Document>)> {
    let settings = MongoSettings::from_env(&Env::from_map(env.clone().into_iter().collect()))
        .context("the drain's MongoDB settings")?;
    let db = client.database(&settings.database);
    outbox_relay::outbox::storage::ensure_indexes(&db, &settings, Placement::Separate)
        .await
        .context("cannot create the collections and indexes")?;
    let entries = db.collection::<Document>(&settings.outbox_collection);
    Ok((settings, entries))
}

/// The `i`-th entry (for a ~1 KB document `d-{i}`, due `i` ms after `first_time`) exactly as a
/// write stores it, held by `hold` where the push path's write would hold it; and its event.
pub(crate) fn entry(
    settings: &MongoSettings,
    i: usize,
    first_time: chrono::DateTime<chrono::Utc>,
    hold: Option<store::Hold>,
) -> anyhow::Result<(Document, OutboxEvent)> {
    let collection = settings.collection.as_str();
    let id = DocumentId::parse(&format!("d-{i}"))?;
    let body = RawValue::from_string(document("d", i))?;
    let revision = Revision::first();
    let event_type = EventTypes::PerOperation {
        prefix: "CosmosDB".into(),
    }
    .for_operation(Operation::Created);
    let event = OutboxEvent::new(
        EventId::for_change(
            &settings.database,
            collection,
            id.as_str(),
            &revision.lineage,
            revision.version,
        ),
        format!("{collection}/{}", id.as_str()),
        event_type,
        "1.0".into(),
        change_data(
            Operation::Created,
            &id,
            revision.version,
            &revision.lineage,
            Some(&body),
        ),
        first_time + chrono::Duration::milliseconds(i64::try_from(i)?),
    );
    let entry = store::new_entry(&event, collection, id.as_str(), None, hold);
    Ok((entry, event))
}

/// Seeds the backlog, starts a fresh handler and triggers drains until nothing remains.
pub(crate) async fn run(s: &Setup<'_>) -> anyhow::Result<Drained> {
    let mut failures = Vec::new();
    let client = s.client;
    let database = s
        .env
        .get("MONGODB_DATABASE")
        .context("MONGODB_DATABASE is set by the benchmark")?;
    let db = client.database(database);
    let entries = db.collection::<Document>("outbox");
    eprintln!("outbox-bench: seeding {} outbox entries", s.events);
    let seed_secs = seed(client, s.env, s.events).await?;
    let pending_before = entries
        .count_documents(doc! { store::field::STATUS: "pending" })
        .await?;
    let receiver_url = |path: &str| s.receiver_root.join(path).map(String::from);
    s.http
        .delete(receiver_url("/_receiver/events")?)
        .send()
        .await?
        .error_for_status()
        .context("cannot reset the receiver")?;
    if s.profile {
        crate::profile::start(&db).await?;
    }

    eprintln!("outbox-bench: draining with a fresh handler");
    let (handler, base) = procs::start_handler(s.bins, s.env, s.http).await?;
    let hpid = handler.pid();
    let rss_at_start_kb = procs::status_kb(hpid, "VmRSS");
    let max_rss_kb = Arc::new(AtomicU64::new(0));
    let sampler = {
        let max = Arc::clone(&max_rss_kb);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Some(kb) = procs::status_kb(hpid, "VmRSS") {
                    max.fetch_max(kb, Ordering::Relaxed);
                }
            }
        })
    };
    let cpu = CpuMeter::start(vec![
        ("handler", hpid),
        ("mongod", s.mongod_pid),
        ("receiver", s.receiver.pid()),
        ("bench", std::process::id()),
    ]);
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut published = 0_u64;
    let mut idle_runs = 0;
    let finished = loop {
        let response = s
            .http
            .post(format!("{base}/admin/functions/OutboxTimer"))
            .send()
            .await
            .context("POST /admin/functions/OutboxTimer")?;
        let status = response.status().as_u16();
        let report: Value = response.json().await.context("the drain report")?;
        let run_published = report["published"].as_u64().unwrap_or(0);
        published += run_published;
        runs.push(json!({
            "status": status,
            "published": run_published,
            "requests": report["requests"],
            "remaining": report["remaining"],
            "duration_ms": report["duration_ms"],
            "stopped": report["stopped"],
        }));
        if report["remaining"].as_u64() == Some(0) {
            break true;
        }
        idle_runs = if run_published == 0 { idle_runs + 1 } else { 0 };
        if status != 200 || idle_runs >= 3 || runs.len() >= MAX_RUNS {
            failures.push(format!("the drain did not finish: last report {report}"));
            break false;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu.read();
    sampler.abort();
    let hwm_kb = procs::status_kb(hpid, "VmHWM");
    let sampled_kb = max_rss_kb.load(Ordering::Relaxed);
    handler.stop().await;

    let stats: Value = s
        .http
        .get(receiver_url("/_receiver/stats")?)
        .send()
        .await?
        .json()
        .await?;
    let requests: Vec<Value> = s
        .http
        .get(receiver_url("/_receiver/requests")?)
        .send()
        .await?
        .json()
        .await?;
    let distinct = stats["distinct_ids"].as_u64().unwrap_or(0);
    let events = s.events as u64;
    if finished && distinct != events {
        failures.push(format!(
            "lost events: the receiver accepted {distinct} distinct ids of {events}"
        ));
    }
    let count = |status: &'static str| {
        let entries = entries.clone();
        async move {
            entries
                .count_documents(doc! { store::field::STATUS: status })
                .await
        }
    };
    let (left_pending, left_published, left_dead) = (
        count("pending").await?,
        count("published").await?,
        count("dead").await?,
    );
    if finished && (left_pending != 0 || left_published != events || left_dead != 0) {
        failures.push(format!(
            "entries after the drain: {left_pending} pending, {left_published} published, {left_dead} dead (expected 0, {events}, 0)"
        ));
    }
    let profile = if s.profile {
        Some(crate::profile::read(&db).await?)
    } else {
        None
    };
    let _ = db.drop().await;

    let accepted: Vec<&Value> = requests.iter().filter(|r| r["status"] == 200).collect();
    let events_in_requests: u64 = accepted
        .iter()
        .filter_map(|r| r["event_count"].as_u64())
        .sum();
    let bytes_in_requests: u64 = accepted
        .iter()
        .filter_map(|r| r["body_bytes"].as_u64())
        .sum();
    let per_request = |total: u64| {
        if accepted.is_empty() {
            0.0
        } else {
            round(total as f64 / accepted.len() as f64, 1)
        }
    };
    let mb = |kb: u64| round(kb as f64 / 1024.0, 1);
    let mut json = json!({
        "events": events,
        "seed_seconds": round(seed_secs, 2),
        "pending_before": pending_before,
        "seconds": round(seconds, 3),
        "events_per_sec": round(events as f64 / seconds, 1),
        "admin_runs": runs.len(),
        "published_reported": published,
        "eventgrid_requests": stats["requests"],
        "eventgrid_requests_by_status": stats["requests_by_status"],
        "events_per_request": per_request(events_in_requests),
        "bytes_per_request": per_request(bytes_in_requests),
        "accepted_events": stats["accepted_events"],
        "distinct_ids": distinct,
        "duplicate_deliveries": stats["duplicate_deliveries"],
        "handler_peak_rss_mb": hwm_kb.map(mb),
        "handler_max_sampled_rss_mb": mb(sampled_kb),
        "handler_rss_at_start_mb": rss_at_start_kb.map(mb),
        "cpu_seconds": cpu_seconds,
        "runs": runs,
    });
    if let Some(p) = profile {
        json["mongod_profile"] = p;
    }
    Ok(Drained { json, failures })
}
