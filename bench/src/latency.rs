//! The latency scenario: how long after a write's `201` its event is accepted by the topic.
//!
//! Open-loop writes (each sent at its scheduled time, whatever the previous ones are doing) of
//! ~1 KB documents at 50/s and 1,000/s. For every write the benchmark keeps the moment its
//! `201` arrived (wall clock, ms) and the event id it answered; the receiver keeps the moment it
//! accepted each request and the ids in arrival order, so each event's commit → accepted time is
//! known exactly. Runs:
//!
//! - standalone, **default configuration** (push path and tail on), 50/s and 1,000/s;
//! - Functions mode through a host-like harness (envelopes to `/WriteDocumentHttp`, a timer
//!   invocation fired as the host would, once a minute), default configuration, 50/s and
//!   1,000/s;
//! - standalone with the push path off (the tail alone: the safety net's latency), 50/s;
//! - standalone with neither (the writes alone), 1,000/s: the baseline that the push run's
//!   `mongod` CPU is compared with, giving the push path's own database cost per event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::procs::{self, CpuMeter};
use crate::round;
use crate::scenarios::Ctx;
use crate::writes::{document, percentile};

/// Wall-clock milliseconds since the Unix epoch (what the receiver records).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How a run's handler is driven.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    /// `handler serve`, raw HTTP.
    Standalone,
    /// Functions mode, envelopes as the host sends them.
    Functions,
}

/// One measured run.
struct Spec {
    name: &'static str,
    front: Front,
    rate: u32,
    extra: &'static [(&'static str, &'static str)],
}

/// Every run of the scenario, in order.
const RUNS: &[Spec] = &[
    Spec {
        name: "standalone_default_50",
        front: Front::Standalone,
        rate: 50,
        extra: &[],
    },
    Spec {
        name: "standalone_default_1000",
        front: Front::Standalone,
        rate: 1000,
        extra: &[],
    },
    Spec {
        name: "functions_default_50",
        front: Front::Functions,
        rate: 50,
        extra: &[],
    },
    Spec {
        name: "functions_default_1000",
        front: Front::Functions,
        rate: 1000,
        extra: &[],
    },
    Spec {
        name: "standalone_sweeper_only_50",
        front: Front::Standalone,
        rate: 50,
        extra: &[("OUTBOX_PUSH", "off")],
    },
    Spec {
        name: "standalone_tail_watch_off_1000",
        front: Front::Standalone,
        rate: 1000,
        extra: &[("OUTBOX_TAIL_WATCH", "off")],
    },
    Spec {
        name: "standalone_writes_only_1000",
        front: Front::Standalone,
        rate: 1000,
        extra: &[("OUTBOX_PUSH", "off"), ("OUTBOX_TAIL", "off")],
    },
];

/// Runs the scenario; figures per run, and the push path's `mongod` CPU per event.
pub(crate) async fn run(
    ctx: &Ctx<'_>,
    seconds: u64,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for spec in RUNS {
        eprintln!("outbox-bench: latency {}", spec.name);
        let figures = one(ctx, spec, seconds, failures).await?;
        out.insert(spec.name.into(), figures);
    }
    let per_write = |name: &str| out[name]["mongod_cpu_us_per_write"].as_f64();
    let relay_costs: Vec<(&str, f64)> = [
        ("relay_mongod_cpu_us_per_event", "standalone_default_1000"),
        (
            "relay_tail_watch_off_mongod_cpu_us_per_event",
            "standalone_tail_watch_off_1000",
        ),
    ]
    .into_iter()
    .filter_map(|(figure, run)| {
        Some((
            figure,
            per_write(run)? - per_write("standalone_writes_only_1000")?,
        ))
    })
    .collect();
    for (figure, cost) in relay_costs {
        out.insert(figure.into(), json!(round(cost, 1)));
    }
    out.insert(
        "method".into(),
        json!(format!(
            "open-loop POSTs of ~1 KB documents for {seconds} s per run; latency = the receiver accepted the request carrying the event − the client got its 201 (wall clock, ms); default configuration unless the run says otherwise; relay_mongod_cpu_us_per_event = mongod CPU per write in the default configuration (the push path and the tail's change stream) − with neither (OUTBOX_PUSH=off, OUTBOX_TAIL=off), at 1,000/s: the difference of two noisy runs (relay-cost measures each part apart); relay_tail_watch_off_* = the same with OUTBOX_TAIL_WATCH=off"
        )),
    );
    Ok(out.into())
}

