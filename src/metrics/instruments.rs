//! The instruments, and the one handle that records them.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// The instrumentation scope's name (`otel_scope_name` in the Prometheus text).
pub(super) const SCOPE: &str = "outbox-relay";

/// Bucket bounds, in seconds, of the duration histograms: from a fast publish (5 ms) to an
/// outbox an hour behind. The SDK's defaults (0–10,000) suit milliseconds, not seconds.
const SECONDS_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
    3600.0,
];

/// Which path published (or failed to publish) an event: the share of each tells whether the
/// push path carries the load or the sweeper is catching up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// This process's writes handed the event over right after their commit.
    Push,
    /// A drain claimed it (the schedule, the tail, a timer invocation).
    Sweep,
    /// The change-stream source read it from the collection (`OUTBOX_SOURCE=change-stream`).
    ChangeStream,
}

impl Path {
    fn attribute(self) -> [KeyValue; 1] {
        let value = match self {
            Self::Push => "push",
            Self::Sweep => "sweep",
            Self::ChangeStream => "change_stream",
        };
        [KeyValue::new("outbox.path", value)]
    }
}

/// What the database says is waiting, as the backlog sampler reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Entries not yet published, due or not.
    pub pending: u64,
    /// Pending entries due now.
    pub due: u64,
    /// Dead-lettered entries.
    pub dead: u64,
    /// Age of the oldest pending entry; `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// Every instrument of the product. Recording is cheap and never fails; without an installed
/// meter provider it does nothing.
#[derive(Debug)]
pub struct Metrics {
    backlog: Gauge<u64>,
    backlog_due: Gauge<u64>,
    oldest_pending_age: Gauge<f64>,
    dead_letters: Gauge<u64>,
    published: Counter<u64>,
    rescheduled: Counter<u64>,
    dead_lettered: Counter<u64>,
    eventgrid_requests: Counter<u64>,
    eventgrid_duration: Histogram<f64>,
    publish_lag: Histogram<f64>,
    db_throttled: Counter<u64>,
    writes_refused_busy: Counter<u64>,
    claim_conflicts: Counter<u64>,
    change_stream_lag: Histogram<f64>,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process's instruments, made on first use from the global meter provider: the exporters
/// install it before the handler starts work, so that nothing records into a no-op.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(|| Metrics::new(&opentelemetry::global::meter(SCOPE)))
}

impl Metrics {
    /// The instruments, made from `meter`.
    #[must_use]
    pub fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let count = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let level = |name: &'static str, description: &'static str| {
            meter
                .u64_gauge(name)
                .with_unit("{entry}")
                .with_description(description)
                .build()
        };
        Self {
            backlog: level(
                "outbox.backlog",
                "Outbox entries not yet published, due or not",
            ),
            backlog_due: level("outbox.backlog.due", "Pending outbox entries due now"),
            oldest_pending_age: meter
                .f64_gauge("outbox.oldest_pending.age")
                .with_unit("s")
                .with_description("Age of the oldest pending outbox entry (0 when none)")
                .build(),
            dead_letters: level("outbox.dead_letters", "Dead-lettered outbox entries"),
            published: count(
                "outbox.events.published",
                "{event}",
                "Events Event Grid accepted and the outbox marked published, by path",
            ),
            rescheduled: count(
                "outbox.events.rescheduled",
                "{event}",
                "Events rescheduled with backoff after a transient failure, by path",
            ),
            dead_lettered: count(
                "outbox.events.dead_lettered",
                "{event}",
                "Events dead-lettered (rejected, too large, out of attempts), by path",
            ),
            eventgrid_requests: count(
                "outbox.eventgrid.requests",
                "{request}",
                "Publish requests sent to Event Grid, by status class (none: no answer)",
            ),
            eventgrid_duration: seconds(
                "outbox.eventgrid.request.duration",
                "Duration of a publish request to Event Grid, by status class",
            ),
            publish_lag: seconds(
                "outbox.publish.lag",
                "Time from a change's commit to its event being marked published",
            ),
            db_throttled: count(
                "outbox.db.throttled",
                "{error}",
                "Database requests throttled (Cosmos DB error 16500)",
            ),
            writes_refused_busy: count(
                "outbox.writes.refused_busy",
                "{write}",
                "Writes answered 503 before reaching the database: MONGODB_MAX_CONCURRENT_WRITES were running and as many as may were waiting, or the write's budget ended while it waited",
            ),
            claim_conflicts: count(
                "outbox.claim.conflicts",
                "{entry}",
                "Due entries another relay claimed first",
            ),
            change_stream_lag: seconds(
                "outbox.change_stream.lag",
                "Time from a change's commit to the change stream delivering it",
            ),
        }
    }

    /// Records what the database says is waiting.
    pub fn backlog(&self, b: &Backlog) {
        self.backlog.record(b.pending, &[]);
        self.backlog_due.record(b.due, &[]);
        self.dead_letters.record(b.dead, &[]);
        let age = b.oldest_pending_age.unwrap_or_default();
        self.oldest_pending_age.record(age.as_secs_f64(), &[]);
    }

    /// Records the outcomes of one published batch on `path`.
    pub fn outcomes(&self, path: Path, published: u64, rescheduled: u64, dead_lettered: u64) {
        let at = path.attribute();
        for (counter, n) in [
            (&self.published, published),
            (&self.rescheduled, rescheduled),
            (&self.dead_lettered, dead_lettered),
        ] {
            if n > 0 {
                counter.add(n, &at);
            }
        }
    }

    /// Records one publish request: its HTTP status (`None`: no answer — timeout, reset,
    /// refused connection) and how long it took.
    pub fn eventgrid_request(&self, status: Option<u16>, took: Duration) {
        let class = match status {
            Some(100..=199) => "1xx",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "none",
        };
        let at = [KeyValue::new("eventgrid.status_class", class)];
        self.eventgrid_requests.add(1, &at);
        self.eventgrid_duration.record(took.as_secs_f64(), &at);
    }

    /// Records the commit → publish lag of events just marked published.
    pub fn publish_lags(&self, lags: impl IntoIterator<Item = Duration>) {
        for lag in lags {
            self.publish_lag.record(lag.as_secs_f64(), &[]);
        }
    }

    /// Counts a database request the server throttled (16500).
    pub fn db_throttled(&self) {
        self.db_throttled.add(1, &[]);
    }

    /// Counts a write turned away before reaching the database (see `documents/admission.rs`).
    pub fn write_refused_busy(&self) {
        self.writes_refused_busy.add(1, &[]);
    }

    /// Counts due entries a claim read as candidates but found taken by another claim
    /// ([`Claim::contended`](crate::outbox::store::Claim::contended)).
    pub fn claim_conflicts(&self, entries: usize) {
        if entries > 0 {
            self.claim_conflicts.add(entries as u64, &[]);
        }
    }

    /// The hook for a change-stream event source: records how long after its commit a change
    /// arrived (its cluster time against now).
    pub fn change_stream_lag(&self, lag: Duration) {
        self.change_stream_lag.record(lag.as_secs_f64(), &[]);
    }
}
