//! The retry policy of a write: attempts end at the write's deadline
//! (`MONGODB_WRITE_TIMEOUT_MS` from the request's start), and a throttled attempt (Cosmos DB's
//! 16500) is run again after the server's `RetryAfterMs` while the deadline allows. Every other
//! failure ends the write: transient ones were already rerun by the driver inside the attempt.

use std::future::Future;
use std::time::Instant;

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
            other => return Err(GaveUp::Failed(other)),
        }
    }
}
