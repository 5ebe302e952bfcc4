//! What a run did: the report callers get, its one-line summary, and the one log line per run.

use std::ops::Range;

use serde::Serialize;
use tracing::Level;

/// Why a run stopped before the outbox was empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum StopReason {
    /// The time budget was spent.
    Budget,
    /// Shutdown began.
    Shutdown,
    /// Event Grid kept failing transiently (down, throttling).
    TopicUnavailable(String),
    /// Event Grid refused the request as misconfigured (401, 403, 404, 415).
    Misconfigured(String),
    /// The database failed.
    Database(String),
    /// The change stream's saved position is no longer in the server's history, or the stream
    /// was invalidated: the reader stopped rather than skip changes (the detail names the gap
    /// and the fix).
    PositionLost(String),
    /// The server refused the change stream as opened (another target's pipeline, e.g. an
    /// ordinary stream on Cosmos DB for MongoDB RU): the reader stopped; the detail names the
    /// setting to change.
    StreamRefused(String),
    /// A batch task panicked (a bug). Its entries stay claimed until their lease runs out, then
    /// they are published again.
    Panicked(String),
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayReport {
    /// Entries claimed.
    pub claimed: u64,
    /// Entries published (Event Grid answered 200 and the entry was marked).
    pub published: u64,
    /// Entries rescheduled after a transient failure.
    pub rescheduled: u64,
    /// Entries dead-lettered.
    pub dead_lettered: u64,
    /// Entries given back untouched (run stopped).
    pub released: u64,
    /// Entries held back behind an older entry of their subject (`OUTBOX_ORDERING=subject`).
    pub deferred: u64,
    /// Publish requests sent.
    pub requests: u64,
    /// Published entries past the retention and expired idempotency records deleted by this
    /// run, where the server has no TTL index for them.
    pub purged: u64,
    /// Entries pending after the run (due or not), if the database could tell.
    pub remaining: Option<u64>,
    /// How long the run took.
    pub duration_ms: u64,
    /// The longest time, among the entries this run published, from the write of the change
    /// to its entry being marked published: the commit-to-publish lag to alert on. `None` when
    /// nothing was published.
    pub max_lag_ms: Option<u64>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
}

impl RelayReport {
    /// Did the run achieve anything, or was there nothing to do? `false` means the run failed:
    /// the database or the topic was unreachable or misconfigured, a batch task panicked, or
    /// the budget ran out before the run could claim anything.
    #[must_use]
    pub fn made_progress(&self) -> bool {
        match &self.stopped {
            Some(
                StopReason::TopicUnavailable(_)
                | StopReason::Misconfigured(_)
                | StopReason::Database(_)
                | StopReason::PositionLost(_)
                | StopReason::StreamRefused(_)
                | StopReason::Panicked(_),
            ) => self.published + self.dead_lettered > 0,
            // Out of time before claiming anything: whatever was due is still waiting, and a
            // timer run that reported success would hide an outbox that never drains.
            Some(StopReason::Budget) => self.claimed > 0,
            _ => true,
        }
    }

    /// Did the run find nothing to do: nothing claimed, deferred or purged, and no reason to
    /// stop other than that nothing was due?
    #[must_use]
    pub fn was_idle(&self) -> bool {
        self.claimed == 0 && self.deferred == 0 && self.purged == 0 && self.stopped.is_none()
    }

    /// The level of the run's summary: `error` when it failed (the host drops a failed run's
    /// `Logs`, so this line is where the reason survives), `debug` when it found nothing to
    /// do (a timer every few seconds would otherwise fill the log with empty runs), else
    /// `info`.
    #[must_use]
    pub fn log_level(&self) -> Level {
        if !self.made_progress() {
            Level::ERROR
        } else if self.was_idle() {
            Level::DEBUG
        } else {
            Level::INFO
        }
    }

