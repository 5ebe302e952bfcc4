//! The relay's own database cost per delivered event, push path beside sweeper, measured apart
//! from the writes that made the entries.
//!
//! The latency scenario can only estimate the push path's `mongod` CPU as the difference of two
//! noisy runs (writes with and without publishing). Here the entries are seeded first, exactly
//! as the writes store them (held by the push path's token, or due for a drain), and only then
//! is `mongod`'s CPU measured, while the product's own relay (in this process) publishes them:
//!
//! - **push**: the events are handed to `Relay::push` at a steady rate (as commits would hand
//!   them over), so its batches form by `OUTBOX_LINGER_MS` as they do under that write rate;
//! - **sweeper**: the same backlog, unheld, taken by `Relay::drain_once` (claim, publish, mark);
//! - **floor**: the same held backlog marked published by the store's own fenced update, 1,000
//!   ids at a time, back to back, nothing published: what one state change per entry costs on
//!   this machine, the least either path can cost while entries are marked one by one; and
//!   the same marks spaced as the push path spaces its own (one update per `MARK_EVERY` or per
//!   1,000 ids), which shows what the push path costs beyond its marks (nothing, measured).
//!
//! The tail, which the default deployment runs beside the push path, costs `mongod` something
//! on every write rather than on every publish: `tail_cost.rs` measures it, reported beside
//! these figures.
//!
//! Each once more with `OUTBOX_RETENTION_HOURS=0`, where a published entry is deleted instead
//! of marked: the cheapest state change `mongod` has for an entry (no index key moved or added,
//! and no TTL delete to follow), at the price of keeping nothing to replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mongodb::bson::{Document, doc};
use outbox_relay::config::{Env, Settings};
use outbox_relay::db::Db;
use outbox_relay::outbox::{Storage, store};
use outbox_relay::publisher::Publisher;
use outbox_relay::push;
use outbox_relay::relay::{MARK_EVERY, Relay};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::procs::CpuMeter;
use crate::round;
use crate::scenarios::Ctx;

/// Measures both paths over `events` entries each; the push path is fed at `rate` events/s.
pub(crate) async fn run(ctx: &Ctx<'_>, events: usize, rate: u32) -> anyhow::Result<Value> {
    checkpoint(ctx).await?;
    let idle = idle_cpu_per_sec(ctx).await;
    let per_mark = ids_per_mark(rate);
    Ok(json!({
        "mongod_idle_cpu_ms_per_sec": round(idle * 1e3, 2),
        "push": push_path(ctx, events, rate, None, KEPT, idle).await?,
        "push_linger_50ms": push_path(ctx, events, rate, Some("50"), KEPT, idle).await?,
        "sweeper": sweeper(ctx, events, KEPT, idle).await?,
        "floor_one_mark_per_entry": floor(ctx, events, KEPT, idle, Pace::BackToBack).await?,
        "floor_marks_at_the_push_pace": floor(ctx, events, KEPT, idle, Pace::AsPushed { rate }).await?,
        "push_retention_0": push_path(ctx, events, rate, None, DELETED, idle).await?,
        "sweeper_retention_0": sweeper(ctx, events, DELETED, idle).await?,
        "floor_one_delete_per_entry": floor(ctx, events, DELETED, idle, Pace::BackToBack).await?,
        "method": format!("{events} entries of ~1 KB documents seeded first (not measured), then mongod CPU while the product's relay, in the benchmark's process, publishes them to the receiver: push = handed to the push loop at {rate}/s with the default OUTBOX_LINGER_MS (push_linger_50ms: 50 ms, to show the share of per-request costs); sweeper = the same backlog unheld, drained by drain_once; floor_one_mark_per_entry = the held backlog marked published by the store's fenced update, 1,000 ids at a time back to back, nothing published; floor_marks_at_the_push_pace = the same marks spaced as the push path spaces its own at {rate}/s ({per_mark} ids per update, one update per {per_mark} events); *_retention_0 and floor_one_delete_per_entry = the same with OUTBOX_RETENTION_HOURS=0 (published entries deleted, not marked); *_net = less mongod's own idle CPU (measured for 5 s before) over the same time; each run starts after a checkpoint (fsync) that writes the seeding to disk, and ends with one that writes its own changes"),
    }))
}

/// `OUTBOX_RETENTION_HOURS` of a run: published entries kept (the default) or deleted.
pub(crate) const KEPT: &str = "168";
const DELETED: &str = "0";

/// The relay over `database`, with the benchmark's settings, a lease that outlasts the run,
/// and `more` settings.
pub(crate) fn relay(
    ctx: &Ctx<'_>,
    database: &str,
    more: &[(&str, &str)],
    retention: &'static str,
) -> anyhow::Result<(Settings, Relay)> {
    let mut extra = vec![
        ("OUTBOX_LEASE_SECS", "3600"),
        ("OUTBOX_TIME_BUDGET_SECS", "600"),
        ("OUTBOX_RETENTION_HOURS", retention),
    ];
    extra.extend_from_slice(more);
    let env = ctx.env_with(database, &extra);
    let settings = Settings::from_env(&Env::from_map(env.into_iter().collect()))
        .context("the push-cost settings")?;
    let storage = Arc::new(Storage::new(Db::new(settings.mongodb.clone())));
    let publisher = Publisher::new(&settings.eventgrid).context("the publisher")?;
    let relay = Relay::new(storage, publisher, settings.relay.clone());
    Ok((settings, relay))
}

