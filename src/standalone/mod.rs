//! Standalone mode (`handler serve`): what the Functions host would otherwise provide — the
//! raw HTTP API without envelopes, the function-key check, the admin endpoint that runs the
//! timer function now, the timer's own [`schedule`], and the Prometheus text at `GET /metrics`
//! ([`metrics`]).
//!
//! A manual run (the admin endpoint) may overlap a scheduled one, as on the host; the relay is
//! safe against it (entries are claimed under a lease, and every later update is fenced).

pub mod metrics;
pub mod schedule;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};

pub use schedule::Schedule;

use crate::functions::error::ApiError;
use crate::functions::{self, OutboxTimer, WriteDocumentHttp};

/// Standalone mode's routes: the raw API, `POST /admin/functions/OutboxTimer` and `pages` (the
/// outbox status page), all behind `key` when one is set (in Azure the host checks function keys; here we check our own). The
/// health probe needs no key.
pub fn router(
    write: WriteDocumentHttp,
    timer: OutboxTimer,
    pages: Router,
    key: Option<SecretString>,
) -> Router {
    let time_budget = timer.time_budget();
    let routes = functions::raw_routes(write)
        .route(
            "/admin/functions/OutboxTimer",
            post(run_timer).with_state(timer),
        )
        .merge(pages);
    let routes = match key {
        Some(key) => routes.route_layer(middleware::from_fn_with_state(Arc::new(key), require_key)),
        None => routes,
    };
    functions::finish(routes, time_budget)
}

/// `POST /admin/functions/OutboxTimer`: runs one drain now and answers with its report, like
/// the host's admin endpoint does for a manual run.
async fn run_timer(State(timer): State<OutboxTimer>) -> Response {
    let report = timer.run().await;
    let status = if report.made_progress() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Every request must carry the key in `x-functions-key` or `?code=` (as Azure's function
/// keys), compared in constant time.
async fn require_key(
    State(key): State<Arc<SecretString>>,
    request: Request,
    next: Next,
) -> Response {
    let from_header = request
        .headers()
        .get("x-functions-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
    });
    let presented = from_header.or(from_query).unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), key.expose_secret().as_bytes()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.response().into_response()
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    // Lengths are not secret enough to hide (they leak through the request size anyway), but
    // the contents are.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_compare_equal_only_when_identical() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"secret"));
    }
}
