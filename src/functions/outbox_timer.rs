//! `OutboxTimer`: the timer function that drains the outbox.
//!
//! The host never retries a failed timer run and drops the `Logs` of a failed invocation, so
//! the relay's summary is also written to the process log (stderr when the run failed).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::invoke::{InvocationRequest, InvocationResponse, TimerTriggerData};

/// `POST /OutboxTimer`: the host's envelope. 200 with the run's summary in `Logs` when the run
/// made progress (or had nothing to do); 500 when it could not (database or topic unreachable
/// or misconfigured), so that the host records the run as failed.
pub async fn envelope(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
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
    let report = state.drain().await;
    let status = if report.made_progress() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    InvocationResponse::logs(vec![report.summary()]).into_host_response(status)
}

/// `POST /admin/functions/OutboxTimer` (standalone mode): runs one drain now and answers with
/// its report, like the host's admin endpoint does for a manual run.
pub async fn admin(State(state): State<AppState>) -> Response {
    let report = state.drain().await;
    let status = if report.made_progress() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