async fn push_path(
    ctx: &Ctx<'_>,
    events: usize,
    rate: u32,
    linger_ms: Option<&str>,
    retention: &'static str,
    idle: f64,
) -> anyhow::Result<Value> {
    let database = "bench_push_cost_push";
    let linger: Vec<_> = linger_ms
        .map(|ms| ("OUTBOX_LINGER_MS", ms))
        .into_iter()
        .collect();
    let (settings, relay) = relay(ctx, database, &linger, retention)?;
    let (handoff, inbox) = push::channel(settings.relay.lease, Duration::ZERO);
    let hold = handoff.hold();
    let env = ctx.env_with(database, &[("OUTBOX_RETENTION_HOURS", retention)]);
    let (_, seeded) = crate::drain::seed_held(ctx.client, &env, events, Some(hold)).await?;
    ctx.receiver_call(reqwest::Method::DELETE, "/_receiver/events")
        .await?;
    let shutdown = CancellationToken::new();
    let run = Metered::start(ctx).await?;
    let pushing = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.push(inbox, shutdown).await }
    });
    let period = Duration::from_secs(1) / rate.max(1);
    let mut next = tokio::time::Instant::now();
    for event in seeded {
        drop(handoff.kick(event, hold));
        next += period;
        tokio::time::sleep_until(next).await;
    }
    let published = wait_published(ctx, database, events, retention).await?;
    let figures = run.finish(ctx, published, idle).await?;
    shutdown.cancel();
    pushing.await.context("the push loop")?;
    ctx.drop_database(database).await;
    Ok(figures)
}

async fn sweeper(
    ctx: &Ctx<'_>,
    events: usize,
    retention: &'static str,
    idle: f64,
) -> anyhow::Result<Value> {
    let database = "bench_push_cost_sweeper";
    let (settings, relay) = relay(ctx, database, &[], retention)?;
    let env = ctx.env_with(database, &[("OUTBOX_RETENTION_HOURS", retention)]);
    crate::drain::seed(ctx.client, &env, events).await?;
    ctx.receiver_call(reqwest::Method::DELETE, "/_receiver/events")
        .await?;
    let run = Metered::start(ctx).await?;
    for _ in 0..100 {
        let report = relay
            .drain_once(settings.relay.time_budget, &CancellationToken::new())
            .await;
        if report.remaining == Some(0) {
            break;
        }
    }
    let published = wait_published(ctx, database, events, retention).await?;
    let figures = run.finish(ctx, published, idle).await?;
    ctx.drop_database(database).await;
    Ok(figures)
}

/// How the floor's marks are spaced: back to back, 1,000 ids each, or at the push path's pace
/// for `rate` events/s (what Event Grid accepted within `MARK_EVERY`, marked at once, at most
/// a batch of 1,000 at a time).
#[derive(Clone, Copy)]
enum Pace {
    BackToBack,
    AsPushed { rate: u32 },
}

