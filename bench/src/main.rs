//! `outbox-bench` (`make bench`): measures, never asserts.
//!
//! Starts everything it needs itself and stops it at the end, also on failure or Ctrl-C: a fresh
//! `mongod` replica set (devstack) in a directory under `--work-dir`, the release
//! `eventgrid-receiver` (`--keep ids`, port 0) and the release `handler serve`, configured only
//! through environment variables. Then:
//!
//! - **writes**: `POST /api/documents` of ~1 KB documents over keep-alive HTTP/1.1 — a warm-up,
//!   then concurrency 1 and 16: throughput and exact latency percentiles, plus the CPU each
//!   process used;
//! - **drain**: a backlog of pending entries for ~1 KB documents, inserted straight into MongoDB
//!   with the product's entry builder, drained by a fresh handler through
//!   `POST /admin/functions/OutboxTimer` until nothing remains: events/s, Event Grid requests,
//!   distinct ids and duplicates (from the receiver), the handler's peak RSS, and the CPU time of
//!   each process (on a small machine the processes compete for the same cores).
//!
//! - **change-stream**: `OUTBOX_SOURCE=change-stream` for documents inserted with the driver:
//!   events/s for 100,000 inserts, commit → accepted at 50/s and 1,000/s, the reader's own
//!   `mongod` CPU per event, the handler's peak RSS (see `change_stream.rs`);
//!
//! Every measured phase also reports `cpu_seconds.other`: the machine's busy time not spent in
//! these processes. On a shared machine a large value means other work competed for the cores
//! and the figures of that phase are pessimistic. `--mongod-profile` adds MongoDB's own
//! per-operation costs (profiler level 2, which slows the server: for proportions only).
//! `--bin-dir` runs another build of `handler` (e.g. an older commit's) for before/after figures.
//!
//! The figures go to `--out` as pretty JSON and to stdout; `targets` says which goals were met.
//! A missed target never fails the run; only something broken does (a write error, a lost
//! event, a drain that does not finish), with exit code 1 after the figures are written.

mod change_stream;
mod drain;
mod latency;
mod procs;
mod profile;
mod push_cost;
mod scenarios;
mod tail_cost;
mod writes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use crate::procs::CpuMeter;

