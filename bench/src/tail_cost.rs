//! What the tail costs `mongod` while a process pushes its own writes: the other half of the
//! default deployment's relay cost, beside [`crate::push_cost`]'s push path.
//!
//! In the default configuration a standalone handler (and a tailing `OutboxTimer` invocation)
//! keeps a change stream open on the entries' collection, for entries that nobody pushes. Its
//! pipeline lets through no entry a write holds for its own push path, but `mongod` still
//! reads every change to the collection to decide so. That cost comes with every write, not
//! with a publish, so the push-cost runs (entries seeded before the meter starts) cannot see
//! it. Here the same held entries are inserted at a steady rate twice, with nothing watching
//! and with the product's tail running (its change stream and its sweeper beat), and the
//! difference of `mongod`'s CPU is what the tail costs per write. A third run has the tail
//! without its stream (`OUTBOX_TAIL_WATCH=off`: it looks every `OUTBOX_POLL_MS` only).
//!
//! The inserts cost `mongod` about ten times what the tail does, and their cost varies from run
//! to run by more than the tail's, so that difference is noisy. The figure to read is the CPU
//! of the threads serving the tail's own connections (`mongod` serves each connection on a
//! thread named `conn<id>`; the tail's client is told apart by its `appName`): the server's
//! work for the stream's `getMore`s and the tail's queries, and nothing of the inserts.

use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::{Document, doc};
use outbox_relay::outbox::store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::procs::{CpuMeter, thread_cpu_secs};
use crate::push_cost::{KEPT, checkpoint, relay};
use crate::round;
use crate::scenarios::Ctx;

/// Inserts `events` held entries at `rate`/s with nothing watching, with the tail watching,
/// and with the tail polling only.
pub(crate) async fn run(ctx: &Ctx<'_>, events: usize, rate: u32) -> anyhow::Result<Value> {
    let alone = paced_inserts(ctx, events, rate, None).await?;
    let watched = paced_inserts(ctx, events, rate, Some("on")).await?;
    let polling = paced_inserts(ctx, events, rate, Some("off")).await?;
    let per_write = |cpu: f64| round(cpu * 1e6 / events.max(1) as f64, 1);
    Ok(json!({
        "inserts_alone": alone.json(events),
        "inserts_watched_by_the_tail": watched.json(events),
        "inserts_with_the_tail_polling": polling.json(events),
        "tail_connections_mongod_cpu_us_per_write": per_write(watched.tail),
        "tail_watch_off_connections_mongod_cpu_us_per_write": per_write(polling.tail),
        "tail_mongod_cpu_us_per_write_by_difference": per_write(watched.mongod - alone.mongod),
        "tail_watch_off_mongod_cpu_us_per_write_by_difference": per_write(polling.mongod - alone.mongod),
        "method": format!("{events} entries, held as the push path's writes hold them, inserted one by one at {rate}/s (open loop) into a fresh database: with nothing watching, with the product's tail running (Relay::tail, default settings: its change stream and its OUTBOX_POLL_MS beat), and with the tail under OUTBOX_TAIL_WATCH=off (the beat only); tail_*connections* = CPU of the mongod threads serving the tail's own connections (told apart by appName) per insert; *_by_difference = the difference of mongod's whole CPU per insert from the run with nothing watching (noisy: the inserts cost ten times more and vary more than that). Every run starts after and ends with a checkpoint (fsync)"),
    }))
}

/// `mongod`'s CPU over one run of paced inserts: all of it, and that of the threads serving
/// the tail's connections.
struct Run {
    mongod: f64,
    tail: f64,
    seconds: f64,
}

/// The `appName` of the tail's client, by which its connections are found.
const TAIL_APP: &str = "outbox-bench-tail";

impl Run {
    fn json(&self, events: usize) -> Value {
        json!({
            "seconds": round(self.seconds, 1),
            "mongod_cpu_seconds": round(self.mongod, 2),
            "mongod_cpu_us_per_insert": round(self.mongod * 1e6 / events.max(1) as f64, 1),
            "tail_connections_mongod_cpu_seconds": round(self.tail, 3) + 0.0,
        })
    }
}

