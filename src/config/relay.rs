//! How the relay drains the outbox: the relay's `OUTBOX_*` settings.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use super::{ConfigError, Env, Limit, MAX_BATCH_SIZE};

const DAY_SECS: u64 = 24 * 3600;

/// `OUTBOX_LEASE_SECS`: a claim longer than a day would hide its entries from every relay for
/// that long if this one died.
const MAX_LEASE: Limit = Limit {
    max: Duration::from_secs(DAY_SECS),
    said: "86400 seconds (a day)",
};
/// `OUTBOX_TIME_BUDGET_SECS`.
const MAX_TIME_BUDGET: Limit = Limit {
    max: Duration::from_secs(DAY_SECS),
    said: "86400 seconds (a day)",
};
/// `OUTBOX_INITIAL_BACKOFF_MS`.
const MAX_INITIAL_BACKOFF: Limit = Limit {
    max: Duration::from_secs(DAY_SECS),
    said: "86400000 milliseconds (a day)",
};
/// `OUTBOX_MAX_BACKOFF_SECS`.
const MAX_BACKOFF: Limit = Limit {
    max: Duration::from_secs(7 * DAY_SECS),
    said: "604800 seconds (a week)",
};

/// `OUTBOX_LINGER_MS`: a push (or the change-stream reader, after a batch's first change) waits
/// at most this long for more events to share its request.
const MAX_LINGER: Limit = Limit {
    max: Duration::from_secs(1),
    said: "1000 milliseconds",
};
/// `OUTBOX_WRITE_WAIT_MS`: a write waits at most this long for its own publish.
const MAX_WRITE_WAIT: Limit = Limit {
    max: Duration::from_secs(10),
    said: "10000 milliseconds",
};
/// `OUTBOX_POLL_MS`: the tail's longest wait between two looks at the outbox.
const MAX_POLL: Limit = Limit {
    max: Duration::from_secs(3600),
    said: "3600000 milliseconds (an hour)",
};

/// How the relay drains the outbox.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Entries claimed at a time (at most [`MAX_BATCH_SIZE`]).
    pub batch_size: NonZeroU32,
    /// Claimed batches published at once by one run.
    pub publish_concurrency: NonZeroUsize,
    /// How long a claim lasts before other runs may take the entries.
    pub lease: Duration,
    /// Failed publishes before an entry is dead-lettered.
    pub max_attempts: NonZeroU32,
    /// Time one drain may take.
    pub time_budget: Duration,
    /// First persisted retry delay.
    pub initial_backoff: Duration,
    /// Longest persisted retry delay.
    pub max_backoff: Duration,
    /// `OUTBOX_PUSH`: a committed write hands its event to this process's publisher at once,
    /// its entry held for it (one lease) so no other relay takes it meanwhile.
    pub push: bool,
    /// How long the push path waits for more events to share a request.
    pub linger: Duration,
    /// `OUTBOX_WRITE_WAIT_MS`: how long a write waits for its own event's publish before it
    /// answers (zero: it answers at once).
    pub write_wait: Duration,
    /// `OUTBOX_TAIL`: relay continuously (standalone), or for the whole budget of each timer
    /// invocation (Functions), instead of one drain per schedule tick.
    pub tail: bool,
    /// `OUTBOX_TAIL_WATCH`: a change stream on the outbox wakes the tail for each new entry
    /// nobody holds (where the server has one); off, the tail looks every `poll` only. Off
    /// spares `mongod` the stream's cost on every write (it wakes for each one, also for the
    /// entries a write holds for its own push), at the price of finding entries written
    /// without the push path up to `poll` later.
    pub watch: bool,
    /// The tail's longest wait between two drains when nothing woke it sooner.
    pub poll: Duration,
}