/// Benchmark outbox-relay on real local parts; JSON figures to --out and stdout.
#[derive(Debug, Parser)]
#[command(name = "outbox-bench", version, about)]
struct Args {
    /// Where to write the JSON figures.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Writes at concurrency 16.
    #[arg(long, default_value_t = 20_000)]
    writes: usize,
    /// Writes at concurrency 1 (default: a tenth of --writes).
    #[arg(long)]
    writes_c1: Option<usize>,
    /// Warm-up writes (concurrency 4) before the measured runs.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Pending entries in the drain's backlog.
    #[arg(long, default_value_t = 100_000)]
    drain_events: usize,
    /// OUTBOX_BATCH_SIZE of the handlers.
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// OUTBOX_PUBLISH_CONCURRENCY of the handlers.
    #[arg(long, default_value_t = 4)]
    publish_concurrency: u32,
    /// WiredTiger cache of the benchmark's mongod, in MiB, as in the tests' replica sets
    /// (mongod's own default would be half the memory less 1 GiB).
    #[arg(long, default_value_t = 256)]
    mongod_cache_mb: u32,
    /// Oplog of the benchmark's mongod, in MiB, as in the tests' replica sets (mongod's
    /// default: 5 % of the disk, at least 990 MB).
    #[arg(long, default_value_t = 64)]
    mongod_oplog_mb: u32,
    /// Profile every server operation during the c16 writes and the drain (level 2; slows the
    /// server, so use the figures for proportions) and report the cost of each kind of query.
    #[arg(long)]
    mongod_profile: bool,
    /// OUTBOX_PLACEMENT of the writes scenario (`separate`, `colocated` or `embedded`); the
    /// drain's backlog is seeded as entries, so it stays `separate`.
    #[arg(long, default_value = "separate")]
    writes_placement: String,
    /// Requests per operation in the lifecycle scenario.
    #[arg(long, default_value_t = 10_000)]
    lifecycle_requests: usize,
    /// Backlog of the relays and faults scenarios.
    #[arg(long, default_value_t = 100_000)]
    scenario_events: usize,
    /// Length of the topic outage in the faults scenario, in seconds.
    #[arg(long, default_value_t = 60)]
    outage_secs: u64,
    /// Entries published by each path when measuring the relay's database cost per event.
    #[arg(long, default_value_t = 20_000)]
    push_cost_events: usize,
    /// Seconds of open-loop writes per latency run.
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Documents inserted straight into the collection in the change-stream scenario's
    /// throughput run.
    #[arg(long, default_value_t = 100_000)]
    change_stream_inserts: usize,
    /// Backlog of the rss scenario.
    #[arg(long, default_value_t = 1_000_000)]
    rss_events: usize,
    /// Directory for the replica set's files (a fresh subdirectory per run, removed at the end).
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Directory of the `handler` and `eventgrid-receiver` binaries (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// A setting for every handler the benchmark starts, as `NAME=VALUE` (repeatable), e.g.
    /// `--handler-setting MONGODB_MAX_CONCURRENT_WRITES=32`; it is listed in the figures'
    /// `settings`. Scenarios that set a name themselves (the latency runs' push and tail) win.
    #[arg(long, value_parser = parse_setting)]
    handler_setting: Vec<(String, String)>,
}

/// `NAME=VALUE` of `--handler-setting`.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST at concurrency 1 and 16.
    Writes,
    /// A backlog drained by one handler.
    Drain,
    /// POST/PUT/DELETE at concurrency 16 per placement, direct and through the RU proxy.
    Lifecycle,
    /// One backlog drained by 1, 2 and 4 handlers.
    Relays,
    /// A drain under 5 % 503s; the drain after a topic outage.
    Faults,
    /// The handler's memory draining a 1,000,000-entry backlog (not part of `all`).
    Rss,
    /// Commit → accepted latency of open-loop writes, default configuration, standalone and
    /// Functions mode; the push path's database cost per event.
    Latency,
    /// The relay's own `mongod` CPU per delivered event: push path and sweeper, apart from the
    /// writes.
    RelayCost,
    /// `OUTBOX_SOURCE=change-stream`: events/s for direct inserts, commit → accepted at 50/s
    /// and 1,000/s, the reader's `mongod` CPU per event and the handler's RSS.
    ChangeStream,
    /// Every scenario but `rss`.
    All,
}

impl Args {
    fn wants(&self, s: Scenario) -> bool {
        self.scenario == s || (self.scenario == Scenario::All && s != Scenario::Rss)
    }
}

/// Rounds to `digits` decimals, for readable JSON.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10_f64.powi(digits);
    (x * f).round() / f
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("outbox-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark between starting and stopping the replica set; `Ok(false)` when
/// something broke (the figures are still written).
async fn bench(args: &Args) -> anyhow::Result<bool> {
    outbox_relay::publisher::install_crypto_provider();
    let bins = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_path_buf(),
    };
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dir = args.work_dir.join(format!("mongod-{}", std::process::id()));
    eprintln!("outbox-bench: starting a replica set in {}", dir.display());
    let mongod = devstack::ReplicaSet::start(devstack::ReplicaSetOptions {
        cache_mb: args.mongod_cache_mb,
        oplog_mb: args.mongod_oplog_mb,
        ..devstack::ReplicaSetOptions::new(&dir)
    })
    .await?;
    // Everything else lives inside this future: dropping it (Ctrl-C, SIGTERM) kills the
    // receiver and the handler through their handles; the replica set is stopped below.
    let outcome = tokio::select! {
        r = run(args, &bins, &mongod, started_at) => Ok(r),
        signal = interrupted() => Err(signal),
    };
    let stopped = mongod.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = match outcome {
        Ok(o) => o,
        Err(signal) => anyhow::bail!("interrupted by {signal}; everything it started is stopped"),
    };
    let (figures, failures) = outcome?;
    stopped.context("cannot stop the replica set")?;
    let text = serde_json::to_string_pretty(&figures)?;
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, format!("{text}\n"))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{text}");
    eprintln!("outbox-bench: figures written to {}", args.out.display());
    for f in &failures {
        eprintln!("outbox-bench: BROKEN: {f}");
    }
    Ok(failures.is_empty())
}

