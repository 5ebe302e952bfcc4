//! The timings of the settings against each other and against the Functions host: the drain's
//! budget against `functionTimeout`, the lease against the publish timeout and its retries, the
//! schedule against the budget.

use std::time::Duration;

use super::{AppFacts, Check, human};
use crate::config::Settings;

/// `functionTimeout` when `host.json` does not set it: the Consumption plan's default.
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Share of `functionTimeout` a budget may use before the margin for start-up, claim and
/// recording gets thin.
const BUDGET_SHARE_WARN: f64 = 0.9;

pub(super) fn checks(settings: &Settings, app: &AppFacts) -> Vec<Check> {
    vec![
        budget(settings, app),
        lease(settings),
        schedule(settings, app),
    ]
}

fn budget(settings: &Settings, app: &AppFacts) -> Check {
    const ID: &str = "settings.budget";
    const TITLE: &str = "budget vs functionTimeout";
    let budget = settings.relay.time_budget;
    let (timeout, said) = match &app.function_timeout {
        Ok(Some(t)) => (*t, format!("functionTimeout in host.json is {}", human(*t))),
        Ok(None) => (
            DEFAULT_FUNCTION_TIMEOUT,
            format!(
                "host.json sets no functionTimeout (Consumption default {})",
                human(DEFAULT_FUNCTION_TIMEOUT)
            ),
        ),
        Err(e) => {
            return Check::warn(
                ID,
                TITLE,
                format!("cannot read host.json: {e}"),
                "run the doctor from the function app's root, or set FUNCTIONS_APP_ROOT_PATH",
            );
        }
    };
    let fix = format!(
        "lower OUTBOX_TIME_BUDGET_SECS to at most {} s, or raise functionTimeout in host.json",
        (timeout.as_secs_f64() * BUDGET_SHARE_WARN).floor()
    );
    if budget >= timeout {
        Check::fail(
            ID,
            TITLE,
            format!(
                "OUTBOX_TIME_BUDGET_SECS is {}, {said}: the host kills a timer run before its budget ends, cutting publishes short",
                human(budget)
            ),
            fix,
        )
    } else if budget.as_secs_f64() > timeout.as_secs_f64() * BUDGET_SHARE_WARN {
        Check::warn(
            ID,
            TITLE,
            format!(
                "OUTBOX_TIME_BUDGET_SECS is {}, {said}: little time is left for start-up and recording",
                human(budget)
            ),
            fix,
        )
    } else {
        Check::pass(
            ID,
            TITLE,
            format!("OUTBOX_TIME_BUDGET_SECS is {}, {said}", human(budget)),
        )
    }
}

fn lease(settings: &Settings) -> Check {
    const ID: &str = "settings.lease";
    const TITLE: &str = "lease vs publish timeout";
    let lease = settings.relay.lease;
    let timeout = settings.eventgrid.publish_timeout;
    let detail = format!(
        "OUTBOX_LEASE_SECS ({}) against EVENTGRID_PUBLISH_TIMEOUT_MS ({})",
        human(lease),
        human(timeout)
    );
    // Start-up refuses this too; the doctor says it with the fix, for settings edited since.
    if lease < timeout.saturating_mul(2) {
        return Check::fail(
            ID,
            TITLE,
            format!(
                "{detail}: a claim can run out while its request is still in flight, and another relay publishes the same events"
            ),
            format!(
                "raise OUTBOX_LEASE_SECS to at least {}",
                human(timeout.saturating_mul(2))
            ),
        );
    }
    Check::pass(
        ID,
        TITLE,
        format!(
            "{detail}: a claim outlives its request; quick retries that would outlast it are left to the next claim"
        ),
    )
}

fn schedule(settings: &Settings, app: &AppFacts) -> Check {
    const ID: &str = "settings.schedule";
    const TITLE: &str = "schedule";
    let facts = match &app.schedule {
        Ok(f) => f,
        Err(e) => {
            return Check::fail(
                ID,
                TITLE,
                e.clone(),
                "fix the schedule in OutboxTimer/function.json or OUTBOX_SCHEDULE (six NCRONTAB fields, e.g. \"0 */1 * * * *\")",
            );
        }
    };
    let Some(interval) = facts.interval else {
        return Check::pass(
            ID,
            TITLE,
            format!("{:?} (irregular intervals)", facts.expression),
        );
    };
    let budget = settings.relay.time_budget;
    if !settings.relay.tail && budget > interval {
        return Check::warn(
            ID,
            TITLE,
            format!(
                "{:?} runs every {}, shorter than the budget ({}): a long drain delays the next run",
                facts.expression,
                human(interval),
                human(budget)
            ),
            "make the schedule's interval at least OUTBOX_TIME_BUDGET_SECS, or switch OUTBOX_TAIL=on",
        );
    }
    Check::pass(
        ID,
        TITLE,
        format!(
            "{:?} runs every {}{}",
            facts.expression,
            human(interval),
            if settings.relay.tail {
                " (each run tails for its budget)"
            } else {
                ""
            }
        ),
    )
}