impl RelaySettings {
    /// Reads the `OUTBOX_*` settings of the relay; `publish_timeout` is used to check that a
    /// claim outlives the request that publishes it.
    ///
    /// # Errors
    /// A bad number, a batch over 5,000, a duration over its limit (lease and budget a day,
    /// initial backoff a day, maximum backoff a week), a lease too short for a publish, backoff
    /// bounds the wrong way round.
    pub fn from_env(env: &Env, publish_timeout: Duration) -> Result<Self, ConfigError> {
        let batch_size: NonZeroU32 = env.parse_or(
            "OUTBOX_BATCH_SIZE",
            nz(1000),
            "a whole number from 1 to 5000",
        )?;
        if batch_size.get() > MAX_BATCH_SIZE {
            return Err(ConfigError::new(
                "OUTBOX_BATCH_SIZE",
                format!(
                    "must be at most {MAX_BATCH_SIZE} (Event Grid's limit per request), got {batch_size}"
                ),
            ));
        }
        let publish_concurrency: NonZeroUsize = env.parse_or(
            "OUTBOX_PUBLISH_CONCURRENCY",
            NonZeroUsize::MIN.saturating_add(3),
            "a whole number from 1 to 64",
        )?;
        if publish_concurrency.get() > 64 {
            return Err(ConfigError::new(
                "OUTBOX_PUBLISH_CONCURRENCY",
                "must be at most 64",
            ));
        }
        let lease = env.secs_within("OUTBOX_LEASE_SECS", 60, MAX_LEASE)?;
        if lease < publish_timeout * 2 {
            return Err(ConfigError::new(
                "OUTBOX_LEASE_SECS",
                format!(
                    "must be at least twice EVENTGRID_PUBLISH_TIMEOUT_MS ({} ms), so that a claim outlives the request that publishes it",
                    publish_timeout.as_millis()
                ),
            ));
        }
        let max_attempts = env.parse_or("OUTBOX_MAX_ATTEMPTS", nz(10), "a whole number from 1")?;
        let time_budget = env.secs_within("OUTBOX_TIME_BUDGET_SECS", 120, MAX_TIME_BUDGET)?;
        let initial_backoff =
            env.millis_within("OUTBOX_INITIAL_BACKOFF_MS", 1000, MAX_INITIAL_BACKOFF)?;
        let max_backoff = env.secs_within("OUTBOX_MAX_BACKOFF_SECS", 300, MAX_BACKOFF)?;
        if initial_backoff > max_backoff {
            return Err(ConfigError::new(
                "OUTBOX_INITIAL_BACKOFF_MS",
                "must not be longer than OUTBOX_MAX_BACKOFF_SECS",
            ));
        }
        check_budget(time_budget, publish_timeout, lease)?;
        let push = env.switch_or("OUTBOX_PUSH", true)?;
        let linger = MAX_LINGER.check(
            "OUTBOX_LINGER_MS",
            Duration::from_millis(env.parse_or(
                "OUTBOX_LINGER_MS",
                5,
                "a whole number of milliseconds",
            )?),
        )?;
        let write_wait = MAX_WRITE_WAIT.check(
            "OUTBOX_WRITE_WAIT_MS",
            Duration::from_millis(env.parse_or(
                "OUTBOX_WRITE_WAIT_MS",
                0,
                "a whole number of milliseconds",
            )?),
        )?;
        if !push && !write_wait.is_zero() {
            return Err(ConfigError::new(
                "OUTBOX_WRITE_WAIT_MS",
                "needs OUTBOX_PUSH=on: without the push path a write has no publish of its own to wait for",
            ));
        }
        let tail = env.switch_or("OUTBOX_TAIL", true)?;
        let watch = env.switch_or("OUTBOX_TAIL_WATCH", true)?;
        let poll = env.millis_within("OUTBOX_POLL_MS", 1000, MAX_POLL)?;
        Ok(Self {
            batch_size,
            publish_concurrency,
            lease,
            max_attempts,
            time_budget,
            initial_backoff,
            max_backoff,
            push,
            linger,
            write_wait,
            tail,
            watch,
            poll,
        })
    }

    /// Time a drain must have left to claim a batch: one publish request, plus the margin kept
    /// before a claim's lease ends.
    #[must_use]
    pub fn time_to_claim(&self, publish_timeout: Duration) -> Duration {
        time_to_claim(publish_timeout, self.lease)
    }
}

/// Share of a lease kept free at its end: no request may still be running then, so that a
/// slow response never overlaps another relay's claim of the same entries.
pub const LEASE_MARGIN_DIVISOR: u32 = 10;

/// One publish request plus the margin kept before a lease ends: what a drain needs left to
/// claim a batch (used by the relay, and by the start-up check of the budget).
fn time_to_claim(publish_timeout: Duration, lease: Duration) -> Duration {
    publish_timeout.saturating_add(lease / LEASE_MARGIN_DIVISOR)
}

/// A budget shorter than one publish (plus the lease margin) lets a run claim nothing at all:
/// the outbox would silently never drain. Refused at start-up, naming both settings.
fn check_budget(
    budget: Duration,
    publish_timeout: Duration,
    lease: Duration,
) -> Result<(), ConfigError> {
    if budget <= time_to_claim(publish_timeout, lease) {
        return Err(ConfigError::new(
            "OUTBOX_TIME_BUDGET_SECS",
            format!(
                "must be longer than EVENTGRID_PUBLISH_TIMEOUT_MS ({} ms) plus a tenth of OUTBOX_LEASE_SECS ({} ms), or a run has no time to publish anything: raise it or lower EVENTGRID_PUBLISH_TIMEOUT_MS",
                publish_timeout.as_millis(),
                (lease / LEASE_MARGIN_DIVISOR).as_millis()
            ),
        ));
    }
    Ok(())
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}
