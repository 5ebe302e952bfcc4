//! What every chaos scenario does: scale, settings, writes through the HTTP API with their
//! outcome, timer ticks, draining to completion, receiver marks and outbox snapshots.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use mongodb::bson::{Bson, doc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, WriteOutcome, WriteResult};
use crate::support::receiver::RunningReceiver;
use crate::support::{ClientRequest, Handler, TestDb, app_settings};

/// How much chaos: `CHAOS_SCALE=short` (default) or `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Short,
    Full,
}

impl Scale {
    pub fn get() -> Self {
        #[expect(
            clippy::disallowed_methods,
            reason = "the chaos suite reads its own scale variable, not a product setting"
        )]
        let raw = std::env::var("CHAOS_SCALE");
        match raw.as_deref() {
            Err(_) | Ok("" | "short") => Self::Short,
            Ok("full") => Self::Full,
            Ok(other) => panic!("CHAOS_SCALE must be short or full, got {other:?}"),
        }
    }

    pub fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Self::Short => short,
            Self::Full => full,
        }
    }

    pub fn name(self) -> &'static str {
        self.pick("short", "full")
    }
}

/// App settings for a chaos handler: short leases and timeouts (lease 2 s ≥ 2 × the 1 s publish
/// timeout), quick backoff, attempts that never run out during an outage; `extra` last.
pub fn chaos_settings(
    db: &TestDb,
    rx: &RunningReceiver,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut base: Vec<(&str, &str)> = vec![
        ("OUTBOX_LEASE_SECS", "2"),
        ("EVENTGRID_PUBLISH_TIMEOUT_MS", "1000"),
        ("OUTBOX_INITIAL_BACKOFF_MS", "50"),
        ("OUTBOX_MAX_BACKOFF_SECS", "1"),
        ("EVENTGRID_PUBLISH_RETRIES", "0"),
        ("OUTBOX_MAX_ATTEMPTS", "1000"),
        ("OUTBOX_BATCH_SIZE", "10"),
        ("OUTBOX_PUBLISH_CONCURRENCY", "2"),
        ("OUTBOX_TIME_BUDGET_SECS", "20"),
        ("MONGODB_WRITE_TIMEOUT_MS", "3000"),
    ];
    // The handlers' sessions carry this test's name, so that cleaning up can end them.
    let uri = db.uri_for_handler();
    base.push(("MONGODB_URI", &uri));
    base.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    base.extend_from_slice(extra);
    app_settings(db, rx, &base)
}

/// Ends the sessions this test's handlers left on the server (a SIGKILLed handler's open
/// transaction would make `dropDatabase` wait), then drops the database; see [`TestDb::drop`].
/// Behind cosmos-ru-proxy (`OUTBOX_TEST_COSMOS_SHARD_KEY`), first checks that RU's rules for
/// sharded collections were never broken.
pub async fn teardown(db: TestDb) {
    db.assert_cosmos_rules_kept();
    db.drop().await;
}

/// The receiver's request high-water mark: the `seq` of the last request it decided.
pub fn high_water(rx: &RunningReceiver) -> u64 {
    rx.handle().stats().requests
}

/// Ids of the outbox entries still pending.
pub async fn pending_ids(db: &TestDb) -> HashSet<String> {
    let mut cursor = db
        .outbox()
        .find(doc! { "_outbox.status": "pending" })
        .projection(doc! { "_id": 1 })
        .await
        .unwrap();
    let mut ids = HashSet::new();
    while let Some(d) = cursor.next().await {
        if let Some(Bson::Binary(b)) = d.unwrap().get("_id") {
            ids.insert(uuid::Uuid::from_slice(&b.bytes).unwrap().to_string());
        }
    }
    // `embedded`: the events pending inside documents.
    for element in db.embedded_pending().await {
        if let Some(Bson::Binary(b)) = element.get("id") {
            ids.insert(uuid::Uuid::from_slice(&b.bytes).unwrap().to_string());
        }
    }
    ids
}

/// The body of test document `n`; its `tenant` is the shard key when the suite runs on a
/// sharded collection (`OUTBOX_TEST_COSMOS_SHARD_KEY=tenant`).
fn body(doc_id: &str, n: usize) -> String {
    format!(
        r#"{{"_id":"{doc_id}","tenant":"t{}","n":{n},"pad":"{}"}}"#,
        n % 4,
        "x".repeat(64 + n % 128)
    )
}

/// Writes one document through `h`, alternately through the host's envelope and as a raw
/// forwarded request, and returns what the client learnt.
pub async fn write_one(h: &Handler, doc_id: &str, n: usize, timeout: Duration) -> WriteOutcome {
    let body = body(doc_id, n);
    let answer: Result<(u16, Value), reqwest::Error> = if n.is_multiple_of(2) {
        h.try_write(&ClientRequest::post_json(body), Some(timeout))
            .await
            .map(|r| (r.status, r.body))
    } else {
        async {
            let r = h
                .http()
                .post(h.url("/api/documents"))
                .header("content-type", "application/json")
                .header(
                    "X-Azure-Functions-InvocationId",
                    uuid::Uuid::new_v4().to_string(),
                )
                .timeout(timeout)
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
        }
        .await
    };
    let result = match answer {
        Ok((201, body)) => WriteResult::Created {
            event_id: body["eventId"]
                .as_str()
                .unwrap_or_else(|| panic!("a 201 carries the eventId: {body}"))
                .to_owned(),
        },
        Ok((status @ 400..=499, _)) => WriteResult::Refused { status },
        Ok((status, body)) => WriteResult::Unknown {
            what: format!("HTTP {status} {body}"),
        },
        Err(e) if e.is_connect() => WriteResult::NotSent,
        Err(e) => WriteResult::Unknown {
            what: format!("{e}"),
        },
    };
    WriteOutcome {
        doc_id: doc_id.to_owned(),
        result,
    }
}