/// Resolves on Ctrl-C or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => "SIGINT",
        Some(()) = term.recv() => "SIGTERM",
        else => std::future::pending().await,
    }
}

/// The scenarios; returns the figures and what broke.
async fn run(
    args: &Args,
    bins: &Path,
    mongod: &devstack::ReplicaSet,
    started_at: String,
) -> anyhow::Result<(Value, Vec<String>)> {
    let http = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .build()?;
    let (receiver, endpoint) = procs::start_receiver(bins).await?;
    let receiver_root = reqwest::Url::parse(&endpoint)
        .with_context(|| format!("the receiver's endpoint {endpoint:?}"))?;
    let mut env: BTreeMap<String, String> = [
        ("MONGODB_URI", mongod.uri()),
        ("EVENTGRID_TOPIC_ENDPOINT", endpoint.as_str()),
        ("EVENTGRID_TOPIC_KEY", "local-dev-key"),
        ("OUTBOX_SCHEDULE", "0 0 0 1 1 *"),
        ("OUTBOX_PLACEMENT", "separate"),
        ("OUTBOX_TIME_BUDGET_SECS", "900"),
        // The write and drain scenarios measure one path each, as before the push path
        // existed; the latency scenario runs the defaults.
        ("OUTBOX_PUSH", "off"),
        ("OUTBOX_TAIL", "off"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("OUTBOX_BATCH_SIZE".into(), args.batch_size.to_string());
    env.insert(
        "OUTBOX_PUBLISH_CONCURRENCY".into(),
        args.publish_concurrency.to_string(),
    );
    env.extend(args.handler_setting.iter().cloned());
    let settings: BTreeMap<&String, &String> =
        env.iter().filter(|(k, _)| *k != "MONGODB_URI").collect();
    let mut figures = json!({
        "machine": machine(),
        "git_rev": git_rev(),
        "started_at": started_at,
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
        "settings": settings,
        "mongod": { "version": devstack::MONGOD_VERSION, "options": format!("devstack single-node replica set rs0: WiredTiger cache {} MiB, oplog {} MiB, default write concern (majority)", args.mongod_cache_mb, args.mongod_oplog_mb) },
    });
    // One client for everything the benchmark itself reads or writes in the database.
    let client = mongodb::Client::with_uri_str(mongod.uri()).await?;
    let mut targets = Vec::new();
    let mut failures = Vec::new();

    if args.wants(Scenario::Writes) {
        env.insert("MONGODB_DATABASE".into(), "bench_writes".into());
        eprintln!("outbox-bench: writes ({})", args.writes_placement);
        let mut writes_env = env.clone();
        writes_env.insert("OUTBOX_PLACEMENT".into(), args.writes_placement.clone());
        let (handler, base) = procs::start_handler(bins, &writes_env, &http).await?;
        let warm = writes::run(&http, &base, "warm", args.warmup, 4).await;
        let mut results = serde_json::Map::new();
        let c1_count = args.writes_c1.unwrap_or(args.writes / 10).max(1);
        for (name, n, concurrency) in [("c1", c1_count, 1), ("c16", args.writes, 16)] {
            let cpu = CpuMeter::start(vec![
                ("handler", handler.pid()),
                ("mongod", mongod.pid()),
                ("bench", std::process::id()),
            ]);
            let profiled = if args.mongod_profile && name == "c16" {
                let db = client.database("bench_writes");
                profile::start(&db).await?;
                Some(db)
            } else {
                None
            };
            let mut r = writes::run(&http, &base, name, n, concurrency).await;
            r.json["cpu_seconds"] = cpu.read().into();
            if let Some(db) = profiled {
                r.json["mongod_profile"] = profile::read(&db).await?;
            }
            if r.errors > 0 {
                failures.push(format!(
                    "writes {name}: {} of {} failed, e.g. {:?}",
                    r.errors, r.requests, r.error_samples
                ));
            }
            results.insert(name.into(), r.json);
        }
        handler.stop().await;
        if warm.errors > 0 {
            failures.push(format!(
                "warm-up writes: {} of {} failed, e.g. {:?}",
                warm.errors, warm.requests, warm.error_samples
            ));
        }
        let c1 = &results["c1"];
        let c16 = &results["c16"];
        targets.push(target(
            "writes c1 p50",
            "ms",
            &c1["latency_ms"]["p50"],
            Goal::AtMost(2.0),
        ));
        targets.push(target(
            "writes c1 p99",
            "ms",
            &c1["latency_ms"]["p99"],
            Goal::AtMost(5.0),
        ));
        targets.push(target(
            "writes c16 throughput",
            "writes/s",
            &c16["writes_per_sec"],
            Goal::AtLeast(2500.0),
        ));
        targets.push(target(
            "writes c16 p99",
            "ms",
            &c16["latency_ms"]["p99"],
            Goal::AtMost(20.0),
        ));
        results.insert(
            "document_bytes".into(),
            writes::document("c16", 0).len().into(),
        );
        results.insert(
            "warmup".into(),
            json!({ "count": args.warmup, "concurrency": 4 }),
        );
        results.insert("placement".into(), args.writes_placement.clone().into());
        figures["writes"] = results.into();
    }

    if args.wants(Scenario::Drain) {
        env.insert("MONGODB_DATABASE".into(), "bench_drain".into());
        eprintln!("outbox-bench: drain");
        let drained = drain::run(&drain::Setup {
            http: &http,
            bins,
            client: &client,
            mongod_pid: mongod.pid(),
            receiver: &receiver,
            receiver_root: &receiver_root,
            env: &env,
            events: args.drain_events,
            profile: args.mongod_profile,
        })
        .await?;
        failures.extend(drained.failures);
        let d = &drained.json;
        targets.push(target(
            "drain throughput",
            "events/s",
            &d["events_per_sec"],
            Goal::AtLeast(20_000.0),
        ));
        targets.push(target(
            "handler peak RSS (VmHWM) during the drain",
            "MB",
            &d["handler_peak_rss_mb"],
            Goal::AtMost(64.0),
        ));
        figures["drain"] = drained.json;
    }
    let ctx = scenarios::Ctx {
        http: &http,
        bins,
        mongod,
        client: &client,
        receiver: &receiver,
        receiver_root: &receiver_root,
        env: &env,
    };
    if args.wants(Scenario::Lifecycle) {
        figures["lifecycle"] =
            scenarios::lifecycle(&ctx, args.lifecycle_requests, &mut failures).await?;
    }
    if args.wants(Scenario::Relays) {
        figures["relays"] = scenarios::relays(&ctx, args.scenario_events, &mut failures).await?;
    }
    if args.wants(Scenario::Faults) {
        figures["faults"] = scenarios::faults(
            &ctx,
            args.scenario_events,
            std::time::Duration::from_secs(args.outage_secs),
            &mut failures,
        )
        .await?;
    }
    if args.wants(Scenario::Latency) {
        let l = latency::run(&ctx, args.latency_secs, &mut failures).await?;
        for (run, p50_goal, p99_goal) in [
            ("standalone_default_50", Some(20.0), 100.0),
            ("standalone_default_1000", None, 250.0),
            ("functions_default_50", Some(20.0), 100.0),
            ("functions_default_1000", None, 250.0),
        ] {
            if let Some(goal) = p50_goal {
                targets.push(target(
                    &format!("latency {run} p50"),
                    "ms",
                    &l[run]["commit_to_accepted_ms"]["p50"],
                    Goal::AtMost(goal),
                ));
            }
            targets.push(target(
                &format!("latency {run} p99"),
                "ms",
                &l[run]["commit_to_accepted_ms"]["p99"],
                Goal::AtMost(p99_goal),
            ));
            // A write turned away (503, MONGODB_MAX_CONCURRENT_WRITES) is not broken, but the
            // offered rate was not carried.
            targets.push(target(
                &format!("latency {run} writes accepted"),
                "%",
                &l[run]["accepted_share_pct"],
                Goal::AtLeast(100.0),
            ));
        }
        figures["latency"] = l;
    }
    if args.wants(Scenario::RelayCost) {
        let mut cost = push_cost::run(&ctx, args.push_cost_events, 1000).await?;
        cost["tail"] = tail_cost::run(&ctx, args.push_cost_events, 1000).await?;
        targets.push(target(
            "push path mongod CPU per event",
            "µs",
            &cost["push"]["mongod_cpu_us_per_event"],
            Goal::AtMost(40.0),
        ));
        figures["relay_cost"] = cost;
    }
    if args.wants(Scenario::ChangeStream) {
        let cs = change_stream::run(
            &ctx,
            args.change_stream_inserts,
            args.latency_secs,
            &mut failures,
        )
        .await?;
        for rate in [50, 1000] {
            if rate == 50 {
                targets.push(target(
                    "change-stream latency 50/s p50",
                    "ms",
                    &cs["latency_50"]["commit_to_accepted_ms"]["p50"],
                    Goal::AtMost(20.0),
                ));
            }
            targets.push(target(
                &format!("change-stream latency {rate}/s p99"),
                "ms",
                &cs[format!("latency_{rate}")]["commit_to_accepted_ms"]["p99"],
                Goal::AtMost(if rate == 50 { 100.0 } else { 250.0 }),
            ));
        }
        figures["change_stream"] = cs;
        figures["sources_side_by_side"] = sources_side_by_side(&figures);
    }
    if args.wants(Scenario::Rss) {
        figures["rss"] = scenarios::rss(&ctx, args.rss_events, &mut failures).await?;
    }
    receiver.stop().await;
    figures["targets"] = Value::Array(targets);
    if !failures.is_empty() {
        figures["failures"] = json!(failures);
    }
    Ok((figures, failures))
}

/// The outbox and change-stream sources' commit → accepted latency in this run, side by side
/// (`null` where a scenario did not run).
fn sources_side_by_side(figures: &Value) -> Value {
    let pick = |v: &Value| {
        json!({
            "p50_ms": v["commit_to_accepted_ms"]["p50"],
            "p99_ms": v["commit_to_accepted_ms"]["p99"],
            "mongod_cpu_us_per_event": v.get("mongod_cpu_us_per_event").or_else(|| v.get("mongod_cpu_us_per_write")),
        })
    };
    let mut out = serde_json::Map::new();
    for rate in [50, 1000] {
        out.insert(
            format!("{rate}_per_sec"),
            json!({
                "outbox (HTTP writes, push path)": pick(&figures["latency"][format!("standalone_default_{rate}")]),
                "change-stream (direct inserts)": pick(&figures["change_stream"][format!("latency_{rate}")]),
            }),
        );
    }
    out.insert(
        "note".into(),
        json!("outbox CPU is per write including the HTTP write's transaction; change-stream CPU is per direct insert plus the reader"),
    );
    Value::Object(out)
}

#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

fn target(name: &str, unit: &str, measured: &Value, goal: Goal) -> Value {
    let v = measured.as_f64();
    let (goal_text, met) = match goal {
        Goal::AtMost(g) => (format!("≤ {g} {unit}"), v.is_some_and(|v| v <= g)),
        Goal::AtLeast(g) => (format!("≥ {g} {unit}"), v.is_some_and(|v| v >= g)),
    };
    json!({ "target": name, "goal": goal_text, "measured": measured, "met": met })
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": cpus,
        "cpu_model": model,
        "mem_gib": round(mem_kb as f64 / 1024.0 / 1024.0, 1),
        "kernel": kernel.trim(),
    })
}

/// `HEAD`'s commit, with `-dirty` when the work tree has changes.
fn git_rev() -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            json!(if dirty { format!("{rev}-dirty") } else { rev })
        }
        None => Value::Null,
    }
}