async fn paced_inserts(
    ctx: &Ctx<'_>,
    events: usize,
    rate: u32,
    watch: Option<&str>,
) -> anyhow::Result<Run> {
    let database = "bench_push_cost_tail";
    ctx.drop_database(database).await;
    let env = ctx.env_with(database, &[("OUTBOX_RETENTION_HOURS", KEPT)]);
    let (settings, entries) = crate::drain::prepare(ctx.client, &env).await?;
    // Held by a claim of this run's own, as a write that pushes its entry holds it.
    let hold = store::Hold {
        token: store::ClaimToken::new(),
        until: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    let first_time = chrono::Utc::now();
    let docs = (0..events)
        .map(|i| crate::drain::entry(&settings, i, first_time, Some(hold)).map(|(d, _)| d))
        .collect::<anyhow::Result<Vec<Document>>>()?;

    let shutdown = CancellationToken::new();
    let uri = ctx
        .env
        .get("MONGODB_URI")
        .context("the benchmark's MONGODB_URI")?;
    let separator = if uri.contains('?') { '&' } else { '?' };
    let tail_uri = format!("{uri}{separator}appName={TAIL_APP}");
    let tailing = if let Some(watch) = watch {
        let more = [
            ("OUTBOX_TAIL_WATCH", watch),
            ("MONGODB_URI", tail_uri.as_str()),
        ];
        let (_, relay) = relay(ctx, database, &more, KEPT)?;
        let shutdown = shutdown.clone();
        let tail = tokio::spawn(async move { relay.tail(None, &shutdown).await });
        // Time to open its change stream and finish its first look at the (empty) outbox.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(tail)
    } else {
        None
    };
    checkpoint(ctx).await?;
    let threads_before = thread_cpu_secs(ctx.mongod.pid());
    let cpu = CpuMeter::start(vec![("mongod", ctx.mongod.pid())]);
    let started = std::time::Instant::now();
    let period = Duration::from_secs(1) / rate.max(1);
    let mut next = tokio::time::Instant::now();
    let mut inserts = tokio::task::JoinSet::new();
    for doc in docs {
        let entries = entries.clone();
        inserts.spawn(async move { entries.insert_one(doc).await });
        next += period;
        tokio::time::sleep_until(next).await;
    }
    while let Some(inserted) = inserts.join_next().await {
        inserted
            .context("an insert task")?
            .context("a paced insert")?;
    }
    checkpoint(ctx).await?;
    let mongod = cpu
        .read()
        .get("mongod")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let threads_after = thread_cpu_secs(ctx.mongod.pid());
    let tail = tail_connections(ctx)
        .await?
        .iter()
        .map(|thread| {
            threads_after.get(thread).copied().unwrap_or(0.0)
                - threads_before.get(thread).copied().unwrap_or(0.0)
        })
        .sum();
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    if let Some(tail) = tailing {
        tail.await.context("the tail")?;
    }
    ctx.drop_database(database).await;
    Ok(Run {
        mongod,
        tail,
        seconds,
    })
}

/// The names of the `mongod` threads serving the tail's client (`conn<id>`), open or idle.
async fn tail_connections(ctx: &Ctx<'_>) -> anyhow::Result<Vec<String>> {
    use futures_util::TryStreamExt as _;
    let ops: Vec<Document> = ctx
        .client
        .database("admin")
        .aggregate([
            doc! { "$currentOp": { "allUsers": true, "idleConnections": true } },
            doc! { "$match": { "appName": TAIL_APP } },
        ])
        .await
        .context("$currentOp")?
        .try_collect()
        .await
        .context("$currentOp")?;
    Ok(ops
        .iter()
        .filter_map(|op| op.get_str("desc").ok().map(str::to_owned))
        .collect())
}
