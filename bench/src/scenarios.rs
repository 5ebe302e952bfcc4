//! The scenarios beyond the first release's writes and drain:
//!
//! - **lifecycle**: POST, PUT, DELETE at concurrency 16 in `separate`, `colocated` and
//!   `embedded` placement, direct to mongod and through the Cosmos DB RU emulation proxy (where `separate`
//!   must fail as it would on Cosmos DB RU, writing nothing);
//! - **relays**: one backlog drained by 1, 2 and 4 handler processes at once;
//! - **faults**: a drain under 5 % injected 503s, and the time to drain a backlog after a
//!   topic outage;
//! - **rss**: the handler's memory while it drains a 1,000,000-entry backlog.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mongodb::bson::{Document, doc};
use outbox_relay::outbox::store;
use serde_json::{Value, json};

use crate::procs::{self, CpuMeter, Proc};
use crate::round;
use crate::writes::{self, Op};

/// What every scenario needs.
pub(crate) struct Ctx<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) bins: &'a std::path::Path,
    pub(crate) mongod: &'a devstack::ReplicaSet,
    /// A client of `mongod`, for seeding, counting and dropping.
    pub(crate) client: &'a mongodb::Client,
    pub(crate) receiver: &'a Proc,
    pub(crate) receiver_root: &'a reqwest::Url,
    /// Handler settings shared by every scenario (the database is set per scenario).
    pub(crate) env: &'a BTreeMap<String, String>,
}

impl Ctx<'_> {
    pub(crate) fn env_with(
        &self,
        database: &str,
        extra: &[(&str, &str)],
    ) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("MONGODB_DATABASE".into(), database.into());
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        env
    }

    async fn receiver(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut r = self.http.request(method, self.receiver_root.join(path)?);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().await?.error_for_status()?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// A control call to the receiver without a body; its JSON answer (`null` if none).
    pub(crate) async fn receiver_call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<Value> {
        self.receiver(method, path, None).await
    }

    async fn reset_receiver_faults(&self) -> anyhow::Result<()> {
        self.receiver(reqwest::Method::DELETE, "/_receiver/faults", None)
            .await?;
        Ok(())
    }

    /// Seeds `n` pending entries into `database`, empties the receiver and gives it `fault`
    /// (a `/_receiver/faults` body), if any. Returns the handlers' settings for `database` and
    /// how long the seeding took.
    async fn seeded(
        &self,
        database: &str,
        n: usize,
        fault: Option<Value>,
    ) -> anyhow::Result<(BTreeMap<String, String>, f64)> {
        let env = self.env_with(database, &[]);
        let seconds = crate::drain::seed(self.client, &env, n).await?;
        self.reset_receiver_faults().await?;
        self.receiver(reqwest::Method::DELETE, "/_receiver/events", None)
            .await?;
        if let Some(fault) = fault {
            self.receiver(reqwest::Method::POST, "/_receiver/faults", Some(fault))
                .await?;
        }
        Ok((env, seconds))
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        self.receiver(reqwest::Method::GET, "/_receiver/stats", None)
            .await
    }

    async fn count(
        &self,
        database: &str,
        collection: &str,
        filter: Document,
    ) -> anyhow::Result<u64> {
        Ok(self
            .client
            .database(database)
            .collection::<Document>(collection)
            .count_documents(filter)
            .await?)
    }

    pub(crate) async fn drop_database(&self, database: &str) {
        let _ = self.client.database(database).drop().await;
    }
}

