//! Time arithmetic of the relay, checked: a duration from settings or from a server's
//! `Retry-After` can be anything, and adding it must never panic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::config::RelaySettings;
use crate::publisher::backoff::persisted_delay;

/// When the next run should claim an entry that failed `attempts` times, given `now`.
#[must_use]
pub fn next_attempt_at(
    settings: &RelaySettings,
    attempts: u32,
    now: DateTime<Utc>,
    random: f64,
    retry_after: Option<Duration>,
) -> DateTime<Utc> {
    let delay = persisted_delay(
        attempts,
        settings.initial_backoff,
        settings.max_backoff,
        random,
        retry_after,
    );
    saturating_add(now, delay)
}

/// `at + d`, or the latest time there is when that is out of range.
pub(super) fn saturating_add(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `start + d`, or `None` when that is too far to represent.
pub(super) fn instant_after(start: Instant, d: Duration) -> Option<Instant> {
    start.checked_add(d)
}

/// Does something that starts at `start` and takes `d` end by `deadline`?
pub(super) fn ends_by(start: Instant, d: Duration, deadline: Instant) -> bool {
    instant_after(start, d).is_some_and(|end| end <= deadline)
}

/// A duration in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A deadline that never comes (about thirty years away).
pub(super) fn far_future() -> Instant {
    let now = Instant::now();
    instant_after(now, Duration::from_secs(30 * 365 * 86_400)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroUsize};

    use super::*;

    fn settings(max_backoff: Duration) -> RelaySettings {
        RelaySettings {
            batch_size: NonZeroU32::MIN,
            publish_concurrency: NonZeroUsize::MIN,
            lease: Duration::from_secs(60),
            max_attempts: NonZeroU32::MIN,
            time_budget: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(1),
            max_backoff,
            push: false,
            linger: Duration::from_millis(5),
            write_wait: Duration::ZERO,
            tail: false,
            watch: true,
            poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(saturating_add(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        // Representable as a chrono duration, but past the last representable date.
        let ten_million_years = Duration::from_secs(10_000_000 * 366 * 86_400);
        assert_eq!(
            saturating_add(now, ten_million_years),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            saturating_add(now, Duration::from_secs(5)),
            now + chrono::Duration::seconds(5)
        );
        let s = settings(Duration::MAX);
        assert_eq!(
            next_attempt_at(&s, 64, now, 1.0, Some(Duration::MAX)),
            DateTime::<Utc>::MAX_UTC
        );
        let start = Instant::now();
        assert!(instant_after(start, Duration::MAX).is_none());
        assert!(!ends_by(start, Duration::MAX, start));
        assert!(ends_by(
            start,
            Duration::from_secs(1),
            start + Duration::from_secs(1)
        ));
    }
}
