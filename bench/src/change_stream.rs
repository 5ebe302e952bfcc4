//! The change-stream scenario (`OUTBOX_SOURCE=change-stream`): what the reader costs and how
//! soon its events reach the topic, for documents written straight to the collection with the
//! driver (as another application would), default configuration otherwise.
//!
//! - **throughput**: 100,000 documents inserted by the benchmark in `insertMany` batches of
//!   1,000 while the reader runs; events/s from the first insert to the receiver holding every
//!   document's event. The same inserts into a database no reader watches give the writes' own
//!   `mongod` CPU, so the reader's database cost per event is the difference. The handler's
//!   peak RSS is read from `/proc`.
//! - **latency**: open-loop `insertOne`s of ~1 KB documents at 50/s and 1,000/s; commit →
//!   accepted = the receiver accepted the request carrying the document's event − the insert
//!   was acknowledged (wall clock, ms). The event id is derived from the change's resume
//!   token, which the writer never sees, so events are matched to documents by `data.id`: this
//!   scenario starts its own receiver keeping whole events.
//!
//! The outbox source's figures for the same rates are the `latency` scenario's
//! `standalone_default_*` runs; `make bench` runs both, and the report puts them side by side.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mongodb::bson::{self, Document, doc};
use serde_json::{Value, json};

use crate::latency::{Written, commit_to_accepted, first_acceptance, now_ms};
use crate::procs::{self, CpuMeter};
use crate::round;
use crate::scenarios::Ctx;
use crate::writes::document;

const COLLECTION: &str = "documents";
const OUTBOX: &str = "outbox";

/// Runs the scenario.
pub(crate) async fn run(
    ctx: &Ctx<'_>,
    inserts: usize,
    seconds: u64,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let (receiver, endpoint) = procs::start_receiver_keeping(ctx.bins, "all").await?;
    let root = reqwest::Url::parse(&endpoint)?;
    let rx = Receiver {
        http: ctx.http,
        root,
    };
    let mut out = serde_json::Map::new();
    eprintln!("outbox-bench: change-stream throughput ({inserts} direct inserts)");
    out.insert(
        "throughput".into(),
        throughput(ctx, &rx, &endpoint, inserts, failures).await?,
    );
    for rate in [50_u32, 1000] {
        eprintln!("outbox-bench: change-stream latency {rate}/s");
        out.insert(
            format!("latency_{rate}"),
            latency(ctx, &rx, &endpoint, rate, seconds, failures).await?,
        );
    }
    receiver.stop().await;
    out.insert(
        "method".into(),
        json!(format!(
            "OUTBOX_SOURCE=change-stream, handler serve, settings otherwise the defaults (the reader tails continuously); documents of ~1 KB inserted with the driver, not through the handler. throughput: {inserts} inserts in insertMany batches of 1,000, events/s = inserts / (last event accepted − first insert sent); reader_mongod_cpu_us_per_event = mongod CPU per event with the reader − per insert without it. latency: open-loop insertOne for {seconds} s per rate; commit → accepted = receiver accepted − insert acknowledged (wall clock, ms)"
        )),
    );
    Ok(out.into())
}

/// The scenario's own receiver (keeping whole events).
struct Receiver<'a> {
    http: &'a reqwest::Client,
    root: reqwest::Url,
}

impl Receiver<'_> {
    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .request(method, self.root.join(path)?)
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await.unwrap_or(Value::Null))
    }

    async fn reset(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "/_receiver/events")
            .await?;
        Ok(())
    }

    async fn distinct(&self) -> anyhow::Result<u64> {
        let stats = self.call(reqwest::Method::GET, "/_receiver/stats").await?;
        Ok(stats["distinct_ids"].as_u64().unwrap_or(0))
    }
}