/// One admin-triggered drain; its report (`null` fields if the handler did not answer JSON).
async fn admin_drain(http: &reqwest::Client, base: &str) -> anyhow::Result<(u16, Value)> {
    let r = http
        .post(format!("{base}/admin/functions/OutboxTimer"))
        .send()
        .await
        .context("POST /admin/functions/OutboxTimer")?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// Triggers drains on `base` until a report says nothing remains; returns what it published
/// and how many runs it took. Gives up after `limit`.
async fn drain_until_empty(
    http: &reqwest::Client,
    base: &str,
    limit: Duration,
) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    let (mut published, mut runs) = (0, 0);
    loop {
        let (_, report) = admin_drain(http, base).await?;
        runs += 1;
        published += report["published"].as_u64().unwrap_or(0);
        if report["remaining"].as_u64() == Some(0) {
            return Ok((published, runs));
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the drain did not finish within {limit:?}: {report}"
        );
        if report["published"].as_u64() == Some(0) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// POST, PUT and DELETE at concurrency 16 in each placement, direct and through the proxy.
pub(crate) async fn lifecycle(
    ctx: &Ctx<'_>,
    n: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let (proxy, proxy_uri) = procs::start_proxy(ctx.bins, ctx.mongod.port()).await?;
    let mut out = serde_json::Map::new();
    for (name, placement, through_proxy) in [
        ("separate_direct", "separate", false),
        ("colocated_direct", "colocated", false),
        ("colocated_proxy", "colocated", true),
        ("embedded_direct", "embedded", false),
        ("embedded_proxy", "embedded", true),
    ] {
        eprintln!("outbox-bench: lifecycle {name}");
        let database = format!("bench_life_{name}");
        let mut env = ctx.env_with(&database, &[("OUTBOX_PLACEMENT", placement)]);
        if through_proxy {
            env.insert("MONGODB_URI".into(), proxy_uri.clone());
        }
        let (handler, base) = procs::start_handler(ctx.bins, &env, ctx.http).await?;
        let mut runs = serde_json::Map::new();
        for op in [Op::Post, Op::Put, Op::Delete] {
            let cpu = CpuMeter::start(vec![
                ("handler", handler.pid()),
                ("mongod", ctx.mongod.pid()),
                ("proxy", proxy.pid()),
                ("bench", std::process::id()),
            ]);
            let mut r = writes::run_op(ctx.http, &base, "life", n, 16, op).await;
            r.json["cpu_seconds"] = cpu.read().into();
            if r.errors > 0 {
                failures.push(format!(
                    "lifecycle {name} {op:?}: {} of {} failed, e.g. {:?}",
                    r.errors, r.requests, r.error_samples
                ));
            }
            runs.insert(format!("{op:?}_c16").to_lowercase(), r.json);
        }
        handler.stop().await;
        ctx.drop_database(&database).await;
        out.insert(name.into(), Value::Object(runs));
    }
    // Separate placement through the RU rules: every write must fail, nothing be written.
    eprintln!("outbox-bench: lifecycle separate_proxy (expected to fail as on Cosmos DB RU)");
    let database = "bench_life_separate_proxy";
    let mut env = ctx.env_with(database, &[("OUTBOX_PLACEMENT", "separate")]);
    env.insert("MONGODB_URI".into(), proxy_uri.clone());
    let (handler, base) = procs::start_handler(ctx.bins, &env, ctx.http).await?;
    let attempted = 200;
    let r = writes::run_op(ctx.http, &base, "sep", attempted, 16, Op::Post).await;
    handler.stop().await;
    let docs = ctx.count(database, "documents", doc! {}).await?;
    let entries = ctx.count(database, "outbox", doc! {}).await?;
    if r.errors != attempted || docs + entries > 0 {
        failures.push(format!("separate placement through the RU proxy: {} of {attempted} failed, {docs} documents and {entries} entries written (expected all failed, nothing written)", r.errors));
    }
    ctx.drop_database(database).await;
    out.insert(
        "separate_proxy".into(),
        json!({
            "posts": attempted,
            "failed": r.errors,
            "answers": r.error_samples.first(),
            "documents_written": docs,
            "entries_written": entries,
        }),
    );
    proxy.stop().await;
    Ok(Value::Object(out))
}

/// One backlog of `n` entries drained by 1, 2 and 4 handlers at once.
pub(crate) async fn relays(
    ctx: &Ctx<'_>,
    n: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for count in [1_usize, 2, 4] {
        eprintln!("outbox-bench: {count} relay(s) draining {n} entries");
        let database = format!("bench_relays_{count}");
        let (env, _) = ctx.seeded(&database, n, None).await?;
        let mut handlers = Vec::new();
        for _ in 0..count {
            handlers.push(procs::start_handler(ctx.bins, &env, ctx.http).await?);
        }
        let mut pids: Vec<(&'static str, u32)> = vec![
            ("mongod", ctx.mongod.pid()),
            ("receiver", ctx.receiver.pid()),
        ];
        const NAMES: [&str; 4] = ["handler_1", "handler_2", "handler_3", "handler_4"];
        for (i, (h, _)) in handlers.iter().enumerate() {
            pids.push((NAMES[i], h.pid()));
        }
        let cpu = CpuMeter::start(pids);
        let started = Instant::now();
        let shares = futures_util::future::join_all(
            handlers
                .iter()
                .map(|(_, base)| drain_until_empty(ctx.http, base, Duration::from_secs(600))),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu.read();
        for (h, _) in handlers {
            h.stop().await;
        }
        let stats = ctx.stats().await?;
        let shares: Vec<u64> = shares
            .into_iter()
            .map(|r| r.map_or(0, |(p, _)| p))
            .collect();
        let distinct = stats["distinct_ids"].as_u64().unwrap_or(0);
        let duplicates = stats["duplicate_deliveries"].as_u64().unwrap_or(0);
        if distinct != n as u64 || duplicates != 0 {
            failures.push(format!(
                "{count} relays: {distinct} distinct of {n}, {duplicates} duplicates"
            ));
        }
        ctx.drop_database(&database).await;
        out.insert(
            format!("relays_{count}"),
            json!({
                "relays": count,
                "events": n,
                "seconds": round(seconds, 3),
                "events_per_sec": round(n as f64 / seconds, 1),
                "published_by_relay": shares,
                "duplicate_deliveries": duplicates,
                "eventgrid_requests": stats["requests"],
                "cpu_seconds": cpu,
            }),
        );
    }
    Ok(Value::Object(out))
}

/// A drain under 5 % injected 503s, and the time to drain after a topic outage.
pub(crate) async fn faults(
    ctx: &Ctx<'_>,
    n: usize,
    outage: Duration,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    {
        eprintln!("outbox-bench: draining {n} entries under 5 % injected 503s");
        let database = "bench_fail_rate";
        let fault = json!({ "fail_rate": { "rate": 0.05, "status": 503 } });
        let (env, _) = ctx.seeded(database, n, Some(fault)).await?;
        let (handler, base) = procs::start_handler(ctx.bins, &env, ctx.http).await?;
        let cpu = CpuMeter::start(vec![
            ("handler", handler.pid()),
            ("mongod", ctx.mongod.pid()),
        ]);
        let started = Instant::now();
        let drained = drain_until_empty(ctx.http, &base, Duration::from_secs(900)).await;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu.read();
        handler.stop().await;
        ctx.reset_receiver_faults().await?;
        let stats = ctx.stats().await?;
        let retried = ctx
            .count(
                database,
                "outbox",
                doc! { store::field::ATTEMPTS: { "$gt": 0 } },
            )
            .await?;
        match drained {
            Ok((_, runs)) => {
                if stats["distinct_ids"].as_u64() != Some(n as u64) {
                    failures.push(format!(
                        "5 % 503s: {} distinct of {n}",
                        stats["distinct_ids"]
                    ));
                }
                out.insert(
                    "fail_rate_5pct".into(),
                    json!({
                        "events": n,
                        "seconds": round(seconds, 3),
                        "events_per_sec": round(n as f64 / seconds, 1),
                        "admin_runs": runs,
                        "eventgrid_requests_by_status": stats["requests_by_status"],
                        "entries_retried": retried,
                        "duplicate_deliveries": stats["duplicate_deliveries"],
                        "cpu_seconds": cpu,
                        "note": "each failed request stops its run (the topic looks down) after EVENTGRID_PUBLISH_RETRIES quick retries; the next run goes on",
                    }),
                );
            }
            Err(e) => failures.push(format!("5 % 503s: {e:#}")),
        }
        ctx.drop_database(database).await;
    }
    {
        eprintln!(
            "outbox-bench: {n} entries, a {} s outage, then recovery",
            outage.as_secs()
        );
        let database = "bench_outage";
        let fault = json!({ "fail": { "count": 4_000_000_000_u64, "status": 503 } });
        let (env, _) = ctx.seeded(database, n, Some(fault)).await?;
        let (handler, base) = procs::start_handler(ctx.bins, &env, ctx.http).await?;
        let down = Instant::now();
        let mut failed_runs = 0;
        while down.elapsed() < outage {
            let (status, _) = admin_drain(ctx.http, &base).await?;
            if status != 200 {
                failed_runs += 1;
            }
            tokio::time::sleep(Duration::from_secs(5).min(outage.saturating_sub(down.elapsed())))
                .await;
        }
        let retried_during_outage = ctx
            .count(
                database,
                "outbox",
                doc! { store::field::ATTEMPTS: { "$gt": 0 } },
            )
            .await?;
        ctx.reset_receiver_faults().await?;
        let recovered = Instant::now();
        let drained = drain_until_empty(ctx.http, &base, Duration::from_secs(1200)).await;
        let seconds = recovered.elapsed().as_secs_f64();
        handler.stop().await;
        let stats = ctx.stats().await?;
        match drained {
            Ok((_, runs)) => {
                if stats["distinct_ids"].as_u64() != Some(n as u64) {
                    failures.push(format!("outage: {} distinct of {n}", stats["distinct_ids"]));
                }
                out.insert(
                    "after_outage".into(),
                    json!({
                        "events": n,
                        "outage_seconds": outage.as_secs(),
                        "failed_runs_during_outage": failed_runs,
                        "entries_with_attempts_after_outage": retried_during_outage,
                        "seconds_from_recovery_to_drained": round(seconds, 3),
                        "admin_runs_after_recovery": runs,
                        "duplicate_deliveries": stats["duplicate_deliveries"],
                        "note": "entries that failed during the outage wait for their persisted backoff (OUTBOX_INITIAL_BACKOFF_MS 1000 doubling, full jitter, OUTBOX_MAX_BACKOFF_SECS 300); the rest drain at once",
                    }),
                );
            }
            Err(e) => failures.push(format!("after the outage: {e:#}")),
        }
        ctx.drop_database(database).await;
    }
    Ok(Value::Object(out))
}

/// The handler's memory while it drains an `n`-entry backlog.
pub(crate) async fn rss(
    ctx: &Ctx<'_>,
    n: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    eprintln!("outbox-bench: seeding {n} entries for the memory run");
    let database = "bench_rss";
    let (env, seed_seconds) = ctx.seeded(database, n, None).await?;
    let (handler, base) = procs::start_handler(ctx.bins, &env, ctx.http).await?;
    let pid = handler.pid();
    let at_start = procs::status_kb(pid, "VmRSS").unwrap_or(0);
    let max = Arc::new(AtomicU64::new(0));
    let marks: Arc<std::sync::Mutex<BTreeMap<u8, u64>>> = Arc::default();
    let sampler = {
        let (max, marks, http, stats_url) = (
            Arc::clone(&max),
            Arc::clone(&marks),
            ctx.http.clone(),
            ctx.receiver_root.join("/_receiver/stats")?,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let kb = procs::status_kb(pid, "VmRSS").unwrap_or(0);
                max.fetch_max(kb, Ordering::Relaxed);
                let done = match http.get(stats_url.clone()).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["accepted_events"].as_u64())
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                let pct = u8::try_from(done * 100 / n.max(1) as u64).unwrap_or(100);
                let mut m = marks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for mark in [10, 50, 90] {
                    if pct >= mark {
                        m.entry(mark).or_insert(kb);
                    }
                }
            }
        })
    };
    let started = Instant::now();
    let drained = drain_until_empty(ctx.http, &base, Duration::from_secs(3600)).await;
    let seconds = started.elapsed().as_secs_f64();
    sampler.abort();
    let hwm = procs::status_kb(pid, "VmHWM").unwrap_or(0);
    handler.stop().await;
    let stats = ctx.stats().await?;
    if let Err(e) = &drained {
        failures.push(format!("memory run: {e:#}"));
    }
    if stats["distinct_ids"].as_u64() != Some(n as u64) {
        failures.push(format!(
            "memory run: {} distinct of {n}",
            stats["distinct_ids"]
        ));
    }
    ctx.drop_database(database).await;
    let mb = |kb: u64| round(kb as f64 / 1024.0, 1);
    let marks = marks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(json!({
        "events": n,
        "seed_seconds": round(seed_seconds, 1),
        "seconds": round(seconds, 1),
        "events_per_sec": round(n as f64 / seconds, 1),
        "handler_rss_at_start_mb": mb(at_start),
        "handler_rss_at_10pct_mb": marks.get(&10).copied().map(mb),
        "handler_rss_at_50pct_mb": marks.get(&50).copied().map(mb),
        "handler_rss_at_90pct_mb": marks.get(&90).copied().map(mb),
        "handler_max_sampled_rss_mb": mb(max.load(Ordering::Relaxed)),
        "handler_peak_rss_mb": mb(hwm),
        "duplicate_deliveries": stats["duplicate_deliveries"],
    }))
}
