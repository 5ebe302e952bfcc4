//! Retry delays: pure functions of the attempt number and a random input, so tests pass the
//! randomness in.

use std::time::Duration;

/// Delay before the next claim of an entry that failed `attempts` times (1 after the first
/// failure): grows exponentially from `initial`, capped at `max`, with full jitter between
/// `initial` and the capped value. A longer server hint (`Retry-After`) wins.
///
/// `random` is uniform in `[0, 1)`.
#[must_use]
pub fn persisted_delay(
    attempts: u32,
    initial: Duration,
    max: Duration,
    random: f64,
    server_hint: Option<Duration>,
) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let cap = initial.saturating_mul(1_u32 << exp).min(max);
    let spread = cap.saturating_sub(initial);
    let delay = initial + spread.mul_f64(random.clamp(0.0, 1.0));
    server_hint.map_or(delay, |hint| delay.max(hint))
}

/// Delay before quick retry number `retry` (1-based) of one request inside a run: about
/// 1 s doubling, ±20 % jitter, capped at 60 s; a longer server hint wins.
///
/// `random` is uniform in `[0, 1)`.
#[must_use]
pub fn quick_retry_delay(retry: u32, random: f64, server_hint: Option<Duration>) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1_u32 << retry.saturating_sub(1).min(6));
    let jitter = 0.8 + 0.4 * random.clamp(0.0, 1.0);
    let delay = base.mul_f64(jitter).min(Duration::from_secs(60));
    server_hint.map_or(delay, |hint| delay.max(hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn persisted_delays_grow_and_are_capped() {
        let (i, m) = (MS(1000), Duration::from_secs(300));
        assert_eq!(persisted_delay(1, i, m, 0.999, None), MS(1000));
        assert_eq!(persisted_delay(2, i, m, 0.0, None), MS(1000));
        assert_eq!(persisted_delay(2, i, m, 0.5, None), MS(1500));
        assert_eq!(persisted_delay(4, i, m, 0.5, None), MS(4500));
        assert_eq!(persisted_delay(40, i, m, 1.0, None), m);
        assert_eq!(persisted_delay(u32::MAX, i, m, 1.0, None), m);
    }

    #[test]
    fn a_longer_server_hint_wins_and_a_shorter_one_does_not() {
        let (i, m) = (MS(1000), Duration::from_secs(300));
        assert_eq!(
            persisted_delay(1, i, m, 0.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(persisted_delay(1, i, m, 0.0, Some(MS(10))), MS(1000));
        assert_eq!(
            quick_retry_delay(1, 0.5, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn quick_retries_double_with_bounded_jitter() {
        assert_eq!(quick_retry_delay(1, 0.5, None), MS(1000));
        assert_eq!(quick_retry_delay(2, 0.5, None), MS(2000));
        assert_eq!(quick_retry_delay(3, 0.0, None), MS(3200));
        assert_eq!(quick_retry_delay(3, 1.0, None), MS(4800));
        assert_eq!(quick_retry_delay(30, 1.0, None), Duration::from_secs(60));
    }
}
