//! Fault injection: scripted failures, latency, dropped responses, poison ids.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper::header::HeaderValue;

use crate::error::ReceiverError;

/// Fail the next `count` requests that reach the publish path with `status`, before
/// any validation (their bodies are read, but nothing is recorded).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRule {
    /// How many requests this rule fails. `0` makes the rule a no-op.
    #[serde(default = "one")]
    pub count: u32,
    /// The status to answer with, e.g. 503, 429, 500, 400, 401, 403, 404, 408, 413, 415.
    /// Must be a final status (200–999).
    pub status: u16,
    /// A `Retry-After` value sent verbatim (delta-seconds such as `"2"`, or an HTTP date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// A `retry-after-ms` value, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl FailRule {
    /// Fails the next `count` requests with `status`, without retry hints.
    pub fn new(count: u32, status: u16) -> Self {
        Self {
            count,
            status,
            retry_after: None,
            retry_after_ms: None,
        }
    }

    /// Adds a `Retry-After` header, sent verbatim.
    #[must_use]
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Adds a `retry-after-ms` header.
    #[must_use]
    pub fn retry_after_ms(mut self, millis: u64) -> Self {
        self.retry_after_ms = Some(millis);
        self
    }
}

/// One fault rule; see [`crate::ReceiverHandle::push_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Queue a [`FailRule`]; rules are applied in the order they were pushed.
    Fail(FailRule),
    /// Delay every response (`count: None`) or the next `count` responses by `delay`.
    /// Replaces any earlier latency setting.
    Latency {
        /// How long to wait before answering.
        delay: Duration,
        /// How many requests to delay; `None` for all of them until cleared.
        count: Option<u32>,
    },
    /// Accept (validate and record) the next `count` valid requests, then close the
    /// connection without sending any response byte: the publisher sees an unknown
    /// outcome. Requests refused by validation are answered normally and do not use up
    /// the count. Adds to any count already pending.
    DropAfterAccept {
        /// How many accepted requests lose their response.
        count: u32,
    },
    /// Fail each request (that no queued [`Fault::Fail`] rule takes) with probability
    /// `permille`/1000, answering as `rule` says (its `count` is ignored). Replaces any earlier
    /// rate; `permille: 0` turns it off.
    FailRate {
        /// Chance per request, in thousandths.
        permille: u32,
        /// Status and `Retry-After` of the failures.
        rule: FailRule,
    },
}

impl Fault {
    /// Shorthand for `Fault::Fail(FailRule::new(count, status))`.
    pub fn fail(count: u32, status: u16) -> Self {
        Self::Fail(FailRule::new(count, status))
    }
}

impl From<FailRule> for Fault {
    fn from(rule: FailRule) -> Self {
        Self::Fail(rule)
    }
}

/// A fail rule checked and ready to answer with.
#[derive(Debug, Clone)]
pub(crate) struct ActiveFail {
    pub(crate) remaining: u32,
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<HeaderValue>,
    pub(crate) retry_after_ms: Option<u64>,
    rule: FailRule,
}

impl ActiveFail {
    fn parse(rule: FailRule) -> Result<Self, ReceiverError> {
        let status = StatusCode::from_u16(rule.status)
            .ok()
            .filter(|s| !s.is_informational())
            .ok_or_else(|| {
                ReceiverError::Fault(format!("status {} is not a final HTTP status", rule.status))
            })?;
        let retry_after = rule
            .retry_after
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| {
                ReceiverError::Fault(format!(
                    "Retry-After {:?} is not a valid header value",
                    rule.retry_after
                ))
            })?;
        Ok(Self {
            remaining: rule.count,
            status,
            retry_after,
            retry_after_ms: rule.retry_after_ms,
            rule,
        })
    }
}

/// The latency setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Latency {
    pub(crate) delay: Duration,
    pub(crate) remaining: Option<u32>,
}

/// All pending faults. Lives behind the receiver's faults mutex.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fail: VecDeque<ActiveFail>,
    latency: Option<Latency>,
    drop_after_accept: u32,
    reject_ids: Option<Arc<regex_lite::Regex>>,
    fail_rate: Option<(u32, ActiveFail)>,
}

impl Faults {
    pub(crate) fn push(&mut self, fault: Fault) -> Result<(), ReceiverError> {
        match fault {
            Fault::Fail(rule) => {
                let active = ActiveFail::parse(rule)?;
                if active.remaining > 0 {
                    self.fail.push_back(active);
                }
            }
            Fault::Latency { delay, count } => {
                self.latency = (count != Some(0)).then_some(Latency {
                    delay,
                    remaining: count,
                });
            }
            Fault::DropAfterAccept { count } => {
                self.drop_after_accept = self.drop_after_accept.saturating_add(count);
            }
            Fault::FailRate { permille, rule } => {
                if permille > 1000 {
                    return Err(ReceiverError::Fault(format!(
                        "a rate of {permille}/1000 is more than always"
                    )));
                }
                let active = ActiveFail::parse(rule)?;
                self.fail_rate = (permille > 0).then_some((permille, active));
            }
        }
        Ok(())
    }