/// The handler's settings for a change-stream run on `database`: the defaults, except the
/// source and the topic.
fn settings(ctx: &Ctx<'_>, database: &str, endpoint: &str) -> BTreeMap<String, String> {
    let mut env = ctx.env.clone();
    for key in [
        "OUTBOX_PUSH",
        "OUTBOX_TAIL",
        "OUTBOX_SCHEDULE",
        "OUTBOX_TIME_BUDGET_SECS",
    ] {
        env.remove(key);
    }
    for (k, v) in [
        ("MONGODB_DATABASE", database),
        ("MONGODB_COLLECTION", COLLECTION),
        ("OUTBOX_COLLECTION", OUTBOX),
        ("OUTBOX_SOURCE", "change-stream"),
        ("EVENTGRID_TOPIC_ENDPOINT", endpoint),
    ] {
        env.insert(k.into(), v.into());
    }
    env
}

/// Starts a change-stream handler on `database` and waits until its reader saved a position
/// (a first reader starts at the present: changes before that are not announced).
async fn start_reader(
    ctx: &Ctx<'_>,
    database: &str,
    endpoint: &str,
) -> anyhow::Result<(procs::Proc, String)> {
    let env = settings(ctx, database, endpoint);
    let (handler, base) = procs::start_handler(ctx.bins, &env, ctx.http).await?;
    let checkpoints = ctx.client.database(database).collection::<Document>(
        &outbox_relay::outbox::stream::checkpoints_collection(OUTBOX),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoints
        .find_one(doc! { "_id": COLLECTION, "token": { "$exists": true } })
        .await?
        .is_none()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the change-stream reader saved no position within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((handler, base))
}

fn bson_document(tag: &str, i: usize) -> anyhow::Result<Document> {
    let json: Value = serde_json::from_str(&document(tag, i))?;
    Ok(bson::to_document(&json)?)
}

/// Inserts `n` documents in batches of 1,000.
async fn insert_all(
    collection: &mongodb::Collection<Document>,
    tag: &str,
    n: usize,
) -> anyhow::Result<()> {
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        let batch = (i..end)
            .map(|k| bson_document(tag, k))
            .collect::<anyhow::Result<Vec<_>>>()?;
        collection.insert_many(batch).await?;
        i = end;
    }
    Ok(())
}

