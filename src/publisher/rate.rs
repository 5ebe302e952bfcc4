//! `EVENTGRID_MAX_EVENTS_PER_SEC`: one token bucket for every request this process sends
//! (drains, the tail and the push path alike), so that a burst is spread out rather than
//! answered 429 by the topic. Event Grid caps a basic topic at 5,000 events per second and a
//! namespace topic at 1,000 per throughput unit.
//!
//! The bucket holds one second of events. A request takes as many tokens as it carries events;
//! one larger than the bucket waits for a full bucket and leaves it in debt, so a long run of
//! large requests still averages the rate.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket refilled at `rate` events per second, holding at most one second's worth.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available; negative after a request larger than the bucket.
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimit {
    /// A full bucket for `per_sec` events per second.
    #[must_use]
    pub fn new(per_sec: NonZeroU32) -> Self {
        let rate = f64::from(per_sec.get());
        Self {
            rate,
            state: Mutex::new(Bucket {
                tokens: rate,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Waits until `events` may be sent, then takes them.
    pub async fn acquire(&self, events: usize) {
        let want = events as f64;
        loop {
            let wait = self.try_take(want, Instant::now());
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `want` tokens if the bucket allows it at `now` (zero wait), else says how long
    /// until it will.
    fn try_take(&self, want: f64, now: Instant) -> Duration {
        let mut b = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.refilled_at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.rate);
        b.refilled_at = now;
        // A request larger than the bucket goes when the bucket is full.
        let needed = want.min(self.rate);
        if b.tokens >= needed {
            b.tokens -= want;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((needed - b.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u32) -> RateLimit {
        RateLimit::new(NonZeroU32::new(rate).unwrap())
    }

    #[test]
    fn a_full_bucket_lets_one_second_of_events_go_at_once() {
        let l = limit(100);
        let now = Instant::now();
        assert_eq!(l.try_take(60.0, now), Duration::ZERO);
        assert_eq!(l.try_take(40.0, now), Duration::ZERO);
        let wait = l.try_take(10.0, now);
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "10 events at 100/s: {wait:?}"
        );
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let l = limit(100);
        let now = Instant::now();
        assert_eq!(l.try_take(100.0, now), Duration::ZERO);
        let later = now + Duration::from_millis(250);
        assert_eq!(l.try_take(25.0, later), Duration::ZERO);
        assert!(!l.try_take(1.0, later).is_zero());
    }

    #[test]
    fn a_request_larger_than_the_bucket_waits_for_a_full_one_and_leaves_debt() {
        let l = limit(100);
        let now = Instant::now();
        assert_eq!(l.try_take(50.0, now), Duration::ZERO);
        // 500 events need a full bucket first: half a second away.
        let wait = l.try_take(500.0, now);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        let full = now + Duration::from_millis(500);
        assert_eq!(l.try_take(500.0, full), Duration::ZERO);
        // Now 400 in debt: the next event waits 4.01 s.
        let wait = l.try_take(1.0, full);
        assert!((wait.as_secs_f64() - 4.01).abs() < 1e-6, "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_long_run_the_rate_holds() {
        let l = limit(200);
        let started = Instant::now();
        for _ in 0..100 {
            l.acquire(20).await;
        }
        // 2,000 events at 200/s with a 200-event head start: at least 9 s.
        assert!(started.elapsed() >= Duration::from_secs(9));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