    pub(crate) fn set_latency(&mut self, delay: Option<Duration>) {
        self.latency = delay.map(|delay| Latency {
            delay,
            remaining: None,
        });
    }

    pub(crate) fn set_reject_ids(&mut self, pattern: Option<&str>) -> Result<(), ReceiverError> {
        self.reject_ids = pattern
            .map(|p| {
                regex_lite::Regex::new(p)
                    .map(Arc::new)
                    .map_err(|source| ReceiverError::Pattern {
                        pattern: p.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        Ok(())
    }

    pub(crate) fn reject_ids(&self) -> Option<Arc<regex_lite::Regex>> {
        self.reject_ids.clone()
    }

    /// Uses up one request of the first fail rule, if any; otherwise fails at the configured
    /// rate, if any.
    pub(crate) fn take_fail(&mut self) -> Option<ActiveFail> {
        let Some(front) = self.fail.front_mut() else {
            let (permille, active) = self.fail_rate.as_ref()?;
            return (rand::random_range(0..1000_u32) < *permille).then(|| active.clone());
        };
        front.remaining = front.remaining.saturating_sub(1);
        let taken = front.clone();
        if front.remaining == 0 {
            self.fail.pop_front();
        }
        Some(taken)
    }

    /// Uses up one request of the latency setting, if any.
    pub(crate) fn take_latency(&mut self) -> Option<Duration> {
        let latency = self.latency.as_mut()?;
        let delay = latency.delay;
        if let Some(remaining) = latency.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                self.latency = None;
            }
        }
        Some(delay)
    }

    /// Uses up one pending drop-after-accept, if any.
    pub(crate) fn take_drop_after_accept(&mut self) -> bool {
        if self.drop_after_accept == 0 {
            return false;
        }
        self.drop_after_accept -= 1;
        true
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// What is pending, as `GET /_receiver/faults` shows it.
    pub(crate) fn view(&self) -> FaultsView {
        FaultsView {
            fail: self
                .fail
                .iter()
                .map(|f| FailRule {
                    count: f.remaining,
                    ..f.rule.clone()
                })
                .collect(),
            latency: self.latency.map(|l| LatencyView {
                ms: u64::try_from(l.delay.as_millis()).unwrap_or(u64::MAX),
                count: l.remaining,
            }),
            drop_after_accept: self.drop_after_accept,
            reject_ids: self.reject_ids.as_ref().map(|r| r.as_str().to_owned()),
            fail_rate_permille: self.fail_rate.as_ref().map(|(p, _)| *p),
        }
    }
}

/// The pending faults, serialized by `GET /_receiver/faults`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct FaultsView {
    /// Queued fail rules, `count` being what is left of each.
    fail: Vec<FailRule>,
    latency: Option<LatencyView>,
    drop_after_accept: u32,
    reject_ids: Option<String>,
    fail_rate_permille: Option<u32>,
}

#[derive(Debug, serde::Serialize)]
struct LatencyView {
    ms: u64,
    count: Option<u32>,
}

/// One rule as `POST /_receiver/faults` takes it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum FaultSpec {
    /// `{"fail":{"count":2,"status":503,"retry_after":"1","retry_after_ms":1000}}`
    Fail(FailRule),
    /// `{"latency_ms":200}`: every response.
    LatencyMs(u64),
    /// `{"latency":{"ms":200,"count":3}}`: the next `count` responses (all without it).
    Latency {
        ms: u64,
        #[serde(default)]
        count: Option<u32>,
    },
    /// `{"drop_after_accept":{"count":1}}`
    DropAfterAccept {
        #[serde(default = "one")]
        count: u32,
    },
    /// `{"reject_ids":"^poison-"}`; `null` clears it.
    RejectIds(Option<String>),
    /// `{"fail_rate":{"rate":0.05,"status":503,"retry_after":"1"}}`: each request fails with
    /// that probability (after any queued `fail` rules); rate 0 turns it off.
    FailRate {
        rate: f64,
        status: u16,
        #[serde(default)]
        retry_after: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rules_apply_in_order_and_run_out() {
        let mut faults = Faults::default();
        faults.push(Fault::fail(2, 503)).unwrap();
        faults
            .push(FailRule::new(1, 429).retry_after("2").into())
            .unwrap();
        let statuses: Vec<_> = std::iter::from_fn(|| faults.take_fail())
            .map(|f| f.status.as_u16())
            .collect();
        assert_eq!(statuses, [503, 503, 429]);
    }

    #[test]
    fn a_fail_rate_fails_about_that_share_and_yields_to_queued_rules() {
        let mut faults = Faults::default();
        faults
            .push(Fault::FailRate {
                permille: 250,
                rule: FailRule::new(1, 503),
            })
            .unwrap();
        faults.push(Fault::fail(1, 429)).unwrap();
        assert_eq!(
            faults.take_fail().unwrap().status.as_u16(),
            429,
            "queued rules first"
        );
        let failed = (0..4000).filter(|_| faults.take_fail().is_some()).count();
        assert!((800..1200).contains(&failed), "{failed} of 4000 at 25 %");
        faults
            .push(Fault::FailRate {
                permille: 0,
                rule: FailRule::new(1, 503),
            })
            .unwrap();
        assert!(
            (0..100).all(|_| faults.take_fail().is_none()),
            "0 turns it off"
        );
        assert!(
            faults
                .push(Fault::FailRate {
                    permille: 1001,
                    rule: FailRule::new(1, 503)
                })
                .is_err()
        );
    }

    #[test]
    fn invalid_fail_rules_are_refused() {
        let mut faults = Faults::default();
        assert!(faults.push(Fault::fail(1, 99)).is_err());
        assert!(faults.push(Fault::fail(1, 100)).is_err());
        assert!(
            faults
                .push(FailRule::new(1, 503).retry_after("bad\nvalue").into())
                .is_err()
        );
        assert!(faults.take_fail().is_none());
    }

    #[test]
    fn counted_latency_runs_out_and_uncounted_stays() {
        let mut faults = Faults::default();
        let delay = Duration::from_millis(5);
        faults
            .push(Fault::Latency {
                delay,
                count: Some(2),
            })
            .unwrap();
        assert_eq!(faults.take_latency(), Some(delay));
        assert_eq!(faults.take_latency(), Some(delay));
        assert_eq!(faults.take_latency(), None);
        faults.set_latency(Some(delay));
        for _ in 0..5 {
            assert_eq!(faults.take_latency(), Some(delay));
        }
        faults.set_latency(None);
        assert_eq!(faults.take_latency(), None);
    }

    #[test]
    fn drop_after_accept_counts_down_and_clear_resets_everything() {
        let mut faults = Faults::default();
        faults.push(Fault::DropAfterAccept { count: 1 }).unwrap();
        faults.push(Fault::fail(1, 500)).unwrap();
        faults.set_reject_ids(Some("^x")).unwrap();
        assert!(faults.take_drop_after_accept());
        assert!(!faults.take_drop_after_accept());
        faults.clear();
        assert!(faults.take_fail().is_none());
        assert!(faults.reject_ids().is_none());
    }

    #[test]
    fn bad_reject_ids_pattern_is_an_error() {
        let mut faults = Faults::default();
        assert!(matches!(
            faults.set_reject_ids(Some("(")),
            Err(ReceiverError::Pattern { .. })
        ));
    }

    #[test]
    fn fault_specs_parse_from_the_documented_json() {
        let parse = |s: &str| serde_json::from_str::<FaultSpec>(s);
        assert!(matches!(
            parse(r#"{"fail":{"count":2,"status":503,"retry_after":"1"}}"#).unwrap(),
            FaultSpec::Fail(FailRule {
                count: 2,
                status: 503,
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"fail":{"status":500}}"#).unwrap(),
            FaultSpec::Fail(FailRule { count: 1, .. })
        ));
        assert!(matches!(
            parse(r#"{"latency_ms":200}"#).unwrap(),
            FaultSpec::LatencyMs(200)
        ));
        assert!(matches!(
            parse(r#"{"latency":{"ms":20,"count":3}}"#).unwrap(),
            FaultSpec::Latency {
                ms: 20,
                count: Some(3)
            }
        ));
        assert!(matches!(
            parse(r#"{"drop_after_accept":{"count":1}}"#).unwrap(),
            FaultSpec::DropAfterAccept { count: 1 }
        ));
        assert!(matches!(
            parse(r#"{"reject_ids":"^poison-"}"#).unwrap(),
            FaultSpec::RejectIds(Some(_))
        ));
        assert!(matches!(
            parse(r#"{"reject_ids":null}"#).unwrap(),
            FaultSpec::RejectIds(None)
        ));
        assert!(parse(r#"{"fail":{"status":503,"typo":1}}"#).is_err());
        assert!(parse(r#"{"explode":{}}"#).is_err());
        assert!(parse(r#"{"latency_ms":1,"reject_ids":"x"}"#).is_err());
    }
}