async fn floor(
    ctx: &Ctx<'_>,
    events: usize,
    retention: &'static str,
    idle: f64,
    pace: Pace,
) -> anyhow::Result<Value> {
    let database = "bench_push_cost_floor";
    let env = ctx.env_with(database, &[("OUTBOX_RETENTION_HOURS", retention)]);
    let hold = store::Hold {
        token: store::ClaimToken::new(),
        until: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    let (_, seeded) = crate::drain::seed_held(ctx.client, &env, events, Some(hold)).await?;
    let settings =
        outbox_relay::config::MongoSettings::from_env(&Env::from_map(env.into_iter().collect()))
            .context("the floor's MongoDB settings")?;
    let entries = store::OutboxStore::new(
        &ctx.client.database(&settings.database),
        &settings.outbox_collection,
    )
    .keeping_published(settings.keeps_published());
    let ids: Vec<_> = seeded.iter().map(|e| e.id).collect();
    let run = Metered::start(ctx).await?;
    let mut published = 0;
    let (chunk_len, every) = match pace {
        Pace::BackToBack => (1_000, Duration::ZERO),
        Pace::AsPushed { rate } => {
            let ids = ids_per_mark(rate);
            (
                ids,
                Duration::from_secs_f64(ids as f64 / f64::from(rate.max(1))),
            )
        }
    };
    let mut next = tokio::time::Instant::now();
    for chunk in ids.chunks(chunk_len) {
        next += every;
        tokio::time::sleep_until(next).await;
        published += entries
            .mark_published(hold.token, chunk, chrono::Utc::now())
            .await
            .context("the floor's marks")?;
    }
    let figures = run.finish(ctx, published, idle).await?;
    ctx.drop_database(database).await;
    Ok(figures)
}

/// Ids in one of the push path's marks at `rate` events/s: what is accepted within
/// `MARK_EVERY`, at most the benchmark's batch of 1,000.
fn ids_per_mark(rate: u32) -> usize {
    let per_interval = f64::from(rate) * MARK_EVERY.as_secs_f64();
    (per_interval as usize).clamp(1, 1_000)
}

/// Waits until the receiver has `events` events and the entries are all marked published, or
/// all deleted where `retention` keeps none (watching the receiver, not `mongod`, so that the
/// wait costs `mongod` nothing until the end); returns how many were.
async fn wait_published(
    ctx: &Ctx<'_>,
    database: &str,
    events: usize,
    retention: &str,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let stats = ctx
            .receiver_call(reqwest::Method::GET, "/_receiver/stats")
            .await?;
        if stats["accepted_events"].as_u64().unwrap_or(0) >= events as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let entries = ctx
        .client
        .database(database)
        .collection::<Document>("outbox");
    let mut published = 0;
    while Instant::now() < deadline {
        published = if retention == DELETED {
            let left = entries
                .count_documents(doc! { store::ROOT: { "$exists": true } })
                .await?;
            (events as u64).saturating_sub(left)
        } else {
            entries
                .count_documents(doc! { store::field::STATUS: "published" })
                .await?
        };
        if published >= events as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(published)
}

/// One measured run: `mongod`'s CPU from a checkpoint before it to one after it.
struct Metered {
    cpu: CpuMeter,
    started: Instant,
    /// What the checkpoint before the run cost (the seeding's deferred writes), not charged.
    seeding_checkpoint: f64,
}

impl Metered {
    async fn start(ctx: &Ctx<'_>) -> anyhow::Result<Self> {
        let seeding_checkpoint = checkpoint(ctx).await?;
        Ok(Self {
            cpu: CpuMeter::start(vec![("mongod", ctx.mongod.pid())]),
            started: Instant::now(),
            seeding_checkpoint,
        })
    }

    /// Ends the run with a checkpoint (its own deferred writes are charged to it) and returns
    /// its figures for `published` events.
    async fn finish(self, ctx: &Ctx<'_>, published: u64, idle: f64) -> anyhow::Result<Value> {
        checkpoint(ctx).await?;
        let cpu_seconds = self.cpu.read();
        let seconds = self.started.elapsed().as_secs_f64();
        Ok(figures(
            &cpu_seconds,
            published,
            seconds,
            idle,
            self.seeding_checkpoint,
        ))
    }
}

/// Has `mongod` write everything changed so far to disk (`fsync` takes a WiredTiger
/// checkpoint). Called once before a run's meter starts, so that the seeding's deferred writes
/// are not charged to the run, and once before it stops, so that each run pays for its own
/// (a 20-second run would otherwise pay for whichever 60-second checkpoint falls into it, a
/// one-second run for none). Measured, the seeding's share is small (10–40 ms of `mongod` CPU
/// for 20,000 entries, reported as `seeding_checkpoint_mongod_cpu_ms_not_charged`).
/// Returns the CPU seconds `mongod` spent on it.
pub(crate) async fn checkpoint(ctx: &Ctx<'_>) -> anyhow::Result<f64> {
    let cpu = CpuMeter::start(vec![("mongod", ctx.mongod.pid())]);
    ctx.client
        .database("admin")
        .run_command(doc! { "fsync": 1 })
        .await
        .context("fsync (a checkpoint) between runs")?;
    Ok(cpu
        .read()
        .get("mongod")
        .and_then(Value::as_f64)
        .unwrap_or(0.0))
}

/// `mongod`'s CPU seconds per second while nobody uses it (replication heartbeats, the no-op
/// writer, diagnostics, checkpoints): a 20-second push run pays for that too.
async fn idle_cpu_per_sec(ctx: &Ctx<'_>) -> f64 {
    let cpu = CpuMeter::start(vec![("mongod", ctx.mongod.pid())]);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let used = cpu
        .read()
        .get("mongod")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    used / started.elapsed().as_secs_f64()
}

fn figures(
    cpu_seconds: &serde_json::Map<String, Value>,
    published: u64,
    seconds: f64,
    idle: f64,
    seeding_checkpoint: f64,
) -> Value {
    let mongod = cpu_seconds.get("mongod").and_then(Value::as_f64);
    let per_event = |cpu: f64| round(cpu * 1e6 / (published.max(1) as f64), 1);
    json!({
        "published": published,
        "seconds": round(seconds, 1),
        "mongod_cpu_seconds": mongod,
        "mongod_cpu_us_per_event": mongod.map(per_event),
        "mongod_cpu_us_per_event_net": mongod.map(|m| per_event((m - idle * seconds).max(0.0))),
        "seeding_checkpoint_mongod_cpu_ms_not_charged": round(seeding_checkpoint * 1e3, 1),
    })
}
