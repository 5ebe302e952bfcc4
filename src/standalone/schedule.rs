//! Standalone mode's own timer: runs the drain on the `OutboxTimer` NCRONTAB schedule.
//!
//! Like the Functions host, it never starts a run while the previous one is going; a run that
//! overruns its next occurrence is followed by one run right away, not by one per missed
//! occurrence.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::functions::OutboxTimer;
use crate::functions::binding;

const SETTING: &str = "OUTBOX_SCHEDULE";

/// A parsed NCRONTAB expression (`second minute hour day month day-of-week`, UTC; five fields
/// mean minute precision).
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
}

impl Schedule {
    /// Parses an NCRONTAB expression.
    ///
    /// # Errors
    /// A [`ConfigError`] for `OUTBOX_SCHEDULE` when it is not a valid expression.
    pub fn parse(expression: &str) -> Result<Self, ConfigError> {
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(schedule_error(format!(
                "{expression:?} must have 6 fields (second minute hour day month day-of-week) or 5 (minute precision)"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| {
                schedule_error(format!(
                    "{expression:?} is not a valid NCRONTAB expression: {e}"
                ))
            })?;
        Ok(Self {
            expression: expression.to_owned(),
            cron,
        })
    }

    /// The expression as written.
    #[must_use]
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Time between two runs, when the next two gaps from now are equal (a regular schedule).
    #[must_use]
    pub fn interval(&self) -> Option<std::time::Duration> {
        let a = self.next_after(Utc::now())?;
        let b = self.next_after(a)?;
        let c = self.next_after(b)?;
        (b - a == c - b).then(|| (b - a).to_std().ok()).flatten()
    }

    /// The first occurrence strictly after `t`.
    #[must_use]
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

fn schedule_error(reason: String) -> ConfigError {
    ConfigError {
        setting: SETTING,
        reason,
    }
}

/// The schedule standalone mode follows: `OUTBOX_SCHEDULE` if set, else the `schedule` of
/// `OutboxTimer/function.json` in the app root (or the copy built into the binary), with
/// `%NAME%` placeholders resolved from the settings as the host does.
///
/// # Errors
/// When no valid expression can be found.
pub fn resolve(settings: &Settings) -> Result<Schedule, ConfigError> {
    if let Some(expr) = &settings.schedule {
        return Schedule::parse(expr);
    }
    let raw = binding::timer_schedule(&settings.app_root)
        .map_err(|e| schedule_error(format!("is not set and {e}")))?;
    let expr = if let Some(name) = raw.strip_prefix('%').and_then(|r| r.strip_suffix('%')) {
        settings.app_setting(name).ok_or_else(|| {
            schedule_error(format!(
                "function.json takes the schedule from %{name}%, which is not set"
            ))
        })?
    } else {
        raw
    };
    Schedule::parse(&expr)
}

/// Runs `timer` on `schedule` until `shutdown`, one run after the other in this loop.
pub async fn run(schedule: Schedule, timer: OutboxTimer, shutdown: CancellationToken) {
    tracing::info!(
        schedule = schedule.expression(),
        "Standalone schedule started"
    );
    let mut last = Utc::now();
    loop {
        let Some(next) = schedule.next_after(last) else {
            tracing::error!(
                schedule = schedule.expression(),
                "The schedule has no further occurrence; the outbox will only be drained on demand"
            );
            shutdown.cancelled().await;
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        // The relay logs the run's summary itself.
        let _ = timer.run().await;
        // Overran one or more occurrences: run once more right away (as the host does), then
        // continue from now.
        last = if schedule.next_after(next).is_some_and(|n| n <= Utc::now()) {
            Utc::now() - chrono::Duration::seconds(1)
        } else {
            next
        };
        if shutdown.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn six_field_expressions_have_second_precision() {
        let s = Schedule::parse("0 */1 * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2025-06-02T08:14:00Z")),
            Some(at("2025-06-02T08:15:00Z"))
        );
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2025-06-02T08:14:03Z")),
            Some(at("2025-06-02T08:14:10Z"))
        );
    }

    #[test]
    fn five_field_expressions_have_minute_precision() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2025-06-02T08:14:30Z")),
            Some(at("2025-06-02T08:15:00Z"))
        );
    }

    #[test]
    fn weekdays_count_from_sunday_as_in_ncrontab() {
        // 2025-06-02 is a Monday; "1" is Monday in NCRONTAB.
        let s = Schedule::parse("0 0 9 * * 1").unwrap();
        assert_eq!(
            s.next_after(at("2025-06-01T12:00:00Z")),
            Some(at("2025-06-02T09:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_name_the_setting() {
        for bad in [
            "",
            "* * *",
            "61 * * * * *",
            "0 0 0 0 0 0 0 0",
            "every minute",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert_eq!(e.setting, "OUTBOX_SCHEDULE", "{bad:?}");
        }
    }

    #[test]
    fn the_shipped_function_json_has_a_valid_schedule() {
        // An app root without the file falls back to the copy built into the binary.
        let expr = binding::timer_schedule(std::path::Path::new("/nonexistent-app-root")).unwrap();
        assert!(Schedule::parse(&expr).is_ok(), "{expr}");
    }
}
