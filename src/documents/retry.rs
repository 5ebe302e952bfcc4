//! The retry policy of a write: attempts end at the write's deadline
//! (`MONGODB_WRITE_TIMEOUT_MS` from the request's start), and a throttled attempt (Cosmos DB's
//! 16500) is run again after the server's `RetryAfterMs` — or, when the error carries no hint,
//! after a short backoff of our own — while the deadline allows. Every other failure ends the
//! write: transient ones were already rerun by the driver inside the attempt.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::db::DbError;
use crate::outbox::write::WriteFailure;
use crate::telemetry::chain;

/// Why the attempts ended without a committed write.
#[derive(Debug)]
pub(super) enum GaveUp {
    /// The deadline passed during an attempt; its outcome is unknown.
    TimedOut,
    /// The last attempt failed and is not to be retried.
    Failed(WriteFailure),
}

/// Runs `attempt` until it commits, fails for good, or `deadline` passes.
///
/// # Errors
/// See [`GaveUp`].
pub(super) async fn until_deadline<T, F, Fut>(
    deadline: Instant,
    mut attempt: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WriteFailure>>,
{
    let mut unhinted = 0_u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let failure = match tokio::time::timeout(remaining, attempt()).await {
            Err(_elapsed) => return Err(GaveUp::TimedOut),
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(failure)) => failure,
        };
        match failure {
            // Cosmos DB throttling: wait as told while the budget lasts, then rerun.
            WriteFailure::Db(DbError::Throttled {
                retry_after: Some(wait),
                ref source,
            }) if Instant::now() + wait < deadline => {
                tracing::warn!(
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %chain(source),
                    "The database throttled a write; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            // Throttled without a hint: a short backoff of our own, doubling, with jitter.
            WriteFailure::Db(DbError::Throttled {
                retry_after: None,
                ref source,
            }) if Instant::now() + unhinted_backoff(unhinted, 1.0) < deadline => {
                let wait = unhinted_backoff(unhinted, rand::random::<f64>());
                unhinted = unhinted.saturating_add(1);
                tracing::warn!(
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %chain(source),
                    "The database throttled a write without a RetryAfterMs hint; retrying after a short backoff"
                );
                tokio::time::sleep(wait).await;
            }
            other => return Err(GaveUp::Failed(other)),
        }
    }
}

/// The wait before rerunning the `n`-th (from 0) throttled attempt that carried no hint:
/// 10 ms doubling up to 500 ms, the upper half of it chosen by `jitter` (0–1) so that writers
/// throttled together do not come back together.
fn unhinted_backoff(n: u32, jitter: f64) -> Duration {
    let ceiling = Duration::from_millis(10)
        .saturating_mul(1_u32 << n.min(6))
        .min(Duration::from_millis(500));
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn throttled() -> WriteFailure {
        WriteFailure::Db(DbError::Throttled {
            retry_after: None,
            source: mongodb::error::Error::custom("16500 without RetryAfterMs"),
        })
    }

    #[tokio::test]
    async fn throttling_without_a_hint_is_retried_until_it_passes() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let done = until_deadline(deadline, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(throttled())
            } else {
                Ok("written")
            }
        })
        .await;
        assert!(matches!(done, Ok("written")));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn steady_throttling_without_a_hint_gives_up_before_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(300);
        let outcome = until_deadline(deadline, || async { Err::<(), _>(throttled()) }).await;
        assert!(
            matches!(
                outcome,
                Err(GaveUp::Failed(WriteFailure::Db(DbError::Throttled { .. })))
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn the_unhinted_backoff_doubles_up_to_its_cap() {
        assert_eq!(unhinted_backoff(0, 1.0), Duration::from_millis(10));
        assert_eq!(unhinted_backoff(2, 1.0), Duration::from_millis(40));
        assert_eq!(unhinted_backoff(30, 1.0), Duration::from_millis(500));
        assert_eq!(unhinted_backoff(0, 0.0), Duration::from_millis(5));
    }
}