    /// Logs the run's summary, with the counts as fields, at [`Self::log_level`].
    pub fn log(&self) {
        let summary = self.summary();
        // `tracing` needs the level at compile time, hence one call per level.
        match self.log_level() {
            Level::ERROR => tracing::error!(
                claimed = self.claimed,
                published = self.published,
                rescheduled = self.rescheduled,
                dead_lettered = self.dead_lettered,
                released = self.released,
                deferred = self.deferred,
                remaining = self.remaining,
                duration_ms = self.duration_ms,
                max_lag_ms = self.max_lag_ms,
                purged = self.purged,
                "{summary}"
            ),
            Level::DEBUG => tracing::debug!(
                claimed = self.claimed,
                published = self.published,
                rescheduled = self.rescheduled,
                dead_lettered = self.dead_lettered,
                released = self.released,
                deferred = self.deferred,
                remaining = self.remaining,
                duration_ms = self.duration_ms,
                max_lag_ms = self.max_lag_ms,
                purged = self.purged,
                "{summary}"
            ),
            _ => tracing::info!(
                claimed = self.claimed,
                published = self.published,
                rescheduled = self.rescheduled,
                dead_lettered = self.dead_lettered,
                released = self.released,
                deferred = self.deferred,
                remaining = self.remaining,
                duration_ms = self.duration_ms,
                max_lag_ms = self.max_lag_ms,
                purged = self.purged,
                "{summary}"
            ),
        }
    }