/// Hands out document numbers to concurrent writers.
pub struct Writes {
    prefix: String,
    next: AtomicUsize,
}

impl Writes {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            next: AtomicUsize::new(0),
        }
    }

    fn take(&self) -> (String, usize) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (format!("{}-{n}", self.prefix), n)
    }

    /// Writes `count` documents through `h`, `concurrency` at a time.
    pub async fn batch(&self, h: &Handler, ledger: &Ledger, count: usize, concurrency: usize) {
        futures_util::stream::iter(0..count)
            .map(|_| async {
                let (id, n) = self.take();
                ledger.record(write_one(h, &id, n, Duration::from_secs(20)).await);
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    }

    /// Writes through the `handlers` (round robin), `streams` at a time, until `stop`; the
    /// writes in flight then are finished first.
    pub async fn until<const N: usize>(
        &self,
        handlers: [&Handler; N],
        ledger: &Ledger,
        streams: usize,
        gap: Duration,
        stop: &CancellationToken,
    ) {
        let handlers = &handlers;
        let stream = |k: usize| async move {
            let mut i = k;
            while !stop.is_cancelled() {
                let (id, n) = self.take();
                let h = handlers[i % handlers.len()];
                i += 1;
                // A write in flight when `stop` comes is finished, never abandoned: the
                // handler would go on with it, and it could commit after the ledger is read.
                let outcome = write_one(h, &id, n, Duration::from_secs(20)).await;
                let refused = matches!(outcome.result, WriteResult::NotSent);
                ledger.record(outcome);
                if refused {
                    // The process is gone; do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(gap).await;
            }
        };
        futures_util::future::join_all((0..streams).map(stream)).await;
    }
}

/// What a series of ticks saw.
#[derive(Debug, Default, Clone)]
pub struct Ticks {
    pub ticks: u64,
    /// Answered 200 (progress, or nothing to do).
    pub ok: u64,
    /// Answered 500 (the run could make no progress).
    pub failed: u64,
    /// No answer (the process killed, the connection reset).
    pub unanswered: u64,
    /// Sum of "N published" over the answered runs.
    pub published: u64,
}

impl Ticks {
    fn add(&mut self, r: &Result<crate::support::host::HostResponse, reqwest::Error>) {
        self.ticks += 1;
        match r {
            Ok(a) => {
                if a.status == 200 {
                    self.ok += 1;
                } else {
                    self.failed += 1;
                }
                self.published += a.logs().iter().filter_map(|l| published_in(l)).sum::<u64>();
            }
            Err(_) => self.unanswered += 1,
        }
    }
}

/// `N` from a run summary `outbox drain: N published, …`.
fn published_in(line: &str) -> Option<u64> {
    line.strip_prefix("outbox drain: ")?
        .split_once(' ')?
        .0
        .parse()
        .ok()
}

/// One timer invocation; `None` when it went unanswered.
pub async fn tick(h: &Handler, past_due: bool) -> (Ticks, bool) {
    let r = h.try_tick(past_due, Some(Duration::from_secs(90))).await;
    let mut t = Ticks::default();
    t.add(&r);
    (t, r.is_ok())
}

/// Ticks `h` one run after another (with `gap` between) until `stop`; `on_start` is called
/// before each run. A run in progress when `stop` comes is finished first.
pub async fn tick_until(
    h: &Handler,
    gap: Duration,
    stop: &CancellationToken,
    mut on_start: impl FnMut(),
) -> Ticks {
    let mut ticks = Ticks::default();
    while !stop.is_cancelled() {
        on_start();
        let r = h.try_tick(false, Some(Duration::from_secs(90))).await;
        let gone = r.is_err();
        ticks.add(&r);
        if gone && stop.is_cancelled() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            () = stop.cancelled() => {}
        }
    }
    ticks
}

/// Ticks the `handlers` (each round all at once) until no entry is pending; panics with the
/// handlers' output after `limit`.
pub async fn drain_to_completion(handlers: &[&Handler], db: &TestDb, limit: Duration) -> Ticks {
    let started = Instant::now();
    let mut ticks = Ticks::default();
    loop {
        let rounds = futures_util::future::join_all(handlers.iter().map(|h| tick(h, false))).await;
        for (t, _) in rounds {
            ticks.ticks += t.ticks;
            ticks.ok += t.ok;
            ticks.failed += t.failed;
            ticks.unanswered += t.unanswered;
            ticks.published += t.published;
        }
        let pending = db.count_entries_with("pending").await;
        if pending == 0 {
            return ticks;
        }
        assert!(
            started.elapsed() < limit,
            "{pending} entries still pending {} s after the faults ended ({ticks:?}); handler output:\n{}",
            limit.as_secs(),
            handlers
                .iter()
                .map(|h| tail(&h.output(), 60))
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A random duration in `[lo, hi)` milliseconds.
pub fn millis(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rand::random_range(lo..hi))
}