async fn one(
    ctx: &Ctx<'_>,
    spec: &Spec,
    seconds: u64,
    failures: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let database = format!("bench_latency_{}", spec.name);
    // The defaults: what a user gets with nothing set (the other scenarios switch the push
    // path and the tail off, and never fire the schedule).
    let mut env = ctx.env.clone();
    for key in [
        "OUTBOX_PUSH",
        "OUTBOX_TAIL",
        "OUTBOX_SCHEDULE",
        "OUTBOX_TIME_BUDGET_SECS",
    ] {
        env.remove(key);
    }
    env.insert("MONGODB_DATABASE".into(), database.clone());
    for (k, v) in spec.extra {
        env.insert((*k).into(), (*v).into());
    }
    ctx.receiver_call(reqwest::Method::DELETE, "/_receiver/events")
        .await?;
    let (handler, base) = match spec.front {
        Front::Standalone => procs::start_handler(ctx.bins, &env, ctx.http).await?,
        Front::Functions => procs::start_functions_handler(ctx.bins, &env, ctx.http).await?,
    };
    // Functions mode: the host fires the timer once a minute; its invocation is the tail.
    let timer = (spec.front == Front::Functions).then(|| {
        let http = ctx.http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            loop {
                let _ = http
                    .post(format!("{base}/OutboxTimer"))
                    .json(&timer_envelope())
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
    });
    let cpu = CpuMeter::start(vec![
        ("handler", handler.pid()),
        ("mongod", ctx.mongod.pid()),
        ("bench", std::process::id()),
    ]);
    let started = Instant::now();
    let written = open_loop(ctx.http, &base, spec, seconds).await;
    let publishing = !spec
        .extra
        .iter()
        .any(|(k, v)| *k == "OUTBOX_TAIL" && *v == "off");
    let accepted = if publishing {
        wait_for_all(ctx, &written.ok, Duration::from_secs(90)).await?
    } else {
        HashMap::new()
    };
    let cpu_seconds = cpu.read();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(t) = timer {
        t.abort();
    }
    handler.stop().await;
    ctx.drop_database(&database).await;

    let lat = written.latencies(&accepted);
    let lost = if publishing {
        written.ok.len() - lat.len()
    } else {
        0
    };
    if lost > 0 {
        failures.push(format!(
            "latency {}: {lost} of {} committed events never reached the topic",
            spec.name,
            written.ok.len()
        ));
    }
    if written.errors > 0 {
        failures.push(format!(
            "latency {}: {} writes failed, e.g. {:?}",
            spec.name, written.errors, written.samples
        ));
    }
    let writes = written.ok.len() as f64;
    let mongod = cpu_seconds.get("mongod").and_then(Value::as_f64);
    let handler_cpu = cpu_seconds.get("handler").and_then(Value::as_f64);
    Ok(json!({
        "rate_per_sec": spec.rate,
        "front": match spec.front { Front::Standalone => "standalone", Front::Functions => "functions (host-like harness)" },
        "settings": spec.extra.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "writes": written.ok.len(),
        "writes_refused_busy": written.refused_busy,
        "writes_refused_busy_by_second": written.refused_by_second,
        "accepted_share_pct": round(100.0 * writes / (u64::from(spec.rate) * seconds) as f64, 1),
        "write_errors": written.errors,
        "events_accepted": lat.len(),
        "lost": lost,
        "commit_to_accepted_ms": commit_to_accepted(&lat),
        "cpu_seconds": cpu_seconds,
        "mongod_cpu_us_per_write": mongod.map(|m| round(m * 1e6 / writes.max(1.0), 1)),
        "handler_cpu_us_per_write": handler_cpu.map(|h| round(h * 1e6 / writes.max(1.0), 1)),
        "seconds": round(elapsed, 1),
    }))
}

/// What an open-loop writer got back (the HTTP writes here, the change-stream scenario's
/// direct inserts).
#[derive(Default)]
pub(crate) struct Written {
    /// Id → when its write was acknowledged (wall clock, ms).
    pub(crate) ok: HashMap<String, u64>,
    /// Writes the handler turned away at once because it was at `MONGODB_MAX_CONCURRENT_WRITES`
    /// with a full queue: offered load beyond what the machine takes, answered as designed.
    pub(crate) refused_busy: usize,
    /// Refusals by the second of the run their write was due in: a cold start shows as the
    /// first seconds, a machine that cannot keep up as all of them.
    pub(crate) refused_by_second: std::collections::BTreeMap<u64, usize>,
    pub(crate) errors: usize,
    pub(crate) samples: Vec<String>,
}

impl Written {
    /// Acknowledged → accepted, in ms, sorted, for every write whose id was `accepted`.
    pub(crate) fn latencies(&self, accepted: &HashMap<String, u64>) -> Vec<u64> {
        let mut lat: Vec<u64> = self
            .ok
            .iter()
            .filter_map(|(id, at)| accepted.get(id).map(|got| got.saturating_sub(*at)))
            .collect();
        lat.sort_unstable();
        lat
    }
}

/// The `commit_to_accepted_ms` figure of sorted latencies: p50, p99 and max, or null.
pub(crate) fn commit_to_accepted(lat: &[u64]) -> Value {
    if lat.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": percentile(lat, 50.0),
        "p99": percentile(lat, 99.0),
        "max": lat.last(),
    })
}