    /// One-line summary for logs.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "outbox drain: {} published, {} rescheduled, {} dead-lettered, {} released, {} remaining, {} ms",
            self.published,
            self.rescheduled,
            self.dead_lettered,
            self.released,
            self.remaining
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            self.duration_ms,
        );
        if self.purged > 0 {
            s.push_str(&format!("; {} expired removed", self.purged));
        }
        if let Some(lag) = self.max_lag_ms {
            s.push_str(&format!("; longest commit-to-publish lag {lag} ms"));
        }
        if self.deferred > 0 {
            s.push_str(&format!(
                "; {} deferred behind older entries of their subject",
                self.deferred
            ));
        }
        if let Some(reason) = &self.stopped {
            s.push_str("; stopped: ");
            s.push_str(&reason.describe());
        }
        s
    }

    /// Adds what one batch did.
    /// Adds a later run's counts (the tail's many drains as one report). The stop reason is the
    /// later run's: whether the tail ended healthy is what its last drain found.
    pub(super) fn merge(&mut self, later: &Self) {
        self.claimed += later.claimed;
        self.published += later.published;
        self.rescheduled += later.rescheduled;
        self.dead_lettered += later.dead_lettered;
        self.released += later.released;
        self.deferred += later.deferred;
        self.requests += later.requests;
        self.purged += later.purged;
        self.remaining = later.remaining.or(self.remaining);
        self.max_lag_ms = self.max_lag_ms.max(later.max_lag_ms);
        self.stopped.clone_from(&later.stopped);
    }

    pub(super) fn add(&mut self, b: &BatchReport) {
        self.published += b.published;
        self.rescheduled += b.rescheduled;
        self.dead_lettered += b.dead_lettered;
        self.released += b.released;
        self.requests += b.requests;
        self.max_lag_ms = self.max_lag_ms.max(b.max_lag_ms);
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StopReason {
    /// The reason as the end of a summary line.
    fn describe(&self) -> String {
        match self {
            Self::Budget => "time budget spent".to_owned(),
            Self::Shutdown => "shutting down".to_owned(),
            Self::TopicUnavailable(d) => format!("Event Grid unavailable: {d}"),
            Self::Misconfigured(d) => format!("Event Grid refused the configuration: {d}"),
            Self::Database(d) => format!("database error: {d}"),
            Self::PositionLost(d) => format!("change stream position lost: {d}"),
            Self::StreamRefused(d) => format!("change stream refused: {d}"),
            Self::Panicked(d) => format!("a batch task panicked: {d}"),
        }
    }
}

/// What one claimed batch did; added to the run's [`RelayReport`] when its task ends.
#[derive(Debug, Default)]
pub(super) struct BatchReport {
    /// Ranges Event Grid accepted, marked published together when the batch ends.
    pub(super) accepted: Vec<Range<usize>>,
    pub(super) published: u64,
    /// Push path: accepted by Event Grid and handed to the marking task (see
    /// [`super::marks`]), which marks them published and counts them.
    pub(super) handed_to_marks: u64,
    pub(super) rescheduled: u64,
    pub(super) dead_lettered: u64,
    pub(super) released: u64,
    pub(super) requests: u64,
    /// See [`RelayReport::max_lag_ms`].
    pub(super) max_lag_ms: Option<u64>,
    pub(super) stop: Option<StopReason>,
}

impl BatchReport {
    /// Whether Event Grid accepted all `entries` of the batch, and they were marked published
    /// or handed to be.
    pub(super) fn all_published(&self, entries: usize) -> bool {
        self.published + self.handed_to_marks == entries as u64
    }

    /// Counts the batch's outcomes in the metrics, as published by `path`.
    pub(super) fn record_metrics(&self, path: crate::metrics::Path) {
        crate::metrics::global().outcomes(
            path,
            self.published,
            self.rescheduled,
            self.dead_lettered,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_could_not_reach_the_topic_made_no_progress() {
        let mut r = RelayReport {
            claimed: 10,
            rescheduled: 10,
            stopped: Some(StopReason::TopicUnavailable("HTTP 503".into())),
            ..RelayReport::default()
        };
        assert!(!r.made_progress());
        r.published = 1;
        assert!(r.made_progress());
        let idle = RelayReport::default();
        assert!(idle.made_progress());
        let budget = RelayReport {
            claimed: 5,
            stopped: Some(StopReason::Budget),
            ..RelayReport::default()
        };
        assert!(budget.made_progress());
        let no_time = RelayReport {
            stopped: Some(StopReason::Budget),
            ..RelayReport::default()
        };
        assert!(
            !no_time.made_progress(),
            "out of time before claiming anything is a failed run"
        );
        let db = RelayReport {
            stopped: Some(StopReason::Database("down".into())),
            ..RelayReport::default()
        };
        assert!(!db.made_progress());
        let panicked = RelayReport {
            stopped: Some(StopReason::Panicked("boom".into())),
            ..RelayReport::default()
        };
        assert!(!panicked.made_progress());
    }

    #[test]
    fn summaries_name_the_counts_and_the_reason() {
        let r = RelayReport {
            published: 12,
            remaining: Some(0),
            duration_ms: 418,
            ..RelayReport::default()
        };
        assert_eq!(
            r.summary(),
            "outbox drain: 12 published, 0 rescheduled, 0 dead-lettered, 0 released, 0 remaining, 418 ms"
        );
        let r = RelayReport {
            stopped: Some(StopReason::Misconfigured("HTTP 401".into())),
            ..RelayReport::default()
        };
        assert!(
            r.summary().ends_with("refused the configuration: HTTP 401"),
            "{}",
            r.summary()
        );
        let r = RelayReport {
            stopped: Some(StopReason::Panicked("boom".into())),
            ..RelayReport::default()
        };
        assert!(
            r.summary()
                .ends_with("; stopped: a batch task panicked: boom"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn an_idle_run_logs_at_debug_a_busy_one_at_info_a_failed_one_at_error() {
        let idle = RelayReport {
            remaining: Some(0),
            duration_ms: 3,
            ..RelayReport::default()
        };
        assert_eq!(idle.log_level(), Level::DEBUG);
        for busy in [
            RelayReport {
                claimed: 1,
                published: 1,
                ..RelayReport::default()
            },
            RelayReport {
                purged: 5,
                ..RelayReport::default()
            },
            RelayReport {
                deferred: 2,
                ..RelayReport::default()
            },
            RelayReport {
                claimed: 1,
                stopped: Some(StopReason::Budget),
                ..RelayReport::default()
            },
            RelayReport {
                stopped: Some(StopReason::Shutdown),
                ..RelayReport::default()
            },
        ] {
            assert_eq!(busy.log_level(), Level::INFO, "{busy:?}");
        }
        for failed in [
            StopReason::Database("down".into()),
            StopReason::TopicUnavailable("HTTP 503".into()),
            StopReason::Misconfigured("HTTP 401".into()),
            StopReason::Panicked("boom".into()),
        ] {
            let r = RelayReport {
                stopped: Some(failed),
                ..RelayReport::default()
            };
            assert_eq!(r.log_level(), Level::ERROR, "{r:?}");
        }
    }

    #[test]
    fn stop_reasons_keep_their_serialized_names() {
        let names: Vec<_> = [
            StopReason::Budget,
            StopReason::Shutdown,
            StopReason::TopicUnavailable("t".into()),
            StopReason::Misconfigured("m".into()),
            StopReason::Database("d".into()),
            StopReason::Panicked("p".into()),
        ]
        .iter()
        .map(|r| serde_json::to_value(r).unwrap()["reason"].clone())
        .collect();
        assert_eq!(
            names,
            [
                "budget",
                "shutdown",
                "topic_unavailable",
                "misconfigured",
                "database",
                "panicked"
            ]
        );
    }
}
