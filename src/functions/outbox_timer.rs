//! `OutboxTimer`: the timer function that drains the outbox.
//!
//! The host never retries a failed timer run and drops the `Logs` of a failed invocation, so
//! the relay's summary is also written to the process log (stderr when the run failed).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use tokio_util::sync::CancellationToken;

use super::invoke::{InvocationRequest, InvocationResponse, TimerTriggerData};
use crate::relay::{Relay, RelayReport};

/// What one run of the timer function needs, whoever triggers it (the host's envelope, or in
/// standalone mode its schedule and admin endpoint). Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboxTimer {
    relay: Relay,
    /// Time one drain may take.
    time_budget: Duration,
    /// Cancelled when the process shuts down; stops a running drain between entries.
    shutdown: CancellationToken,
}

impl OutboxTimer {
    /// Runs of `relay` within `time_budget` each, stopped early by `shutdown`.
    #[must_use]
    pub fn new(relay: Relay, time_budget: Duration, shutdown: CancellationToken) -> Self {
        Self {
            relay,
            time_budget,
            shutdown,
        }
    }

    /// Time one run may take.
    #[must_use]
    pub fn time_budget(&self) -> Duration {
        self.time_budget
    }

    /// Runs one drain within the time budget (the standalone schedule and admin endpoint).
    pub async fn run(&self) -> RelayReport {
        self.relay
            .drain_once(self.time_budget, &self.shutdown)
            .await
    }

    /// One invocation by the Functions host: with `OUTBOX_TAIL=on` it relays for the whole
    /// time budget (the host tracks nothing between invocations, so the invocation itself is
    /// what relays: see [`Relay::tail`]); otherwise it is one drain.
    pub async fn invoke(&self) -> RelayReport {
        if self.relay.settings().tail {
            self.relay
                .tail(Some(self.time_budget), &self.shutdown)
                .await
        } else {
            self.run().await
        }
    }
}

/// `POST /OutboxTimer`: the host's envelope. 200 with the run's summary in `Logs` when the run
/// made progress (or had nothing to do); 500 when it could not (database or topic unreachable
/// or misconfigured), so that the host records the run as failed.
pub async fn envelope(State(timer): State<OutboxTimer>, body: axum::body::Bytes) -> Response {
    // The timer payload is informational; an unreadable one must not fail the run.
    let past_due = serde_json::from_slice::<InvocationRequest<TimerTriggerData>>(&body)
        .map(|r| r.data.is_past_due())
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Ignoring an unreadable timer payload");
            false
        });
    if past_due {
        tracing::info!("Catch-up run after the host was idle or down (IsPastDue)");
    }
    let report = timer.invoke().await;
    let status = if report.made_progress() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    InvocationResponse::logs(vec![report.summary()]).into_host_response(status)
}