async fn throughput(
    ctx: &Ctx<'_>,
    rx: &Receiver<'_>,
    endpoint: &str,
    n: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    // The inserts alone, with no reader: the writes' own mongod CPU.
    let alone_db = "bench_cs_inserts_alone";
    ctx.drop_database(alone_db).await;
    let collection = ctx
        .client
        .database(alone_db)
        .collection::<Document>(COLLECTION);
    let cpu = CpuMeter::start(vec![("mongod", ctx.mongod.pid())]);
    insert_all(&collection, "alone", n).await?;
    let alone = cpu.read();
    ctx.drop_database(alone_db).await;

    let database = "bench_cs_throughput";
    ctx.drop_database(database).await;
    rx.reset().await?;
    let (handler, _base) = start_reader(ctx, database, endpoint).await?;
    let collection = ctx
        .client
        .database(database)
        .collection::<Document>(COLLECTION);
    let cpu = CpuMeter::start(vec![
        ("handler", handler.pid()),
        ("mongod", ctx.mongod.pid()),
        ("bench", std::process::id()),
    ]);
    let started = Instant::now();
    insert_all(&collection, "cs", n).await?;
    let inserted_after = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut got = 0;
    while got < n as u64 && Instant::now() < deadline {
        got = rx.distinct().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let used = cpu.read();
    let rss_kb = procs::status_kb(handler.pid(), "VmHWM");
    let stats = rx.call(reqwest::Method::GET, "/_receiver/stats").await?;
    handler.stop().await;
    ctx.drop_database(database).await;

    if got < n as u64 {
        failures.push(format!(
            "change-stream throughput: {got} of {n} inserted documents were announced within 600 s"
        ));
    }
    let per = |m: &serde_json::Map<String, Value>, name: &str| {
        m.get(name)
            .and_then(Value::as_f64)
            .map(|s| s * 1e6 / n as f64)
    };
    let with_reader = per(&used, "mongod");
    let inserts_only = per(&alone, "mongod");
    Ok(json!({
        "inserts": n,
        "events_distinct": got,
        "duplicates": stats["duplicate_ids"],
        "insert_seconds": round(inserted_after, 2),
        "seconds": round(seconds, 2),
        "events_per_sec": round(got as f64 / seconds, 0),
        "cpu_seconds": used,
        "mongod_cpu_us_per_event": with_reader.map(|v| round(v, 1)),
        "mongod_cpu_us_per_insert_without_reader": inserts_only.map(|v| round(v, 1)),
        "reader_mongod_cpu_us_per_event": with_reader.zip(inserts_only).map(|(a, b)| round(a - b, 1)),
        "handler_cpu_us_per_event": per(&used, "handler").map(|v| round(v, 1)),
        "handler_peak_rss_mb": rss_kb.map(|kb| round(kb as f64 / 1024.0, 1)),
    }))
}

async fn latency(
    ctx: &Ctx<'_>,
    rx: &Receiver<'_>,
    endpoint: &str,
    rate: u32,
    seconds: u64,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let database = format!("bench_cs_latency_{rate}");
    ctx.drop_database(&database).await;
    rx.reset().await?;
    let (handler, _base) = start_reader(ctx, &database, endpoint).await?;
    let collection = ctx
        .client
        .database(&database)
        .collection::<Document>(COLLECTION);
    let cpu = CpuMeter::start(vec![
        ("handler", handler.pid()),
        ("mongod", ctx.mongod.pid()),
    ]);
    let written = open_loop(&collection, rate, seconds).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while rx.distinct().await? < written.ok.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_seconds = cpu.read();
    handler.stop().await;
    ctx.drop_database(&database).await;

    let events = rx.call(reqwest::Method::GET, "/_receiver/events").await?;
    let documents: Vec<String> = events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["data"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let requests = rx.call(reqwest::Method::GET, "/_receiver/requests").await?;
    let accepted = first_acceptance(&documents, &requests);
    let lat = written.latencies(&accepted);
    let lost = written.ok.len() - lat.len();
    if lost > 0 {
        failures.push(format!(
            "change-stream latency {rate}/s: {lost} of {} inserted documents were never announced",
            written.ok.len()
        ));
    }
    if written.errors > 0 {
        failures.push(format!(
            "change-stream latency {rate}/s: {} inserts failed, e.g. {:?}",
            written.errors, written.samples
        ));
    }
    let n = written.ok.len().max(1) as f64;
    let per = |name: &str| {
        cpu_seconds
            .get(name)
            .and_then(Value::as_f64)
            .map(|s| round(s * 1e6 / n, 1))
    };
    Ok(json!({
        "rate_per_sec": rate,
        "inserts": written.ok.len(),
        "insert_errors": written.errors,
        "events_accepted": lat.len(),
        "lost": lost,
        "commit_to_accepted_ms": commit_to_accepted(&lat),
        "cpu_seconds": cpu_seconds,
        "mongod_cpu_us_per_event": per("mongod"),
        "handler_cpu_us_per_event": per("handler"),
    }))
}

/// Inserts `rate` documents a second for `seconds`, each at its own scheduled time.
async fn open_loop(
    collection: &mongodb::Collection<Document>,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<Written> {
    let total = u64::from(rate) * seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let result = Arc::new(Mutex::new(Written::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let tag = format!("cs{rate}");
    for i in 0..total {
        let at = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        let i = usize::try_from(i).context("too many inserts")?;
        let document = bson_document(&tag, i)?;
        let id = format!("{tag}-{i}");
        let (collection, result) = (collection.clone(), Arc::clone(&result));
        tasks.spawn(async move {
            let answer = collection.insert_one(document).await;
            let mut r = result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match answer {
                Ok(_) => {
                    r.ok.insert(id, now_ms());
                }
                Err(e) => {
                    r.errors += 1;
                    if r.samples.len() < 3 {
                        r.samples.push(e.to_string());
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(Arc::try_unwrap(result)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default())
}