/// What the handler's 503 says when it turns a write away before touching the database.
const BUSY: &str = "too many writes at once";

/// Sends `rate` writes a second for `seconds`, each at its own scheduled time.
async fn open_loop(http: &reqwest::Client, base: &str, spec: &Spec, seconds: u64) -> Written {
    let total = u64::from(spec.rate) * seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.rate));
    let result = Arc::new(Mutex::new(Written::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let at = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        let (http, base, result) = (http.clone(), base.to_owned(), Arc::clone(&result));
        let (front, tag, rate) = (spec.front, spec.name, spec.rate);
        tasks.spawn(async move {
            let body = document(tag, i as usize);
            let answer = match front {
                Front::Standalone => post_raw(&http, &base, body).await,
                Front::Functions => post_envelope(&http, &base, body).await,
            };
            let mut r = result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match answer {
                Ok(event_id) => {
                    r.ok.insert(event_id, now_ms());
                }
                Err(e) if format!("{e:#}").contains(BUSY) => {
                    r.refused_busy += 1;
                    *r.refused_by_second.entry(i / u64::from(rate)).or_default() += 1;
                }
                Err(e) => {
                    r.errors += 1;
                    if r.samples.len() < 3 {
                        r.samples.push(format!("{e:#}"));
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(result)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

async fn post_raw(http: &reqwest::Client, base: &str, body: String) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/api/documents"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    if status.as_u16() != 201 {
        let text = r.text().await.unwrap_or_default();
        anyhow::bail!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        );
    }
    let v: Value = r.json().await?;
    v["eventId"]
        .as_str()
        .map(str::to_owned)
        .context("no eventId in the answer")
}

/// `POST /WriteDocumentHttp` with the envelope the host sends for `POST /api/documents`.
async fn post_envelope(http: &reqwest::Client, base: &str, body: String) -> anyhow::Result<String> {
    let envelope = json!({
        "Data": { "req": {
            "Url": "https://contoso-outbox.azurewebsites.net/api/documents",
            "Method": "POST",
            "Query": {},
            "Headers": {
                "Content-Type": ["application/json"],
                "Content-Length": [body.len().to_string()],
            },
            "Params": {},
            "Body": body,
        } },
        "Metadata": { "sys": { "MethodName": "WriteDocumentHttp", "UtcNow": chrono::Utc::now().to_rfc3339(), "RandGuid": uuid::Uuid::new_v4().to_string() } },
    });
    let r = http
        .post(format!("{base}/WriteDocumentHttp"))
        .json(&envelope)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "host answer HTTP {}", r.status());
    let answer: Value = r.json().await?;
    let res = &answer["Outputs"]["res"];
    anyhow::ensure!(res["statusCode"] == 201, "function answered {res}");
    let inner: Value = serde_json::from_str(res["body"].as_str().unwrap_or("null"))?;
    inner["eventId"]
        .as_str()
        .map(str::to_owned)
        .context("no eventId in the answer")
}

fn timer_envelope() -> Value {
    json!({
        "Data": { "timer": { "Schedule": { "AdjustForDST": true }, "IsPastDue": false } },
        "Metadata": { "sys": { "MethodName": "OutboxTimer", "UtcNow": chrono::Utc::now().to_rfc3339(), "RandGuid": uuid::Uuid::new_v4().to_string() } },
    })
}

/// Waits until every written id was accepted (or `limit`), then maps each id to when the
/// receiver first accepted it: the receiver's ids come in arrival order, and its request
/// records say how many each accepted request carried and when.
async fn wait_for_all(
    ctx: &Ctx<'_>,
    written: &HashMap<String, u64>,
    limit: Duration,
) -> anyhow::Result<HashMap<String, u64>> {
    let deadline = Instant::now() + limit;
    loop {
        let ids = ctx
            .receiver_call(reqwest::Method::GET, "/_receiver/ids")
            .await?;
        let ids: Vec<String> = serde_json::from_value(ids).unwrap_or_default();
        let have = ids.iter().filter(|id| written.contains_key(*id)).count();
        if have >= written.len() || Instant::now() > deadline {
            let requests = ctx
                .receiver_call(reqwest::Method::GET, "/_receiver/requests")
                .await?;
            return Ok(first_acceptance(&ids, &requests));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each id's first acceptance time, from the ids in arrival order and the request records.
pub(crate) fn first_acceptance(ids: &[String], requests: &Value) -> HashMap<String, u64> {
    let mut accepted: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for r in requests.as_array().into_iter().flatten() {
        let outcome = r["outcome"].as_str().unwrap_or_default();
        if outcome == "accepted" || outcome == "accepted_then_dropped" {
            accepted.insert(
                r["seq"].as_u64().unwrap_or(0),
                (
                    r["decided_at_ms"].as_u64().unwrap_or(0),
                    usize::try_from(r["event_count"].as_u64().unwrap_or(0)).unwrap_or(0),
                ),
            );
        }
    }
    let mut out = HashMap::new();
    let mut next = ids.iter();
    for (at, count) in accepted.values() {
        for id in next.by_ref().take(*count) {
            out.entry(id.clone()).or_insert(*at);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_take_the_time_of_the_request_that_first_carried_them() {
        let ids: Vec<String> = ["a", "b", "c", "a"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let requests = json!([
            { "seq": 2, "outcome": "refused", "event_count": 5, "decided_at_ms": 15 },
            { "seq": 1, "outcome": "accepted", "event_count": 2, "decided_at_ms": 10 },
            { "seq": 3, "outcome": "accepted", "event_count": 2, "decided_at_ms": 20 },
        ]);
        let got = first_acceptance(&ids, &requests);
        assert_eq!(got["a"], 10);
        assert_eq!(got["b"], 10);
        assert_eq!(got["c"], 20);
    }
}
